"""Versioned schema of the journal. Migrations only ever move forward, one step at a time.

``PRAGMA user_version`` holds the version; each step runs in its own transaction, so a power
cut mid-upgrade leaves the previous version intact. An upgraded box keeps every row.
"""

from __future__ import annotations

import sqlite3

MIGRATIONS: tuple[str, ...] = (
    # 1: orders, the outbox bound for the cloud, and dead letters kept for support.
    """
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
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection) -> tuple[int, int]:
    """Bring the database up to SCHEMA_VERSION; returns (from, to)."""
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        from edgehub.errors import JournalError

        raise JournalError(
            f"journal schema version {current} is newer than this edgehub ({SCHEMA_VERSION}); "
            "install the newer edgehub again or restore a backup"
        )
    start = current
    while current < SCHEMA_VERSION:
        script = MIGRATIONS[current]
        current += 1
        # executescript commits first; wrap the step so it lands whole or not at all.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {current};\nCOMMIT;")
    return start, current
