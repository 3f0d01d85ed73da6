"""A store for role tests: real Mosquitto, journal, device registry and watchdog (short probe
interval), the roles component, simulated printers and pinpads, and a terminal that speaks
MQTT 5 request/response."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers import driver_class
from drivers.base import DeviceInfo, Driver
from drivers.escpos import EscposPrinter, PrinterTiming
from drivers.zvt import ZvtPinpad
from edgehub import __version__
from edgehub.api import ApiServer
from edgehub.broker import MosquittoProcess
from edgehub.bus.connection import BusConnection
from edgehub.bus.session import V5, MqttSession
from edgehub.bus.topics import Topics
from edgehub.component import Wiring
from edgehub.config import Config, load_config
from edgehub.devices import DeviceRegistry, Watchdog, WatchdogTiming
from edgehub.roles import Roles
from edgehub.roles.printqueue import REPRINT_BANNER
from edgehub.sim.pinpad import ZvtPinpadSim
from edgehub.sim.printer import PrinterSim
from edgehub.store import Journal
from tests.conftest import write_config

FAST_PRINTER = PrinterTiming(
    connect=0.5, status_reply=0.3, frame_rest=0.2, settle=0.02, confirm=5.0, poll_interval=0.1
)
FAST_WATCHDOG = WatchdogTiming(
    printer_interval=0.1, pinpad_interval=0.1, printer_timeout=1.0, pinpad_timeout=1.5
)


def fast_driver(info: DeviceInfo) -> Driver:
    """The production drivers, with short time limits for printers and pinpads."""
    if info.driver == "zvt":
        return ZvtPinpad(info, ack_timeout=0.5, transaction_timeout=1.0, connect_timeout=0.5)
    if info.driver == "escpos":
        return EscposPrinter(info, timing=FAST_PRINTER)
    cls = driver_class(info.driver)
    assert cls is not None, info.driver
    return cls(info)


def printer_info(device_id: str, sim: PrinterSim) -> DeviceInfo:
    return DeviceInfo(device_id, "printer", "tcp", sim.address, "escpos", model="TM-T20III")


def pinpad_info(device_id: str, sim: ZvtPinpadSim) -> DeviceInfo:
    return DeviceInfo(device_id, "pinpad", "tcp", f"127.0.0.1:{sim.port}", "zvt")


ROLES_TOML = """
[[role]]
name = "kitchen-printer.grill"
devices = ["prn-a", "prn-b"]
failback_after_s = 0.5

[[role]]
name = "receipt-printer"
devices = ["prn-c"]

[[role]]
name = "pinpad.till-1"
devices = ["pad-1", "pad-2"]
failback_after_s = 600
"""


class StatusStub:
    def healthy(self) -> tuple[bool, str]:
        return True, ""

    async def status(self) -> dict[str, Any]:
        return {}


@dataclass
class Store:
    config: Config
    topics: Topics
    journal: Journal
    bus: BusConnection
    registry: DeviceRegistry
    watchdog: Watchdog
    roles: Roles
    api: ApiServer

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 20.0, what: str = "") -> None:
        async with asyncio.timeout(timeout):
            while not predicate():
                await asyncio.sleep(0.02)
        assert predicate(), what

    async def add(self, info: DeviceInfo) -> None:
        await self.registry.upsert(info)
        await self.watchdog.wait_probes(info.device_id, 1)


@contextlib.asynccontextmanager
async def running_store(
    directory: Path,
    roles_toml: str = ROLES_TOML,
    watchdog: WatchdogTiming = FAST_WATCHDOG,
    driver_factory: Callable[[DeviceInfo], Driver] = fast_driver,
) -> AsyncIterator[Store]:
    config = load_config(write_config(directory, extra=roles_toml))
    topics = Topics(config.store.id)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(MosquittoProcess(config, die_with_parent=False))
        journal = await stack.enter_async_context(Journal(config.journal.path, config.store.id, 2.0))
        bus = BusConnection(
            host=config.broker.listen.host,
            port=config.broker.listen.port,
            username=config.broker.hub_user,
            password=config.broker.hub_password,
            client_id=f"test-hub-{os.getpid()}-{time.monotonic_ns()}",
            topics=topics,
            version=__version__,
        )

        async def publish(topic: str, payload: bytes, retain: bool) -> None:
            await bus.publish(topic, payload, retain=retain)

        registry = await stack.enter_async_context(
            DeviceRegistry(topics, publish, driver_factory=driver_factory)
        )
        roles = Roles(config, topics, journal, bus, registry, tick_s=0.05)
        api = ApiServer(config.api.listen, config.api.token, StatusStub())
        wiring = Wiring(bus, api, registry.signals)
        wiring.add(roles)
        await stack.enter_async_context(wiring.running(roles))
        dog = await stack.enter_async_context(Watchdog(registry, watchdog))
        await stack.enter_async_context(api)
        bus_task = asyncio.create_task(bus.run())
        stack.push_async_callback(_stop, bus, bus_task)
        async with asyncio.timeout(10):
            await bus.connected.wait()
        yield Store(config, topics, journal, bus, registry, dog, roles, api)


async def _stop(bus: BusConnection, task: asyncio.Task[None]) -> None:
    await bus.close()
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


@pytest.fixture
async def store(tmp_path: Path) -> AsyncIterator[Store]:
    async with running_store(tmp_path / "box") as running:
        yield running


class Till:
    """A terminal: MQTT 5 requests with a response topic and correlation data under its own tree."""

    def __init__(
        self,
        config: Config,
        terminal: str = "pos-1",
        protocol: int = V5,
    ) -> None:
        self.topics = Topics(config.store.id)
        self.terminal = terminal
        self.v5 = protocol == V5
        self.reply_topic = f"{self.topics.root}/pos/{terminal}/replies"
        self.client = MqttSession(
            config.broker.listen.host,
            config.broker.listen.port,
            username=terminal,
            password=f"pw-{terminal}",
            protocol=protocol,
            client_id=f"till-{terminal}-{os.getpid()}-{time.monotonic_ns()}",
        )
        self.replies: list[tuple[bytes | None, dict[str, Any]]] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Till:
        await self.client.__aenter__()
        await self.client.subscribe(self.reply_topic, qos=1)
        await self.client.subscribe(f"{self.topics.root}/role/#", qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(BaseException):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            doc = json.loads(message.payload)
            if message.topic == self.reply_topic:
                self.replies.append((message.correlation_data, doc))
            else:
                self.events.append((message.topic, doc))

    async def request(self, role: str, command: str, doc: dict[str, Any], correlation: bytes = b"") -> None:
        topic = self.topics.role_command(role, command, self.terminal)
        if self.v5:
            props = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]  # paho: untyped
            props.ResponseTopic = self.reply_topic
            if correlation:
                props.CorrelationData = correlation
            await self.client.publish(topic, json.dumps(doc).encode(), qos=1, properties=props)
        else:
            await self.client.publish(
                topic, json.dumps({**doc, "reply_to": self.reply_topic}).encode(), qos=1
            )

    def replies_for(self, key: str, value: str) -> list[dict[str, Any]]:
        return [doc for _, doc in self.replies if doc.get(key) == value]

    async def reply(
        self, key: str, value: str, status: str | tuple[str, ...], timeout: float = 20.0
    ) -> dict[str, Any]:
        wanted = (status,) if isinstance(status, str) else status
        async with asyncio.timeout(timeout):
            while True:
                for doc in self.replies_for(key, value):
                    if doc["status"] in wanted:
                        return doc
                await asyncio.sleep(0.02)

    def state(self, role: str) -> dict[str, Any] | None:
        topic = self.topics.role_state(role)
        found = [doc for t, doc in self.events if t == topic]
        return found[-1] if found else None


def ticket(job: int) -> dict[str, Any]:
    return {"lines": [{"text": f"JOB {job:04d}", "bold": True}, "1x Cheeseburger", {"cut": True}]}


JOB_RE = re.compile(r"JOB (\d{4})")


def copies(sim: PrinterSim) -> list[tuple[int, bool]]:
    """(job number, marked reprint) of every ticket the printer put out, in order."""
    out = []
    for t in sim.printed:
        m = JOB_RE.search(t.text)
        if m:
            out.append((int(m.group(1)), REPRINT_BANNER in t.text))
    return out
