"""One poisoned order never fails another, and every order-shaped input gets exactly one answer.

Over a real Mosquitto and a real hub: the text a terminal sends is UTF-8 JSON with one meaning,
or it is refused with the reason and the right byte; an order with a usable order_id and a
poisoned field (a lone surrogate, NUL, a duplicate key, a number out of range, nesting too
deep) is acked ``rejected`` naming the field; and a batch holding such an order still takes
every good order in it. The batch paths are also driven directly (real journal, real
Message objects), where which orders share a batch is not up to how packets fall.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

import pytest

from edgehub.bus.message import Message
from edgehub.bus.payloads import Order
from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config, LimitsConfig
from edgehub.errors import JournalError
from edgehub.hub import Hub
from edgehub.intake import ORDER_ACCEPTED, Intake
from edgehub.store import Journal
from tests.conftest import Terminal, order

GOOD_LINE = b'"lines":[{"sku":"BURG-01","name":"Cheeseburger","qty":1}]'


def raw_order(order_id: str, extra: bytes = b"", lines: bytes = GOOD_LINE) -> bytes:
    """An order written by hand: what json.dumps cannot make (duplicate keys, NaN, ...)."""
    head = b'{"schema":"order/1","order_id":"' + order_id.encode() + b'",' + lines
    return head + (b"," + extra if extra else b"") + b"}"


def journal_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    with sqlite3.connect(path) as conn:
        return conn.execute(sql).fetchall()


class DeadLetters:
    """A support reader on ``…/hub/deadletter``."""

    def __init__(self, config: Config, hub: Hub) -> None:
        self.client = MqttSession("127.0.0.1", config.broker.listen.port, username=config.broker.hub_user,
                                  password=config.broker.hub_password, client_id=f"test-dead-{time.monotonic_ns()}")
        self.topic = hub.topics.deadletter

    async def __aenter__(self) -> DeadLetters:
        await self.client.__aenter__()
        await self.client.subscribe(self.topic, qos=1)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.client.__aexit__(None, None, None)

    async def take(self, n: int, timeout: float = 5.0) -> list[dict[str, Any]]:
        seen: list[dict[str, Any]] = []
        async with asyncio.timeout(timeout):
            async for message in self.client.messages:
                seen.append(json.loads(message.payload))
                if len(seen) == n:
                    return seen
        return seen


# --- UTF-8 only, with the right byte ------------------------------------------------------------

TEXT = json.dumps({"schema": "order/1", "order_id": "U-1", "lines": [{"sku": "面-01", "name": "牛肉面", "qty": 1}]},
                  ensure_ascii=False)
SURROGATE_BYTES = raw_order("U-2", b'"note":"\xed\xa0\x80"')
LATIN_1 = TEXT.replace("牛肉面", "crème brûlée").encode("latin-1", errors="replace")
NOT_UTF8 = {
    # Taken as an order before: json.loads guesses UTF-16 and UTF-32 and skips a UTF-8 BOM.
    "utf-16 with BOM": (TEXT.encode("utf-16"), "payload is UTF-16 text (byte-order mark FF FE at bytes 0-1)"),
    "utf-16-be without BOM": (TEXT.encode("utf-16-be"), "payload looks like UTF-16 or UTF-32 text (NUL at byte 0)"),
    "utf-32 with BOM": (TEXT.encode("utf-32"), "payload is UTF-32 text (byte-order mark FF FE 00 00 at bytes 0-3)"),
    "utf-8 with BOM": (b"\xef\xbb\xbf" + TEXT.encode(), "payload starts with a UTF-8 byte-order mark EF BB BF"),
    # UTF-8 that encodes a surrogate (CESU-8, as Java's modified UTF-8 writes it): not UTF-8.
    "encoded surrogate": (SURROGATE_BYTES, f"payload is not UTF-8 text (byte {SURROGATE_BYTES.index(0xED)}: 0xED"),
    "bad first byte": (b"\xff" + TEXT.encode()[1:], "payload is not UTF-8 text (byte 0: 0xFF"),
    "cut in a character": (TEXT.encode()[:TEXT.encode().index("面".encode()) + 2],
                           f"payload is not UTF-8 text (byte {TEXT.encode().index('面'.encode())}: 0xE9"),
    # Before, invalid UTF-8 was reported at a byte of json.loads' guess, not where it was.
    "latin-1": (LATIN_1, f"payload is not UTF-8 text (byte {LATIN_1.index(0xE8)}: 0xE8"),
}


async def test_text_that_is_not_utf8_is_refused_with_the_reason_and_the_right_byte(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as pos, DeadLetters(config, hub) as dead:
        for raw, _ in NOT_UTF8.values():
            await pos.send(raw)
        letters = await dead.take(len(NOT_UTF8))
        await asyncio.sleep(0.2)
        assert pos.acks.empty()
    for name, letter, (raw, reason) in zip(NOT_UTF8, letters, NOT_UTF8.values(), strict=True):
        assert letter["reason"].startswith(reason), (name, letter["reason"])
        assert letter["bytes"] == len(raw)
    assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders") == [(0,)]


def test_the_byte_offsets_point_at_the_bad_byte() -> None:
    # The offsets above, checked against the bytes themselves.
    for name, (raw, reason) in NOT_UTF8.items():
        if "(byte " in reason:
            at = int(reason.split("(byte ")[1].split(":")[0])
            assert f"0x{raw[at]:02X}" in reason, name


# --- poisoned fields: rejected naming the field, exactly one answer -------------------------------

POISONED = {
    # (payload, the rejected ack's error)
    "P-1": (raw_order("P-1", lines=b'"lines":[{"sku":"X","qty":1,"note":"\\ud800 extra cheese"}]'),
            "lines[0].note: contains a lone surrogate (U+D800 at character 0)"),
    "P-2": (raw_order("P-2", b'"table":"T4\\u0000"'), "table: contains NUL (U+0000) at character 2"),
    "P-3": (raw_order("P-3", b'"order_id":"P-3"'), "order_id: appears more than once"),
    "P-4": (raw_order("P-4", lines=b'"lines":[{"sku":"X","qty":1,"qty":5}]'), "lines[0].qty: appears more than once"),
    "P-5": (raw_order("P-5", b'"price":NaN'), "price: NaN is not a JSON number"),
    "P-6": (raw_order("P-6", b'"price":1e400'), "price: 1e400 is out of range"),
    "P-7": (raw_order("P-7", b'"ref":1' + b"0" * 5000), "ref: 100000000000…000000 (5001 characters) is out of range"),
    "P-8": (raw_order("P-8", b'"ref":12345678901234567890'), "ref: 12345678901234567890 is out of range"),
    "P-9": (raw_order("P-9", b'"meta":' + b'{"a":' * 40 + b"1" + b"}" * 40),
            "meta.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a.a: nested deeper than 32 levels"),
    "P-10": (raw_order("P-10", b'"\\ud83d":"half an emoji"'), '["\\ud83d"]: the key contains a lone surrogate'),
    "P-11": (raw_order("P-11", lines=b'"lines":[{"sku":"X","qty":1,"line_id":7}]'),
             "lines[0].line_id: must be a string, got number"),
    "P-12": (raw_order("P-12", lines=b'"lines":[{"sku":"X","qty":1,"modifiers":["no onion","\\u0000"]}]'),
             "lines[0].modifiers[1]: contains NUL"),
}


async def test_poisoned_fields_are_rejected_naming_the_field_and_nothing_is_kept(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as pos:
        for raw, _ in POISONED.values():
            await pos.send(raw)
        acks = [await pos.ack() for _ in POISONED]
        await asyncio.sleep(0.2)
        assert pos.acks.empty()  # exactly one answer each
    by_id = {ack["order_id"]: ack for ack in acks}
    assert set(by_id) == set(POISONED)
    for order_id, (_, error) in POISONED.items():
        assert by_id[order_id]["status"] == "rejected", (order_id, by_id[order_id])
        assert by_id[order_id]["error"].startswith(error), (order_id, by_id[order_id]["error"])
    assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders") == [(0,)]
    assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM outbox") == [(0,)]
    assert len(journal_rows(config.journal.path, "SELECT id FROM deadletters")) == len(POISONED)


async def test_an_order_id_given_twice_with_two_values_is_a_dead_letter(hub: Hub, config: Config) -> None:
    # Accepted under the last one before. Which id would the ack answer? Neither is certain.
    raw = raw_order("D-1", b'"order_id":"D-2"')
    async with Terminal(config, "pos-1") as pos, DeadLetters(config, hub) as dead:
        await pos.send(raw)
        (letter,) = await dead.take(1)
        await asyncio.sleep(0.2)
        assert pos.acks.empty()
    assert letter["reason"] == "order_id: appears more than once, with different values: no one id to answer under"
    assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders") == [(0,)]


async def test_unknown_fields_are_kept_and_good_unicode_is_taken(hub: Hub, config: Config) -> None:
    doc = order("K-1", lines=[{"sku": "面-01", "name": "牛肉面 🍜", "qty": 2, "line_id": "l-1"}],
                kitchen_note="少辣", ext={"pos_version": "7.2", "loyalty": {"points": 120, "tier": "金"}})
    async with Terminal(config, "pos-1") as pos:
        await pos.send(json.dumps(doc, ensure_ascii=False).encode())
        assert (await pos.ack())["status"] == "accepted"
    ((payload,),) = journal_rows(config.journal.path, "SELECT payload FROM orders")
    assert json.loads(payload) == doc


# --- a batch with a poisoned order in it --------------------------------------------------------


def message(topic: str, payload: bytes, mid: int, response_topic: str | None = None) -> Message:
    return Message(topic, payload, 1, False, mid, response_topic=response_topic)


class Bus:
    """What the intake needs of the bus. Like paho, it refuses to publish on a topic with a
    wildcard (ValueError)."""

    def __init__(self) -> None:
        self.acks: list[tuple[str, dict[str, Any]]] = []
        self.dead: list[dict[str, Any]] = []

    def publish_nowait(self, topic: str, body: bytes, qos: int, properties: object = None) -> None:
        if "+" in topic or "#" in topic:
            raise ValueError("Publish topic cannot contain wildcards.")
        self.acks.append((topic, json.loads(body)))

    async def publish(self, topic: str, body: bytes, **kwargs: object) -> None:
        self.dead.append(json.loads(body))


async def test_one_poisoned_order_fails_nothing_else_of_its_batch(tmp_path: Path) -> None:
    # Before: the lone surrogate failed the batch's journal write (UnicodeEncodeError), and no
    # order of the batch was acked; the hub logged "handling N messages … failed".
    topics = Topics("s1")
    bus = Bus()
    path = tmp_path / "journal.sqlite"
    async with Journal(path, "s1") as journal:
        intake = Intake(topics, LimitsConfig(), journal, bus)  # type: ignore[arg-type]
        kitchen: list[str] = []
        intake.signals.listen(ORDER_ACCEPTED, lambda o: kitchen.append(o.order_id))
        pos1, pos2 = topics.order("pos-1"), topics.order("pos-2")
        await intake.handle_batch([
            message(pos2, json.dumps(order("G-1")).encode(), 1),
            message(pos1, POISONED["P-1"][0], 2),
            message(pos2, json.dumps(order("G-2")).encode(), 3),
            message(pos1, POISONED["P-7"][0], 4),
            message(pos1, TEXT.encode("utf-16"), 5),
            message(pos2, json.dumps(order("G-3")).encode(), 6),
            message(pos1, POISONED["P-5"][0], 7),
        ])
    status = {doc["order_id"]: doc["status"] for _, doc in bus.acks}
    assert status == {"G-1": "accepted", "G-2": "accepted", "G-3": "accepted",
                      "P-1": "rejected", "P-7": "rejected", "P-5": "rejected"}
    assert len(bus.acks) == 6 and len(bus.dead) == 1
    assert kitchen == ["G-1", "G-2", "G-3"]
    assert journal_rows(path, "SELECT order_id FROM orders ORDER BY seq") == [("G-1",), ("G-2",), ("G-3",)]
    assert journal_rows(path, "SELECT msg_id FROM outbox ORDER BY seq") == [
        ("order:G-1",), ("order:G-2",), ("order:G-3",)]


async def test_an_order_the_journal_cannot_write_leaves_the_rest_of_its_write_written(tmp_path: Path) -> None:
    # An order that got past every check and still cannot be stored (here: a document no encoder
    # writes, handed in directly) costs only itself.
    path = tmp_path / "journal.sqlite"
    async with Journal(path, "s1") as journal:
        commits = await journal.accept_orders([
            Order("J-1", "pos-1", order("J-1")), Order("J-2", "pos-1", order("J-2", note="\ud800")),
            Order("J-3", "pos-1", order("J-3"))])
    assert [(c.duplicate, bool(c.error)) for c in commits] == [(False, False), (False, True), (False, False)]
    assert "surrogates not allowed" in commits[1].error
    assert journal_rows(path, "SELECT order_id FROM orders ORDER BY seq") == [("J-1",), ("J-3",)]
    assert journal_rows(path, "SELECT msg_id FROM outbox ORDER BY seq") == [("order:J-1",), ("order:J-3",)]


async def test_a_batch_write_that_fails_is_written_again_without_the_failing_order(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    topics = Topics("s1")
    bus = Bus()
    path = tmp_path / "journal.sqlite"
    async with Journal(path, "s1") as journal:
        accept = journal.accept_orders
        writes: list[list[str]] = []

        async def failing_with(orders: list[Order]) -> object:
            writes.append([o.order_id for o in orders])
            if any(o.order_id == "W-2" for o in orders):
                raise JournalError("journal commit failed: database or disk is full")
            return await accept(orders)

        monkeypatch.setattr(journal, "accept_orders", failing_with)
        intake = Intake(topics, LimitsConfig(), journal, bus)  # type: ignore[arg-type]
        pos = topics.order("pos-1")
        await intake.handle_batch([message(pos, json.dumps(order(f"W-{i}")).encode(), i) for i in (1, 2, 3)])
        # A journal that fails for every order: none is acked (the terminals re-send later).
        monkeypatch.setattr(journal, "accept_orders", _always_failing)
        await intake.handle_batch([message(pos, json.dumps(order(f"V-{i}")).encode(), i) for i in (1, 2)])
    assert writes == [["W-1", "W-2", "W-3"], ["W-1"], ["W-2"], ["W-3"]]
    acks = {doc["order_id"]: doc for _, doc in bus.acks}
    assert set(acks) == {"W-1", "W-2", "W-3"}
    assert acks["W-1"]["status"] == acks["W-3"]["status"] == "accepted"
    assert acks["W-2"]["status"] == "rejected"
    assert acks["W-2"]["error"] == "payload: could not be journaled: journal commit failed: database or disk is full"
    assert intake.stats.retried_alone == 5
    assert journal_rows(path, "SELECT order_id FROM orders ORDER BY seq") == [("W-1",), ("W-3",)]


async def _always_failing(orders: list[Order]) -> object:
    raise JournalError("journal commit failed: disk I/O error")


async def test_an_ack_the_client_cannot_publish_costs_no_other_order_its_ack(tmp_path: Path) -> None:
    # An ack the MQTT client refuses to publish (paho raises ValueError, e.g. for a wildcard in a
    # response topic) broke off the acks of the rest of the batch. Response topics are checked
    # before (sec19); this stands for whatever the client may still refuse.
    topics = Topics("s1")
    bus = Bus()
    refused = f"{topics.root}/pos/pos-1/replies/refused"
    publish = bus.publish_nowait

    def refusing(topic: str, body: bytes, qos: int, properties: object = None) -> None:
        if topic == refused:
            raise ValueError("Invalid topic.")
        publish(topic, body, qos, properties)

    bus.publish_nowait = refusing  # type: ignore[method-assign]
    async with Journal(tmp_path / "journal.sqlite", "s1") as journal:
        intake = Intake(topics, LimitsConfig(), journal, bus)  # type: ignore[arg-type]
        pos = topics.order("pos-1")
        await intake.handle_batch([message(pos, json.dumps(order("A-1")).encode(), 1, refused),
                                   message(pos, json.dumps(order("A-2")).encode(), 2)])
    assert [(doc["order_id"], doc["status"]) for _, doc in bus.acks] == [("A-2", "accepted")]
    assert intake.stats.ack_failures == 1 and intake.stats.accepted == 2


async def test_a_hook_that_fails_on_one_order_leaves_the_batch_acked(tmp_path: Path) -> None:
    topics = Topics("s1")
    bus = Bus()
    async with Journal(tmp_path / "journal.sqlite", "s1") as journal:
        intake = Intake(topics, LimitsConfig(), journal, bus)  # type: ignore[arg-type]
        made: list[str] = []

        def kitchen(o: Order) -> None:
            if o.order_id == "H-1":
                raise KeyError("station")
            made.append(o.order_id)

        intake.signals.listen(ORDER_ACCEPTED, kitchen)
        pos = topics.order("pos-1")
        await intake.handle_batch([message(pos, json.dumps(order(f"H-{i}")).encode(), i) for i in (1, 2)])
    assert [(doc["order_id"], doc["status"]) for _, doc in bus.acks] == [("H-1", "accepted"), ("H-2", "accepted")]
    assert made == ["H-2"]


# --- the run: one till re-sends poison every 10 ms, another takes orders at 100/s ------------


async def test_a_till_flooding_poison_costs_another_till_no_ack(hub: Hub, config: Config) -> None:
    # Before: 28 of 600 good orders went unacked (their batch failed with the poison in it).
    # Here no good order is sent twice: each must be acked on its first send.
    good = 300
    stop = asyncio.Event()
    poison = raw_order("BAD-1", lines=b'"lines":[{"sku":"X","qty":1,"note":"\\ud800"}]')

    async with Terminal(config, "pos-1") as bad, Terminal(config, "pos-2") as pos:
        async def flood() -> int:
            # One every 10 ms, not waiting for each PUBACK (a till re-sending in a tight loop).
            sends: list[asyncio.Task[None]] = []
            began = time.monotonic()
            while not stop.is_set():
                sends.append(asyncio.create_task(bad.send(poison)))
                await asyncio.sleep(max(0.0, began + len(sends) / 100 - time.monotonic()))
            await asyncio.gather(*sends)
            return len(sends)

        acks: dict[str, list[dict[str, Any]]] = {}
        acked_at: dict[str, float] = {}

        async def collect() -> None:
            while True:
                ack = await pos.ack(timeout=30)
                acked_at.setdefault(ack["order_id"], time.monotonic())
                acks.setdefault(ack["order_id"], []).append(ack)

        flooding = asyncio.create_task(flood())
        collecting = asyncio.create_task(collect())
        sent_at: dict[str, float] = {}
        started = time.monotonic()
        for i in range(good):
            await asyncio.sleep(max(0.0, started + i / 100 - time.monotonic()))
            order_id = f"G-{i:03d}"
            sent_at[order_id] = time.monotonic()
            await pos.send(order(order_id))
        deadline = time.monotonic() + 10
        while len(acks) < good and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.3)  # a second ack of any order would be here by now
        collecting.cancel()
        stop.set()
        poisons = await flooding
        await asyncio.sleep(0.5)
        answers = 0
        while not bad.acks.empty():
            doc = json.loads(bad.acks.get_nowait().payload)  # type: ignore[arg-type]
            assert doc["status"] == "rejected" and doc["error"].startswith("lines[0].note: contains a lone surrogate")
            answers += 1
    missing = sorted(set(sent_at) - set(acks))
    assert not missing, f"{len(missing)} good orders never acked: {missing[:10]}"
    latency = sorted(acked_at[i] - sent_at[i] for i in sent_at)
    print(f"\n{good} good orders beside {poisons} poisoned ones: ack p50 {latency[good // 2] * 1000:.1f} ms, "
          f"p99 {latency[int(good * 0.99)] * 1000:.1f} ms")
    assert all(len(a) == 1 and a[0]["status"] == "accepted" and not a[0]["duplicate"] for a in acks.values())
    assert answers == poisons  # every poison answered once
    assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders") == [(good,)]
