"""The journal's schema: each owner's tables, versioned and migrated forward on its own.

A part of the hub that keeps rows declares its ``Tables``: the tables it owns (no other module
reads or writes them with SQL; they use the owner's functions), its migrations (``Step``s: only
ever appended, never edited, each in its own transaction, so a power cut mid-upgrade leaves the
previous version intact) and its retention rules. ``schema_owners`` holds each owner's version.
The journal's own tables (orders, the outbox, dead letters) are ``JOURNAL``, always first.

Before owners had versions the whole file had one (``PRAGMA user_version`` 1 to
``LEGACY_VERSIONS``, one migration each, each now split among its owners as ``Step.legacy``).
Such a journal gets each owner's version from the steps its version had made; ``user_version``
is ``FORMAT`` from then on, so an older edgehub refuses the file rather than migrating it again.
"""

from __future__ import annotations

import functools
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from edgehub.errors import JournalError

LEGACY_VERSIONS = 11  # the journal-wide versions (user_version) made before owners had their own
FORMAT = LEGACY_VERSIONS + 1  # user_version from then on: each owner's tables are versioned in schema_owners
SCHEMA_VERSION = FORMAT
LEGACY_ROW = "-"  # the schema_owners row that keeps the user_version a journal had before owners

# (conn, cutoff, position walked from) -> (rows deleted, position reached, done)
Prune = Callable[[sqlite3.Connection, float, int], tuple[int, int, bool]]


@dataclass(frozen=True)
class Step:
    """One migration of an owner's tables: ``sql`` (then ``then``, for rows another owner's
    function reads) in one transaction. ``legacy``: the journal-wide version that made it."""

    sql: str
    legacy: int | None = None
    then: Callable[[sqlite3.Connection], None] | None = None


@dataclass(frozen=True)
class Rule:
    """A retention rule: ``prune`` deletes, in batches, rows of ``table`` older than the cutoff."""

    table: str
    prune: Prune


@dataclass(frozen=True)
class OrderRows:
    """What an owner keeps per order, for the journal's order retention: ``holds`` says the
    order must stay (a ticket still on a screen); ``forget`` deletes the owner's rows of it."""

    holds: Callable[[sqlite3.Connection, str], bool]
    forget: Callable[[sqlite3.Connection, str], None]


@dataclass(frozen=True)
class Tables:
    owner: str
    names: tuple[str, ...]  # every table (and trigger) it owns
    steps: tuple[Step, ...]
    retention: tuple[Rule, ...] = ()
    order_rows: OrderRows | None = None


# The outbox's per-stream counters, kept by triggers. Created by step 2 and again by step 3,
# which rebuilds the table (a dropped table takes its triggers along): one text for both.
_OUTBOX_TRIGGERS = """    CREATE TRIGGER outbox_added AFTER INSERT ON outbox BEGIN
        INSERT INTO outbox_streams(stream, produced, pending, pending_bytes, last_seq, last_stream_seq)
            VALUES (NEW.stream, 1, 1, length(CAST(NEW.payload AS BLOB)), NEW.seq, 1)
            ON CONFLICT(stream) DO UPDATE SET produced = produced + 1, pending = pending + 1,
                pending_bytes = pending_bytes + excluded.pending_bytes, last_seq = excluded.last_seq,
                last_stream_seq = last_stream_seq + 1;
        UPDATE outbox SET stream_seq = (SELECT last_stream_seq FROM outbox_streams WHERE stream = NEW.stream)
            WHERE seq = NEW.seq;
    END;
    CREATE TRIGGER outbox_removed AFTER DELETE ON outbox BEGIN
        UPDATE outbox_streams SET pending = pending - 1,
            pending_bytes = pending_bytes - length(CAST(OLD.payload AS BLOB)) WHERE stream = OLD.stream;
    END;
    """

JOURNAL = Tables(
    owner="journal",
    names=("orders", "outbox", "outbox_new", "outbox_streams", "outbox_added", "outbox_removed", "deadletters",
           "schema_owners"),
    steps=(
        # 1: orders, the outbox bound for the cloud, and dead letters kept for support.
        Step("""
    CREATE TABLE orders (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        order_id TEXT NOT NULL UNIQUE,
        terminal TEXT NOT NULL,
        received_at REAL NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE TABLE outbox (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        msg_id TEXT NOT NULL UNIQUE,
        stream TEXT NOT NULL,
        created_at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    CREATE INDEX outbox_stream ON outbox(stream, seq);
    CREATE TABLE deadletters (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        received_at REAL NOT NULL,
        topic TEXT NOT NULL,
        reason TEXT NOT NULL,
        payload BLOB NOT NULL
    );
    """, legacy=1),
        # 2 (uplink): every outbox row also numbered within its stream (the cloud's gap check) and
        # the per-stream counters kept by triggers (backlog in O(1); produced = pending + acked +
        # dropped). Rows already waiting are numbered in store order; nothing was ever deleted before.
        Step("""
    ALTER TABLE outbox ADD COLUMN stream_seq INTEGER;
    UPDATE outbox SET stream_seq = r.n FROM
        (SELECT seq, ROW_NUMBER() OVER (PARTITION BY stream ORDER BY seq) AS n FROM outbox) AS r
        WHERE r.seq = outbox.seq;
    CREATE TABLE outbox_streams (
        stream TEXT PRIMARY KEY,
        produced INTEGER NOT NULL DEFAULT 0,
        pending INTEGER NOT NULL DEFAULT 0,
        pending_bytes INTEGER NOT NULL DEFAULT 0,
        acked INTEGER NOT NULL DEFAULT 0,
        dropped INTEGER NOT NULL DEFAULT 0,
        last_seq INTEGER NOT NULL DEFAULT 0,
        last_stream_seq INTEGER NOT NULL DEFAULT 0,
        last_acked_stream_seq INTEGER NOT NULL DEFAULT 0,
        last_acked_at REAL
    );
    INSERT INTO outbox_streams(stream, produced, pending, pending_bytes, last_seq, last_stream_seq)
        SELECT stream, COUNT(*), COUNT(*), SUM(length(CAST(payload AS BLOB))), MAX(seq), COUNT(*)
        FROM outbox GROUP BY stream;
""" + _OUTBOX_TRIGGERS, legacy=4),
        # 3 (footprint): the outbox rebuilt without the two indexes every order's and every kitchen
        # event's row touched (insert and delete), a page per commit each in the WAL. A msg_id of
        # the per-order streams is unique by construction: an order's row is added only when its
        # order_id is new (orders.order_id is UNIQUE), an order change's only with its change row
        # (change_id is its key), a kitchen row names its ticket's version, which only grows. The
        # other streams keep a unique msg_id and their (stream, seq) index, partial, for
        # telemetry's TTL and quota and the oldest row of a rare stream. seq keeps counting where
        # it was (a seq the cloud has seen is never used again); every row and both triggers stay.
        Step("""
    CREATE TABLE outbox_new (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        msg_id TEXT NOT NULL,
        stream TEXT NOT NULL,
        created_at REAL NOT NULL,
        payload BLOB NOT NULL,
        stream_seq INTEGER
    );
    INSERT INTO outbox_new(seq, msg_id, stream, created_at, payload, stream_seq)
        SELECT seq, msg_id, stream, created_at, payload, stream_seq FROM outbox ORDER BY seq;
    DELETE FROM sqlite_sequence WHERE name = 'outbox_new';
    INSERT INTO sqlite_sequence(name, seq) SELECT 'outbox_new', seq FROM sqlite_sequence WHERE name = 'outbox';
    DROP TABLE outbox;
    ALTER TABLE outbox_new RENAME TO outbox;
    CREATE UNIQUE INDEX outbox_msg_id ON outbox(msg_id) WHERE stream NOT IN ('orders', 'kitchen');
    CREATE INDEX outbox_stream ON outbox(stream, seq) WHERE stream NOT IN ('orders', 'kitchen');
""" + _OUTBOX_TRIGGERS, legacy=6),
    ),
)

_OWNERS_TABLE = "CREATE TABLE IF NOT EXISTS schema_owners (owner TEXT PRIMARY KEY, version INTEGER NOT NULL)"


def statements(sql: str) -> Iterator[str]:
    """The statements of ``sql``, each whole (a trigger's body stays with its CREATE)."""
    buf = ""
    for piece in sql.split(";")[:-1]:
        buf += piece + ";"
        if sqlite3.complete_statement(buf):
            yield buf.strip()
            buf = ""
    rest = buf + sql.rsplit(";", 1)[-1]
    if rest.strip():
        raise ValueError(f"an incomplete SQL statement: {rest.strip()[:60]!r}")


def _owners(tables: Sequence[Tables]) -> list[Tables]:
    found: dict[str, Tables] = {JOURNAL.owner: JOURNAL}
    for t in tables:
        if found.setdefault(t.owner, t) is not t:
            raise ValueError(f"two sets of tables are owned by {t.owner!r}")
    return list(found.values())


def version_of(conn: sqlite3.Connection, tables: Tables) -> int:
    """The version of ``tables`` in this journal (one whose versions are kept by owner)."""
    row = conn.execute("SELECT version FROM schema_owners WHERE owner=?", (tables.owner,)).fetchone()
    if row is not None:
        return int(row[0])
    (legacy,) = conn.execute("SELECT version FROM schema_owners WHERE owner=?", (LEGACY_ROW,)).fetchone()
    return sum(1 for step in tables.steps if step.legacy is not None and step.legacy <= legacy)


def apply(conn: sqlite3.Connection, tables: Tables) -> int:
    """Run the steps of ``tables`` this journal has not had, in the caller's transaction (the
    journal's writer brings a component's tables in late this way). Returns the steps run."""
    current = _checked_version(conn, tables)
    for n in range(current, len(tables.steps)):
        _run(conn, tables, n)
    _note_versions(conn, [tables])
    return len(tables.steps) - current


def migrate(conn: sqlite3.Connection, tables: Sequence[Tables] = (), to: int = FORMAT) -> tuple[int, int]:
    """Bring the journal's own tables and each of ``tables`` up to date, each step in its own
    transaction; returns (user_version before, after). ``to`` below ``FORMAT`` makes a journal as
    that journal-wide version left it (for upgrade tests)."""
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > FORMAT:
        raise JournalError(
            f"journal schema version {current} is newer than this edgehub ({FORMAT}); "
            "install the newer edgehub again or restore a backup"
        )
    owners = _owners(tables)
    level = conn.isolation_level
    conn.isolation_level = None  # the transactions here are this function's own
    try:
        if to < FORMAT:
            for version in range(current + 1, to + 1):
                _transaction(conn, functools.partial(_legacy_step, conn, owners, version))
            return current, to
        if current < FORMAT:
            _transaction(conn, lambda: _start_owners(conn, current))
        for owner in owners:
            for n in range(_checked_version(conn, owner), len(owner.steps)):
                _transaction(conn, functools.partial(_run, conn, owner, n))
        _transaction(conn, functools.partial(_note_versions, conn, owners))
    finally:
        conn.isolation_level = level
    return current, FORMAT


def _checked_version(conn: sqlite3.Connection, tables: Tables) -> int:
    current = version_of(conn, tables)
    if current > len(tables.steps):
        raise JournalError(f"the journal's {tables.owner} tables are version {current}, newer than this "
                           f"edgehub's ({len(tables.steps)}); install the newer edgehub again or restore a backup")
    return current


def _run(conn: sqlite3.Connection, tables: Tables, n: int) -> None:
    """Step ``n`` (from 0) of ``tables``, and the owner's version after it."""
    step = tables.steps[n]
    for statement in statements(step.sql):
        conn.execute(statement)
    if step.then is not None:
        step.then(conn)
    conn.execute("INSERT INTO schema_owners(owner, version) VALUES (?, ?) "
                 "ON CONFLICT(owner) DO UPDATE SET version=excluded.version", (tables.owner, n + 1))


def _note_versions(conn: sqlite3.Connection, owners: list[Tables]) -> None:
    """A row for each owner, also those a journal from before owners had up to date already."""
    for owner in owners:
        conn.execute("INSERT OR IGNORE INTO schema_owners(owner, version) VALUES (?, ?)",
                     (owner.owner, version_of(conn, owner)))


def _start_owners(conn: sqlite3.Connection, legacy: int) -> None:
    conn.execute(_OWNERS_TABLE)
    conn.execute("INSERT OR IGNORE INTO schema_owners(owner, version) VALUES (?, ?)", (LEGACY_ROW, legacy))
    conn.execute(f"PRAGMA user_version = {FORMAT}")


def _legacy_step(conn: sqlite3.Connection, owners: list[Tables], version: int) -> None:
    """Journal-wide version ``version`` as it was made: every owner's part of it, in owner order."""
    for owner in owners:
        for step in owner.steps:
            if step.legacy == version:
                for statement in statements(step.sql):
                    conn.execute(statement)
                if step.then is not None:
                    step.then(conn)
    conn.execute(f"PRAGMA user_version = {version}")


def _transaction(conn: sqlite3.Connection, body: Callable[[], object]) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        body()
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
