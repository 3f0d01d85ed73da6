"""Replication records: exact values, a chain that notices any change, statements captured as
the journal's writer runs them, and a standby connection that refuses what is not a row change."""

from __future__ import annotations

import math
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edgehub.errors import PairError
from edgehub.pair.record import (
    Diverged,
    Record,
    RecordingConnection,
    decode_statements,
    encode_statements,
    genesis_hash,
    replay,
    seal,
    standby_authorizer,
)

values = st.one_of(st.none(), st.integers(min_value=-(2**63), max_value=2**63 - 1),
                   st.floats(allow_nan=False), st.text(), st.binary())


@settings(max_examples=200, deadline=None)
@given(rows=st.lists(st.tuples(values, values, values), min_size=1, max_size=5), many=st.booleans())
def test_every_sqlite_value_comes_back_exactly(rows: list[tuple[Any, ...]], many: bool) -> None:
    statements = [(True, "INSERT INTO t VALUES (?,?,?)", rows, len(rows))] if many else \
        [(False, "INSERT INTO t VALUES (?,?,?)", row, 1) for row in rows]
    back = decode_statements(encode_statements(statements))
    assert back == [(m, sql, p if m else tuple(p), n) for m, sql, p, n in statements]
    for _, _, params, _ in back:
        for row in (params if many else [params]):
            for value in row:
                if isinstance(value, float):
                    assert not math.isnan(value)


def test_a_timestamp_keeps_every_bit() -> None:
    """JSON or SQL text would round 1796537881.6348002 (a received_at) on the standby."""
    at = 1796537881.6348002
    (_, _, params, _), = decode_statements(encode_statements([(False, "UPDATE t SET x=?", (at,), 1)]))
    assert params == (at,)


def test_the_chain_notices_a_changed_record_and_one_out_of_place() -> None:
    first = seal(genesis_hash("lineage-1"), 1, 1, [(False, "INSERT INTO t VALUES (?)", (1,), 1)])
    second = seal(first.hash, 1, 2, [(False, "INSERT INTO t VALUES (?)", (2,), 1)])
    assert Record.decode(second.encode()) == second
    tampered = bytearray(second.encode())
    tampered[-2] ^= 0x01
    with pytest.raises(PairError, match="does not match its hash"):
        Record.decode(bytes(tampered))
    # Another lineage starts from another hash: its record 1 is not this one's.
    assert seal(genesis_hash("lineage-2"), 1, 1, [(False, "INSERT INTO t VALUES (?)", (1,), 1)]).hash != first.hash


def _db(path: Path, factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
    conn = sqlite3.connect(path, isolation_level=None, factory=factory)
    conn.executescript("CREATE TABLE IF NOT EXISTS t(id INTEGER PRIMARY KEY AUTOINCREMENT, x UNIQUE, n DEFAULT 0);"
                       "CREATE TABLE IF NOT EXISTS c(k PRIMARY KEY, total);"
                       "CREATE TRIGGER IF NOT EXISTS counted AFTER INSERT ON t BEGIN "
                       "INSERT INTO c VALUES ('t', 1) ON CONFLICT(k) DO UPDATE SET total = total + 1; END;")
    return conn


def test_the_writer_records_what_changed_rows_and_forgets_a_rolled_back_write(tmp_path: Path) -> None:
    primary = _db(tmp_path / "p.db", RecordingConnection)
    assert isinstance(primary, RecordingConnection)
    recording: list[Any] = []
    primary.record(recording)
    primary.execute("BEGIN IMMEDIATE")
    primary.execute("INSERT INTO t(x) VALUES (?)", ("a",))
    # Ignored, but it moved t's AUTOINCREMENT counter: recorded, or the standby numbers differently.
    primary.execute("INSERT OR IGNORE INTO t(x) VALUES (?)", ("a",))
    primary.execute("SELECT * FROM t").fetchall()  # a read: not recorded
    primary.execute("SAVEPOINT item")
    primary.execute("INSERT INTO t(x) VALUES (?)", ("b",))
    primary.execute("SAVEPOINT one_order")  # a write's own savepoint inside the journal's
    primary.execute("INSERT INTO t(x) VALUES (?)", ("c",))
    primary.execute("ROLLBACK TO one_order")
    primary.execute("RELEASE one_order")
    primary.execute("ROLLBACK TO item")  # the journal's failed write: both go
    primary.execute("RELEASE item")
    primary.execute("SAVEPOINT item")
    primary.execute("SAVEPOINT one_order")
    primary.execute("INSERT INTO t(x) VALUES (?)", ("d",))
    primary.execute("ROLLBACK TO one_order")  # one order of a batch that could not be written
    primary.execute("RELEASE one_order")
    primary.execute("RELEASE item")
    primary.executemany("UPDATE t SET n = ? WHERE x = ?", iter([(5, "a"), (6, "zz")]))  # a generator
    primary.execute("COMMIT")
    primary.record(None)
    assert [(m, sql.split()[0], c) for m, sql, _, c in recording] == [
        (False, "INSERT", 2), (False, "INSERT", 0), (True, "UPDATE", 1)]

    standby = _db(tmp_path / "s.db")
    standby.set_authorizer(standby_authorizer)
    record = seal(genesis_hash("x"), 1, 1, recording)
    standby.execute("BEGIN IMMEDIATE")
    assert replay(standby, record) == 3
    standby.execute("COMMIT")
    dump = "SELECT id, x, n FROM t ORDER BY id"
    assert standby.execute(dump).fetchall() == primary.execute(dump).fetchall() == [(1, "a", 5)]
    assert standby.execute("SELECT * FROM c").fetchall() == [("t", 1)]
    # The AUTOINCREMENT counter went where it went on the primary (the ignored "a" moved it to 2).
    assert standby.execute("SELECT seq FROM sqlite_sequence").fetchall() == \
        primary.execute("SELECT seq FROM sqlite_sequence").fetchall()


def test_a_copy_that_is_not_what_the_primary_had_is_caught_by_the_rows_changed(tmp_path: Path) -> None:
    standby = _db(tmp_path / "s.db")
    standby.execute("INSERT INTO t(x) VALUES ('a')")  # a row the primary never had
    record = seal(genesis_hash("x"), 1, 1, [(False, "INSERT OR IGNORE INTO t(x) VALUES (?)", ("a",), 2)])
    standby.execute("BEGIN")
    with pytest.raises(Diverged, match="changed 0 rows here, 2 on the primary"):
        replay(standby, record)
    standby.execute("ROLLBACK")


@pytest.mark.parametrize("sql", [
    "ATTACH DATABASE '/tmp/x.db' AS x",
    "PRAGMA journal_mode=DELETE",
    "DROP TABLE t",
    "CREATE TABLE evil(x)",
    "SELECT load_extension('x')",
])
def test_a_record_can_change_rows_and_nothing_else(tmp_path: Path, sql: str) -> None:
    standby = _db(tmp_path / "s.db")
    standby.set_authorizer(standby_authorizer)
    record = seal(genesis_hash("x"), 1, 1, [(False, sql, (), 1)])
    with pytest.raises(Diverged, match=r"not authorized|failed here"):
        replay(standby, record)
    assert standby.execute("SELECT name FROM sqlite_master WHERE name = 'evil'").fetchall() == []
