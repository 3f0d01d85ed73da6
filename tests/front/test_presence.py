"""Which terminals are connected now, from the broker's own events (real Mosquitto, real hub,
terminals on the LAN listener as in a store): a clean goodbye, a till switched off, a handheld
whose Wi-Fi went silent; what a restarted hub still knows; a restart of the broker itself; the
status, the retained topic staff terminals read, and the cloud's telemetry sample."""

from __future__ import annotations

import asyncio
import json
import socket
import struct
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest

from edgehub.broker import MosquittoProcess, free_port
from edgehub.bus.message import Message
from edgehub.bus.session import MqttSession
from edgehub.config import Config, load_config
from edgehub.hub import Hub
from edgehub.store.outbox import decode_payload
from tests.conftest import write_config

TERMINALS = ("pos-1", "pos-2", "hh-1", "kds-grill")


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = write_config(tmp_path / "box", terminals=TERMINALS, lan_port=free_port())
    # hh-1 is a waiter's handheld.
    path.write_text(path.read_text().replace('id = "hh-1"\nkind = "pos"', 'id = "hh-1"\nkind = "handheld"'))
    return load_config(path)


def lan_client(config: Config, terminal: str, keepalive: int = 60) -> mqtt.Client:
    """A terminal on the store LAN (paho, its own thread): its client id is its user there."""
    assert config.broker.lan_listen is not None
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=terminal, protocol=mqtt.MQTTv5)
    client.username_pw_set(terminal, f"pw-{terminal}")
    client.connect(config.broker.lan_listen.host, config.broker.lan_listen.port, keepalive=keepalive)
    return client


def drop(client: mqtt.Client) -> None:
    """The terminal is switched off: its socket closes with a reset, no DISCONNECT."""
    sock = client.socket()
    assert sock is not None
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


async def states(hub: Hub) -> dict[str, dict[str, Any]]:
    return {t["terminal"]: t for t in (await hub.status())["terminals"]["terminals"]}


async def until(hub: Hub, terminal: str, state: str, timeout: float = 10.0) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        seen = (await states(hub))[terminal]
        if seen["state"] == state:
            return seen
        assert time.monotonic() < deadline, f"{terminal} is {seen}, not {state}"
        await asyncio.sleep(0.05)


@pytest.fixture
async def running(config: Config, broker: MosquittoProcess) -> AsyncIterator[Hub]:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        yield hub


async def test_connections_and_three_ways_of_leaving(running: Hub, config: Config) -> None:
    hub = running
    assert {t: s["state"] for t, s in (await states(hub)).items()} == dict.fromkeys(TERMINALS, "unknown")
    till, pos2, handheld, screen = (lan_client(config, t, keepalive=1 if t == "hh-1" else 60) for t in TERMINALS)
    for client in (till, pos2, handheld, screen):
        client.loop_start()
    try:
        for terminal in TERMINALS:
            seen = await until(hub, terminal, "connected")
            assert seen["address"] == "127.0.0.1" and seen["protocol"] == "MQTT 5", seen
        assert (await states(hub))["hh-1"]["kind"] == "handheld"
        section = (await hub.status())["terminals"]
        assert section["connected"] == 4 and section["configured"] == 4

        till.disconnect()  # the till says goodbye
        assert (await until(hub, "pos-1", "disconnected"))["reason"] == "said goodbye (a clean DISCONNECT)"
        screen.loop_stop()
        drop(screen)  # the kitchen tablet is switched off
        assert "without a goodbye" in (await until(hub, "kds-grill", "disconnected"))["reason"]
        handheld.loop_stop()  # the handheld walks out of Wi-Fi: silent, its socket still open
        assert "keep-alive" in (await until(hub, "hh-1", "disconnected", timeout=15))["reason"]

        # Staff terminals read who is connected (retained); a kitchen screen may not.
        async with MqttSession(config.broker.listen.host, config.broker.listen.port, username="pos-2",
                                  password="pw-pos-2", client_id="reader-pos-2") as reader:
            await reader.subscribe(hub.topics.all_presence, qos=1)
            records: dict[str, dict[str, Any]] = {}
            async with asyncio.timeout(5):
                async for message in reader.messages:
                    assert isinstance(message.payload, bytes)
                    doc = json.loads(message.payload)
                    records[doc["terminal"]] = doc
                    if len(records) == 4:
                        break
            assert records["pos-2"]["state"] == "connected" and records["pos-1"]["state"] == "disconnected"
            assert records["pos-1"]["schema"] == "presence/1"
        async with MqttSession(config.broker.listen.host, config.broker.listen.port, username="kds-grill",
                                  password="pw-kds-grill", client_id="reader-kds") as reader:
            await reader.subscribe(hub.topics.all_presence, qos=1)
            with pytest.raises(TimeoutError):
                async with asyncio.timeout(1):
                    await anext(aiter(reader.messages))

        await until(hub, "kds-grill", "disconnected")  # the reader above was kds-grill too

        # The cloud's snapshot of the box carries them too.
        assert await hub.telemetry.sample_now()
        rows = await hub.journal.read(lambda c: c.execute(
            "SELECT payload FROM outbox WHERE stream='telemetry' ORDER BY seq DESC LIMIT 1").fetchall())
        sample = json.loads(decode_payload(rows[0][0]))
        assert sample["terminals"]["connected"] == ["pos-2"]
        assert sample["terminals"]["disconnected"] == ["hh-1", "kds-grill", "pos-1"]
    finally:
        for client in (till, pos2, handheld):
            client.loop_stop()
        pos2.disconnect()


async def test_a_restarted_hub_knows_who_was_there_and_who_came_meanwhile(config: Config,
                                                                          broker: MosquittoProcess) -> None:
    pos1 = lan_client(config, "pos-1")
    pos1.loop_start()
    try:
        async with Hub(config) as hub:
            await asyncio.wait_for(hub.ready.wait(), 10)
            pos2 = lan_client(config, "pos-2")
            pos2.loop_start()
            await until(hub, "pos-2", "connected")
            assert (await states(hub))["pos-1"]["state"] == "unknown"  # it came before the box
        # The hub is away; the broker queues its lines for the hub's session.
        pos2.disconnect()
        pos2.loop_stop()
        hh = lan_client(config, "hh-1")
        hh.loop_start()
        await asyncio.sleep(0.3)
        async with Hub(config) as hub:
            await asyncio.wait_for(hub.ready.wait(), 10)
            await until(hub, "hh-1", "connected")
            assert (await until(hub, "pos-2", "disconnected"))["reason"] == "said goodbye (a clean DISCONNECT)"
            # pos-1 connected before any hub ran: not seen, so not claimed either way. The broker
            # counts it among its clients (every 10 s): two such readings and the list says it
            # is not complete.
            assert (await states(hub))["pos-1"]["state"] == "unknown"
            counted = Message(hub.topics.broker_clients, b"3")
            await hub.presence.handle_count(counted)  # hub + hh-1 known, pos-1 not
            assert (await hub.status())["terminals"]["complete"] is True
            await hub.presence.handle_count(counted)
            section = (await hub.status())["terminals"]
            assert section["complete"] is False and section["broker_clients"] == 3
        hh.disconnect()
        hh.loop_stop()
    finally:
        pos1.disconnect()
        pos1.loop_stop()


async def test_a_restart_of_the_broker_ends_every_connection(running: Hub, config: Config,
                                                             broker: MosquittoProcess) -> None:
    hub = running
    till = lan_client(config, "pos-1")
    till.loop_start()
    try:
        await until(hub, "pos-1", "connected")
        await asyncio.sleep(1.0)  # the broker has been up a while
        await broker.stop()
        till.loop_stop()
        await asyncio.sleep(0.5)
        await broker.start()
        seen = await until(hub, "pos-1", "disconnected", timeout=20)
        assert seen["reason"] == "the store's broker restarted"
        assert (await hub.status())["terminals"]["broker_restarts"] == 1
    finally:
        till.loop_stop()
