"""`make bench` (`make bench PROFILE=pi`): every benchmark in one go, one table, one JSON line.

Each benchmark measures its own ceiling in the same run (under the same profile) and prints its
figures as its last line (one JSON object); this collects them, prints each benchmark's own lines
as it goes, then one table of the figures that have targets and one JSON line with everything.
A benchmark that fails is reported, and the others run. Under ``--profile pi`` each benchmark
calibrates the profile itself at its start (bench/piprofile.py) and runs with the arguments
below: the rates of a store, not of this machine's ceiling.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
BENCHES = ("intake", "store", "kitchen", "ready", "uplink", "online", "failover", "qrpay", "footprint", "storeday")
PI_ARGS = {
    "intake": ["--orders", "2000", "--rate", "20", "--seconds", "15", "--rounds", "2"],
    "store": ["--rate", "20", "--seconds", "30", "--step-s", "8"],
    "kitchen": ["--orders", "1000", "--rate", "20", "--seconds", "15"],
    "ready": ["--rate", "20", "--seconds", "15"],
    "uplink": ["--backlog", "60000", "--rate", "20"],
    "online": ["--orders", "2000", "--rate", "20", "--rounds", "2"],
    "failover": ["--trials", "24"],
    "qrpay": ["--payments", "100"],
    "footprint": ["--orders", "3000", "--amp-orders", "600", "--rate", "20", "--idle-s", "30"],
    "storeday": [],
}
HOST_ARGS: dict[str, list[str]] = {"store": ["--seconds", "20"]}

Row = tuple[str, str, Callable[[dict[str, Any]], Any], str, Callable[[Any], bool] | None]
# (bench, figure, how to read it, target, whether it meets the target)
ROWS: list[Row] = [
    ("intake", "ack p99 at the bench's rate (ms)", lambda r: r["p99_ms"], "< 50 at 20/s (pi)", None),
    ("intake", "hub / raw MQTT throughput", lambda r: r["ratio"], ">= 0.5", lambda v: v >= 0.5),
    ("store", "whole store: ack p99 at 20/s (ms)", lambda r: r["p99_ms"], "< 50", lambda v: v < 50),
    ("store", "highest rate, ack p99 < 100 ms (/s)", lambda r: r["max_rate_p99_under_100ms"], ">= 20",
     lambda v: v >= 20),
    ("kitchen", "order -> ticket p99 (ms)", lambda r: r["p99_ms"], "< 25 host, < 50 at 20/s pi", None),
    ("ready", "bump -> till hears ready p99 (ms)", lambda r: r["p99_ms"], "< 50 at 200/s host, 20/s pi",
     lambda v: v < 50),
    ("ready", "ready p99 / raw relay p99", lambda r: r["ratio_p99"], "", None),
    ("uplink", "backlog drain (rows/s)", lambda r: r["drain_per_s"], "", None),
    ("uplink", "drain / raw ceiling", lambda r: r["ratio"], ">= 0.7", lambda v: v >= 0.7),
    ("uplink", "till ack p99, full-speed drain (ms)", lambda r: r["live_p99_ms"], "", None),
    ("uplink", "till ack p99, drain at replay_rate (ms)", lambda r: r["policy_live_p99_ms"], "< 50",
     lambda v: v < 50),
    ("online", "2,000 online orders' catch-up (s)", lambda r: r["catch_up_s"], "", None),
    ("online", "catch-up / the hub's own intake", lambda r: r["ratio"], "", None),
    ("online", "till ack p99 during the burst (ms)", lambda r: r["till_p99_ms"], "< 50", lambda v: v < 50),
    ("failover", "printer failover p99 (ms)", lambda r: r["p99_ms"], "< 1500", lambda v: v < 1500),
    ("qrpay", "QR payment at the box p99 (ms)", lambda r: r["box_p99_ms"], "", None),
    ("footprint", "start -> READY (s)", lambda r: r["ready_s"], "< 2", lambda v: v < 2),
    ("footprint", "idle CPU (% of one core of the box)",
     lambda r: r["idle_cpu_pct_pi_core"] if r.get("idle_cpu_pct_pi_core") is not None else r["idle_cpu_pct"],
     "< 2", lambda v: v < 2),
    ("storeday", "RSS after the day (MB)", lambda r: r["rss_end_mb"], "< 60", lambda v: v < 60),
    ("storeday", "RSS last hour - first hour (MB)", lambda r: r["rss_growth_mb"], "~0 (< 2)", lambda v: v < 2),
    ("storeday", "card writes per day (MB)", lambda r: r["card_mb_per_day"], "", None),
    ("storeday", "card life (years)", lambda r: r["card_life_years"], ">= 20", lambda v: v >= 20),
]


def main() -> int:
    parser = argparse.ArgumentParser(description="run every benchmark; one table, one JSON line")
    parser.add_argument("--profile", choices=("host", "pi"), default="host")
    parser.add_argument("--only", nargs="*", choices=BENCHES, help="these benchmarks only")
    args = parser.parse_args()
    results: dict[str, object] = {}
    failed = []
    started_all = time.perf_counter()
    for name in args.only or BENCHES:
        extra = PI_ARGS[name] if args.profile == "pi" else HOST_ARGS.get(name, [])
        print(f"== {name} {' '.join(extra)}", flush=True)
        started = time.perf_counter()
        proc = subprocess.run([sys.executable, str(HERE / f"{name}.py"), "--profile", args.profile, *extra],
                              capture_output=True, text=True, cwd=HERE.parent)
        lines = proc.stdout.strip().splitlines()
        for line in lines[:-1]:
            print(f"   {line}")
        try:
            figures = json.loads(lines[-1]) if lines else None
        except json.JSONDecodeError:
            figures = None
        if proc.returncode != 0 or not isinstance(figures, dict):
            failed.append(name)
            print(f"   FAILED (exit {proc.returncode}): {proc.stderr.strip()[-800:]}")
            continue
        results[name] = figures
        print(f"   ({time.perf_counter() - started:.0f} s)", flush=True)
    print()
    load = os.getloadavg()
    print(f"profile {args.profile}; load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f} (2 cores shared: "
          f"figures move with it); {time.perf_counter() - started_all:.0f} s")
    print(f"{'benchmark':<10} {'figure':<40} {'value':>10}   {'target':<28} met")
    for bench, figure, read, target, meets in ROWS:
        figures = results.get(bench)
        if not isinstance(figures, dict):
            continue
        try:
            value = read(figures)
        except (KeyError, TypeError):
            continue
        verdict = "" if meets is None or value is None else ("yes" if meets(value) else "NO")
        print(f"{bench:<10} {figure:<40} {value!s:>10}   {target:<28} {verdict}")
    print(json.dumps({"profile": args.profile, "loadavg": [round(x, 2) for x in load], "results": results,
                      "failed": failed}))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
