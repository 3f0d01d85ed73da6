"""Ready signal benchmark: a cook bumps a ticket → the till that sent the order hears "ready".

Load: one POS terminal sends orders at ``--rate`` per second (one station each, six stations);
a native kitchen screen (MQTT, the kds terminal's credentials) bumps each ticket ``--bump-after``
seconds after it arrived, so orders and bumps run at the same rate side by side, as at a rush.
The till subscribes to its ``ready/{terminal}`` topic. Latency is from the screen publishing the
bump (``kds/{station}/command``) to the till receiving ``order-ready/1`` for that order.

Ceiling, in the same run: a plain paho relay (its own process) that acks each order, sends its
``created`` event, and answers each bump command with a ready message on the till's topic: the
same MQTT hops through Mosquitto, no journal, no state. Hub: the real ``edgehub run`` (its own
process): the bump is journaled (fsync, riding with the orders' commits), the order's progress
moves, ``order-ready/1`` goes out. ``ratio_p50``/``ratio_p99`` are the hub's latency over the
relay's (the box's cost of a ready signal); the target is p99 < 50 ms at 200 orders/s. The last
line is one JSON object; ``loadavg_1m`` says how busy the machine was.

With ``--profile pi`` the hub, its Mosquitto and the relay run at a Raspberry Pi 4 core's speed
with an SD card's syncs (bench/piprofile.py); the till and the screen in a cgroup of their own.

    .venv/bin/python bench/ready.py [--rate 200] [--seconds 8] [--bump-after 0.3] [--profile pi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

import piprofile  # noqa: E402
from common import terminal_client  # noqa: E402

from edgehub.broker import MosquittoProcess  # noqa: E402
from edgehub.config import load_config  # noqa: E402
from tests.conftest import HubProcess, write_config  # noqa: E402

STATIONS = ("grill", "wok", "bar", "cold", "fryer", "pass")
STORE = "bench"
KITCHEN = '\n[kitchen]\ndefault_station = "pass"\n' + "".join(f"\n[kitchen.stations.{s}]\n" for s in STATIONS)
NO_QUOTA = "\n[limits]\norders_per_s = 0\n"

RELAY = """
import json, socket, sys
import paho.mqtt.client as mqtt
port, store = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-relay")
c.username_pw_set("edgehub-hub", "hub-secret-password")
c.max_inflight_messages_set(1000)
terminals = {}
def on_message(client, userdata, msg):
    parts = msg.topic.split("/")
    doc = json.loads(msg.payload)
    if parts[3] == "pos":
        terminal, station = parts[4], doc["lines"][0]["station"]
        terminals[doc["order_id"]] = terminal
        client.publish(f"edgehub/v1/{store}/pos/{terminal}/ack", json.dumps(
            {"schema": "ack/1", "order_id": doc["order_id"], "status": "accepted", "duplicate": False}), qos=1)
        client.publish(f"edgehub/v1/{store}/kds/{station}/event", json.dumps(
            {"schema": "kds-event/1", "event": "created", "ticket": {
                "ticket_id": doc["order_id"] + "/" + station + "/1", "order_id": doc["order_id"]}}), qos=1)
    else:
        order_id = doc["ticket_id"].split("/")[0]
        client.publish(f"edgehub/v1/{store}/ready/{terminals.pop(order_id)}", json.dumps(
            {"schema": "order-ready/1", "event": "order_ready", "order_id": order_id}), qos=1)
c.on_message = on_message
def on_connect(client, *a):
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe(f"edgehub/v1/{store}/pos/+/order", qos=1)
    client.subscribe(f"edgehub/v1/{store}/kds/+/command", qos=1)
    print("ready", flush=True)
c.on_connect = on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
"""


class Load:
    """The till (orders out, "ready" in) and one kitchen screen that bumps every ticket."""

    def __init__(self, port: int, bump_after: float) -> None:
        self.bump_after = bump_after
        self.order_topic = f"edgehub/v1/{STORE}/pos/pos-1/order"
        self.cond = threading.Condition()
        self.arrived: dict[str, float] = {}  # ticket_id -> when its "created" reached the screen
        self.bumped_at: dict[str, float] = {}  # order_id -> when its bump was published
        self.latency: dict[str, float] = {}
        self.till = terminal_client("till", port, "pos-1")
        self.till.on_message = self._on_ready
        self.till.subscribe(f"edgehub/v1/{STORE}/ready/pos-1", qos=1)
        self.till.loop_start()
        self.screen = terminal_client("screen", port, "kds-1")
        self.screen.on_message = self._on_event
        for station in STATIONS:
            self.screen.subscribe(f"edgehub/v1/{STORE}/kds/{station}/event", qos=1)
        self.screen.loop_start()
        time.sleep(0.5)

    def _on_event(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        if doc.get("event") == "created":
            with self.cond:
                self.arrived[doc["ticket"]["ticket_id"]] = time.perf_counter()

    def _on_ready(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        doc = json.loads(msg.payload)
        if doc.get("event") not in ("order_ready", None):
            return
        with self.cond:
            sent = self.bumped_at.get(doc["order_id"])
            if sent is not None and doc["order_id"] not in self.latency:
                self.latency[doc["order_id"]] = now - sent
                self.cond.notify_all()

    def _bump(self, ticket_id: str) -> None:
        station = ticket_id.split("/")[1]
        with self.cond:
            self.bumped_at[ticket_id.split("/")[0]] = time.perf_counter()
        self.screen.publish(f"edgehub/v1/{STORE}/kds/{station}/command", json.dumps(
            {"schema": "kds-command/1", "command_id": ticket_id, "action": "bump", "ticket_id": ticket_id}), qos=1)

    def run(self, prefix: str, rate: float, seconds: float) -> list[float]:
        """Orders at ``rate`` for ``seconds``; each ticket bumped ``bump_after`` after it came."""
        n = int(rate * seconds)
        start = time.perf_counter()
        pending: list[str] = []
        for i in range(n + int(rate * (self.bump_after + 1))):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            if i < n:
                station = STATIONS[i % len(STATIONS)]
                body = {"schema": "order/1", "order_id": f"{prefix}-{i}", "table": f"T{i % 40}",
                        "lines": [{"sku": f"SKU-{station}", "name": f"Dish {station}", "qty": 1, "station": station}]}
                self.till.publish(self.order_topic, json.dumps(body), qos=1)
                pending.append(f"{prefix}-{i}/{station}/1")
            now = time.perf_counter()
            with self.cond:
                due = [t for t in pending if t in self.arrived and now - self.arrived[t] >= self.bump_after]
            for ticket_id in due:
                pending.remove(ticket_id)
                self._bump(ticket_id)
        with self.cond:
            self.cond.wait_for(lambda: sum(1 for k in self.latency if k.startswith(prefix + "-")) >= n, 30)
            found = sorted(v * 1000 for k, v in self.latency.items() if k.startswith(prefix + "-"))
        if len(found) < n:
            raise RuntimeError(f"only {len(found)} of {n} orders were heard ready ({len(pending)} never bumped)")
        return found

    def close(self) -> None:
        for client in (self.till, self.screen):
            client.loop_stop()
            client.disconnect()


def pct(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else float("nan")


async def main() -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rate", type=float, default=200)
    parser.add_argument("--seconds", type=float, default=8)
    parser.add_argument("--bump-after", type=float, default=0.3)
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return await run(args, profile)


async def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, object]:
    profile.terminals(os.getpid())
    with tempfile.TemporaryDirectory(prefix="bench-ready-") as tmp:
        path = write_config(Path(tmp) / "box", store=STORE, mode="external", terminals=("pos-1", "kds-1"),
                            extra=KITCHEN + NO_QUOTA)
        config = load_config(path)
        port = config.broker.listen.port
        broker = MosquittoProcess(config)
        with profile.box_environ():
            await broker.start()
        try:
            assert broker.pid is not None
            profile.box(broker.pid)
            relay = subprocess.Popen(  # noqa: ASYNC220 - the bench's own setup, before any timing
                [sys.executable, "-c", RELAY, str(port), STORE], stdout=subprocess.PIPE, text=True,
                env={**os.environ, **profile.env()})
            profile.box(relay.pid)
            assert relay.stdout is not None and relay.stdout.readline().strip() == "ready"
            load = Load(port, args.bump_after)
            load.run("warm-raw", args.rate, 1)
            raw = load.run("raw", args.rate, args.seconds)
            load.close()
            relay.terminate()
            relay.wait()

            hub = HubProcess(path, Path(tmp) / "hub.log", env=profile.env())
            hub.start(wait=False)
            try:
                assert hub.proc is not None
                profile.box(hub.proc.pid)
                hub.wait_healthy(60)
                load = Load(port, args.bump_after)
                load.run("warm-hub", args.rate, 1)
                hubs = load.run("hub", args.rate, args.seconds)
                load.close()
            finally:
                hub.stop()
        finally:
            await broker.stop()

    result = {
        "rate_per_s": args.rate,
        "bumps": len(hubs),
        "raw_p50_ms": pct(raw, 0.5),
        "raw_p99_ms": pct(raw, 0.99),
        "p50_ms": pct(hubs, 0.5),
        "p99_ms": pct(hubs, 0.99),
        "ratio_p50": round(pct(hubs, 0.5) / max(pct(raw, 0.5), 0.001), 2),
        "ratio_p99": round(pct(hubs, 0.99) / max(pct(raw, 0.99), 0.001), 2),
        "loadavg_1m": round(os.getloadavg()[0], 2),  # other work on the machine skews every figure
        "profile": profile.describe(),
    }
    print(f"bump -> till hears ready, {args.rate:.0f} orders/s and as many bumps/s, {len(hubs)} bumps")
    print(f"ceiling (raw relay):  p50 {result['raw_p50_ms']} ms  p99 {result['raw_p99_ms']} ms")
    print(f"hub:                  p50 {result['p50_ms']} ms  p99 {result['p99_ms']} ms   (target p99 < 50 ms)")
    print(f"hub over ceiling:     p50 x{result['ratio_p50']}  p99 x{result['ratio_p99']}")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
