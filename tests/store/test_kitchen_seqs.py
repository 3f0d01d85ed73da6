"""Migration 7: each station's last kitchen event seq lives in a one-page table kept by a trigger,
not in an index every event touched; the kitchen numbers on from it after a restart."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from edgehub.kitchen.tickets import load
from edgehub.store.schema import SCHEMA_VERSION, migrate
from tests.conftest import ALL_TABLES

EVENT = ("INSERT INTO ticket_events(ticket_id, station, station_seq, event, at, source, detail) "
         "VALUES (?, ?, ?, 'created', 1.0, 'pos:pos-1', '{}')")


def journal_at(path: Path, version: int) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None)
    migrate(conn, ALL_TABLES, to=version)
    return conn


def test_migration_7_carries_every_stations_last_seq_and_drops_the_index(tmp_path: Path) -> None:
    conn = journal_at(tmp_path / "j.sqlite", 6)
    for station, seq in [("grill", 1), ("grill", 7), ("bar", 3), ("grill", 4), ("fryer", 12)]:
        conn.execute(EVENT, (f"O-{seq}/{station}/1", station, seq))

    assert migrate(conn, ALL_TABLES) == (6, SCHEMA_VERSION)

    assert dict(conn.execute("SELECT station, seq FROM kitchen_seqs")) == {"grill": 7, "bar": 3, "fryer": 12}
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'index'")}
    assert "ticket_events_station" not in indexes
    assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    assert load(conn, keep_bumped=20).seqs == {"grill": 7, "bar": 3, "fryer": 12}


def test_every_new_event_moves_its_stations_seq_forward_never_back(tmp_path: Path) -> None:
    conn = journal_at(tmp_path / "j.sqlite", SCHEMA_VERSION)
    assert load(conn, keep_bumped=20).seqs == {}
    conn.execute(EVENT, ("O-1/grill/1", "grill", 1))
    conn.execute(EVENT, ("O-2/grill/1", "grill", 2))
    conn.execute(EVENT, ("O-2/bar/1", "bar", 1))
    conn.execute(EVENT, ("O-0/grill/1", "grill", 1))  # an event journaled late never moves it back
    assert load(conn, keep_bumped=20).seqs == {"grill": 2, "bar": 1}
    # Rolled back with the commit that wrote the event: the seq is never ahead of the events.
    conn.execute("BEGIN")
    conn.execute(EVENT, ("O-3/grill/1", "grill", 3))
    conn.execute("ROLLBACK")
    assert load(conn, keep_bumped=20).seqs == {"grill": 2, "bar": 1}
