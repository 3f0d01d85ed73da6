"""Footprint of a box that runs for years: memory, idle CPU, start time, bytes written per order.

Against a real ``edgehub run`` process (the simulated store's 6 devices, 4 POS terminals and 6
kitchen stations configured, the uplink enabled) and its Mosquitto, with a second private
Mosquitto acting as the chain's cloud. The devices run in a process of their own (``edgehub sim
store``, common.SimDevices): on a box they are the other end of the wire, and the hub's figures
must not count what answering its probes costs them (``--devices-in-hub``: ``edgehub run
--simulate``, the devices in the hub's process, as before):
- process start → READY (sd_notify READY=1: broker connected, API up) (target < 2 s), and the
  hub's CPU time until then (the wall time of a busy machine also holds the waits for a core);
- RSS after start, and after ``--orders`` orders once the outbox drained and ``--settle-s`` idle seconds
  passed (target < 60 MB, no growth beyond noise), with the peak during the orders beside it;
- CPU while idle, devices probed, no orders (target < 2 % of one core), the hub's and its
  Mosquitto's, and the bytes the idle box writes to its card per hour;
- bytes written to disk per accepted order (``/proc/PID/io`` write_bytes of hub AND broker)
  over ``--amp-orders`` orders paced at ``--rate``, divided by the order payload size: write
  amplification, once with the WAN up (the cloud acks, outbox rows are deleted; the figure is
  taken after the outbox drained) and once with the WAN down (uplink enabled, cloud stopped).
  Target < 8x with the WAN up. The ceiling it is compared with is the payload itself.

    .venv/bin/python bench/footprint.py [--orders 100000] [--amp-orders 10000] [--rate 200] [--idle-s 20]
                                        [--commit-window-ms 2] [--devices-in-hub] [--profile pi]

With ``--profile pi`` the hub and its Mosquitto run at a Raspberry Pi 4 core's speed with an SD
card's syncs (bench/piprofile.py): start -> READY and idle CPU are then the Pi's. Idle CPU is given
in % of one host core; ``idle_cpu_pct_pi_core`` is the same time in % of one Pi core.

The kitchen is a real one: a simulated screen per station (the kds terminal on the kitchen's MQTT
command topics, as native screens use them) bumps each ticket ``--bump-after-s`` after it
appears and serves it as long again later, so RSS measures the box, not an unbumped backlog.
``--no-bump`` leaves every ticket open (a station without a screen, a screen switched off): memory
then stays bounded by ``kitchen.max_open_per_station``.

Last line: one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import heapq
import itertools
import json
import os
import socket
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import piprofile
import psutil
from common import NO_QUOTA, Loader, SimDevices, commit_window_ms, compile_like_the_image, journal_section

from tests.conftest import API_TOKEN, HubProcess, write_config
from tests.uplink.cloudside import BOX_PASSWORD, BOX_USER, CloudBroker

STORE = "bench"
TERMINALS = ("pos-1", "pos-2", "pos-3", "pos-4", "kds-1")
ORDER_BYTES = len(json.dumps({"schema": "order/1", "order_id": "pos-1-xxxxxx-000000", "table": "T7", "covers": 2,
                              "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "station": "grill"},
                                        {"sku": "COLA-33", "name": "Cola", "qty": 2, "station": "bar"}]}))
# Six stations, as a mid-sized kitchen has them; the bench's orders go to grill and bar.
KITCHEN = """
[kitchen]
default_station = "kitchen"

[kitchen.stations.grill]
[kitchen.stations.wok]
[kitchen.stations.fry]
[kitchen.stations.cold]
[kitchen.stations.dessert]
[kitchen.stations.bar]
amber_after_s = 120
red_after_s = 300
"""


def cloud_section(port: int) -> str:
    return (f'[cloud]\nenabled = true\nurl = "mqtt://127.0.0.1:{port}"\nusername = "{BOX_USER}"\n'
            f'password = "{BOX_PASSWORD}"\nreconnect_max_s = 2.0\n')


class Screens:
    """A screen per station: bumps each new ticket ``delay`` s after it appears, serves it
    ``delay`` s after that, through ``…/kds/{station}/command`` (as the kds terminal).

    At most ``INFLIGHT`` commands are unacknowledged at once, as a kitchen's screens (a cook taps
    one ticket at a time) would have them; with 1,000, a screen that fell behind sent its whole
    backlog at once, and the hub's RSS measured that burst's high-water mark (docs/footprint.md,
    Memory), not the box."""

    INFLIGHT = 12  # two taps in flight per station

    def __init__(self, port: int, store: str, delay: float) -> None:
        self.delay = delay
        self.root = f"edgehub/v1/{store}/kds"
        self.due: list[tuple[float, int, str, str, str]] = []
        self.cond = threading.Condition()
        self.ids = itertools.count()
        self.sent = 0
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-kds-{time.time_ns()}")
        self.client.username_pw_set("kds-1", "pw-kds-1")
        self.client.max_inflight_messages_set(self.INFLIGHT)
        self.client.on_message = self._on_event
        self.client.connect("127.0.0.1", port)
        self.client.subscribe(f"{self.root}/+/event", qos=1)
        self.client.loop_start()
        self.running = True
        self.worker = threading.Thread(target=self._run, daemon=True)
        self.worker.start()

    def _on_event(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        action = {"created": "bump", "bumped": "serve"}.get(doc.get("event"))
        if action:
            with self.cond:
                heapq.heappush(self.due, (time.monotonic() + self.delay, next(self.ids), doc["station"],
                                          action, doc["ticket"]["ticket_id"]))
                self.cond.notify()

    def _run(self) -> None:
        while self.running:
            with self.cond:
                wait = self.due[0][0] - time.monotonic() if self.due else 0.5
                if wait > 0:
                    self.cond.wait(min(wait, 0.5))
                    continue
                _, n, station, action, ticket_id = heapq.heappop(self.due)
            body = json.dumps({"schema": "kds-command/1", "command_id": f"b{n}", "action": action,
                               "ticket_id": ticket_id})
            self.client.publish(f"{self.root}/{station}/command", body, qos=1)
            self.sent += 1

    def drain(self, timeout: float = 120.0, quiet_s: float = 1.0) -> None:
        """Until no tap has been due for ``quiet_s``: a bump's ``bumped`` event makes its serve
        due a moment after the bump itself was sent, so one empty look is not enough."""
        deadline = time.monotonic() + timeout
        quiet_since: float | None = None
        while time.monotonic() < deadline:
            now = time.monotonic()
            if self.due:
                quiet_since = None
            elif quiet_since is None:
                quiet_since = now
            elif now - quiet_since >= quiet_s:
                return
            time.sleep(0.05)

    def close(self) -> None:
        self.running = False
        self.client.loop_stop()
        self.client.disconnect()


def write_bytes(pids: list[int]) -> int:
    total = 0
    for pid in pids:
        for line in Path(f"/proc/{pid}/io").read_text().splitlines():
            if line.startswith("write_bytes:"):
                total += int(line.split()[1])
    return total


def status(port: int) -> dict[str, Any]:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/status",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=10) as response:
        doc: dict[str, Any] = json.loads(response.read())
        return doc


def wait_for(what: str, check: Any, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.2)


def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=100_000)
    parser.add_argument("--amp-orders", type=int, default=10_000)
    parser.add_argument("--rate", type=float, default=200.0, help="orders/s while write amplification is measured")
    parser.add_argument("--idle-s", type=float, default=20.0)
    parser.add_argument("--settle-s", type=float, default=35.0,
                        help="idle time after the orders (outbox drained) before RSS is read: the hub's "
                             "Trimmer hands freed memory back, looking every 30 s (gctuning.py); the "
                             "default is longer, so the figure is always read after it looked (a "
                             "shorter settle may read RSS before)")
    parser.add_argument("--bump-after-s", type=float, default=1.0,
                        help="a station's screen bumps a ticket this long after it appears, serves it as long later")
    parser.add_argument("--commit-window-ms", type=commit_window_ms, default=None,
                        help="the journal's group commit window (config journal.commit_window_ms, default 2): "
                             "longer windows put more orders in one fsync, and every ack waits for it")
    parser.add_argument("--no-bump", action="store_true",
                        help="no screens: every ticket stays open (bounded by kitchen.max_open_per_station)")
    parser.add_argument("--devices-in-hub", action="store_true",
                        help="run the simulated devices inside the hub's process (edgehub run --simulate): "
                             "its CPU and RSS then include the other end of every probe")
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return run(args, profile)


def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, Any]:
    profile.terminals(os.getpid())
    compile_like_the_image()
    with tempfile.TemporaryDirectory(prefix="bench-footprint-") as tmp, contextlib.ExitStack() as stack:
        cloud = CloudBroker(Path(tmp) / "cloud", store=STORE)
        asyncio.run(cloud.start())
        sim = None if args.devices_in_hub else stack.enter_context(SimDevices(Path(tmp) / "devices.log"))
        path = write_config(Path(tmp) / "box", store=STORE, mode="managed", terminals=TERMINALS,
                            extra=KITCHEN + cloud_section(cloud.port) + journal_section(args.commit_window_ms)
                            + NO_QUOTA + (sim.config() if sim is not None else ""))
        notify_path = Path(tmp) / "notify.sock"
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(str(notify_path))
        sock.settimeout(60)
        hub = HubProcess(path, Path(tmp) / "hub.log", extra_args=("--simulate",) if sim is None else (),
                         env={"NOTIFY_SOCKET": str(notify_path), **profile.env()})
        started = time.perf_counter()
        hub.start(wait=False)
        assert hub.proc is not None
        profile.box(hub.proc.pid)
        while b"STATUS=serving store" not in sock.recv(4096):  # the hub's READY=1, not another's
            pass
        ready_s = time.perf_counter() - started
        # The CPU the start took: on a busy machine the wall time also holds the waits for a core.
        ready_cpu_s = sum(psutil.Process(hub.proc.pid).cpu_times()[:2])
        sock.close()
        api = hub.config.api.listen.port
        try:
            assert hub.proc is not None
            proc = psutil.Process(hub.proc.pid)
            broker = next(c for c in proc.children() if "mosquitto" in c.name())
            pids = [proc.pid, broker.pid]
            wait_for("the uplink online", lambda: status(api)["uplink"]["link"]["state"] == "online", 30)
            devices = status(api)["devices"]
            time.sleep(2)
            rss_start = proc.memory_info().rss / 2**20

            cpu_before = sum(proc.cpu_times()[:2])
            broker_cpu_before = sum(broker.cpu_times()[:2])
            idle_io_before = write_bytes(pids)
            time.sleep(args.idle_s)
            idle_pct = (sum(proc.cpu_times()[:2]) - cpu_before) / args.idle_s * 100
            idle_broker_pct = (sum(broker.cpu_times()[:2]) - broker_cpu_before) / args.idle_s * 100
            # What an idle box writes to its card (devices probed, telemetry, logs): per hour.
            idle_kb_per_h = (write_bytes(pids) - idle_io_before) / 1024 * 3600 / args.idle_s

            def outbox() -> int:
                return int(status(api)["journal"]["outbox"])

            def amplification(prefix: str, drained: bool) -> tuple[float, float]:
                # Everything these orders cause and nothing else: the screens' taps on the
                # tickets of earlier orders are done before, and on these orders' tickets after.
                if screens is not None:
                    screens.drain()
                before = status(api)["journal"]["commits"]
                io_before = write_bytes(pids)
                loader.paced(prefix, rate=args.rate, seconds=args.amp_orders / args.rate)
                if screens is not None:
                    screens.drain()
                if drained:
                    wait_for("the outbox to drain", lambda: outbox() == 0)
                time.sleep(1.5)  # let the last group commit and checkpoint land
                written = write_bytes(pids) - io_before
                commits = status(api)["journal"]["commits"] - before
                return written / (args.amp_orders * ORDER_BYTES), commits / args.amp_orders

            peak = [0.0]
            sampling = threading.Event()

            def sample_rss() -> None:  # the high-water mark during the orders, to tell it from growth
                while not sampling.wait(0.25):
                    with contextlib.suppress(psutil.Error):
                        peak[0] = max(peak[0], proc.memory_info().rss / 2**20)

            sampler = threading.Thread(target=sample_rss, daemon=True)
            sampler.start()
            screens = None if args.no_bump else Screens(hub.config.broker.listen.port, STORE, args.bump_after_s)
            loader = Loader(hub.config.broker.listen.port, STORE, "pos-1")
            loader.burst("warm", 500)
            wait_for("the outbox to drain", lambda: outbox() == 0)
            amp_up, commits_up = amplification("amp-up", drained=True)

            cloud.stop()
            wait_for("the uplink offline", lambda: status(api)["uplink"]["link"]["state"] != "online", 30)
            amp_down, commits_down = amplification("amp-down", drained=False)
            asyncio.run(cloud.start())
            wait_for("the uplink online", lambda: status(api)["uplink"]["link"]["state"] == "online", 30)

            bulk = max(0, args.orders - 2 * args.amp_orders - 500)
            bulk_rate = loader.burst("bulk", bulk) if bulk else 0.0
            loader.close()
            if screens is not None:
                screens.drain()
                screens.close()
            wait_for("the outbox to drain", lambda: outbox() == 0, 300)
            time.sleep(2)
            rss_drained = proc.memory_info().rss / 2**20
            sampling.set()
            time.sleep(args.settle_s)
            rss_after = proc.memory_info().rss / 2**20
            final = status(api)
        except BaseException:
            print((Path(tmp) / "hub.log").read_text()[-3000:], file=sys.stderr)
            raise
        finally:
            hub.stop()
            cloud.stop()

    described = profile.describe()
    slowdown = described.get("slowdown")
    assert slowdown is None or isinstance(slowdown, float)
    result = {
        "ready_s": round(ready_s, 3),
        "ready_cpu_s": round(ready_cpu_s, 3),
        "rss_start_mb": round(rss_start, 1),
        "rss_after_mb": round(rss_after, 1),
        "rss_drained_mb": round(rss_drained, 1),
        "rss_peak_mb": round(peak[0], 1),
        "orders": final["journal"]["orders"],
        "idle_cpu_pct": round(idle_pct, 2),
        "idle_cpu_pct_pi_core": round(idle_pct * slowdown, 2) if slowdown else None,
        "idle_cpu_pct_broker": round(idle_broker_pct, 2),
        "devices_in_hub": args.devices_in_hub,
        "idle_write_kb_per_h": round(idle_kb_per_h, 1),
        "write_amp_wan_up": round(amp_up, 2),
        "write_amp_wan_down": round(amp_down, 2),
        "bytes_per_order_wan_up": round(amp_up * ORDER_BYTES),
        "bytes_per_order_wan_down": round(amp_down * ORDER_BYTES),
        "commits_per_order_wan_up": round(commits_up, 3),
        "commits_per_order_wan_down": round(commits_down, 3),
        "amp_rate": args.rate,
        "commit_window_ms": hub.config.journal.commit_window_ms,
        "bulk_orders_per_s": round(bulk_rate, 1),
        "order_bytes": ORDER_BYTES,
        "devices": len(devices.get("devices", devices)) if isinstance(devices, dict) else len(devices),
        "open_tickets": sum(final["kitchen"]["open"].values()),
        "open_tickets_in_memory": sum(final["kitchen"].get("open_in_memory", {}).values()),
        "screens_bump": not args.no_bump,
        "screen_commands": screens.sent if screens is not None else 0,
        "profile": described,
    }
    rows = [
        ("start -> READY", f"{result['ready_s']} s", "< 2 s"),
        ("  CPU of the hub until READY", f"{result['ready_cpu_s']} s", ""),
        ("RSS after start", f"{result['rss_start_mb']} MB", "< 60 MB"),
        (f"RSS after {result['orders']} orders", f"{result['rss_after_mb']} MB", "< 60 MB, no growth"),
        ("  at the drain / peak", f"{result['rss_drained_mb']} / {result['rss_peak_mb']} MB",
         f"after {args.settle_s:g} s idle"),
        ("idle CPU (devices probed)", f"{result['idle_cpu_pct']} %", "< 2 %"),
        ("  of a Pi core / Mosquitto's", f"{result['idle_cpu_pct_pi_core']} / {result['idle_cpu_pct_broker']} %",
         "devices in the hub" if args.devices_in_hub else "devices in their own process"),
        ("idle writes (hub + broker)", f"{result['idle_write_kb_per_h']} KB/h", ""),
        ("write amplification, WAN up", f"{result['write_amp_wan_up']} x", "< 8 x"),
        ("write amplification, WAN down", f"{result['write_amp_wan_down']} x", ""),
        ("bytes written/order, WAN up", f"{result['bytes_per_order_wan_up']} B", f"order = {ORDER_BYTES} B"),
        ("bytes written/order, WAN down", f"{result['bytes_per_order_wan_down']} B", ""),
        ("commits/order, WAN up / down", f"{result['commits_per_order_wan_up']} / "
                                          f"{result['commits_per_order_wan_down']}", f"at {args.rate:g} orders/s"),
    ]
    for name, value, target in rows:
        print(f"{name:<32} {value:>16}   {target}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(0 if main() else 1)
