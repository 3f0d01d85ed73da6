"""MqttSession, the one MQTT session type, over a real Mosquitto: what every connection of the
hub keeps from the client it replaced (small packets sent at once, the bus's capped back-off),
and how a connection that ends or never starts is told."""

from __future__ import annotations

import asyncio
import itertools
import socket

import pytest

import edgehub.bus.connection as connection
from edgehub.broker import MosquittoProcess, free_port
from edgehub.bus.connection import BusConnection
from edgehub.bus.session import V311, MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config
from edgehub.errors import MqttError, MqttTimeout
from edgehub.hub import Hub
from tests.faultproxy import FaultProxy

HUB = ("edgehub-hub", "hub-secret-password")


def _nodelay(session: MqttSession | None) -> int:
    assert session is not None
    sock = session._client.socket() if session._client is not None else None  # noqa: SLF001
    assert isinstance(sock, socket.socket)
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fastpaho"])
async def test_every_connection_sends_small_packets_at_once(hub: Hub, config: Config, fast: bool) -> None:
    # Without TCP_NODELAY each ack and PUBACK waits for Nagle and the peer's delayed ACK.
    assert _nodelay(hub.bus._session) == 1  # noqa: SLF001
    async with MqttSession("127.0.0.1", config.broker.listen.port, client_id=f"nodelay-{fast}", username=HUB[0],
                           password=HUB[1], fast=fast, protocol=V311) as session:
        assert _nodelay(session) == 1


async def test_the_bus_tries_again_with_a_capped_backoff(monkeypatch: pytest.MonkeyPatch) -> None:
    """Nothing listens: the bus keeps trying, at intervals that double from the first and stay at
    the cap (with jitter), and says what is wrong in words."""
    monkeypatch.setattr(connection, "BACKOFF_FIRST_S", 0.01)
    monkeypatch.setattr(connection, "BACKOFF_MAX_S", 0.08)
    port = free_port()
    bus = BusConnection("127.0.0.1", port, *HUB, "backoff-test", Topics("s1"), "0")
    loop = asyncio.get_running_loop()
    tries: list[float] = []
    enough = asyncio.Event()

    async def gate() -> None:
        tries.append(loop.time())
        if len(tries) >= 16:
            enough.set()

    bus.gate = gate
    task = asyncio.create_task(bus.run())
    try:
        # Doubling without a cap would need 0.01 * 2**15 s = 5 min for 16 tries.
        async with asyncio.timeout(20):
            await enough.wait()
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
    waits = [b - a for a, b in itertools.pairwise(tries)]
    # At the cap each wait is 0.08 s times a jitter of 0.5 to 1.5; a bus that did not wait would
    # try again at once. A loaded machine only makes the waits longer.
    assert min(waits[4:]) >= 0.035, waits
    assert bus.last_error == f"nothing listens on 127.0.0.1:{port} (connection refused): the broker is not running"
    assert not bus.connected.is_set() and bus.connects == 0


async def test_a_session_says_why_it_ended_and_its_messages_stop_with_it(broker: MosquittoProcess,
                                                                         config: Config) -> None:
    async with MqttSession("127.0.0.1", config.broker.listen.port, client_id="ends", username=HUB[0],
                           password=HUB[1]) as session:
        await session.subscribe("edgehub/v1/s1/#", qos=1)
        await session.publish("edgehub/v1/s1/hub/x", b"before")
        got = []
        with pytest.raises(MqttError) as ended:
            async with asyncio.timeout(10):
                async for message in session.messages:
                    got.append(message.payload)
                    await broker.stop()
        assert got == [b"before"]
        assert str(ended.value).endswith("lost: the broker closed the connection"), ended.value
        assert session.lost is not None and session.lost.result() == "the broker closed the connection"
        with pytest.raises(MqttError, match="not connected"):
            session.publish_nowait("edgehub/v1/s1/hub/x", b"after")


async def test_a_broker_that_never_answers_is_a_timeout_not_a_hang(broker: MosquittoProcess,
                                                                    config: Config) -> None:
    async with FaultProxy(config.broker.listen.port) as wan:
        wan.blackhole()
        loop = asyncio.get_running_loop()
        started = loop.time()
        with pytest.raises(MqttTimeout, match=rf"127.0.0.1:{wan.port} did not answer within 0.5 s"):
            async with MqttSession("127.0.0.1", wan.port, client_id="silent", username=HUB[0], password=HUB[1],
                                   connect_timeout_s=0.5):
                pass
        assert loop.time() - started < 3
