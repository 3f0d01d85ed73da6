"""What the outbox stores for the per-order streams, and migration 6 (docs/footprint.md).

Rows of ``orders`` and ``kitchen`` are stored deflated against a preset dictionary and the
outbox's msg_id and (stream, seq) indexes cover only the other streams; neither may change a
byte the cloud receives, lose a row of an upgraded box, or let a seq the cloud has seen be used
again.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from edgehub.bus import payloads
from edgehub.bus.payloads import Order
from edgehub.errors import OutboxError
from edgehub.kitchen.tickets import Event, Ticket, write_events
from edgehub.store import Journal
from edgehub.store import outbox as ob
from edgehub.store.schema import SCHEMA_VERSION, migrate
from edgehub.uplink import cloudapi
from tests.conftest import ALL_TABLES


def kitchen_body(n: int, version: int = 1) -> bytes:
    ticket = Ticket(ticket_id=f"T-{n}/grill/1", order_id=f"T-{n}", station="grill", terminal="pos-1",
                    created_at=1_800_000_000.25, updated_at=1_800_000_000.25, version=version,
                    lines=[{"line": 0, "sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "modifiers": [],
                            "key": "BURG-01|"}], header={"table": "T7", "covers": 2})
    event = Event(n, "created", ticket.doc(), 1_800_000_000.5, "pos:pos-1")
    return payloads.cloud_kitchen_raw("s1", event.body)


def test_per_order_rows_are_stored_smaller_and_read_back_byte_for_byte() -> None:
    body = kitchen_body(7)
    stored = ob.encode_payload("kitchen", body)
    assert stored[0] & 0x0F == 8 and len(stored) * 3 < len(body)  # a zlib (deflate) header
    assert ob.decode_payload(stored) == body
    order = json.dumps({"schema": "cloud-order/1", "store_id": "s1", "order": {"order_id": "A-1", "lines": []}},
                       separators=(",", ":")).encode()
    assert ob.decode_payload(ob.encode_payload("orders", order)) == order
    # Other streams stay plain JSON (support reads the audit rows as they are); so does a row
    # deflating would not make smaller, and plain rows written before read back as they are.
    assert ob.encode_payload("audit", body) == body
    assert ob.encode_payload("kitchen", b"{}") == b"{}"
    assert ob.decode_payload(b' {"a":1}') == b' {"a":1}'
    with pytest.raises(OutboxError, match="dictionary"):
        ob.decode_payload(b"x\xbb\x00\x00\x00\x01junk")


def test_the_uplink_sends_exactly_what_the_component_wrote() -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ALL_TABLES)
    bodies = {f"kitchen:T-{n}/grill/1:1": kitchen_body(n) for n in range(20)}
    for msg_id, body in bodies.items():
        assert ob.add_to_outbox(conn, "kitchen", msg_id, body, created_at=1.0)
    stored = dict(conn.execute("SELECT msg_id, payload FROM outbox"))
    assert all(stored[m] != b and len(stored[m]) < len(b) / 3 for m, b in bodies.items())
    rows = ob.read_rows(conn, 0, 100)
    assert {r.msg_id: r.payload for r in rows} == bodies
    assert [r.stream_seq for r in rows] == list(range(1, 21))
    sent = json.loads(cloudapi.envelope("s1", rows[3]))
    assert sent["body"] == json.loads(bodies[rows[3].msg_id]) and sent["stream_seq"] == 4


async def test_an_order_and_its_tickets_reach_the_outbox_as_before(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1", tables=ALL_TABLES, clock=lambda: 1_800_000_000.5) as journal:
        doc = {"schema": "order/1", "order_id": "A-1", "lines": [{"sku": "X", "qty": 1}]}
        assert not (await journal.accept_order(Order("A-1", "pos-1", doc))).duplicate
        assert (await journal.accept_order(Order("A-1", "pos-1", doc))).duplicate
        ticket = Ticket(ticket_id="A-1/grill/1", order_id="A-1", station="grill", terminal="pos-1",
                        created_at=1.0, updated_at=1.0, version=1, lines=[{"line": 0, "sku": "X", "qty": 1}])
        event = Event(1, "created", ticket.doc(), 1.0, "pos:pos-1")
        await journal.write(lambda conn: write_events(conn, "s1", [event]))
        rows = await journal.read(lambda conn: ob.read_rows(conn, 0, 10))
    assert [(r.msg_id, r.stream, r.stream_seq) for r in rows] == [
        ("order:A-1", "orders", 1), ("kitchen:A-1/grill/1:1", "kitchen", 1)]
    assert rows[0].payload == json.dumps(
        {"schema": "cloud-order/1", "store_id": "s1", "terminal": "pos-1", "received_at": 1_800_000_000.5,
         "order": doc}, separators=(",", ":")).encode()
    assert rows[1].payload == payloads.cloud_kitchen_raw("s1", event.body)


async def test_a_batch_of_orders_gets_one_outbox_row_each_spliced_as_if_encoded_whole(tmp_path: Path) -> None:
    """accept_orders splices the order's journaled JSON into its cloud envelope: the same bytes
    as encoding the envelope whole, also for what only the standard library encodes (an integer
    beyond 64 bits); a duplicate within the batch adds no row."""
    docs = [{"schema": "order/1", "order_id": f"B-{n}", "covers": 2**70 if n == 1 else n,
             "lines": [{"sku": "Ä", "qty": 1}]} for n in range(3)]
    orders = [Order(d["order_id"], "pos-2", d) for d in docs] + [Order("B-0", "pos-2", docs[0])]
    async with Journal(tmp_path / "j.sqlite", "s1", tables=ALL_TABLES, clock=lambda: 1_800_000_000.25) as journal:
        commits = await journal.accept_orders(orders)
        rows = await journal.read(lambda conn: ob.read_rows(conn, 0, 10))
    assert [c.duplicate for c in commits] == [False, False, False, True]
    assert [r.msg_id for r in rows] == ["order:B-0", "order:B-1", "order:B-2"]
    for row, doc in zip(rows, docs, strict=True):
        assert row.payload == json.dumps(
            {"schema": "cloud-order/1", "store_id": "s1", "terminal": "pos-2", "received_at": 1_800_000_000.25,
             "order": doc}, separators=(",", ":"), ensure_ascii=False).encode()


def schema_5_journal(path: Path) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("PRAGMA page_size = 1024")
    conn.execute("PRAGMA journal_mode = WAL")
    migrate(conn, ALL_TABLES, to=5)
    return conn


def test_migration_6_keeps_every_row_and_the_numbering(tmp_path: Path) -> None:
    conn = schema_5_journal(tmp_path / "j.sqlite")
    for n in range(6):
        ob.add_to_outbox(conn, "orders", f"order:O-{n}", {"n": n}, created_at=10.0 + n)
        ob.add_to_outbox(conn, "telemetry", f"telemetry:s1:{n}", {"n": n}, created_at=10.0 + n)
    # The cloud acknowledged the first rows: they are gone, their seqs and stream_seqs were seen.
    ob.delete_acked(conn, [(r.seq, r.stream, r.stream_seq) for r in ob.read_rows(conn, 0, 4)], at=20.0)
    conn.execute("DELETE FROM outbox WHERE seq = 12")  # the newest row gone too: max(seq) < the sequence
    everything = "SELECT seq, msg_id, stream, created_at, payload, stream_seq FROM outbox ORDER BY seq"
    before = conn.execute(everything).fetchall()
    counters = ob.stream_counters(conn)

    assert migrate(conn, ALL_TABLES) == (5, SCHEMA_VERSION)
    assert conn.execute(everything).fetchall() == before
    assert ob.stream_counters(conn) == counters
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    # New rows continue both numberings: no seq the cloud has seen is used again.
    assert ob.add_to_outbox(conn, "orders", "order:O-new", {"n": 9}, created_at=30.0)
    assert ob.add_to_outbox(conn, "telemetry", "telemetry:s1:new", {"n": 9}, created_at=30.0)
    (o, t) = ob.read_rows(conn, 12, 10)
    assert (o.seq, o.stream_seq, t.seq, t.stream_seq) == (13, 7, 14, 7)
    # The rare streams still refuse a msg_id twice; the per-order streams are not looked up.
    assert not ob.add_to_outbox(conn, "telemetry", "telemetry:s1:new", {"n": 9}, created_at=31.0)
    names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE tbl_name = 'outbox'")}
    assert names == {"outbox", "outbox_msg_id", "outbox_stream", "outbox_added", "outbox_removed"}


def test_rare_streams_use_their_index_and_per_order_streams_none(tmp_path: Path) -> None:
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ALL_TABLES)
    plan = " ".join(str(r) for r in conn.execute(
        "EXPLAIN QUERY PLAN " + ob._OLDEST[False], ("telemetry",)).fetchall())  # noqa: SLF001
    assert "outbox_stream" in plan
    insert = conn.execute("EXPLAIN QUERY PLAN INSERT INTO outbox(msg_id, stream, created_at, payload) "
                          "VALUES ('order:A', 'orders', 1, x'7b7d')").fetchall()
    assert insert == []
    # Oldest rows, TTL and quota work as before.
    for n in range(5):
        ob.add_to_outbox(conn, "telemetry", f"t{n}", {"pad": "x" * 100}, created_at=float(n))
        ob.add_to_outbox(conn, "kitchen", f"k{n}", {"n": n}, created_at=100.0 + n)
    counters = ob.stream_counters(conn)
    assert counters["telemetry"].oldest_at == 0.0 and counters["kitchen"].oldest_at == 100.0
    assert ob.evict_telemetry(conn, now=10.0, ttl_s=8.5, quota_bytes=250) == 3
    assert [r.msg_id for r in ob.read_rows(conn, 0, 20) if r.stream == "telemetry"] == ["t3", "t4"]


def test_a_journal_migrated_from_release_1_reads_its_old_plain_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    conn = schema_5_journal(path)
    ob.add_to_outbox(conn, "audit", "role:1", {"a": 1}, created_at=1.0)
    conn.execute("INSERT INTO outbox(msg_id, stream, created_at, payload) VALUES (?,?,?,?)",
                 ("kitchen:K/grill/1:1", "kitchen", 2.0, kitchen_body(1)))  # written plain by release 5
    conn.close()

    async def read() -> list[ob.OutboxRow]:
        async with Journal(path, "s1", tables=ALL_TABLES) as journal:
            return await journal.read(lambda c: ob.read_rows(c, 0, 10))

    rows = asyncio.run(read())
    assert [r.payload for r in rows] == [b'{"a":1}', kitchen_body(1)]
