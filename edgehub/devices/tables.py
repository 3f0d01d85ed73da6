"""The devices' table: the installer's last field check of each device (``edgehub device test``),
kept with the device across restarts and put in support bundles; one row per device."""

from __future__ import annotations

import sqlite3

from edgehub.store.schema import Step, Tables

TABLES = Tables(
    owner="devices",
    names=("field_checks",),
    steps=(Step("""
    CREATE TABLE field_checks (
        device_id TEXT PRIMARY KEY,
        checked_at REAL NOT NULL,
        ok INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    """, legacy=9),),
)


def field_check_results(conn: sqlite3.Connection) -> list[tuple[str, str]]:
    """(device id, result JSON) of every device's last field check."""
    return [(device_id, result) for device_id, result in
            conn.execute("SELECT device_id, result FROM field_checks ORDER BY device_id")]
