"""The watchdog turns what a printer says (or does not say) into the right device state, within a
bounded number of probe intervals, and the retained ``$state`` on a real Mosquitto tells the truth."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass

import pytest

from drivers.base import DeviceInfo, Health
from drivers.escpos import PrinterTiming
from edgehub.broker import MosquittoProcess
from edgehub.bus.session import V311, MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config
from edgehub.devices import DeviceRegistry, Watchdog, WatchdogTiming
from edgehub.devices.factory import DriverFactory
from edgehub.sim.printer import PrinterSim

# Short driver limits so a silent printer costs a fraction of a second, not the production 0.5 s
# per byte; the assertions count probe intervals, never wall-clock time.
TIMING = PrinterTiming(connect=0.5, status_reply=0.15, frame_rest=0.1, settle=0.02)
WATCHDOG = WatchdogTiming(printer_interval=0.05, printer_timeout=1.0)
PRINTER = "mac-0200000000aa"
MAX_PROBES = 3  # a change must show within this many probes after it happened


@dataclass
class Rig:
    registry: DeviceRegistry
    watchdog: Watchdog
    sim: PrinterSim
    events: list[tuple[str, Health]]  # (kind, health at the time of the event)
    topics: Topics


@pytest.fixture
async def rig(config: Config, broker: MosquittoProcess) -> AsyncIterator[Rig]:
    topics = Topics(config.store.id)
    async with MqttSession(
        broker.address.host,
        broker.address.port,
        username=config.broker.hub_user,
        password=config.broker.hub_password,
        client_id="test-registry",
        protocol=V311,
    ) as client:

        async def publish(topic: str, payload: bytes, retain: bool) -> None:
            await client.publish(topic, payload, qos=1, retain=retain)

        async with PrinterSim() as sim:
            registry = DeviceRegistry(topics, publish, driver_factory=DriverFactory(printer_timing=TIMING))
            events: list[tuple[str, Health]] = []
            registry.subscribe(lambda e: events.append((e.kind, e.entry.health)))
            async with registry, Watchdog(registry, WATCHDOG) as watchdog:
                await registry.upsert(DeviceInfo(PRINTER, "printer", "tcp", sim.address, "escpos"))
                yield Rig(registry, watchdog, sim, events, topics)


async def state_within(rig: Rig, expected: Health, probes: int = MAX_PROBES) -> None:
    """The printer's health becomes ``expected`` within ``probes`` probes from now."""
    start = rig.watchdog.probes.get(PRINTER, 0)
    for n in range(start + 1, start + probes + 1):
        async with asyncio.timeout(15):  # only a guard against a hang, not the assertion
            await rig.watchdog.wait_probes(PRINTER, n)
        entry = rig.registry.get(PRINTER)
        assert entry is not None
        if entry.health == expected:
            return
    entry = rig.registry.get(PRINTER)
    raise AssertionError(
        f"after {probes} probes the printer is {entry.health if entry else None}, not {expected}"
    )


async def retained_state(config: Config, broker: MosquittoProcess, topic: str) -> dict[str, object]:
    async with MqttSession(
        broker.address.host,
        broker.address.port,
        username=config.broker.hub_user,
        password=config.broker.hub_password,
        client_id="test-reader",
        protocol=V311,
    ) as reader:
        await reader.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in reader.messages:
                assert message.retain
                doc: dict[str, object] = json.loads(message.payload)
                return doc
    raise AssertionError("no retained message")


async def test_printer_states_follow_the_printer(rig: Rig, config: Config, broker: MosquittoProcess) -> None:
    await state_within(rig, Health("ready"))

    rig.sim.paper_out = True
    await state_within(rig, Health("failed", "paper end"))
    rig.sim.paper_out = False
    await state_within(rig, Health("ready"))

    rig.sim.cover_open = True
    await state_within(rig, Health("failed", "cover open"))
    rig.sim.cover_open = False
    rig.sim.paper_near_end = True
    await state_within(rig, Health("degraded", "paper near end"))
    rig.sim.paper_near_end = False
    await state_within(rig, Health("ready"))

    rig.sim.silent = True  # takes bytes, never answers: unknown status, failed after 2 missed probes
    await state_within(rig, Health("failed", "no answer to 2 probes in a row"))
    rig.sim.silent = False
    # The requests it dropped are given up 2 reply times + 0.5 s after they were sent.
    await state_within(rig, Health("ready"), probes=MAX_PROBES + 20)

    await rig.sim.kill()  # dead: connection reset, new ones refused
    await state_within(rig, Health("failed", "not reachable"))

    doc = await retained_state(config, broker, rig.topics.device_state(PRINTER))
    assert doc["schema"] == "device-state/1"
    assert (doc["state"], doc["reason"], doc["present"]) == ("failed", "not reachable", True)

    await rig.sim.revive()
    await state_within(rig, Health("ready"))
    doc = await retained_state(config, broker, rig.topics.device_state(PRINTER))
    assert doc["state"] == "ready"

    # One event per change, never one per probe.
    states = [(kind, health.state) for kind, health in rig.events]
    assert states.count(("health", "ready")) == 5
    assert len(states) == 1 + 10  # added, then exactly the ten changes made above


async def test_state_is_published_once_the_broker_is_there(config: Config, caplog: pytest.LogCaptureFixture) -> None:
    """The registry keeps what it could not publish and sends the newest value later. Before the
    first publish (every start: devices are found before the broker session is up) that is
    only a DEBUG line, and so is its end; a broker lost after that is a WARNING."""
    caplog.set_level(logging.DEBUG)
    sent: list[tuple[str, bytes, bool]] = []
    up = asyncio.Event()

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        if not up.is_set():
            from edgehub.errors import BrokerError

            raise BrokerError("not connected")
        sent.append((topic, payload, retain))

    topics = Topics("s1")
    registry = DeviceRegistry(topics, publish, retry_interval=0.05)
    async with registry:
        await registry.upsert(DeviceInfo("usb-04b8-0e28-X1", "printer", "usb", "1:2", "escpos"))
        await registry.set_health("usb-04b8-0e28-X1", Health("failed", "paper end"))
        up.set()
        async with asyncio.timeout(5):
            while len({t for t, _, _ in sent}) < 2:  # the resend task runs on its own: poll what it sent
                await asyncio.sleep(0.02)
        up.clear()
        await registry.set_health("usb-04b8-0e28-X1", Health("ready"))
    states = [json.loads(p) for t, p, _ in sent if t == topics.device_state("usb-04b8-0e28-X1")]
    assert states[-1]["state"] == "failed" and states[-1]["reason"] == "paper end"
    levels = [r.levelname for r in caplog.records if r.getMessage().startswith("cannot publish device state yet")]
    assert levels == ["DEBUG", "WARNING"]  # before the first publish: every start; after: news
    levels = [r.levelname for r in caplog.records if r.getMessage() == "device state published again"]
    assert levels == ["DEBUG"]
