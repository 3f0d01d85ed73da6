"""Orders that arrive in one turn of the loop are taken as one batch: one task, one journal write.

The bus hands a batch route every message of the turn together; the intake checks each on its
own and journals the valid ones in one write. Over a real Mosquitto the batches depend on how
packets fall into reads, so these tests drive the batch paths directly (a real journal, real
messages), and one test over the broker checks that every message of a batch is
acknowledged to the broker only once the batch was handled.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from edgehub.bus.connection import BusConnection
from edgehub.bus.message import Message
from edgehub.bus.payloads import Order
from edgehub.bus.topics import Topics
from edgehub.config import Config, LimitsConfig
from edgehub.errors import JournalError
from edgehub.intake import ORDER_ACCEPTED, Intake
from edgehub.store import Journal
from tests.conftest import Terminal, order


def message(topic: str, payload: bytes, mid: int = 1) -> Message:
    return Message(topic, payload, 1, False, mid)


def rows(path: Path, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


async def test_accept_orders_journals_a_batch_in_one_write_and_a_repeat_within_it_once(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    async with Journal(path, "s1") as journal:
        commits = await journal.accept_orders([Order("A-1", "pos-1", order("A-1")), Order("A-2", "pos-1", order("A-2")),
                                               Order("A-1", "pos-2", order("A-1"))])
        assert [c.duplicate for c in commits] == [False, False, True]
        assert commits[2].seq == commits[0].seq
        assert journal.stats.writes == 1  # one queue item, one savepoint, one future
        assert (await journal.accept_order(Order("A-2", "pos-1", order("A-2")))).duplicate
    assert rows(path, "SELECT order_id, terminal FROM orders ORDER BY seq") == [("A-1", "pos-1"), ("A-2", "pos-1")]
    assert rows(path, "SELECT msg_id FROM outbox ORDER BY seq") == [("order:A-1",), ("order:A-2",)]


async def test_a_batch_mixing_orders_repeats_rejections_and_dead_letters_answers_each(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    topics = Topics("s1")
    acks: list[tuple[str, dict[str, object]]] = []
    dead: list[dict[str, object]] = []

    class Bus:  # what the intake needs of the bus: acks without a wait, dead letters published
        def publish_nowait(self, topic: str, body: bytes, qos: int, properties: object = None) -> None:
            acks.append((topic, json.loads(body)))

        async def publish(self, topic: str, body: bytes, **kwargs: object) -> None:
            assert topic == topics.deadletter
            dead.append(json.loads(body))

    async with Journal(path, "s1") as journal:
        intake = Intake(topics, LimitsConfig(), journal, Bus())  # type: ignore[arg-type]
        taken: list[str] = []
        intake.signals.listen(ORDER_ACCEPTED, lambda o: taken.append(o.order_id))
        order_topic = f"{topics.root}/pos/pos-1/order"
        await intake.handle_batch([
            message(order_topic, json.dumps(order("B-1")).encode(), 1),
            message(order_topic, json.dumps(order("B-2", lines=[])).encode(), 2),
            message(order_topic, b"{not json", 3),
            message(order_topic, json.dumps(order("B-1")).encode(), 4),
            message(f"{topics.root}/pos/pos-1/other", b"{}", 5),
            message(order_topic, json.dumps(order("B-3")).encode(), 6),
        ])
    by_order = {(doc["order_id"], doc.get("duplicate")): doc for _, doc in acks}
    assert {topic for topic, _ in acks} == {f"{topics.root}/pos/pos-1/ack"}
    assert by_order[("B-1", False)]["status"] == "accepted"
    assert by_order[("B-1", True)]["status"] == "accepted"
    assert by_order[("B-3", False)]["status"] == "accepted"
    rejected = [doc for _, doc in acks if doc["status"] == "rejected"]
    assert [(d["order_id"], d["error"]) for d in rejected] == [("B-2", "lines: must have at least one line")]
    assert len(acks) == 4  # the two without a usable order_id cannot be acked: dead letters
    assert sorted(d["reason"].split(":")[0] for d in dead) == ["not an order topic", "payload is not JSON"]
    assert taken == ["B-1", "B-3"]  # the kitchen hears of each new order once
    assert (intake.stats.accepted, intake.stats.duplicates, intake.stats.rejected, intake.stats.deadlettered) == (
        2, 1, 1, 2)
    assert rows(path, "SELECT order_id FROM orders ORDER BY seq") == [("B-1",), ("B-3",)]
    reasons = [r for (r,) in rows(path, "SELECT reason FROM deadletters ORDER BY id")]
    assert len(reasons) == 3
    assert any(r.startswith("rejected B-2: lines:") for r in reasons)
    assert any(r.startswith("payload is not JSON") for r in reasons)
    assert "not an order topic" in reasons
    assert intake.in_progress == 0


async def test_the_messages_of_one_turn_go_to_a_batch_route_together() -> None:
    bus = BusConnection("127.0.0.1", 1, "u", "p", "c", Topics("s1"), "0")
    batches: list[list[int]] = []
    done = asyncio.Event()

    async def handle(messages: list[Message]) -> None:
        batches.append([m.mid for m in messages])
        if sum(map(len, batches)) == 5:
            done.set()

    bus.route_batch("edgehub/v1/s1/pos/+/order", handle)
    bus._accepting = True  # noqa: SLF001
    for mid in (1, 2, 3):  # one turn of the loop: one batch
        bus._dispatch(message("edgehub/v1/s1/pos/pos-1/order", b"{}", mid), None)  # noqa: SLF001
    assert bus.handling == 3
    await asyncio.sleep(0)
    for mid in (4, 5):  # a later turn: the next batch
        bus._dispatch(message("edgehub/v1/s1/pos/pos-2/order", b"{}", mid), None)  # noqa: SLF001
    await asyncio.wait_for(done.wait(), 5)
    await asyncio.sleep(0)
    assert batches == [[1, 2, 3], [4, 5]]
    assert bus.handling == 0


async def test_a_batch_is_acknowledged_to_the_broker_only_once_handled(hub, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The journal is stuck: none of the batch's messages is acknowledged to the broker, so a
    # restart of the hub now would have them all sent again; once it is free, all are acked.
    gate = asyncio.Event()
    accept = hub.journal.accept_orders
    sizes: list[int] = []

    async def stuck_accept(orders: list[Order]) -> object:
        sizes.append(len(orders))
        await gate.wait()
        return await accept(orders)

    monkeypatch.setattr(hub.journal, "accept_orders", stuck_accept)
    async with Terminal(config, "pos-1") as pos:
        for i in range(40):
            await pos.send(order(f"C-{i:02d}"))
        async with asyncio.timeout(10):
            while sum(sizes) < 40:
                await asyncio.sleep(0.05)
        assert hub.bus.handling == 40
        gate.set()
        acks = [await pos.ack() for _ in range(40)]
    assert sorted(a["order_id"] for a in acks) == [f"C-{i:02d}" for i in range(40)]
    assert {a["status"] for a in acks} == {"accepted"}
    async with asyncio.timeout(5):
        while hub.bus.handling:
            await asyncio.sleep(0.05)


async def test_a_failed_rejection_lets_the_rest_of_its_batch_finish_before_the_batch_ends(
        tmp_path: Path, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The bus acknowledges a batch to the broker when the handler ends: an order of the batch
    # must be journaled and acked by then, even if a rejection next to it could not be journaled.
    path = tmp_path / "journal.sqlite"
    topics = Topics("s1")
    acks: list[dict[str, object]] = []

    class Bus:
        def publish_nowait(self, topic: str, body: bytes, qos: int, properties: object = None) -> None:
            acks.append(json.loads(body))

    async with Journal(path, "s1") as journal:
        async def failing_deadletter(*args: object) -> None:
            raise JournalError("journal disk gone")

        monkeypatch.setattr(journal, "add_deadletter", failing_deadletter)
        intake = Intake(topics, LimitsConfig(), journal, Bus())  # type: ignore[arg-type]
        order_topic = f"{topics.root}/pos/pos-1/order"
        with pytest.raises(JournalError, match="journal disk gone"):
            await intake.handle_batch([message(order_topic, json.dumps(order("D-1", lines=[])).encode(), 1),
                                       message(order_topic, json.dumps(order("D-2")).encode(), 2)])
        assert [(a["order_id"], a["status"]) for a in acks] == [("D-2", "accepted")]
    assert rows(path, "SELECT order_id FROM orders") == [("D-2",)]
