"""Order intake benchmark: acked orders/s end to end against the raw MQTT ceiling, same run.

Ceiling: a plain paho responder (its own process) that answers every order with an ack, with no
journal: publish QoS 1 → Mosquitto → subscriber → reply → Mosquitto → terminal. Hub: the real
``edgehub run`` (its own process) against the same Mosquitto, fsync durability on. Both are
driven by the same load generator: a burst with a window of unacked orders for throughput, then
(after a pause, SETTLE_S) a fixed moderate rate for ack latency.

Both are measured in ``--rounds`` rounds, each a ceiling burst and paced phase, then the hub's
right after: the ratio is the median of the rounds' ratios, and the ack latency's p50 and p99
are the medians of the rounds' own. On a shared machine a single pair moved by a third from run
to run (docs/footprint.md, Intake), the ceiling as much as the hub, and one neighbour's busy
minute set a single paced phase's p99 for the whole run (the raw echo's p99 went from 1 to
129 ms with it). Every round's figures are printed, and ``p99_all_ms`` is the p99 of every
order of every round together. The last line is one JSON object with the figures.

The hub and its Mosquitto run at the nice level the box's units give them (``Nice=`` in
systemd/edgehub.service and Mosquitto's drop-in), and so does the responder that stands in for
the hub in the ceiling; the load generator, a POS terminal on a box of its own in a store, stays
at the bench's. ``--nice 0`` runs everything alike; a negative level needs root, and without it
the bench says so and runs at 0.

With ``--profile pi`` the hub, its Mosquitto and the responder run at a Raspberry Pi 4 core's
speed with an SD card's syncs (bench/piprofile.py), the load generator in a cgroup of its own.

    .venv/bin/python bench/intake.py [--orders 6000] [--rate 500] [--seconds 10] [--rounds 3] [--commit-window-ms 2]
                                     [--profile pi]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import piprofile
from common import NO_QUOTA, Loader, box_nice, commit_window_ms, journal_section, pct, renice

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from tests.conftest import HubProcess, write_config

# Between the overload burst and the paced phase: the latency asked for is that of a hub
# running at the given rate, not of one still finishing the burst's deferred work (its lazy
# kitchen writes, a checkpoint of the WAL the burst grew), which took the first ~70 ms of the
# paced phase to 20-48 ms and, with 3,000 samples, was the whole of the p99.
SETTLE_S = 2.0

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


def start_responder(port: int, profile: piprofile.HostProfile) -> subprocess.Popen[str]:
    responder = subprocess.Popen([sys.executable, "-c", RESPONDER, str(port), "bench"],
                                 stdout=subprocess.PIPE, text=True, env={**os.environ, **profile.env()})
    profile.box(responder.pid)
    assert responder.stdout is not None and responder.stdout.readline().strip() == "ready"
    return responder


def stop(responder: subprocess.Popen[str]) -> None:
    responder.terminate()
    responder.wait()


def measure(loader: Loader, name: str, args: argparse.Namespace) -> tuple[float, list[float]]:
    """A warm-up, the burst (orders/s), and the paced phase's ack latencies (ms, sorted)."""
    try:
        loader.burst(f"warm-{name}", 500)
        throughput = loader.burst(name, args.orders)
        time.sleep(SETTLE_S)
        return throughput, loader.paced(f"{name}-lat", args.rate, args.seconds)
    finally:
        loader.close()


def median_pct(rounds: list[list[float]], p: float) -> float:
    """The median over the rounds of each round's ``p`` percentile."""
    return round(statistics.median(pct(latency, p) for latency in rounds), 2)


async def main() -> dict[str, Any]:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=6000)
    parser.add_argument("--rate", type=float, default=500)
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--commit-window-ms", type=commit_window_ms, default=None,
                        help="the journal's group commit window (config journal.commit_window_ms, default 2)")
    parser.add_argument("--nice", type=int, default=box_nice(),
                        help="the hub's, its broker's and the responder's nice level (default: the box's units')")
    parser.add_argument("--rounds", type=int, default=3,
                        help="ceiling and hub bursts, back to back; the ratio is the median of the rounds' ratios")
    piprofile.add_argument(parser)
    args = parser.parse_args()
    with piprofile.from_args(args) as profile:
        return await run(args, profile)


async def run(args: argparse.Namespace, profile: piprofile.HostProfile) -> dict[str, Any]:
    profile.terminals(os.getpid())

    ceilings: list[float] = []
    hub_rates: list[float] = []
    raw_latency: list[list[float]] = []
    hub_latency: list[list[float]] = []
    with tempfile.TemporaryDirectory(prefix="bench-intake-") as tmp:
        path = write_config(Path(tmp) / "box", store="bench", mode="external",
                            extra=journal_section(args.commit_window_ms) + NO_QUOTA)
        config = load_config(path)
        port = config.broker.listen.port
        broker = MosquittoProcess(config)
        with profile.box_environ():
            await broker.start()
        try:
            assert broker.pid is not None
            profile.box(broker.pid)
            nice = args.nice if renice(broker.pid, args.nice) else 0
            if nice != args.nice:
                print(f"nice {args.nice} needs root here: the hub, its broker and the responder run at 0")
            # Blocking on purpose (measure() sleeps): nothing else runs on this loop while the load
            # generator (paho, its own thread) drives the responder or the hub. Each round measures
            # the ceiling and then the hub within seconds of each other, so a shared machine's slow
            # minute weighs on both figures of a round alike.
            for n in range(args.rounds):
                responder = start_responder(port, profile)
                renice(responder.pid, nice)
                ceiling, latency = measure(Loader(port, "bench"), f"raw{n}", args)
                ceilings.append(ceiling)
                raw_latency.append(latency)
                stop(responder)

                hub = HubProcess(path, Path(tmp) / "hub.log", env=profile.env())
                hub.start(wait=False)
                try:
                    assert hub.proc is not None
                    profile.box(hub.proc.pid)
                    hub.wait_healthy(60)
                    renice(hub.proc.pid, nice)
                    rate, latency = measure(Loader(port, "bench", "pos-2"), f"hub{n}", args)
                    hub_rates.append(rate)
                    hub_latency.append(latency)
                finally:
                    hub.stop()
        finally:
            await broker.stop()

    ratios = [hub / ceiling for hub, ceiling in zip(hub_rates, ceilings, strict=True)]
    result = {
        "ceiling_orders_per_s": round(statistics.median(ceilings), 1),
        "hub_orders_per_s": round(statistics.median(hub_rates), 1),
        "ratio": round(statistics.median(ratios), 3),
        "round_ratios": [round(r, 3) for r in ratios],
        "rate_per_s": args.rate,
        "commit_window_ms": config.journal.commit_window_ms,
        "nice": nice,
        "raw_p50_ms": median_pct(raw_latency, 0.5),
        "raw_p99_ms": median_pct(raw_latency, 0.99),
        "p50_ms": median_pct(hub_latency, 0.5),
        "p99_ms": median_pct(hub_latency, 0.99),
        "round_p99_ms": [pct(latency, 0.99) for latency in hub_latency],
        "round_raw_p99_ms": [pct(latency, 0.99) for latency in raw_latency],
        "p99_all_ms": pct(sorted(v for latency in hub_latency for v in latency), 0.99),
        "profile": profile.describe(),
    }
    rounds = ", ".join(f"{h:.0f}/{c:.0f}" for h, c in zip(hub_rates, ceilings, strict=True))
    p99s = ", ".join(f"{h}/{r}" for h, r in zip(result["round_p99_ms"], result["round_raw_p99_ms"], strict=True))
    print(f"hub, broker and responder at nice {nice}; the load generator at {os.getpriority(os.PRIO_PROCESS, 0)}")
    print(f"rounds (hub/ceiling orders/s):             {rounds}")
    print(f"rounds (hub/raw ack p99 ms at {args.rate:.0f}/s):      {p99s}")
    print(f"ceiling (raw MQTT round trip, no journal): {result['ceiling_orders_per_s']:>9} orders/s (median)")
    print(f"hub (journal, fsync, ack):                 {result['hub_orders_per_s']:>9} orders/s (median)")
    print(f"ratio (median of the rounds):              {result['ratio']:>9}   (target >= 0.5)")
    print(f"ack latency at {args.rate:.0f}/s (median of the rounds): raw p50 {result['raw_p50_ms']} ms "
          f"p99 {result['raw_p99_ms']} ms; hub p50 {result['p50_ms']} ms p99 {result['p99_ms']} ms "
          f"(target p99 < 20 ms); hub p99 of all rounds' orders {result['p99_all_ms']} ms")
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    asyncio.run(main())
