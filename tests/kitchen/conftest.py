"""Kitchen test parts: a store with stations, a kitchen screen terminal, a frozen clock."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from drivers.escpos_render import render, ticket_from_doc
from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config
from edgehub.kitchen import Kitchen
from edgehub.store import Journal
from tests.conftest import write_config

KITCHEN_TOML = """
[kitchen]
default_station = "pass"
amber_after_s = 480
red_after_s = 720

[kitchen.stations.grill]
printer_role = "kitchen-printer"

[kitchen.stations.bar]
amber_after_s = 120
red_after_s = 300

[kitchen.rules.sku]
"COLA-33" = "bar"

[kitchen.rules.category]
salads = "cold"
"""


class FrozenClock:
    """Wall-clock time that moves only when a test says so."""

    def __init__(self, start: float = 1_700_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class SlipCollector:
    """A KitchenPrinter that keeps what it was given (the real queue prints it)."""

    def __init__(self) -> None:
        self.jobs: list[tuple[str, str, bytes]] = []  # rendered for an 80 mm printer, as staff would see
        self.arrived = asyncio.Event()

    async def submit(self, role: str, job_id: str, slip: dict[str, Any]) -> None:
        self.jobs.append((role, job_id, render(ticket_from_doc(slip))))
        self.arrived.set()


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box", terminals=("pos-1", "pos-2", "kds-1"), extra=KITCHEN_TOML)


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
async def journal(config: Config, clock: FrozenClock) -> AsyncIterator[Journal]:
    async with Journal(config.journal.path, config.store.id, 1.0, clock=clock) as opened:
        yield opened


@pytest.fixture
async def kitchen(config: Config, journal: Journal, clock: FrozenClock) -> AsyncIterator[Kitchen]:
    """The kitchen on a real journal, no broker (events still reach attached screens)."""
    async with Kitchen(
        config.kitchen,
        Topics(config.store.id),
        journal,
        config.store.id,
        config.limits,
        clock=clock,
        printer=SlipCollector(),
        tick_s=3600,
    ) as running:
        yield running


async def settle(kitchen: Kitchen) -> None:
    """Wait until the kitchen's background commits (new orders' tickets) are done."""
    for _ in range(200):
        pending = [t for t in kitchen._tasks if not t.done()]  # noqa: SLF001
        if not pending:
            return
        await asyncio.wait(pending, timeout=5)


class Screen:
    """A native KDS app on MQTT: the kds terminal's credentials, one station's topics."""

    def __init__(self, config: Config, station: str, terminal: str = "kds-1") -> None:
        self.topics = Topics(config.store.id)
        self.station = station
        self.client = MqttSession(
            config.broker.listen.host,
            config.broker.listen.port,
            username=terminal,
            password=f"pw-{terminal}",
            client_id=f"screen-{station}-{id(self)}",
        )
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any]]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Screen:
        await self.client.__aenter__()
        await self.client.subscribe(f"{self.topics.kds(self.station)}/#", qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            await self.inbox.put((message.topic, json.loads(message.payload)))

    async def next(self, leaf: str, timeout: float = 5.0) -> dict[str, Any]:
        """The next message on ``…/kds/{station}/{leaf}`` (others are skipped)."""
        async with asyncio.timeout(timeout):
            while True:
                topic, doc = await self.inbox.get()
                if topic.endswith("/" + leaf):
                    return doc
