"""Open checks shared across tills, through the box (a real Mosquitto, a real hub, real HTTP,
no cloud: the WAN plays no part). A till opens a check for a table, a waiter's handheld adds a
round to it, the kitchen cooks, the table pays: every terminal sees each step; two tills that
change one check at once are settled by the stated rule; a restarted box still has the checks."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.broker import MosquittoProcess
from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config, load_config
from edgehub.hub import Hub
from tests.conftest import API_TOKEN, write_config
from tests.kitchen.conftest import Screen

TERMINALS = ("pos-1", "pos-2", "hh-1", "kiosk-1", "kds-1")
EXTRA = """
[kitchen]
default_station = "wok"

[[role]]
name = "pinpad"
devices = []
"""


@pytest.fixture
def config(tmp_path: Path) -> Config:
    path = write_config(tmp_path / "box", terminals=TERMINALS, extra=EXTRA)
    text = path.read_text().replace('id = "hh-1"\nkind = "pos"', 'id = "hh-1"\nkind = "handheld"')
    path.write_text(text.replace('id = "kiosk-1"\nkind = "pos"', 'id = "kiosk-1"\nkind = "kiosk"'))
    return load_config(path)


@pytest.fixture
async def hub(config: Config, broker: MosquittoProcess) -> AsyncIterator[Hub]:
    async with Hub(config) as running:
        await asyncio.wait_for(running.ready.wait(), 10)
        yield running


def line(sku: str, name: str, cents: int, qty: int = 1, station: str = "wok", **more: Any) -> dict[str, Any]:
    return {"sku": sku, "name": name, "qty": qty, "price_cents": cents, "station": station, **more}


class Staff:
    """A till or handheld: sends orders and changes, hears its acks, the store's check events and
    "ready" for its own orders, and asks for the checks (MQTT 5 request/response inside its own
    tree)."""

    def __init__(self, config: Config, terminal: str) -> None:
        self.topics = Topics(config.store.id)
        self.id = terminal
        self.client = MqttSession(config.broker.listen.host, config.broker.listen.port, username=terminal,
                                     password=f"pw-{terminal}", client_id=f"staff-{terminal}-{time.monotonic_ns()}")
        self.acks: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.events: list[dict[str, Any]] = []
        self.ready: list[dict[str, Any]] = []  # order-ready/1 for its own orders
        self.replies: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Staff:
        await self.client.__aenter__()
        await self.client.subscribe(self.topics.ack(self.id), qos=1)
        await self.client.subscribe(f"{self.topics.root}/pos/{self.id}/answers/#", qos=1)
        await self.client.subscribe(self.topics.checks(self.id), qos=1)
        await self.client.subscribe(self.topics.checks_event, qos=1)
        await self.client.subscribe(self.topics.order_ready(self.id), qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            assert isinstance(message.payload, bytes)
            doc = json.loads(message.payload)
            if message.topic == self.topics.checks_event:
                self.events.append(doc)
            elif message.topic == self.topics.order_ready(self.id):
                self.ready.append(doc)
            elif message.topic == self.topics.ack(self.id):
                await self.acks.put(doc)
            else:
                await self.replies.put(doc)

    async def send(self, leaf: str, doc: dict[str, Any]) -> dict[str, Any]:
        await self.client.publish(f"{self.topics.root}/pos/{self.id}/{leaf}", json.dumps(doc), qos=1)
        async with asyncio.timeout(5):
            return await self.acks.get()

    async def checks(self, table: str | None = None, v5: bool = True) -> dict[str, Any]:
        props = None
        if v5:
            props = Properties(PacketTypes.PUBLISH)
            props.ResponseTopic = f"{self.topics.root}/pos/{self.id}/answers/checks"
            props.CorrelationData = b"c-1"
        body = json.dumps({"schema": "checks-request/1", **({"table": table} if table else {})})
        await self.client.publish(self.topics.checks_request(self.id), body, qos=1, properties=props)
        async with asyncio.timeout(5):
            return await self.replies.get()

    async def event_for(self, order_id: str, **want: Any) -> dict[str, Any]:
        """The newest check event of ``order_id`` whose check has every field of ``want``."""
        deadline = time.monotonic() + 10
        while True:
            for event in reversed(self.events):
                check = event["check"]
                if check["order_id"] == order_id and all(check.get(k) == v for k, v in want.items()):
                    return event
            assert time.monotonic() < deadline, f"no event for {order_id} with {want}: {self.events[-3:]}"
            await asyncio.sleep(0.02)


def basic(terminal: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{terminal}:pw-{terminal}".encode()).decode()}


async def test_a_table_opened_on_a_till_gets_a_round_from_a_handheld_is_cooked_and_paid(
        hub: Hub, config: Config) -> None:
    async with Staff(config, "pos-1") as till, Staff(config, "hh-1") as handheld, Screen(config, "wok") as wok:
        ack = await till.send("order", {"schema": "order/1", "order_id": "T5-1", "table": "T5", "covers": 2,
                                        "lines": [line("MAPO-01", "麻婆豆腐", 2800), line("RICE-03", "米饭", 200, 2)]})
        assert ack["status"] == "accepted"
        opened = await handheld.event_for("T5-1", state="ordered", version=1)
        assert opened["event"] == "opened" and opened["check"]["due_cents"] == 3200
        assert opened["check"]["table"] == "T5" and opened["check"]["terminal"] == "pos-1"
        assert opened["check"]["order_no"] == ack["order_no"]  # the number on the slips and the board

        # The waiter looks up table T5 on the handheld and adds a round of tea.
        listing = await handheld.checks(table="T5")
        assert listing["schema"] == "checks/1" and [c["order_id"] for c in listing["checks"]] == ["T5-1"]
        assert listing["seq"] >= opened["seq"]
        ack = await handheld.send("amend", {"schema": "amend/1", "order_id": "T5-1", "amend_id": "hh-round-2",
                                            "add_lines": [line("TEA-02", "菊花茶", 600, 2, station="bar")]})
        assert ack["status"] == "accepted", ack
        changed = await till.event_for("T5-1", version=2)
        check = changed["check"]
        assert [x["sku"] for x in check["lines"]] == ["MAPO-01", "RICE-03", "TEA-02"]
        assert check["due_cents"] == 4400 and check["changed_by"] == "hh-1"
        assert {t["station"] for t in check["tickets"]} == {"wok", "bar"}

        # The kitchen: the wok starts, then bumps; the bar bumps: the check is ready.
        created = await wok.next("event")
        ticket = created["ticket"]["ticket_id"]
        for action in ("start",):
            await wok.client.publish(wok.topics.kds_command("wok"), json.dumps(
                {"schema": "kds-command/1", "command_id": "c1", "action": action, "ticket_id": ticket}), qos=1)
        await till.event_for("T5-1", state="in_kitchen")
        # The check's "ready" is the kitchen's: it turns with the order-ready/1 the till hears
        # (edgehub/kitchen/progress.py), not with the wok's ticket alone.
        await hub.kitchen.command("wok", _bump("T5-1/wok/1"), "screen:test")
        await _until(lambda: [r["event"] for r in till.ready] == ["ticket_ready"], f"ready: {till.ready}")
        assert till.events[-1]["check"]["state"] == "in_kitchen" and till.ready[0]["state"] == "in_kitchen"
        await hub.kitchen.command("bar", _bump("T5-1/bar/1"), "screen:test")
        ready = await till.event_for("T5-1", state="ready", kitchen="ready")
        await _until(lambda: [r["event"] for r in till.ready] == ["ticket_ready", "order_ready"], f"{till.ready}")
        assert till.ready[-1]["state"] == "ready" and till.ready[-1]["order_no"] == ready["check"]["order_no"]

        # Paid in cash against the check (sale_id = the order id): paid, nothing left to cook: closed.
        async with aiohttp.ClientSession() as http:
            base = f"http://127.0.0.1:{config.api.listen.port}"
            async with http.get(base + "/pos/v1/checks", headers=basic("pos-2")) as r:
                assert r.status == 200 and [c["state"] for c in (await r.json())["checks"]] == ["ready"]
            await till.client.publish(hub.topics.role_command("pinpad", "pay", "pos-1"), json.dumps(
                {"schema": "pay/1", "payment_id": "cash-T5", "sale_id": "T5-1", "amount_cents": 4400,
                 "currency": "CNY", "tender": "cash"}), qos=1)
            closed = await handheld.event_for("T5-1", state="paid")
            assert closed["event"] == "closed" and closed["check"]["closed"] == "paid"
            assert closed["check"]["paid_cents"] == 4400
            async with http.get(base + "/pos/v1/checks", headers=basic("hh-1")) as r:
                assert (await r.json())["checks"] == []
        seqs = [e["seq"] for e in handheld.events]
        assert seqs == sorted(seqs) and len(set(seqs)) == len(seqs)
        status = await hub.status()
        assert status["checks"]["open"] == 0 and status["checks"]["closed"]["paid"] == 1


def _bump(ticket_id: str) -> Any:
    from edgehub.bus.payloads import KdsCommand

    return KdsCommand(command_id="b", action="bump", ticket_id=ticket_id, priority=None)


async def test_two_tills_change_one_check_at_once_the_first_wins_and_additions_all_land(
        hub: Hub, config: Config) -> None:
    async with Staff(config, "pos-1") as till1, Staff(config, "pos-2") as till2, Staff(config, "hh-1") as hh:
        ack = await till1.send("order", {"schema": "order/1", "order_id": "T9-1", "table": "T9",
                                         "lines": [line("DUMP-01", "饺子", 1800)]})
        assert ack["status"] == "accepted"
        version = (await till2.checks())["checks"][0]["version"]
        assert version == 1
        # Both tills replace the lines, each on version 1, at the same moment: one of them is first.
        replace_1 = {"schema": "amend/1", "order_id": "T9-1", "amend_id": "p1-a", "check_version": 1,
                     "lines": [line("DUMP-01", "饺子", 1800, 2)]}
        replace_2 = {"schema": "amend/1", "order_id": "T9-1", "amend_id": "p2-a", "check_version": 1,
                     "lines": [line("DUMP-01", "饺子", 1800), line("SOUP-05", "酸辣汤", 1500)]}
        acks = await asyncio.gather(till1.send("amend", replace_1), till2.send("amend", replace_2))
        statuses = sorted(a["status"] for a in acks)
        assert statuses == ["accepted", "rejected"], acks
        loser = next(a for a in acks if a["status"] == "rejected")
        winner_terminal = "pos-1" if acks[0]["status"] == "accepted" else "pos-2"
        assert loser["error"].startswith("check_version: order 'T9-1' is at version 2, not 1: "
                                         f"{winner_terminal} changed it at "), loser
        # The loser reads the check again and makes its change on version 2: it lands.
        again = next(c for c in (await (till2 if winner_terminal == "pos-1" else till1).checks())["checks"])
        assert again["version"] == 2
        retry = dict(replace_2 if winner_terminal == "pos-1" else replace_1, check_version=2,
                     amend_id="retry")
        sender = till2 if winner_terminal == "pos-1" else till1
        assert (await sender.send("amend", retry))["status"] == "accepted"

        # Two additions at once from a till and a handheld, on no version: both land.
        add_1 = {"schema": "amend/1", "order_id": "T9-1", "amend_id": "p1-add",
                 "add_lines": [line("BEER-09", "青岛啤酒", 1200, station="bar")]}
        add_2 = {"schema": "amend/1", "order_id": "T9-1", "amend_id": "hh-add",
                 "add_lines": [line("TEA-02", "菊花茶", 600, station="bar")]}
        acks = await asyncio.gather(till1.send("amend", add_1), hh.send("amend", add_2))
        assert [a["status"] for a in acks] == ["accepted", "accepted"], acks
        final = (await hh.event_for("T9-1", version=5))["check"]
        skus = [x["sku"] for x in final["lines"]]
        assert skus[-2:] in (["BEER-09", "TEA-02"], ["TEA-02", "BEER-09"])
        assert sorted(skus) == sorted([x["sku"] for x in retry["lines"]] + ["BEER-09", "TEA-02"])

        # A cancel made on an old version is refused too; the check stays open.
        stale_cancel = {"schema": "cancel/1", "order_id": "T9-1", "check_version": 4}
        ack = await till1.send("cancel", stale_cancel)
        assert ack["status"] == "rejected" and "is at version 5, not 4" in ack["error"]
        assert [c["order_id"] for c in (await till1.checks())["checks"]] == ["T9-1"]

        # The day's close counts the check as it stands: every round, at its price.
        lines = final["lines"]
        assert final["due_cents"] == sum(x["price_cents"] * x["qty"] for x in lines)


async def test_who_may_read_the_checks(hub: Hub, config: Config) -> None:
    async with Staff(config, "kiosk-1") as kiosk, Staff(config, "pos-1") as till:
        answer = await kiosk.checks()
        assert answer == {"schema": "checks/1", "error": "terminal kiosk-1 is a kiosk; only pos and handheld "
                          "terminals may read the store's checks"}
        plain = await till.checks(v5=False)  # no response topic: answered on pos/{id}/checks
        assert plain["schema"] == "checks/1" and plain["checks"] == []
    async with aiohttp.ClientSession() as http:
        base = f"http://127.0.0.1:{config.api.listen.port}"
        async with http.get(base + "/pos/v1/checks", headers=basic("kds-1")) as r:
            assert r.status == 403 and "kds" in (await r.json())["error"]
        async with http.get(base + "/api/v1/checks", headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["schema"] == "checks/1"


async def test_a_restarted_box_still_has_the_store_s_checks(config: Config, broker: MosquittoProcess) -> None:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        async with Staff(config, "pos-1") as till:
            await till.send("order", {"schema": "order/1", "order_id": "T3-1", "table": "T3",
                                      "lines": [line("MAPO-01", "麻婆豆腐", 2800)]})
            await till.send("amend", {"schema": "amend/1", "order_id": "T3-1", "amend_id": "a1",
                                      "add_lines": [line("RICE-03", "米饭", 200)]})
            await till.send("order", {"schema": "order/1", "order_id": "T4-1", "table": "T4",
                                      "lines": [line("MAPO-01", "麻婆豆腐", 2800)]})
            await till.send("cancel", {"schema": "cancel/1", "order_id": "T4-1"})
            await till.event_for("T3-1", version=2)
        before = [c for c in hub.checks.snapshot()]
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        after = hub.checks.snapshot()
        assert [c["order_id"] for c in after] == ["T3-1"]  # the cancelled one is closed
        assert after[0]["version"] == 2 and after[0]["due_cents"] == 3000
        # As it was (opened_at: the journal's time of the order, a few ms before the box's hook saw it).
        assert abs(after[0]["opened_at"] - before[0]["opened_at"]) < 1
        assert {k: v for k, v in after[0].items() if k not in ("updated_at", "opened_at")} == \
            {k: v for k, v in before[0].items() if k not in ("updated_at", "opened_at")}


async def _until(predicate: Any, what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.02)
