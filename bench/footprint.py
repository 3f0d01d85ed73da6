"""Footprint of a box that runs for years: memory, idle CPU, start time, bytes written per order.

Against a real ``edgehub run`` process (with the simulated store when the CLI offers
``--simulate``) and its Mosquitto:
- RSS after start and after ``--orders`` orders (target < 60 MB, no growth beyond noise);
- CPU while idle, devices probed, no orders (target < 2 % of one core);
- process start → READY (sd_notify READY=1: broker connected, API up) (target < 2 s);
- bytes written to disk per accepted order (``/proc/PID/io`` write_bytes of hub and broker)
  over ``--amp-orders`` orders, divided by the order payload size: write amplification
  (target < 8x with the WAN up). The ceiling it is compared with is the payload itself.

    .venv/bin/python bench/footprint.py [--orders 100000] [--amp-orders 10000] [--idle-s 20]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil
from common import REPO, Loader

from tests.conftest import HubProcess, write_config

ORDER_BYTES = len(json.dumps({"schema": "order/1", "order_id": "pos-1-xxxxxx-000000", "table": "T7", "covers": 2,
                              "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "station": "grill"},
                                        {"sku": "COLA-33", "name": "Cola", "qty": 2, "station": "bar"}]}))


def write_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                total += int(line.split()[1])
    return total


def supports_simulate() -> bool:
    result = subprocess.run([sys.executable, "-m", "edgehub", "run", "--help"], capture_output=True, text=True,
                            cwd=REPO)
    return "--simulate" in result.stdout


def main() -> dict[str, float]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--amp-orders", type=int, default=10_000)
    parser.add_argument("--idle-s", type=float, default=20.0)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp:
        path = write_config(Path(tmp) / "box", store="bench", mode="managed",
                            terminals=("pos-1", "pos-2", "pos-3", "pos-4"))
        notify_path = Path(tmp) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.settimeout(15)
        extra = ("--simulate",) if supports_simulate() else ()
        hub = HubProcess(path, Path(tmp) / "hub.log", extra_args=extra, env={"NOTIFY_SOCKET": str(notify_path)})
        started = time.perf_counter()
        hub.start(wait=False)
        while b"READY=1" not in sock.recv(4096):
            pass
        ready_s = time.perf_counter() - started
        sock.close()
        try:
            assert hub.proc is not None
            proc = psutil.Process(hub.proc.pid)
            broker = next(c for c in proc.children() if "mosquitto" in c.name())
            time.sleep(2)
            rss_start = proc.memory_info().rss / 2**20

            cpu_before = sum(proc.cpu_times()[:2])
            time.sleep(args.idle_s)
            idle_pct = (sum(proc.cpu_times()[:2]) - cpu_before) / args.idle_s * 100

            port = hub.config.broker.listen.port
            loader = Loader(port, "bench", "pos-1")
            loader.burst("warm", 500)
            io_before = write_bytes([proc.pid, broker.pid])
            loader.paced("amp", rate=200, seconds=args.amp_orders / 200)
            time.sleep(1.0)  # let the last group commit and checkpoint land
            amp = (write_bytes([proc.pid, broker.pid]) - io_before) / (args.amp_orders * ORDER_BYTES)

            loader.burst("bulk", max(0, args.orders - args.amp_orders - 500))
            loader.close()
            time.sleep(2)
            rss_after = proc.memory_info().rss / 2**20
        finally:
            hub.stop()

    result = {
        "ready_s": round(ready_s, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_mb": round(rss_after, 1),
        "orders": args.orders,
        "idle_cpu_pct": round(idle_pct, 2),
        "write_amplification": round(amp, 2),
        "order_bytes": ORDER_BYTES,
        "simulated_store": bool(extra),
    }
    print(f"start -> READY:            {result['ready_s']:>8} s   (target < 2)")
    print(f"RSS after start:           {result['rss_start_mb']:>8} MB  (target < 60)")
    print(f"RSS after {args.orders} orders: {result['rss_after_mb']:>8} MB")
    print(f"idle CPU:                  {result['idle_cpu_pct']:>8} %   (target < 2)")
    print(f"write amplification:       {result['write_amplification']:>8} x   (target < 8, "
          f"{ORDER_BYTES}-byte orders at 200/s)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    main()
