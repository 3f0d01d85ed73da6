""""Ready" back to the front, with a real hub and a real Mosquitto: the order's till hears when a
station's ticket and then the whole order are ready (and when it goes back, or is served), a
pager and a customer display hear every order, another till hears nothing, nobody but the hub
can speak on those topics, and the pickup board is kept retained for displays that connect late.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config, load_config
from edgehub.errors import MqttError
from edgehub.hub import Hub
from tests.conftest import SCREEN_TOKEN, Terminal, order, write_config
from tests.kitchen.conftest import KITCHEN_TOML

TWO_STATIONS = [
    {"sku": "BURG-01", "name": "Cheeseburger", "qty": 1, "station": "grill"},
    {"sku": "COLA-33", "name": "Cola", "qty": 2},  # the bar, by the sku rule
]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box", terminals=("pos-1", "pos-2", "kds-1", "pager-1", "display-1"),
                        extra=KITCHEN_TOML)


class Listener:
    """A terminal that only listens: its own credentials, the topics it subscribes to."""

    def __init__(self, config: Config, terminal: str, *topics: str) -> None:
        self.topics = topics
        self.client = MqttSession(config.broker.listen.host, config.broker.listen.port, username=terminal,
                                  password=f"pw-{terminal}", client_id=f"listen-{terminal}-{time.monotonic_ns()}")
        self.inbox: asyncio.Queue[tuple[str, dict[str, Any], bool]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Listener:
        await self.client.__aenter__()
        for topic in self.topics:
            await self.client.subscribe(topic, qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(MqttError):
            await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            await self.inbox.put((message.topic, json.loads(message.payload), message.retain))

    async def next(self, schema: str, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            while True:
                _, doc, _ = await self.inbox.get()
                if doc.get("schema") == schema:
                    return doc

    def drain(self) -> list[dict[str, Any]]:
        found = []
        while not self.inbox.empty():
            found.append(self.inbox.get_nowait()[1])
        return found


async def command(ws: aiohttp.ClientWebSocketResponse, action: str, ticket_id: str | None = None) -> dict[str, Any]:
    """A cook's tap or key on the station's screen; returns the hub's reply."""
    doc: dict[str, Any] = {"schema": "kds-command/1", "command_id": f"{action}-{time.monotonic_ns()}",
                           "action": action}
    if ticket_id:
        doc["ticket_id"] = ticket_id
    await ws.send_str(json.dumps(doc))
    async with asyncio.timeout(5):
        while True:
            reply: dict[str, Any] = json.loads((await ws.receive()).data)
            if reply["schema"] == "kds-reply/1" and reply["command_id"] == doc["command_id"]:
                return reply


@contextlib.asynccontextmanager
async def screen(hub: Hub, station: str) -> AsyncIterator[aiohttp.ClientWebSocketResponse]:
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"ws://127.0.0.1:{hub.api.port}/kds/{station}/ws?token={SCREEN_TOKEN}") as ws:
        yield ws


async def test_the_orders_till_pagers_and_displays_hear_ready_and_nobody_else(hub: Hub, config: Config) -> None:
    topics = Topics(config.store.id)
    async with (
        Terminal(config, "pos-1") as pos,
        Listener(config, "pos-1", topics.order_ready("pos-1")) as till,
        Listener(config, "pos-2", topics.order_ready("pos-1"), topics.all_order_ready) as other_till,
        Listener(config, "pager-1", topics.all_order_ready) as pager,
        Listener(config, "display-1", topics.all_order_ready, topics.pickup_board) as display,
        screen(hub, "grill") as grill,
        screen(hub, "bar") as bar,
    ):
        await pos.send(order("o1", table="T9", lines=TWO_STATIONS))
        ack = await pos.ack()
        assert ack["status"] == "accepted" and ack["order_no"] == "1"

        assert (await command(grill, "bump", "o1/grill/1"))["ok"]
        first = await till.next("order-ready/1")
        assert (first["event"], first["state"], first["order_id"], first["order_no"], first["table"]) == (
            "ticket_ready", "in_kitchen", "o1", "1", "T9")
        assert first["ticket"] == {"ticket_id": "o1/grill/1", "station": "grill", "state": "ready"}
        assert {t["station"]: t["state"] for t in first["tickets"]} == {"grill": "ready", "bar": "new"}

        assert (await command(bar, "bump", "o1/bar/1"))["ok"]
        ready = await till.next("order-ready/1")
        assert (ready["event"], ready["state"]) == ("order_ready", "ready") and ready["ready_at"] > 0
        assert {t["state"] for t in ready["tickets"]} == {"ready"}

        assert (await command(bar, "recall"))["ok"]  # the bar's last bumped: back to the kitchen
        back = await till.next("order-ready/1")
        assert (back["event"], back["state"]) == ("recalled", "in_kitchen")
        assert (await command(bar, "bump", "o1/bar/1"))["ok"]
        assert (await till.next("order-ready/1"))["event"] == "order_ready"
        assert (await command(grill, "serve", "o1/grill/1"))["ok"]  # half served: still waiting
        assert (await command(bar, "serve", "o1/bar/1"))["ok"]
        served = await till.next("order-ready/1")
        assert (served["event"], served["state"]) == ("served", "served")

        # The pager and the display heard every one of them; the other till none.
        for listener in (pager, display):
            events = [(await listener.next("order-ready/1"))["event"] for _ in range(5)]
            assert events == ["ticket_ready", "order_ready", "recalled", "order_ready", "served"]
        await asyncio.sleep(0.3)
        assert not [d for d in other_till.drain() if d.get("schema") == "order-ready/1"]


async def test_only_the_hub_speaks_on_ready_and_the_board(hub: Hub, config: Config) -> None:
    """A till (or a pager) that publishes a fake "ready" reaches nobody: pagers would buzz."""
    topics = Topics(config.store.id)
    async with Listener(config, "pager-1", topics.all_order_ready, topics.pickup_board) as pager:
        await pager.next("pickup-board/1")  # the retained board, as any display that connects gets it
        for terminal in ("pos-1", "pager-1", "display-1"):
            async with MqttSession("127.0.0.1", config.broker.listen.port, username=terminal,
                                   password=f"pw-{terminal}", client_id=f"spoof-{terminal}") as spoof:
                await spoof.publish(topics.order_ready("pos-1"), b'{"schema":"order-ready/1","event":"order_ready"}',
                                    qos=1)
                await spoof.publish(topics.pickup_board, b'{"schema":"pickup-board/1","ready":[]}', qos=1)
        await asyncio.sleep(0.5)
        assert pager.drain() == []


async def test_the_board_is_retained_and_tracks_preparing_and_ready(hub: Hub, config: Config) -> None:
    topics = Topics(config.store.id)
    async with Terminal(config, "pos-1") as pos, screen(hub, "grill") as grill:
        for n in range(3):
            await pos.send(order(f"b{n}"))
            assert (await pos.ack())["order_no"] == str(n + 1)
        assert (await command(grill, "bump", "b1/grill/1"))["ok"]
        # A display that connects now gets the board at once (retained).
        async with Listener(config, "display-1", topics.pickup_board) as display:
            async with asyncio.timeout(5):
                while True:
                    board = await display.next("pickup-board/1")
                    if board["ready"]:
                        break
            assert [e["order_no"] for e in board["preparing"]] == ["1", "3"]
            assert [e["order_no"] for e in board["ready"]] == ["2"]
            assert (board["preparing_total"], board["ready_total"]) == (2, 1)
    status = (await hub.status())["ready"]
    assert status["preparing"] == 2 and status["ready"] == 1 and status["published"] == 1


async def test_ready_waits_while_the_broker_is_away(tmp_path: Path) -> None:
    """A ticket bumped on a browser screen while the box's broker is down: the till hears
    "ready" once the broker is back, not never."""
    path = write_config(tmp_path / "box", terminals=("pos-1",), extra=KITCHEN_TOML)
    config = load_config(path)
    topics = Topics(config.store.id)
    broker = MosquittoProcess(config, die_with_parent=False)
    await broker.start()
    try:
        async with Hub(config) as hub:
            await asyncio.wait_for(hub.ready.wait(), 10)
            async with Terminal(config, "pos-1") as pos:
                await pos.send(order("w1"))
                await pos.ack()
            async with screen(hub, "grill") as grill:
                await broker.stop()
                async with asyncio.timeout(10):
                    while hub.bus.connected.is_set():
                        await asyncio.sleep(0.05)
                assert (await command(grill, "bump", "w1/grill/1"))["ok"]  # the screen works on
                await asyncio.sleep(2.5)  # the hub's reconnect backoff grows meanwhile
                assert hub.ready_board.status()["waiting"] == 1
                broker._stopping = False  # noqa: SLF001
                await broker.start()
                async with Listener(config, "pos-1", topics.order_ready("pos-1")) as till:
                    heard = await till.next("order-ready/1", timeout=15)
                assert (heard["event"], heard["order_id"]) == ("order_ready", "w1")
                assert hub.ready_board.status()["waited"] == 1
    finally:
        await broker.stop()


async def test_an_orders_progress_comes_from_the_journal_once_it_left_the_kitchen(hub: Hub, config: Config) -> None:
    """What open checks read (docs/kitchen.md): held while in the kitchen or at the pass, then
    read back from the journal."""
    async with Terminal(config, "pos-1") as pos, screen(hub, "grill") as grill, screen(hub, "bar") as bar:
        await pos.send(order("p1", lines=TWO_STATIONS))
        await pos.ack()
        async with asyncio.timeout(5):
            while hub.kitchen.progress.get("p1") is None:
                await asyncio.sleep(0.01)
        held = hub.kitchen.progress.get("p1")
        assert held is not None and held.state == "in_kitchen" and held.order_no == "1"
        for ws, ticket in ((grill, "p1/grill/1"), (bar, "p1/bar/1")):
            assert (await command(ws, "bump", ticket))["ok"]
        ready = await hub.kitchen.order_progress("p1")
        assert ready is not None and ready.state == "ready"
        for ws, ticket in ((grill, "p1/grill/1"), (bar, "p1/bar/1")):
            assert (await command(ws, "serve", ticket))["ok"]
        assert hub.kitchen.progress.get("p1") is None  # left the kitchen: no longer held
        served = await hub.kitchen.order_progress("p1")
        assert served is not None and served.state == "served"
        assert {t["state"] for t in served.doc()["tickets"]} == {"served"}
        assert await hub.kitchen.order_progress("no-such-order") is None


async def test_a_tills_own_order_number_is_the_one_called(hub: Hub, config: Config) -> None:
    """A till that numbers its own checks (or a pager's number) keeps its number on the ack, the
    tickets and "ready"; a number staff could not call is refused with the rule."""
    topics = Topics(config.store.id)
    async with (
        Terminal(config, "pos-1") as pos,
        Listener(config, "pos-1", topics.order_ready("pos-1")) as till,
        screen(hub, "grill") as grill,
    ):
        await pos.send(order("own-1", order_no="A17"))
        assert (await pos.ack())["order_no"] == "A17"
        assert (await command(grill, "bump", "own-1/grill/1"))["ok"]
        assert (await till.next("order-ready/1"))["order_no"] == "A17"
        assert hub.kitchen.snapshot("grill")["recent"][0]["order_no"] == "A17"
        await pos.send(order("own-2", order_no="table 4 please"))
        refused = await pos.ack()
        assert refused["status"] == "rejected" and refused["error"].startswith("order_no: must be 1-8 letters")
