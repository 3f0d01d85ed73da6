"""Failover benchmark: a printer failing, and a pinpad dying in the middle of a payment.

Printers: a kitchen role bound to two simulated LAN printers (real TCP, real ESC/POS bytes), the
real device registry and watchdog at their *default* probe interval and the production printer
driver timings, the real journal (fsync) and Mosquitto. Each trial breaks the serving printer
one way (plug pulled, paper out, cover open, silent hang), submits a ticket at once, and times
until the spare has confirmed it; then the printer is mended and the role fails back.
Ceiling measured in the same run: the same ticket on a healthy printer (no failover). The spare
is each of the ``--spares`` simulator profiles in turn (edgehub/sim/printer.py): a genuine Epson,
a ``basic`` printer (DLE EOT 1-3 only, confirmed by status after the job's print time) and a
``silent`` one (status none: sent, unconfirmed). Besides the time to the confirmation, each trial
times the ticket coming out of the spare (``on_spare_paper``). The Epson spare's figures are at the
top level of the JSON line, every spare's under ``by_spare``.

Pinpads: a pinpad role bound to two simulated ZVT terminals, production ZVT driver timings and
the default watchdog, a till on MQTT. Each trial kills the serving terminal at one step of a
payment (``PAYMENT_STEPS`` whose death closes the connection; the hanging ones last the
configured transaction timeout by design); it reboots in 1 s. Each trial times, from the till's
``pay/1``: the till hearing
``unknown`` (or the final result), the next sale approved on the spare, and the dead payment
settled from the terminal's last transaction once it answers again. Every card must be charged
at most once (checked, not measured). Ceiling: a healthy payment's ``pay/1`` to ``approved``.

With ``--profile pi`` the whole bench (store, watchdog, journal and the simulated devices) runs
as one process of the box, at a Raspberry Pi 4 core's speed with an SD card's syncs
(bench/piprofile.py).

The last line is one JSON object with the figures.

    .venv/bin/python bench/failover.py [--trials 50] [--part printer|pinpad|all] [--spares epson,basic,silent]
                                       [--profile pi]
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import piprofile  # noqa: E402

from drivers.base import DeviceInfo, Driver  # noqa: E402
from drivers.escpos import EscposPrinter  # noqa: E402
from drivers.zvt import ZvtPinpad  # noqa: E402
from edgehub.devices import WatchdogTiming  # noqa: E402
from edgehub.roles.roles import Reply  # noqa: E402
from edgehub.sim.pinpad import PAYMENT_STEPS, ZvtPinpadSim  # noqa: E402
from edgehub.sim.printer import SIM_DEVICE_KEYS, PrinterSim  # noqa: E402
from tests.roles.conftest import Store, Till, pinpad_info, printer_info, running_store, ticket  # noqa: E402

ROLE = "kitchen-printer.grill"
ROLES_TOML = f"""
[[role]]
name = "{ROLE}"
devices = ["prn-a", "prn-b"]
failback_after_s = 0.5
"""
FAULTS = ("kill", "paper_out", "cover_open", "silent")


PINPAD_ROLE = "pinpad.till-1"
PINPAD_TOML = f"""
[[role]]
name = "{PINPAD_ROLE}"
devices = ["pad-1", "pad-2"]
failback_after_s = 0.5
"""
# The steps at which a dying terminal closes the connection; "hang" and "hang_after_charge" keep
# it open and silent, so the payment waits out the driver's transaction timeout (180 s).
PINPAD_STEPS = tuple(step for step in PAYMENT_STEPS if not step.startswith("hang"))
CHARGED = {"after_charge", "after_status"}
REBOOT_S = 1.0  # the dead terminal answers again after this


def production_driver(info: DeviceInfo) -> Driver:
    if info.driver == "zvt":
        return ZvtPinpad(info)  # default ZVT timings, as on a box
    return EscposPrinter(info)  # default PrinterTiming, as on a box


def pct(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(p * len(ordered)))] * 1000, 1) if ordered else float("nan")


async def one_job(store: Store, number: int) -> float:
    """Submit one ticket now; seconds until a printer confirmed it."""
    queue = store.roles.printqueue
    before = queue.stats.printed
    started = time.perf_counter()
    await queue.submit(ROLE, ticket(number), f"bench-{number}", Reply(None, None, None))
    while queue.stats.printed == before:  # noqa: ASYNC110 - polls the worker's counter at 1 ms
        await asyncio.sleep(0.001)
    return time.perf_counter() - started


def _pay(payment_id: str, sale_id: str, cents: int) -> dict[str, object]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": sale_id, "amount_cents": cents}


async def run_pinpad(trials: int) -> dict[str, object]:
    """The pinpad half: see the module doc."""
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            running_store(Path(tmp) / "box", PINPAD_TOML, WatchdogTiming(), production_driver) as store,
            ZvtPinpadSim(reboot_s=REBOOT_S) as p1,
            ZvtPinpadSim() as p2,
            Till(store.config) as till,
        ):
            await store.add(pinpad_info("pad-1", p1))
            await store.add(pinpad_info("pad-2", p2))
            await store.wait_for(lambda: store.roles.serving(PINPAD_ROLE) == "pad-1", timeout=30)

            healthy: list[float] = []
            for n in range(trials):
                started = time.perf_counter()
                await till.request(PINPAD_ROLE, "pay", _pay(f"ok-{n}", f"sale-ok-{n}", 100 + n))
                done = await till.reply("payment_id", f"ok-{n}", ("approved", "declined", "unknown", "refused"))
                assert done["status"] == "approved", done
                healthy.append(time.perf_counter() - started)

            to_unknown: list[float] = []
            to_spare: list[float] = []
            to_settled: list[float] = []
            for trial in range(trials):
                step = PINPAD_STEPS[trial % len(PINPAD_STEPS)]
                truth = "approved" if step in CHARGED else "not_found"
                cents = 10_000 + trial
                p1.fault = step  # type: ignore[assignment]
                started = time.perf_counter()
                await till.request(PINPAD_ROLE, "pay", _pay(f"dead-{trial}", f"sale-{trial}", cents))
                first = await till.reply("payment_id", f"dead-{trial}", ("unknown", truth), timeout=60)
                to_unknown.append(time.perf_counter() - started)
                await till.request(PINPAD_ROLE, "pay", _pay(f"next-{trial}", f"next-{trial}", 300))
                nxt = await till.reply("payment_id", f"next-{trial}", ("approved", "declined", "unknown", "refused"))
                assert (nxt["status"], nxt["device"]) == ("approved", "pad-2"), (step, nxt)
                to_spare.append(time.perf_counter() - started)
                if first["status"] != truth:
                    await till.reply("payment_id", f"dead-{trial}", truth, timeout=60)
                to_settled.append(time.perf_counter() - started)
                charged = [c.amount_cents for c in p1.charges + p2.charges].count(cents)
                assert charged == (1 if truth == "approved" else 0), (step, charged)
                await store.wait_for(lambda: store.roles.serving(PINPAD_ROLE) == "pad-1", timeout=30)

    return {
        "pinpad_ratio": round(pct(to_spare, 0.5) / max(pct(healthy, 0.5), 0.001), 1),
        "pinpad_trials": trials,
        "pinpad_steps": list(PINPAD_STEPS),
        "pinpad_healthy_p50_ms": pct(healthy, 0.5),
        "pinpad_healthy_p99_ms": pct(healthy, 0.99),
        "pinpad_unknown_p50_ms": pct(to_unknown, 0.5),
        "pinpad_unknown_p99_ms": pct(to_unknown, 0.99),
        "pinpad_next_sale_on_spare_p50_ms": pct(to_spare, 0.5),
        "pinpad_next_sale_on_spare_p99_ms": pct(to_spare, 0.99),
        "pinpad_settled_p50_ms": pct(to_settled, 0.5),
        "pinpad_settled_p99_ms": pct(to_settled, 0.99),
        "pinpad_charged_twice": 0,
    }


async def run(trials: int, spare: str = "epson") -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            running_store(Path(tmp) / "box", ROLES_TOML, WatchdogTiming(), production_driver) as store,
            PrinterSim() as a,
            PrinterSim(profile=spare) as b,
        ):
            await store.add(printer_info("prn-a", a))
            # The profile keys an installer gives such a unit (status = "none" for a silent one).
            await store.add(dataclasses.replace(printer_info("prn-b", b), extra=SIM_DEVICE_KEYS.get(spare, {})))
            await store.wait_for(lambda: store.roles.serving(ROLE) == "prn-a", timeout=30)

            healthy = [await one_job(store, n) for n in range(trials)]

            breaks: dict[str, tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]] = {}

            def knob(name: str) -> tuple[Callable[[], Awaitable[None]], Callable[[], Awaitable[None]]]:
                async def on() -> None:
                    setattr(a, name, True)

                async def off() -> None:
                    setattr(a, name, False)

                return on, off

            breaks["kill"] = (a.kill, a.revive)
            for name in ("paper_out", "cover_open", "silent"):
                breaks[name] = knob(name)

            failover: list[float] = []
            on_paper: list[float] = []  # until the ticket came out of the spare (before any confirmation)
            by_fault: dict[str, list[float]] = {f: [] for f in FAULTS}
            for trial in range(trials):
                fault = FAULTS[trial % len(FAULTS)]
                brk, mend = breaks[fault]
                spare_before = b.core.taken
                started = time.perf_counter()
                await brk()
                job = asyncio.create_task(one_job(store, 1000 + trial))
                while b.core.taken <= spare_before:  # noqa: ASYNC110 - polls the simulator at 1 ms: received in full
                    await asyncio.sleep(0.001)
                on_paper.append(time.perf_counter() - started)
                await job
                elapsed = time.perf_counter() - started
                assert b.core.taken > spare_before, f"trial {trial} ({fault}) did not print on the spare"
                failover.append(elapsed)
                by_fault[fault].append(elapsed)
                await mend()
                await store.wait_for(lambda: store.roles.serving(ROLE) == "prn-a", timeout=30)

    result: dict[str, object] = {
        # The headline pair every benchmark prints: failover time against a healthy job's time
        # (the ceiling measured in this run), and the failover p99 the issue sets a target for.
        "ratio": round(pct(failover, 0.5) / max(pct(healthy, 0.5), 0.001), 1),
        "p99_ms": pct(failover, 0.99),
        "trials": trials,
        "probe_interval_s": WatchdogTiming().printer_interval,
        "healthy_job_p50_ms": pct(healthy, 0.5),
        "healthy_job_p99_ms": pct(healthy, 0.99),
        "failover_p50_ms": pct(failover, 0.5),
        "failover_p99_ms": pct(failover, 0.99),
        "failover_max_ms": pct(failover, 1.0),
        # A spare that confirms by status (basic, clones) counts a job as printed only once its
        # print time has passed (6 lines/s, plus 1.5 s for feed and cut): the ticket is on the
        # spare's paper long before.
        "on_spare_paper_p50_ms": pct(on_paper, 0.5),
        "on_spare_paper_p99_ms": pct(on_paper, 0.99),
        "ratio_p50": round(pct(failover, 0.5) / max(pct(healthy, 0.5), 0.001), 1),
        **{f"{fault}_p50_ms": pct(values, 0.5) for fault, values in by_fault.items()},
        "target_p99_ms": 1500,
        "spare": spare,
        "missed_probes": WatchdogTiming().printer_missed,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    parser.add_argument("--part", choices=("printer", "pinpad", "all"), default="all")
    parser.add_argument("--spares", default="epson,basic,silent", help="simulator profiles of the spare printer")
    parser.add_argument("--inner", action="store_true", help=argparse.SUPPRESS)
    piprofile.add_argument(parser)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.profile == "host" or args.inner:
        result = measure(args)
        result["profile"] = {"name": "host", "loadavg_1m": round(os.getloadavg()[0], 2)}
    else:
        with piprofile.from_args(args) as profile:
            proc = subprocess.Popen([sys.executable, __file__, "--trials", str(args.trials), "--part", args.part,
                                     "--spares", args.spares, "--inner"],
                                    stdout=subprocess.PIPE, text=True, env={**os.environ, **profile.env()})
            profile.box(proc.pid)
            out, _ = proc.communicate()
            if proc.returncode != 0:
                raise SystemExit(f"the failover bench exited {proc.returncode} under the Pi profile")
            lines = out.strip().splitlines()
            print("\n".join(lines[:-1]))
            result = json.loads(lines[-1])
            result["profile"] = profile.describe()
    print(json.dumps(result))


def measure(args: argparse.Namespace) -> dict[str, object]:
    """The parts asked for, each printed as it ends; their figures together."""
    result: dict[str, object] = {}
    if args.part in ("printer", "all"):
        by_spare: dict[str, dict[str, object]] = {}
        for spare in args.spares.split(","):
            figures = by_spare[spare] = asyncio.run(run(args.trials, spare))
            print(f"spare printer: {spare}")
            print(f"  healthy printer, one ticket:    p50 {figures['healthy_job_p50_ms']} ms  "
                  f"p99 {figures['healthy_job_p99_ms']} ms")
            print(f"  failover, confirmed:            p50 {figures['failover_p50_ms']} ms  "
                  f"p99 {figures['failover_p99_ms']} ms (target p99 < 1500 ms)")
            print(f"  failover, on the spare's paper: p50 {figures['on_spare_paper_p50_ms']} ms  "
                  f"p99 {figures['on_spare_paper_p99_ms']} ms")
            for fault in FAULTS:
                print(f"    {fault:<11} p50 {figures[f'{fault}_p50_ms']} ms")
        result.update(next(iter(by_spare.values())))
        result["by_spare"] = by_spare
    if args.part in ("pinpad", "all"):
        pinpad = asyncio.run(run_pinpad(args.trials))
        result.update(pinpad)
        if "ratio" not in result:
            result = {"ratio": pinpad["pinpad_ratio"], "p99_ms": pinpad["pinpad_next_sale_on_spare_p99_ms"], **result}
        print(f"healthy pinpad, one payment:  p50 {pinpad['pinpad_healthy_p50_ms']} ms  "
              f"p99 {pinpad['pinpad_healthy_p99_ms']} ms")
        print(f"pinpad dies mid-payment ({', '.join(PINPAD_STEPS)}), from pay/1:")
        for what, key in (("till hears unknown", "unknown"), ("next sale approved on the spare", "next_sale_on_spare"),
                          ("dead payment settled", "settled")):
            print(f"  {what:<32} p50 {pinpad[f'pinpad_{key}_p50_ms']} ms  p99 {pinpad[f'pinpad_{key}_p99_ms']} ms")
        print("  cards charged twice: 0 (checked on every trial)")
    return result


if __name__ == "__main__":
    main()
