"""What a box took alone, handed to the box that serves: the salvage after two boxes diverged.

Journals of a pair diverge when both served for a while: the standby took over while the old
primary still ran (the link between the boxes was cut while both reached terminals, or the old
primary was frozen and came back), or an old primary had records its standby never got. The
record both still share is the *fork*; a takeover started an epoch right after it, and the
epoch's row says where the journal's counters stood there (edgehub/pair/tables.py). Everything
a box's journal holds past those counters is what it did alone.

The box that steps down (it becomes the standby) sends that work to the serving box, which
takes it by the ids the store already uses, so nothing is counted twice:

- orders by ``order_id``: a re-sent order the serving box already has is a duplicate; a new one
  is journaled with its first ``received_at`` (its cloud message is then the same bytes, under
  the same ``msg_id``) and gets its kitchen tickets (docs/pair.md says what a cook sees);
- outbox rows of the other streams still waiting, by ``msg_id``;
- rows the stepping-down box's uplink delivered to the cloud after the fork are counted in the
  serving box's counters (produced and acked), so reconciliation still adds up;
- payments, split sales, order changes and closed days the serving box does not have, by id.

Then the stepping-down box sets its journal aside (kept, never deleted) and takes a copy of the
serving box's. Nothing of either journal is overwritten.
"""

from __future__ import annotations

import sqlite3
from typing import Any

from edgehub.pair.tables import Epoch
from edgehub.store.outbox import decode_payload

# Rows of these tables the serving box lacks are copied as they are, by their key.
ROW_TABLES = {
    "payments": "payment_id",
    "sales": "sale_id",
    "order_changes": "change_id",
    "day_closes": "day",
}
# Time-stamped tables have no sequence to measure from: rows changed within this margin before
# the fork's takeover are offered too (an id the serving box has is left as it is there).
CLOCK_MARGIN_S = 300.0
_TIME_COLUMN = {"payments": "updated_at", "sales": "created_at", "order_changes": "received_at",
                "day_closes": "closed_at"}
# The serving box makes these rows again itself: an order's cloud message with the order, the
# first event of each of its tickets with the ticket. Their counts are its own then.
REMADE_STREAMS = ("orders", "kitchen")


def collect(conn: sqlite3.Connection, base: Epoch) -> dict[str, Any]:
    """This journal's work past ``base`` (read on the stepping-down box)."""
    orders = [
        {"order_id": oid, "terminal": terminal, "received_at": at, "payload": payload}
        for oid, terminal, at, payload in conn.execute(
            "SELECT order_id, terminal, received_at, payload FROM orders WHERE seq > ? ORDER BY seq",
            (base.orders_seq,))
    ]
    outbox = [
        {"msg_id": msg_id, "stream": stream, "created_at": at,
         "payload": decode_payload(payload).decode("utf-8", "replace")}
        for msg_id, stream, at, payload in conn.execute(
            "SELECT msg_id, stream, created_at, payload FROM outbox WHERE seq > ? ORDER BY seq", (base.outbox_seq,))
        if stream != "orders"
    ]
    # Rows delivered to the cloud after the fork are gone from this outbox: only their count is left.
    sent: dict[str, int] = {}
    for stream, acked in conn.execute("SELECT stream, acked FROM outbox_streams"):
        before = int(base.counters.get(stream, {}).get("acked", 0))
        if acked > before:
            sent[stream] = acked - before
    rows: dict[str, list[dict[str, Any]]] = {}
    since = base.started_at - CLOCK_MARGIN_S
    for table, column in _TIME_COLUMN.items():
        try:
            cur = conn.execute(f"SELECT * FROM {table} WHERE {column} >= ?", (since,))
        except sqlite3.OperationalError:
            continue
        names = [d[0] for d in cur.description]
        rows[table] = [{name: _jsonable(value) for name, value in zip(names, row, strict=True)} for row in cur]
    return {"schema": "pair-salvage/1", "fork_epoch": base.epoch, "orders": orders, "outbox": outbox,
            "sent": sent, "rows": rows}


def _jsonable(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$hex": bytes(value).hex()}
    return value


def from_jsonable(value: Any) -> Any:
    if isinstance(value, dict) and set(value) == {"$hex"}:
        return bytes.fromhex(str(value["$hex"]))
    return value


def insert_rows(conn: sqlite3.Connection, table: str, rows: list[dict[str, Any]]) -> int:
    """Rows of ``table`` (one of ``ROW_TABLES``) this journal does not have, by key; how many
    were new. Columns this journal's table lacks are left out."""
    if table not in ROW_TABLES or not rows:
        return 0
    have = {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}
    added = 0
    for row in rows:
        names = [name for name in row if name in have]
        if ROW_TABLES[table] not in names:
            continue
        marks = ",".join("?" for _ in names)
        cur = conn.execute(f"INSERT OR IGNORE INTO {table}({','.join(names)}) VALUES ({marks})",
                           [from_jsonable(row[name]) for name in names])
        added += cur.rowcount
    return added


def count_sent(conn: sqlite3.Connection, sent: dict[str, int]) -> None:
    """Rows the other box delivered to the cloud after the fork, counted here as produced and
    acknowledged (their own rows are gone; the cloud holds them once)."""
    for stream, n in sent.items():
        if stream in REMADE_STREAMS or n <= 0:
            continue
        conn.execute("INSERT INTO outbox_streams(stream) VALUES (?) ON CONFLICT(stream) DO NOTHING", (stream,))
        conn.execute("UPDATE outbox_streams SET produced = produced + ?, acked = acked + ? WHERE stream = ?",
                     (n, n, stream))
