"""QR payment benchmark: what the box adds to a scan-to-pay payment.

A till (MQTT 5, real Mosquitto) sends ``pay/1`` with tender qr; the hub's roles component
journals the intent (fsync), calls the fake Alipay gateway over real HTTPS on loopback (RSA2
signing, the answer's signature checked), journals the result (fsync) and answers the till.
Timed from the till's publish to its ``approved``.

Ceilings measured in the same run: the same signed ``alipay.trade.pay`` sent straight to the same
fake gateway by the same client (``AlipayGateway.pay``), without the hub; and one write of the
hub's own journal (its group commit: ``journal.commit_window_ms``, then fsync), since a QR
payment is journaled twice (the intent before the gateway is called, the result after) and each
must be on disk before the till hears of it. ``added_p50_ms`` is the box's share (its p50 minus the gateway's);
``ratio_p50``/``ratio_p99`` the box's latency over the gateway's; ``added_over_two_commits`` the
box's share over two commits' time (1.0: nothing but the two fsyncs the money rules need). The
last line is one JSON object with the figures.

With ``--profile pi`` the whole bench runs as one process of the box at a Raspberry Pi 4 core's
speed with an SD card's syncs (bench/piprofile.py); the fake gateway shares that process, so the
ceiling is the gateway's round trip on the same Pi core.

    .venv/bin/python bench/qrpay.py [--payments 200] [--profile pi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import piprofile  # noqa: E402

from edgehub.qrpay.acquirer import GatewayOrder  # noqa: E402
from edgehub.qrpay.alipay import AlipayGateway  # noqa: E402
from edgehub.sim.alipay import AlipayFake, alipay_code, make_gateway_files  # noqa: E402
from tests.qrpay.conftest import qr_toml  # noqa: E402
from tests.roles.conftest import ROLES_TOML, Till, running_store  # noqa: E402

TILL = "pinpad.till-1"


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 2) if ordered else float("nan")


async def final_reply(till: Till, payment_id: str) -> dict[str, object]:
    """The payment's final answer, looked for every millisecond (Till.reply polls at 20 ms)."""
    async with asyncio.timeout(30):
        while True:
            for doc in till.replies_for("payment_id", payment_id):
                if doc["status"] in ("approved", "declined", "unknown", "refused"):
                    return doc
            await asyncio.sleep(0.001)


async def run(payments: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        with AlipayFake(make_gateway_files(Path(tmp) / "gw")) as fake:
            toml = qr_toml(fake.files, fake.url, answer_timeout_s=10.0, pay_deadline_s=60.0)
            async with running_store(Path(tmp) / "box", ROLES_TOML + toml) as store, Till(store.config) as till:
                cfg = store.config.payments.qr
                async with AlipayGateway(cfg) as direct:
                    ceiling = []
                    for n in range(payments):
                        started = time.perf_counter()
                        answer = await direct.pay(GatewayOrder(f"bench_{n}", alipay_code(10_000 + n), 100, "CNY",
                                                               "bench", store.config.store.id))
                        ceiling.append(time.perf_counter() - started)
                        assert answer.state == "paid", answer
                await store.journal.write(lambda c: c.execute("CREATE TEMP TABLE bench (n INTEGER)"))
                commits = []
                for n in range(payments):
                    started = time.perf_counter()
                    await store.journal.write(lambda c, n=n: c.execute("INSERT INTO bench VALUES (?)", (n,)))
                    commits.append(time.perf_counter() - started)
                box = []
                for n in range(payments):
                    started = time.perf_counter()
                    await till.request(TILL, "pay", {"schema": "pay/1", "payment_id": f"b-{n}", "sale_id": f"s-{n}",
                                                     "amount_cents": 100, "currency": "CNY", "tender": "qr",
                                                     "auth_code": alipay_code(20_000 + n)})
                    done = await final_reply(till, f"b-{n}")
                    box.append(time.perf_counter() - started)
                    assert done["status"] == "approved", done
    p50, p99 = pct(box, 0.5), pct(box, 0.99)
    c50, c99 = pct(ceiling, 0.5), pct(ceiling, 0.99)
    commit50 = pct(commits, 0.5)
    return {"payments": payments, "box_p50_ms": p50, "box_p99_ms": p99, "ceiling_p50_ms": c50,
            "ceiling_p99_ms": c99, "commit_p50_ms": commit50, "added_p50_ms": round(p50 - c50, 2),
            "ratio_p50": round(p50 / c50, 2), "ratio_p99": round(p99 / c99, 2),
            "added_over_two_commits": round((p50 - c50) / (2 * commit50), 2) if commit50 else None,
            "load_1m": round(os.getloadavg()[0], 2)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--payments", type=int, default=200)
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    piprofile.add_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    if args.profile == "host" or args.inner:
        result = asyncio.run(run(args.payments))
        result["profile"] = {"name": "host", "loadavg_1m": round(os.getloadavg()[0], 2)}
    else:
        with piprofile.from_args(args) as profile:
            proc = subprocess.Popen([sys.executable, __file__, "--payments", str(args.payments), "--inner"],
                                    stdout=subprocess.PIPE, text=True, env={**os.environ, **profile.env()})
            profile.box(proc.pid)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"the QR payment bench exited {proc.returncode} under the Pi profile")
            result = json.loads(out.strip().splitlines()[-1])
            result["profile"] = profile.describe()
    print(f"QR payment at the box: p50 {result['box_p50_ms']} ms, p99 {result['box_p99_ms']} ms; straight to the "
          f"gateway: p50 {result['ceiling_p50_ms']} ms, p99 {result['ceiling_p99_ms']} ms; one journal write: "
          f"p50 {result['commit_p50_ms']} ms (load {result['load_1m']})")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
