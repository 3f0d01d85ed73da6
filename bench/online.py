"""Online orders benchmark: the catch-up of a burst of orders placed online after a WAN outage,
and what a cashier feels meanwhile.

The real ``edgehub run`` (its own process, its own store Mosquitto) is linked to a cloud
Mosquitto through a fault proxy. The WAN goes down; the cloud takes ``--orders`` orders placed
online (delivery platforms, the mini-program) for the store, which its broker keeps for the box;
the WAN comes back and they arrive at once. Meanwhile a till sends orders at ``--rate`` per second.

``--rounds`` outages in a row; the slowest catch-up and every till order during the bursts count.
Figures, each against a ceiling measured in this run:
- catch-up: seconds from the WAN's return until every online order is journaled (and so
  acknowledged to the cloud); ceiling: the same number of orders from a till at full speed, the
  hub's own intake with the same kitchen work per order. Ratio = catch-up rate / intake rate.
- the till's ack latency during the burst (target p99 < 50 ms); ceiling: the same till at the same
  rate with no burst, just before.

With ``--profile pi`` the hub and its Mosquitto run at a Raspberry Pi 4 core's speed with an SD
card's syncs (bench/piprofile.py); the cloud broker and the till are not the box's.

    .venv/bin/python bench/online.py [--orders 2000] [--rate 50] [--rounds 3] [--profile pi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import sqlite3
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

import paho.mqtt.client as mqtt
import piprofile
from common import NO_QUOTA, Loader, pct

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from tests.conftest import API_TOKEN, HubProcess, write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CLOUD_PASSWORD, CLOUD_USER, CloudBroker
from tests.uplink.conftest import cloud_toml

STORE = "bench"
KITCHEN = """
[kitchen]
default_station = "wok"

[discovery]
usb = false
serial = false
lan = false
advertise = false
"""


def online_order(i: int) -> bytes:
    return json.dumps({
        "schema": "cloud-down-order/1", "order_id": f"MT-{i:06d}", "channel": "meituan", "pickup_code": f"{i % 1000}",
        "placed_at": time.time(),
        "order": {"lines": [{"sku": "KUNG-07", "name": "宫保鸡丁", "qty": 1, "price_cents": 3200, "station": "wok"},
                            {"sku": "RICE-03", "name": "米饭", "qty": 2, "price_cents": 200, "station": "wok"}],
                  "total_cents": 3600, "currency": "CNY", "note": "少辣"},
    }).encode()


def link_state(port: int) -> str:
    request = urllib.request.Request(f"http://127.0.0.1:{port}/api/v1/status",
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        return str(json.loads(response.read())["uplink"]["link"]["state"])


def journaled(journal: Path) -> int:
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COUNT(*) FROM online_orders").fetchone()[0])
    except sqlite3.Error:
        return 0
    finally:
        conn.close()


def publish_down(port: int, n: int, first: int = 0) -> None:
    """The cloud service: ``n`` orders for the store, QoS 1, kept by its broker for the box."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-cloud-{time.time_ns()}",
                         protocol=mqtt.MQTTv5)
    client.username_pw_set(CLOUD_USER, CLOUD_PASSWORD)
    client.connect("127.0.0.1", port)
    client.loop_start()
    infos = [client.publish(f"cloud/{STORE}/down/orders", online_order(i), qos=1) for i in range(first, first + n)]
    for info in infos:
        info.wait_for_publish(30)
    client.loop_stop()
    client.disconnect()


def paced_until(loader: Loader, prefix: str, rate: float, done: threading.Event) -> list[float]:
    """A till's orders at ``rate`` until ``done``; their ack latencies (ms)."""
    i = 0
    started = time.perf_counter()
    while not done.is_set():
        delay = started + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        loader._send(f"{prefix}-{i}")  # noqa: SLF001
        i += 1
    with loader.cond:
        loader.cond.wait_for(lambda: len(loader.latency) == len(loader.sent_at), 30)
    return sorted(v * 1000 for k, v in loader.latency.items() if k.startswith(prefix + "-"))


async def main() -> dict[str, object]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=2000, help="online orders waiting when the WAN returns")
    parser.add_argument("--rate", type=float, default=50, help="a till's orders per second meanwhile")
    parser.add_argument("--rounds", type=int, default=3, help="outages, each ending in a burst of --orders")
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return await run(args, profile)


async def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, object]:
    loop = asyncio.get_running_loop()
    profile.terminals(os.getpid())

    with tempfile.TemporaryDirectory(prefix="bench-online-") as tmp:
        async with CloudBroker(Path(tmp) / "cloud", store=STORE) as cloud, FaultProxy(cloud.port) as wan:
            extra = cloud_toml(wan.port, ping_interval_s=1, ping_timeout_s=1, reconcile_every_s=0) + KITCHEN
            path = write_config(Path(tmp) / "box", store=STORE, mode="external", extra=extra + NO_QUOTA,
                                terminals=("pos-1", "pos-2"))
            config = load_config(path)
            broker = MosquittoProcess(config)
            with profile.box_environ():
                await broker.start()
            try:
                assert broker.pid is not None
                profile.box(broker.pid)
                hub = HubProcess(path, Path(tmp) / "hub.log", env=profile.env())
                hub.start(wait=False)
                try:
                    assert hub.proc is not None
                    profile.box(hub.proc.pid)
                    hub.wait_healthy(60)
                    api = config.api.listen.port
                    while await asyncio.to_thread(link_state, api) != "online":  # noqa: ASYNC110 - another process
                        await asyncio.sleep(0.1)
                    port = config.broker.listen.port

                    # Ceiling 1: the hub's own intake, the same number of orders from a till at full speed.
                    full = await asyncio.to_thread(Loader, port, STORE, "pos-2")
                    intake_rate = await asyncio.to_thread(full.burst, "full", args.orders)
                    full.close()
                    till = await asyncio.to_thread(Loader, port, STORE, "pos-1")
                    # Ceiling 2: the till's acks at the same rate with no burst.
                    quiet = threading.Event()
                    loop.call_later(5.0, quiet.set)
                    calm = await asyncio.to_thread(paced_until, till, "calm", args.rate, quiet)

                    during: list[float] = []
                    catch_ups: list[float] = []
                    for n in range(args.rounds):
                        # The WAN goes down; the cloud takes the orders placed online meanwhile.
                        wan.refuse()
                        await wan.close_all()
                        while await asyncio.to_thread(link_state, api) == "online":  # noqa: ASYNC110
                            await asyncio.sleep(0.05)
                        await asyncio.to_thread(publish_down, cloud.port, args.orders, n * args.orders)

                        # The WAN is back: the burst arrives while the till keeps ordering.
                        done = threading.Event()
                        burst_till = asyncio.ensure_future(
                            asyncio.to_thread(paced_until, till, f"burst{n}", args.rate, done))
                        back = time.perf_counter()
                        wan.heal()
                        want = (n + 1) * args.orders
                        while (taken := await asyncio.to_thread(journaled, config.journal.path)) < want:
                            if time.perf_counter() - back > 300:
                                raise RuntimeError(f"only {taken} of {want} online orders taken in 300 s")
                            await asyncio.sleep(0.02)
                        catch_ups.append(time.perf_counter() - back)
                        done.set()
                        during += await burst_till
                        await asyncio.sleep(1)  # the kitchen's last lazy commits
                    during.sort()
                    catch_up_s = max(catch_ups)
                    till.close()
                except BaseException:
                    print(hub.log_path.read_text()[-3000:], file=sys.stderr)
                    raise
                finally:
                    hub.stop()
            finally:
                await broker.stop()

    catch_up_rate = args.orders / catch_up_s
    result: dict[str, object] = {
        "profile": profile.describe(),
        "orders": args.orders,
        "rounds": args.rounds,
        "catch_up_s": round(catch_up_s, 2),
        "catch_up_per_s": round(catch_up_rate, 1),
        "ceiling_intake_per_s": round(intake_rate, 1),
        "ratio": round(catch_up_rate / intake_rate, 3),
        "till_rate_per_s": args.rate,
        "till_orders_during": len(during),
        "till_p50_ms": pct(during, 0.5),
        "till_p99_ms": pct(during, 0.99),
        "till_calm_p50_ms": pct(calm, 0.5),
        "till_calm_p99_ms": pct(calm, 0.99),
    }
    print(f"ceiling (a till's {args.orders} orders at full speed):  {result['ceiling_intake_per_s']:>8} orders/s")
    print(f"catch-up of {args.orders} online orders after the WAN returned (slowest of {args.rounds}): "
          f"{result['catch_up_s']} s, "
          f"{result['catch_up_per_s']} orders/s, ratio {result['ratio']}")
    print(f"till acks at {args.rate:.0f}/s during the burst: p50 {result['till_p50_ms']} ms, p99 "
          f"{result['till_p99_ms']} ms over {len(during)} orders (target p99 < 50 ms); with no burst: "
          f"p50 {result['till_calm_p50_ms']} ms, p99 {result['till_calm_p99_ms']} ms")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
