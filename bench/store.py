"""Whole-store benchmark: a till's order ack latency with everything else a store does running.

The real ``edgehub run --simulate`` (its own Mosquitto, the simulated store's printers, scale,
scanner and pinpad probed by the watchdog, six kitchen stations, the uplink to a cloud
Mosquitto), a screen per station bumping and serving every ticket (bench/footprint.py's
``Screens``), and a POS terminal sending two-line orders at a fixed rate, every fifth followed
by a receipt print job. Measured:

- the ack p50/p99 at ``--rate`` (20 orders/s: a busy store's rush is a fraction of that;
  target p99 < 50 ms);
- the highest rate whose ack p99 stays under ``--p99-target-ms`` (100 ms), stepping the rate up
  (``--steps``) for ``--step-s`` seconds each.

Ceiling, same run, same profile: a raw paho responder (bench/intake.py's) on a Mosquitto of its
own, with no journal: its ack p99 at ``--rate`` and its burst rate (orders/s).

    .venv/bin/python bench/store.py [--rate 20] [--seconds 20] [--step-s 8] [--profile pi]

The last line is one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import piprofile
from common import NO_QUOTA, Loader, pct
from footprint import KITCHEN, Screens, cloud_section
from intake import start_responder, stop

from edgehub.broker import MosquittoProcess
from edgehub.bus.topics import Topics
from edgehub.config import load_config
from tests.conftest import HubProcess, write_config
from tests.uplink.cloudside import CloudBroker

STORE = "bench"
TOPICS = Topics(STORE)
TERMINALS = ("pos-1", "pos-2", "kds-1")
STEPS = (20, 40, 60, 80, 100, 130, 160, 200, 250, 320, 400, 500, 640, 800)


class ReceiptTill:
    """Every fifth order's receipt: a ``print/1`` job to the receipt printer's role (pos-2)."""

    def __init__(self, loader: Loader, port: int) -> None:
        import paho.mqtt.client as mqtt

        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-receipts-{time.time_ns()}")
        self.client.username_pw_set("pos-2", "pw-pos-2")
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.sent = 0
        self._orders = loader.sent_at
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        seen = 0
        while not self._stop.wait(0.05):
            count = len(self._orders)
            while seen + 5 <= count:
                seen += 5
                ticket = {"lines": ["Receipt", {"rule": "-"}, "宫保鸡丁 x1  38.00", {"cut": True}]}
                body = json.dumps({"schema": "print/1", "job_id": f"r-{self.sent}", "ticket": ticket,
                                   "reply_to": TOPICS.reply("pos-2")})
                self.client.publish(TOPICS.role_command("receipt-printer", "print", "pos-2"), body, qos=1)
                self.sent += 1

    def close(self) -> None:
        self._stop.set()
        self._thread.join()
        self.client.loop_stop()
        self.client.disconnect()


def sweep(loader: Loader, start: float, step_s: float, target_ms: float) -> tuple[float, list[dict[str, float]]]:
    """Rates from ``STEPS`` at or above ``start``, ``step_s`` each, until one's p99 misses."""
    best = 0.0
    steps = []
    for rate in (r for r in STEPS if r >= start):
        latency = loader.paced(f"sweep{rate}", rate, step_s)
        p99 = pct(latency, 0.99)
        steps.append({"rate": rate, "p50_ms": pct(latency, 0.5), "p99_ms": p99, "orders": len(latency)})
        print(f"  {rate:>4}/s: p50 {pct(latency, 0.5)} ms, p99 {p99} ms", flush=True)
        if not p99 < target_ms or len(latency) < int(rate * step_s):
            break
        best = float(rate)
        time.sleep(1.0)
    return best, steps


async def ceiling(tmp: Path, profile: piprofile.HostProfile, rate: float, seconds: float) -> dict[str, float]:
    path = write_config(tmp / "raw", store=STORE, mode="external", extra=NO_QUOTA)
    config = load_config(path)
    broker = MosquittoProcess(config)
    with profile.box_environ():
        await broker.start()
    try:
        assert broker.pid is not None
        profile.box(broker.pid)
        responder = start_responder(config.broker.listen.port, profile)
        try:
            loader = Loader(config.broker.listen.port, STORE)
            loader.burst("warm", 300)
            burst = loader.burst("raw", 2000)
            time.sleep(1.0)  # noqa: ASYNC251 - the load generator is threads; nothing else runs here
            latency = loader.paced("rawlat", rate, seconds)
            loader.close()
        finally:
            stop(responder)
    finally:
        await broker.stop()
    return {"burst_orders_per_s": round(burst, 1), "p50_ms": pct(latency, 0.5), "p99_ms": pct(latency, 0.99)}


async def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, Any]:
    profile.terminals(os.getpid())
    with tempfile.TemporaryDirectory(prefix="bench-store-") as tmp:
        raw = await ceiling(Path(tmp), profile, args.rate, args.seconds)
        async with CloudBroker(Path(tmp) / "cloud", store=STORE) as cloud:
            path = write_config(Path(tmp) / "box", store=STORE, mode="managed", terminals=TERMINALS,
                                extra=KITCHEN + cloud_section(cloud.port) + NO_QUOTA)
            hub = HubProcess(path, Path(tmp) / "hub.log", extra_args=("--simulate",), env=profile.env())
            hub.start(wait=False)
            try:
                assert hub.proc is not None
                profile.box(hub.proc.pid)
                hub.wait_healthy(60)
                time.sleep(3)  # noqa: ASYNC251 - devices found and probed, roles bound
                port = hub.config.broker.listen.port
                screens = Screens(port, STORE, args.bump_after_s)
                loader = Loader(port, STORE, "pos-1")
                receipts = ReceiptTill(loader, port)
                try:
                    loader.paced("warm", args.rate, 3)
                    latency = loader.paced("store", args.rate, args.seconds)
                    time.sleep(1.0)  # noqa: ASYNC251 - see above
                    best, steps = sweep(loader, args.rate * 2, args.step_s, args.p99_target_ms)
                finally:
                    receipts.close()
                    screens.close()
                    loader.close()
            except BaseException:
                print(hub.log_path.read_text()[-3000:], file=sys.stderr)
                raise
            finally:
                hub.stop()
    p99 = pct(latency, 0.99)
    if best == 0.0 and p99 < args.p99_target_ms:
        best = args.rate
    result = {
        "rate_per_s": args.rate,
        "orders": len(latency),
        "p50_ms": pct(latency, 0.5),
        "p99_ms": p99,
        "target_p99_ms": 50,
        "max_rate_p99_under_100ms": best,
        "sweep": steps,
        "receipts": receipts.sent,
        "screen_commands": screens.sent,
        "raw_p50_ms": raw["p50_ms"],
        "raw_p99_ms": raw["p99_ms"],
        "ceiling_orders_per_s": raw["burst_orders_per_s"],
        "ratio": round(best / raw["burst_orders_per_s"], 3) if raw["burst_orders_per_s"] else None,
        "profile": profile.describe(),
    }
    print(f"whole store, ack at {args.rate:g}/s: p50 {result['p50_ms']} ms, p99 {p99} ms (target p99 < 50 ms); "
          f"raw responder p99 {raw['p99_ms']} ms")
    print(f"highest rate with p99 < {args.p99_target_ms:g} ms: {best:g} orders/s "
          f"(raw responder burst: {raw['burst_orders_per_s']} orders/s)")
    print(json.dumps(result))
    return result


async def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rate", type=float, default=20.0)
    parser.add_argument("--seconds", type=float, default=20.0)
    parser.add_argument("--step-s", type=float, default=8.0)
    parser.add_argument("--p99-target-ms", type=float, default=100.0)
    parser.add_argument("--bump-after-s", type=float, default=1.0)
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return await run(args, profile)


if __name__ == "__main__":
    asyncio.run(main())
