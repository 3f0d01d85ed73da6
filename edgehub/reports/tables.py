"""The reports' table: the business days closed, each with the report sent to the cloud."""

from __future__ import annotations

import sqlite3

from edgehub.store.retention import BATCH
from edgehub.store.schema import Rule, Step, Tables


def prune_day_closes(conn: sqlite3.Connection, before: float, after: int = 0,
                     limit: int = BATCH) -> tuple[int, int, bool]:
    """Closed business days (their report went to the cloud in the same commit)."""
    cur = conn.execute("DELETE FROM day_closes WHERE rowid IN (SELECT rowid FROM day_closes WHERE closed_at < ? "
                       "LIMIT ?)", (before, limit))
    return cur.rowcount, 0, cur.rowcount < limit


TABLES = Tables(
    owner="reports",
    names=("day_closes",),
    steps=(Step("""
    CREATE TABLE day_closes (
        day TEXT PRIMARY KEY,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        closed_at REAL NOT NULL,
        report TEXT NOT NULL
    );
    """, legacy=10),),
    retention=(Rule("day_closes", prune_day_closes),),
)
