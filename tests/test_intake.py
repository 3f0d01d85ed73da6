"""Order intake over a real Mosquitto: accepted, duplicate, rejected with a reason, dead-lettered."""

from __future__ import annotations

import asyncio
import json
import sqlite3

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.session import MqttSession
from edgehub.config import Config
from edgehub.hub import Hub
from tests.conftest import Terminal, order


def journal_rows(config: Config, sql: str) -> list[tuple[object, ...]]:
    with sqlite3.connect(config.journal.path) as conn:
        return conn.execute(sql).fetchall()


async def test_order_is_acked_after_commit_and_journaled_once(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as pos:
        await pos.send(order("A-1", table="T4", covers=2, rush=True))
        ack = await pos.ack()
        # order_no: the order's short number (the store's first order is 1)
        assert ack == {"schema": "ack/1", "order_id": "A-1", "status": "accepted", "duplicate": False,
                       "order_no": "1"}
        # The ack came after the commit: the row is there for any other reader right now.
        assert journal_rows(config, "SELECT order_id, terminal FROM orders") == [("A-1", "pos-1")]
        # (the kitchen's ticket rows for the cloud ride with a later commit: only the order's row is asked)
        assert journal_rows(config, "SELECT msg_id, stream FROM outbox WHERE stream = 'orders'") == [
            ("order:A-1", "orders")]


async def test_resent_order_is_acked_again_as_duplicate_and_not_journaled_twice(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as pos:
        for _ in range(3):
            await pos.send(order("A-2"))
        acks = [await pos.ack() for _ in range(3)]
    assert [a["status"] for a in acks] == ["accepted"] * 3
    assert sorted(a["duplicate"] for a in acks) == [False, True, True]
    assert journal_rows(config, "SELECT COUNT(*) FROM orders WHERE order_id='A-2'") == [(1,)]
    assert journal_rows(config, "SELECT COUNT(*) FROM outbox WHERE stream='orders'") == [(1,)]


async def test_an_order_id_reused_for_another_order_is_rejected_not_acked_as_a_duplicate(
    hub: Hub, config: Config
) -> None:
    """A duplicate ack tells the terminal its order is journaled. That is true of a re-send (same
    terminal, same lines), not of another order under a used id: acked so, it would be lost."""
    async with Terminal(config, "pos-1") as pos1, Terminal(config, "pos-2") as pos2:
        await pos1.send(order("C-1", lines=[{"sku": "BURGER", "qty": 1}]))
        assert (await pos1.ack())["duplicate"] is False
        await pos2.send(order("C-1", lines=[{"sku": "WINE", "qty": 3}]))
        other_terminal = await pos2.ack()
        await pos1.send(order("C-1", lines=[{"sku": "BURGER", "qty": 2}]))
        other_lines = await pos1.ack()
        await pos1.send(order("C-1", lines=[{"sku": "BURGER", "qty": 1}], note="sent again"))
        resend = await pos1.ack()
    assert other_terminal == {"schema": "ack/1", "order_id": "C-1", "status": "rejected", "duplicate": False,
                              "error": "order_id 'C-1' is taken by an order of terminal pos-1: "
                                       "order ids are unique in the store"}
    assert other_lines["status"] == "rejected" and "other lines" in other_lines["error"]
    assert resend == {"schema": "ack/1", "order_id": "C-1", "status": "accepted", "duplicate": True,
                      "order_no": "1"}
    ((terminal, payload),) = journal_rows(config, "SELECT terminal, payload FROM orders")
    assert terminal == "pos-1" and json.loads(str(payload)) == order("C-1", lines=[{"sku": "BURGER", "qty": 1}])
    assert [r[0] for r in journal_rows(config, "SELECT reason FROM deadletters")] == [
        "rejected C-1: order_id 'C-1' is taken by an order of terminal pos-1: order ids are unique in the store",
        "rejected C-1: order_id 'C-1' was taken by an order with other lines: a new order needs a new order_id "
        "(an amend changes an order)"]
    assert hub.intake.stats.conflicts == 2 and hub.intake.stats.duplicates == 1


async def test_invalid_orders_are_rejected_naming_the_field(hub: Hub, config: Config) -> None:
    cases = {
        "R-1": (order("R-1", lines=[]), "lines: must have at least one line"),
        "R-2": (order("R-2", lines=[{"sku": "X", "qty": 0}]), "lines[0].qty: must be a positive integer, got 0"),
        "R-3": (order("R-3", lines=[{"sku": "X", "qty": 1.5}]), "lines[0].qty: must be a positive integer, got 1.5"),
        "R-4": (order("R-4", lines=[{"sku": "", "qty": 1}]), "lines[0].sku: must not be empty"),
        "R-5": ({"order_id": "R-5", "lines": [{"sku": "X", "qty": 1}]}, "schema: must be 'order/1', got null"),
        "R-6": (order("R-6", lines=[{"qty": 1}] * 2), "lines[0].sku: missing"),
        "R-7": (order("R-7", note="x" * 70_000), "payload: is 70137 bytes, the limit is 65536"),
        "R-8": (order("R-8", lines=[{"sku": "X", "qty": 1, "station": "Grill Room"}]),
                "lines[0].station: must be lowercase"),
        "R-9": (order("R-9", rush="yes"), "rush: must be true or false"),
    }
    async with Terminal(config, "pos-1") as pos:
        for doc, _ in cases.values():
            await pos.send(doc)
        acks = {a["order_id"]: a for a in [await pos.ack() for _ in cases]}
    for order_id, (_, error) in cases.items():
        assert acks[order_id]["status"] == "rejected", order_id
        assert acks[order_id]["error"].startswith(error), (order_id, acks[order_id]["error"])
    assert journal_rows(config, "SELECT COUNT(*) FROM orders") == [(0,)]
    assert journal_rows(config, "SELECT COUNT(*) FROM deadletters") == [(len(cases),)]


async def test_payload_without_usable_order_id_goes_to_deadletter(hub: Hub, config: Config) -> None:
    reasons = {
        b"not json at all": "payload is not JSON",
        b"\xff\xfe\x00": "payload is UTF-16 text (byte-order mark FF FE at bytes 0-1)",
        b'{"a": "\xc3"}': "payload is not UTF-8 text (byte 7: 0xC3",
        b"[1, 2]": "payload must be a JSON object, got array",
        json.dumps({"schema": "order/1", "lines": []}).encode(): "order_id: missing",
        json.dumps(order("")).encode(): "order_id: must be a non-empty string",
        json.dumps(order("has space")).encode(): "order_id: must be 1-64 characters",
    }
    async with Terminal(config, "pos-1") as pos, MqttSession(
        "127.0.0.1", config.broker.listen.port, username=config.broker.hub_user,
        password=config.broker.hub_password, client_id="test-deadletter-reader",
    ) as reader:
        await reader.subscribe(hub.topics.deadletter, qos=1)
        for raw in reasons:
            await pos.send(raw)
        seen = []
        async with asyncio.timeout(5):
            async for message in reader.messages:
                seen.append(json.loads(message.payload))
                if len(seen) == len(reasons):
                    break
        assert pos.acks.empty()
    for letter, expected in zip(seen, reasons.values(), strict=True):
        assert letter["schema"] == "deadletter/1"
        assert letter["topic"] == hub.topics.order("pos-1")
        assert letter["reason"].startswith(expected), letter["reason"]
    assert journal_rows(config, "SELECT COUNT(*) FROM deadletters") == [(len(reasons),)]
    assert hub.healthy() == (True, "")


async def test_mqtt5_response_topic_and_correlation_data_are_honoured(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as pos:
        reply_topic = f"{hub.topics.root}/pos/pos-1/replies"
        await pos.client.subscribe(reply_topic, qos=1)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = reply_topic
        props.CorrelationData = b"req-77"
        await pos.send(order("C-1"), properties=props)
        message = await pos.message()
        assert message.topic == reply_topic
        assert message.correlation_data == b"req-77"
        assert json.loads(message.payload)["order_id"] == "C-1"


async def test_a_burst_waits_in_the_broker_not_in_the_hub(hub: Hub, config: Config, monkeypatch) -> None:  # type: ignore[no-untyped-def]
    # The journal is stuck: the hub acknowledges a message to the broker only once it was
    # handled, so the broker holds back all but its window (max_inflight_messages 100).
    gate = asyncio.Event()
    accept = hub.journal.accept_orders

    async def stuck_accept(*args: object, **kwargs: object) -> object:
        await gate.wait()
        return await accept(*args, **kwargs)

    monkeypatch.setattr(hub.journal, "accept_orders", stuck_accept)
    async with Terminal(config, "pos-1") as pos:
        for i in range(500):
            await pos.send(order(f"B-{i:03d}"))
        await asyncio.sleep(1.0)
        assert 50 <= hub.bus.handling <= 100
        gate.set()
        acks = [await pos.ack() for _ in range(500)]
    assert {a["status"] for a in acks} == {"accepted"}
    assert journal_rows(config, "SELECT COUNT(*) FROM orders") == [(500,)]
