"""What other parts of the hub read of the journal's accepted orders (the ``orders`` table is the
journal's own: ``Journal.accept_orders`` writes it). Each function runs in the caller's read or
write, on its connection."""

from __future__ import annotations

import sqlite3
from typing import NamedTuple

from edgehub.store.timeorder import first_rowid_since


class StoredOrder(NamedTuple):
    seq: int
    order_id: str
    terminal: str
    received_at: float
    payload: str  # the order's JSON as the terminal sent it


_COLUMNS = "seq, order_id, terminal, received_at, payload"


def order(conn: sqlite3.Connection, order_id: str) -> StoredOrder | None:
    row = conn.execute(f"SELECT {_COLUMNS} FROM orders WHERE order_id=?", (order_id,)).fetchone()
    return StoredOrder(*row) if row is not None else None


def orders_after(conn: sqlite3.Connection, seq: int) -> list[StoredOrder]:
    """The orders accepted after journal position ``seq``, in order."""
    return [StoredOrder(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM orders WHERE seq > ? ORDER BY seq", (seq,))]


def orders_between(conn: sqlite3.Connection, start: float, end: float) -> list[StoredOrder]:
    """The orders received from ``start`` (included) to ``end`` (excluded)."""
    return [StoredOrder(*row) for row in conn.execute(
        f"SELECT {_COLUMNS} FROM orders WHERE received_at >= ? AND received_at < ?", (start, end))]


def any_order_between(conn: sqlite3.Connection, start: float, end: float) -> bool:
    row = conn.execute("SELECT EXISTS(SELECT 1 FROM orders WHERE received_at >= ? AND received_at < ?)",
                       (start, end)).fetchone()
    return bool(row[0])


def last_seq(conn: sqlite3.Connection) -> int:
    """The journal position of the newest order (0 before any)."""
    (seq,) = conn.execute("SELECT COALESCE(MAX(seq), 0) FROM orders").fetchone()
    return int(seq)


def latest_received_at(conn: sqlite3.Connection) -> float | None:
    """When the order with the latest timestamp was received (None before any)."""
    (latest,) = conn.execute("SELECT MAX(received_at) FROM orders").fetchone()
    return float(latest) if latest is not None else None


def first_seq_since(conn: sqlite3.Connection, since: float) -> int | None:
    """The journal position of the first order received at or after ``since`` (None: none)."""
    return first_rowid_since(conn, "orders", "received_at", since)
