"""Order intake benchmark: acked orders/s end to end against the raw MQTT ceiling, same run.

Ceiling: a plain paho responder (its own process) that answers every order with an ack, with no
journal: publish QoS 1 → Mosquitto → subscriber → reply → Mosquitto → terminal. Hub: the real
``edgehub run`` (its own process) against the same Mosquitto, fsync durability on. Both are
driven by the same load generator: a burst with a window of unacked orders for throughput, then
a fixed moderate rate for ack latency. The last line is one JSON object with the figures.

    .venv/bin/python bench/intake.py [--orders 6000] [--rate 500] [--seconds 6]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from edgehub.broker import MosquittoProcess  # noqa: E402
from edgehub.config import load_config  # noqa: E402
from tests.conftest import HubProcess, write_config  # noqa: E402

RESPONDER = """
import json, socket, sys
import paho.mqtt.client as mqtt
port, store = int(sys.argv[1]), sys.argv[2]
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="raw-responder")
c.username_pw_set("edgehub-hub", "hub-secret-password")
c.max_inflight_messages_set(200)
def on_message(client, userdata, msg):
    terminal = msg.topic.split("/")[4]
    order_id = json.loads(msg.payload)["order_id"]
    ack = json.dumps({"schema": "ack/1", "order_id": order_id, "status": "accepted", "duplicate": False})
    client.publish(f"edgehub/v1/{store}/pos/{terminal}/ack", ack, qos=1)
c.on_message = on_message
def on_connect(client, *a):
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    client.subscribe(f"edgehub/v1/{store}/pos/+/order", qos=1)
    print("ready", flush=True)
c.on_connect = on_connect
c.connect("127.0.0.1", port)
c.loop_forever()
"""


class Loader:
    """A POS terminal at full speed: paho, QoS 1, acks matched by order_id."""

    def __init__(self, port: int, store: str, terminal: str = "pos-1") -> None:
        self.topic = f"edgehub/v1/{store}/pos/{terminal}/order"
        self.sent_at: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{terminal}-{time.time_ns()}")
        self.client.username_pw_set(terminal, f"pw-{terminal}")
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_ack
        self.client.connect("127.0.0.1", port)
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe(f"edgehub/v1/{store}/pos/{terminal}/ack", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        order_id = json.loads(msg.payload)["order_id"]
        with self.cond:
            if order_id in self.sent_at and order_id not in self.latency:
                self.latency[order_id] = now - self.sent_at[order_id]
                self.cond.notify_all()

    def _send(self, order_id: str) -> None:
        body = json.dumps({"schema": "order/1", "order_id": order_id, "table": "T7", "covers": 2,
                           "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "station": "grill"},
                                     {"sku": "COLA-33", "name": "Cola", "qty": 2, "station": "bar"}]})
        with self.cond:
            self.sent_at[order_id] = time.perf_counter()
        self.client.publish(self.topic, body, qos=1)

    def burst(self, prefix: str, n: int, window: int = 400, timeout: float = 120.0) -> float:
        """Send n orders keeping at most ``window`` unacked; return acked orders per second."""
        start = time.perf_counter()
        for i in range(n):
            with self.cond:
                self.cond.wait_for(lambda: len(self.sent_at) - len(self.latency) < window, timeout)
            self._send(f"{prefix}-{i}")
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.latency) == len(self.sent_at), timeout):
                raise RuntimeError(f"only {len(self.latency)} of {len(self.sent_at)} acked")
        return n / (time.perf_counter() - start)

    def paced(self, prefix: str, rate: float, seconds: float) -> list[float]:
        before = set(self.latency)
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._send(f"{prefix}-{i}")
        with self.cond:
            self.cond.wait_for(lambda: len(self.latency) == len(self.sent_at), 30)
        return sorted(v * 1000 for k, v in self.latency.items() if k not in before and k.startswith(prefix))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def pct(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else float("nan")


async def main() -> dict[str, float]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=6)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        path = write_config(Path(tmp) / "box", store="bench", mode="external")
        config = load_config(path)
        port = config.broker.listen.port
        async with MosquittoProcess(config) as _broker:
            responder = subprocess.Popen([sys.executable, "-c", RESPONDER, str(port), "bench"],
                                         stdout=subprocess.PIPE, text=True)
            assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
            loader = Loader(port, "bench")
            loader.burst("warm-raw", 500)
            ceiling = loader.burst("raw", args.orders)
            raw_latency = loader.paced("rawlat", args.rate, args.seconds)
            loader.close()
            responder.terminate()
            responder.wait()

            hub = HubProcess(path, Path(tmp) / "hub.log")
            hub.start()
            try:
                loader = Loader(port, "bench", "pos-2")
                loader.burst("warm-hub", 500)
                hub_rate = loader.burst("hub", args.orders)
                hub_latency = loader.paced("hublat", args.rate, args.seconds)
                loader.close()
            finally:
                hub.stop()

    result = {
        "ceiling_orders_per_s": round(ceiling, 1),
        "hub_orders_per_s": round(hub_rate, 1),
        "ratio": round(hub_rate / ceiling, 3),
        "rate_per_s": args.rate,
        "raw_p50_ms": pct(raw_latency, 0.5),
        "raw_p99_ms": pct(raw_latency, 0.99),
        "p50_ms": pct(hub_latency, 0.5),
        "p99_ms": pct(hub_latency, 0.99),
    }
    print(f"ceiling (raw MQTT round trip, no journal): {result['ceiling_orders_per_s']:>9} orders/s")
    print(f"hub (journal, fsync, ack):                 {result['hub_orders_per_s']:>9} orders/s")
    print(f"ratio:                                     {result['ratio']:>9}   (target >= 0.5)")
    print(f"ack latency at {args.rate:.0f}/s: raw p50 {result['raw_p50_ms']} ms p99 {result['raw_p99_ms']} ms; "
          f"hub p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms (target p99 < 20 ms)")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
