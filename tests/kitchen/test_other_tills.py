"""An order changed by another till of the store (over a real Mosquitto and a real hub).

The rule a restaurant works by: any till may amend or cancel any order of the store (a table
handed over at a shift change, a colleague's mistake put right), the till that placed the order
is told on ``…/pos/{terminal}/notice``, and the change is kept with who made it (the journal's
``order_changes`` and its ``orders`` row for the cloud, the kitchen events' ``source``). A
self-order kiosk, which guests use, may change only its own orders.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgehub.bus.session import MqttSession
from edgehub.hub import Hub
from edgehub.store.outbox import decode_payload
from tests.conftest import Terminal, order, write_config
from tests.kitchen.conftest import KITCHEN_TOML, Screen

LINES = [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 1, "station": "grill", "line_id": "l1"},
         {"sku": "COLA-33", "name": "Cola", "qty": 2, "line_id": "l2"}]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box", terminals=("pos-1", "pos-2", "kiosk-1", "kds-1"), extra=KITCHEN_TOML)


class Till(Terminal):
    """A terminal that also reads its notices."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.notices: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    async def __aenter__(self) -> Till:
        await super().__aenter__()
        await self.client.subscribe(self.topics.notice(self.id), qos=1)
        return self

    async def _listen(self) -> None:
        async for message in self.client.messages:
            if message.topic == self.topics.notice(self.id):
                await self.notices.put(json.loads(message.payload))
            else:
                await self.acks.put(message)

    async def notice(self, timeout: float = 5.0) -> dict[str, Any]:
        async with asyncio.timeout(timeout):
            return await self.notices.get()


def rows(hub: Hub, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(hub.config.journal.path) as conn:
        return conn.execute(sql).fetchall()


def cloud_rows(hub: Hub, prefix: str) -> list[dict[str, Any]]:
    return [json.loads(decode_payload(payload)) for (payload,) in
            rows(hub, f"SELECT payload FROM outbox WHERE msg_id LIKE '{prefix}%' ORDER BY seq")]


async def test_another_till_may_amend_and_cancel_and_the_owner_is_told(hub: Hub) -> None:
    async with Till(hub.config, "pos-1") as owner, Till(hub.config, "pos-2") as other, \
            Screen(hub.config, "grill") as grill:
        await owner.send(order("T-1", table="T5", lines=LINES))
        assert (await owner.ack())["status"] == "accepted"
        assert (await grill.next("event"))["event"] == "created"

        amend = {"schema": "amend/1", "order_id": "T-1", "amend_id": "a1", "lines": [{**LINES[0], "qty": 2}]}
        await other.send(amend, topic=hub.topics.amend("pos-2"))
        ack = await other.ack()
        assert (ack["kind"], ack["status"], ack["duplicate"]) == ("amend", "accepted", False)
        told = await owner.notice()
        assert told == {"schema": "order-change/1", "kind": "amend", "order_id": "T-1", "amend_id": "a1",
                        "by": "pos-2", "terminal": "pos-1", "at": told["at"], "change": amend}
        event = await grill.next("event")
        assert (event["event"], event["source"]) == ("amended", "pos:pos-2")

        # A re-sent amend is acked again and changes (and tells) nothing more.
        await other.send(amend, topic=hub.topics.amend("pos-2"))
        assert (await other.ack())["duplicate"] is True

        cancel = {"schema": "cancel/1", "order_id": "T-1", "reason": "guests left"}
        await other.send(cancel, topic=hub.topics.cancel("pos-2"))
        assert (await other.ack())["status"] == "accepted"
        told = await owner.notice()
        assert (told["kind"], told["by"], told["change"]) == ("cancel", "pos-2", cancel)
        assert "amend_id" not in told
        await asyncio.sleep(0.3)
        assert owner.notices.empty() and owner.acks.empty()  # one notice per change, no stray acks
    assert rows(hub, "SELECT change_id, terminal FROM order_changes ORDER BY received_at") == [
        ("amend:T-1:a1", "pos-2"), ("cancel:T-1", "pos-2")]
    changes = cloud_rows(hub, "order-amend:") + cloud_rows(hub, "order-cancel:")
    assert [(c["schema"], c["terminal"], c["order_terminal"]) for c in changes] == [
        ("cloud-order-amend/1", "pos-2", "pos-1"), ("cloud-order-cancel/1", "pos-2", "pos-1")]
    assert hub.kitchen.stats.changes_by_other_tills == 2


async def test_a_kiosk_may_change_only_its_own_orders(hub: Hub) -> None:
    async with Till(hub.config, "pos-1") as till, Till(hub.config, "kiosk-1") as kiosk:
        await till.send(order("K-1", lines=LINES))
        await kiosk.send(order("K-2", lines=LINES[:1]))
        assert (await till.ack())["status"] == (await kiosk.ack())["status"] == "accepted"

        await kiosk.send({"schema": "cancel/1", "order_id": "K-1"}, topic=hub.topics.cancel("kiosk-1"))
        refused = await kiosk.ack()
        assert (refused["status"], refused["error"]) == (
            "rejected", "order_id: order 'K-1' was placed by terminal pos-1; a kiosk may cancel only its own orders")
        await kiosk.send({"schema": "amend/1", "order_id": "K-1", "amend_id": "k", "note": "free dessert"},
                         topic=hub.topics.amend("kiosk-1"))
        assert (await kiosk.ack())["error"].endswith("a kiosk may amend only its own orders")

        # Its own order, yes; and a till may change a kiosk's order (the kiosk is told).
        await kiosk.send({"schema": "amend/1", "order_id": "K-2", "amend_id": "k1", "note": "no ice"},
                         topic=hub.topics.amend("kiosk-1"))
        assert (await kiosk.ack())["status"] == "accepted"
        await till.send({"schema": "cancel/1", "order_id": "K-2"}, topic=hub.topics.cancel("pos-1"))
        assert (await till.ack())["status"] == "accepted"
        assert (await kiosk.notice())["by"] == "pos-1"
        await asyncio.sleep(0.3)
        assert till.notices.empty()
    assert rows(hub, "SELECT change_id, terminal FROM order_changes ORDER BY received_at") == [
        ("amend:K-2:k1", "kiosk-1"), ("cancel:K-2", "pos-1")]
    states = {state for (state,) in rows(hub, "SELECT state FROM tickets WHERE order_id='K-1'")}
    assert states == {"new"}  # the kiosk's refused cancel changed nothing


async def test_a_till_cannot_read_another_tills_notices(hub: Hub) -> None:
    # The notice goes into the owner's own tree, which only the owner (and the hub) may read.
    async with MqttSession("127.0.0.1", hub.config.broker.listen.port, username="pos-2", password="pw-pos-2",
                           client_id="test-nosy-pos-2") as nosy:
        await nosy.subscribe(hub.topics.notice("pos-1"), qos=1)
        async with Till(hub.config, "pos-1") as owner, Till(hub.config, "pos-2") as other:
            await owner.send(order("N-1", lines=LINES))
            await owner.ack()
            await other.send({"schema": "cancel/1", "order_id": "N-1"}, topic=hub.topics.cancel("pos-2"))
            await other.ack()
            await owner.notice()
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.5):
                async for _ in nosy.messages:
                    break
