"""The pair's own tables in the journal, and what is read from them.

``pair_lineage``: the journal's lineage, a random id given when a box first served as the
primary of a pair; a copy has its primary's. ``pair_log``: the number, epoch and hash of every
record this journal holds (the newest ``LOG_KEEP``), written by each box itself in the same
transaction as the record's rows, so the newest row is always the state of the journal.
``pair_epochs``: one row per takeover: the box that took over, after which record, and where
the journal's counters stood at that moment (what a returning old primary took alone after that
point is found from them: edgehub/pair/salvage.py).

The pair module owns these tables: nobody else writes them. They are created by the pair (not by
the journal's migrations) when a box first runs as part of a pair; a single box has none. The
epoch and lineage rows are written through the journal like any change, so they are replicated;
``pair_log`` rows are not records themselves (each box writes its own when it commits or applies
a record).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from dataclasses import dataclass
from typing import Any

from edgehub.pair.record import genesis_hash

# Record hashes kept: a returning standby further behind than this gets a snapshot, and a fork
# older than this cannot be located (the peer is refused as diverged).
LOG_KEEP = 200_000
PRUNE_EVERY = 4096

TABLES = """
CREATE TABLE IF NOT EXISTS pair_lineage (
    id INTEGER PRIMARY KEY CHECK (id = 1),
    lineage TEXT NOT NULL,
    created_at REAL NOT NULL,
    created_by TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_log (
    seq INTEGER PRIMARY KEY,
    epoch INTEGER NOT NULL,
    hash BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS pair_epochs (
    epoch INTEGER PRIMARY KEY,
    box TEXT NOT NULL,
    started_at REAL NOT NULL,
    after_seq INTEGER NOT NULL,
    after_hash BLOB NOT NULL,
    orders_seq INTEGER NOT NULL,
    outbox_seq INTEGER NOT NULL,
    counters TEXT NOT NULL
);
"""

# Tables whose rows are the store's business: a journal with none of them is "empty" (a fresh
# box's), and may be replaced by a copy without anything being lost.
BUSINESS_TABLES = ("orders", "outbox", "payments", "print_jobs", "tickets", "order_changes", "day_closes")


def create(conn: sqlite3.Connection) -> None:
    conn.executescript(f"BEGIN IMMEDIATE;\n{TABLES}\nCOMMIT;")


@dataclass(frozen=True)
class Position:
    """Where a journal stands: its lineage ("" before its first primary), its epoch and its
    newest record (``seq`` 0 and the genesis hash before any)."""

    lineage: str
    epoch: int
    seq: int
    hash: bytes

    def as_dict(self) -> dict[str, Any]:
        return {"lineage": self.lineage, "epoch": self.epoch, "seq": self.seq, "hash": self.hash.hex()}


def position(conn: sqlite3.Connection) -> Position:
    row = conn.execute("SELECT lineage FROM pair_lineage WHERE id = 1").fetchone()
    lineage = row[0] if row else ""
    epoch_row = conn.execute("SELECT MAX(epoch) FROM pair_epochs").fetchone()
    epoch = int(epoch_row[0] or 0)
    last = conn.execute("SELECT seq, epoch, hash FROM pair_log ORDER BY seq DESC LIMIT 1").fetchone()
    if last is None:
        return Position(lineage, epoch, 0, genesis_hash(lineage))
    return Position(lineage, max(epoch, int(last[1])), int(last[0]), bytes(last[2]))


def hash_at(conn: sqlite3.Connection, seq: int) -> bytes | None:
    """The hash of record ``seq`` as this journal holds it (the genesis hash at 0); None when it
    is not (or no longer) in ``pair_log``."""
    if seq == 0:
        row = conn.execute("SELECT lineage FROM pair_lineage WHERE id = 1").fetchone()
        return genesis_hash(row[0]) if row else None
    found = conn.execute("SELECT hash FROM pair_log WHERE seq = ?", (seq,)).fetchone()
    return bytes(found[0]) if found else None


def oldest_logged(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT MIN(seq) FROM pair_log").fetchone()
    return int(row[0]) if row and row[0] is not None else 0


def log_record(conn: sqlite3.Connection, seq: int, epoch: int, digest: bytes) -> None:
    """The bookkeeping of one record, in the transaction holding its rows."""
    conn.execute("INSERT INTO pair_log(seq, epoch, hash) VALUES (?,?,?)", (seq, epoch, digest))
    if seq % PRUNE_EVERY == 0:
        conn.execute("DELETE FROM pair_log WHERE seq <= ?", (seq - LOG_KEEP,))


def new_lineage(conn: sqlite3.Connection, box: str) -> str:
    """Give a journal that has none its lineage (a write function: replicated)."""
    lineage = os.urandom(12).hex()
    conn.execute("INSERT INTO pair_lineage(id, lineage, created_at, created_by) VALUES (1,?,?,?)",
                 (lineage, time.time(), box))
    return lineage


def _sequence(conn: sqlite3.Connection, table: str) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = ?", (table,)).fetchone()
    return int(row[0]) if row else 0


def counters(conn: sqlite3.Connection) -> dict[str, dict[str, int]]:
    rows = conn.execute("SELECT stream, produced, acked, dropped FROM outbox_streams").fetchall()
    return {stream: {"produced": produced, "acked": acked, "dropped": dropped}
            for stream, produced, acked, dropped in rows}


@dataclass(frozen=True)
class Epoch:
    epoch: int
    box: str
    started_at: float
    after_seq: int
    after_hash: bytes
    orders_seq: int
    outbox_seq: int
    counters: dict[str, dict[str, int]]

    def as_dict(self) -> dict[str, Any]:
        return {"epoch": self.epoch, "box": self.box, "started_at": self.started_at, "after_seq": self.after_seq,
                "after_hash": self.after_hash.hex(), "orders_seq": self.orders_seq, "outbox_seq": self.outbox_seq,
                "counters": self.counters}

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> Epoch:
        return cls(int(doc["epoch"]), str(doc["box"]), float(doc["started_at"]), int(doc["after_seq"]),
                   bytes.fromhex(doc["after_hash"]), int(doc["orders_seq"]), int(doc["outbox_seq"]),
                   dict(doc["counters"]))


def begin_epoch(conn: sqlite3.Connection, box: str, after: Position, at: float) -> Epoch:
    """Start the next epoch (a write function: this box takes over). Its row says where the
    journal stood: the record it follows and the counters a salvage measures from."""
    epoch = Epoch(after.epoch + 1, box, at, after.seq, after.hash, _sequence(conn, "orders"),
                  _sequence(conn, "outbox"), counters(conn))
    conn.execute("INSERT INTO pair_epochs(epoch, box, started_at, after_seq, after_hash, orders_seq, outbox_seq, "
                 "counters) VALUES (?,?,?,?,?,?,?,?)",
                 (epoch.epoch, box, at, after.seq, after.hash, epoch.orders_seq, epoch.outbox_seq,
                  json.dumps(epoch.counters, sort_keys=True)))
    return epoch


def epochs(conn: sqlite3.Connection) -> list[Epoch]:
    rows = conn.execute("SELECT epoch, box, started_at, after_seq, after_hash, orders_seq, outbox_seq, counters "
                        "FROM pair_epochs ORDER BY epoch").fetchall()
    return [Epoch(e, box, at, seq, bytes(h), o, ob, json.loads(c)) for e, box, at, seq, h, o, ob, c in rows]


def epoch_starts(conn: sqlite3.Connection) -> list[tuple[int, int]]:
    """(first outbox seq, epoch) of each epoch, oldest first: the epoch an outbox row was numbered
    in is that of the last start at or below its seq (docs/cloud.md). Empty on a single box."""
    try:
        rows = conn.execute("SELECT outbox_seq + 1, epoch FROM pair_epochs ORDER BY epoch").fetchall()
    except sqlite3.OperationalError:  # a single box: no pair tables
        return []
    return [(int(first), int(epoch)) for first, epoch in rows]


def epoch_of(starts: list[tuple[int, int]], seq: int) -> int:
    epoch = 0
    for first, number in starts:
        if seq >= first:
            epoch = number
        else:
            break
    return epoch


def is_empty(conn: sqlite3.Connection) -> bool:
    """No row of the store's business in this journal (a box that never served)."""
    for table in BUSINESS_TABLES:
        try:
            if conn.execute(f"SELECT 1 FROM {table} LIMIT 1").fetchone():
                return False
        except sqlite3.OperationalError:
            continue
    return True


def business_rows(conn: sqlite3.Connection) -> int:
    total = 0
    for table in BUSINESS_TABLES:
        try:
            total += int(conn.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])
        except sqlite3.OperationalError:
            continue
    return total
