"""Failover benchmark: from a printer failing to the next job completing on the spare.

A kitchen role bound to two simulated LAN printers (real TCP, real ESC/POS bytes), the real
device registry and watchdog at their *default* probe interval and the production printer
driver timings, the real journal (fsync) and Mosquitto. Each trial breaks the serving printer
one way (plug pulled, paper out, cover open, silent hang), submits a ticket at once, and times
until the spare has confirmed it; then the printer is mended and the role fails back.

Ceiling measured in the same run: the same ticket on a healthy printer (no failover). The last
line is one JSON object with the figures.

    .venv/bin/python bench/failover.py [--trials 50]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from drivers.base import DeviceInfo, Driver  # noqa: E402
from drivers.escpos import EscposPrinter  # noqa: E402
from edgehub.devices import WatchdogTiming  # noqa: E402
from edgehub.roles.roles import Reply  # noqa: E402
from edgehub.sim.printer import PrinterSim  # noqa: E402
from tests.roles.conftest import Store, printer_info, running_store, ticket  # noqa: E402

ROLE = "kitchen-printer.grill"
ROLES_TOML = f"""
[[role]]
name = "{ROLE}"
devices = ["prn-a", "prn-b"]
failback_after_s = 0.5
"""
FAULTS = ("kill", "paper_out", "cover_open", "silent")


def production_driver(info: DeviceInfo) -> Driver:
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


async def run(trials: int) -> dict[str, object]:
    with tempfile.TemporaryDirectory() as tmp:
        async with (
            running_store(Path(tmp) / "box", ROLES_TOML, WatchdogTiming(), production_driver) as store,
            PrinterSim() as a,
            PrinterSim() as b,
        ):
            await store.add(printer_info("prn-a", a))
            await store.add(printer_info("prn-b", b))
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
            by_fault: dict[str, list[float]] = {f: [] for f in FAULTS}
            for trial in range(trials):
                fault = FAULTS[trial % len(FAULTS)]
                brk, mend = breaks[fault]
                spare_before = len(b.printed)
                started = time.perf_counter()
                await brk()
                await one_job(store, 1000 + trial)
                elapsed = time.perf_counter() - started
                assert len(b.printed) > spare_before, f"trial {trial} ({fault}) did not print on the spare"
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
        "ratio_p50": round(pct(failover, 0.5) / max(pct(healthy, 0.5), 0.001), 1),
        **{f"{fault}_p50_ms": pct(values, 0.5) for fault, values in by_fault.items()},
        "target_p99_ms": 1500,
    }
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=50)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    result = asyncio.run(run(args.trials))
    print(f"healthy printer, one ticket:  p50 {result['healthy_job_p50_ms']} ms  "
          f"p99 {result['healthy_job_p99_ms']} ms")
    print(
        f"failover to the spare:        p50 {result['failover_p50_ms']} ms  "
        f"p99 {result['failover_p99_ms']} ms (target p99 < 1500 ms)"
    )
    for fault in FAULTS:
        print(f"  {fault:<11} p50 {result[f'{fault}_p50_ms']} ms")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
