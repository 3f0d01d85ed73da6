"""Issue 19, tried as an attacker on the store LAN would: one terminal's own password, a real
Mosquitto with the generated config and ACL (terminals on its LAN listener, the hub on its own
loopback listener), a real hub."""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.broker import MosquittoProcess, free_port
from edgehub.bus.session import MqttSession
from edgehub.config import Config, load_config
from edgehub.errors import MqttError
from edgehub.hub import Hub
from tests.conftest import order, write_config


@contextlib.asynccontextmanager
async def lan_hub(directory: Path, extra: str = "", terminals: tuple[str, ...] = ("pos-1", "pos-2")
                  ) -> AsyncIterator[Hub]:
    config = load_config(write_config(directory, lan_port=free_port(), extra=extra, terminals=terminals))
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        yield hub


def lan_client(config: Config, terminal: str, identifier: str, clean: bool = True,
               **kwargs: Any) -> MqttSession:
    lan = config.broker.terminal_address
    return MqttSession(lan.host, lan.port, username=terminal, password=f"pw-{terminal}", client_id=identifier,
                       clean_start=clean, session_expiry_s=3600, **kwargs)


async def takeover(config: Config, identifiers: list[str], stop: asyncio.Event, tries: list[int]) -> None:
    """pos-1 connects again and again, every 20 ms, as each of ``identifiers`` (``tries[0]`` counts)."""
    while not stop.is_set():
        for identifier in identifiers:
            with contextlib.suppress(MqttError):
                async with lan_client(config, "pos-1", identifier, connect_timeout_s=2):
                    tries[0] += 1
            await asyncio.sleep(0.02)


async def test_a_terminal_cannot_take_the_hubs_client_id_nor_another_terminals(tmp_path: Path) -> None:
    async with lan_hub(tmp_path / "box") as hub:
        config = hub.config
        victim_id = "pos-2-app"
        async with lan_client(config, "pos-2", victim_id) as victim:
            await victim.subscribe(hub.topics.ack("pos-2"), qos=1)
            stop = asyncio.Event()
            tries = [0]
            attack = asyncio.create_task(takeover(config, [hub.bus.client_id, victim_id], stop, tries))
            acked: list[str] = []
            latencies: list[float] = []
            sent = 0
            try:
                # At least 40 orders, and as many as it takes the attack to try 20 times.
                while sent < 40 or (tries[0] < 20 and sent < 1000):
                    n, sent = sent, sent + 1
                    started = time.perf_counter()
                    await victim.publish(hub.topics.order("pos-2"), json.dumps(order(f"v-{n}")).encode(), qos=1)
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(2.0):
                            async for message in victim.messages:
                                doc = json.loads(message.payload)
                                if doc["order_id"] == f"v-{n}":
                                    acked.append(doc["order_id"])
                                    latencies.append(time.perf_counter() - started)
                                    break
            finally:
                stop.set()
                await attack
        assert tries[0] >= 20, "the attack did not run"
        # Every order acked on its first send; the hub never lost its connection.
        assert len(acked) == sent, f"{len(acked)}/{sent} acked while pos-1 kept taking client ids"
        assert hub.bus.connects == 1
        assert sorted(latencies)[len(latencies) // 2] < 1.0


async def test_a_terminal_that_reconnects_keeps_its_session(tmp_path: Path) -> None:
    """The client id on the LAN listener is the user: whatever id the app gives, it finds the
    session it left, with the ack that came while it was away."""
    async with lan_hub(tmp_path / "box") as hub:
        config = hub.config
        async with lan_client(config, "pos-2", "first-id", clean=False) as first:
            await first.subscribe(hub.topics.ack("pos-2"), qos=1)
        async with lan_client(config, "pos-2", "other-id", clean=False) as sender:
            await sender.publish(hub.topics.order("pos-2"), json.dumps(order("away-1")).encode(), qos=1)
        await asyncio.sleep(0.5)  # acked while nobody of pos-2 is connected
        async with lan_client(config, "pos-2", "third-id", clean=False) as back:
            async with asyncio.timeout(5):
                async for message in back.messages:
                    assert json.loads(message.payload)["order_id"] == "away-1"
                    break


async def test_an_order_names_no_reply_topic_outside_its_own_tree(tmp_path: Path) -> None:
    async with lan_hub(tmp_path / "box") as hub:
        config = hub.config
        async with lan_client(config, "pos-2", "victim") as victim, lan_client(config, "pos-1", "attacker") as pos1:
            await victim.subscribe(f"{hub.topics.root}/pos/pos-2/#", qos=1)
            await pos1.subscribe(hub.topics.ack("pos-1"), qos=1)
            for n, target in enumerate((hub.topics.ack("pos-2"), f"{hub.topics.root}/pos/+/ack")):
                props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
                props.ResponseTopic = target
                await pos1.publish(hub.topics.order("pos-1"), json.dumps(order(f"steer-{n}")).encode(), qos=1,
                                   properties=props)
            acks = []
            async with asyncio.timeout(5):
                async for message in pos1.messages:
                    acks.append(json.loads(message.payload))
                    if len(acks) == 2:
                        break
            assert [a["status"] for a in acks] == ["rejected", "rejected"]
            assert "response topic" in acks[0]["error"] and "own tree" in acks[0]["error"]
            assert "wildcards" in acks[1]["error"]
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(0.5):
                    async for message in victim.messages:
                        pytest.fail(f"pos-2 got {message.topic}")


async def test_an_order_id_with_a_trailing_newline_is_not_taken(tmp_path: Path) -> None:
    async with lan_hub(tmp_path / "box") as hub:
        async with lan_client(hub.config, "pos-1", "nl") as pos1:
            await pos1.subscribe(hub.topics.ack("pos-1"), qos=1)
            await pos1.publish(hub.topics.order("pos-1"), json.dumps(order("nl-1\n")).encode(), qos=1)
            await pos1.publish(hub.topics.order("pos-1"), json.dumps(order("nl-2")).encode(), qos=1)
            async with asyncio.timeout(5):
                async for message in pos1.messages:
                    assert json.loads(message.payload)["order_id"] == "nl-2"
                    break
        assert hub.intake.stats.deadlettered == 1 and hub.intake.stats.accepted == 1


async def test_one_flooding_terminal_is_slowed_down_and_loses_nothing_acked(tmp_path: Path) -> None:
    extra = "[limits]\norders_per_s = 20\norder_burst = 50\n"
    async with lan_hub(tmp_path / "box", extra=extra) as hub:
        from edgehub.sim.terminal import TerminalSim

        lan = hub.config.broker.terminal_address
        flood = TerminalSim(lan.host, lan.port, "s1", "pos-1", "pw-pos-1", resend_after=5.0)
        till = TerminalSim(lan.host, lan.port, "s1", "pos-2", "pw-pos-2")
        flooding, steady = await asyncio.gather(flood.run(orders=300, rate=0, timeout=60),
                                                till.run(orders=20, rate=10, timeout=60))
    # The flood was told to slow down, and in the end every one of its orders was taken once.
    assert flooding.slowed_down > 0
    assert len(flooding.acked_ids) == 300 and flooding.rejected == 0 and flooding.unacked == 0
    # The other till was never slowed down.
    assert steady.slowed_down == 0 and len(steady.acked_ids) == 20
    assert hub.intake.stats.accepted == 320


async def test_the_lan_listener_caps_connections(tmp_path: Path) -> None:
    terminals = tuple(f"pos-{n}" for n in range(1, 11))
    path = write_config(tmp_path / "box", lan_port=free_port(), terminals=terminals)
    path.write_text(path.read_text().replace('hub_password = "', 'max_connections = 8\nhub_password = "', 1))
    config = load_config(path)
    async with MosquittoProcess(config, die_with_parent=False), contextlib.AsyncExitStack() as stack:
        for n in range(1, 9):
            await stack.enter_async_context(lan_client(config, f"pos-{n}", f"c{n}"))
        with pytest.raises(MqttError):
            async with lan_client(config, "pos-9", "c9", connect_timeout_s=3):
                pass
    conf = (config.broker.config_dir / "mosquitto.conf").read_text()
    assert f"max_queued_bytes {32 * 1024 * 1024}" in conf
