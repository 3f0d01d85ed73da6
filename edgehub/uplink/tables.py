"""The uplink's table: the last version of each document the cloud pushed (menu, routing, config)."""

from __future__ import annotations

from edgehub.store.schema import Step, Tables

TABLES = Tables(
    owner="uplink",
    names=("downlink",),
    steps=(Step("""
    CREATE TABLE downlink (
        kind TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        received_at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    """, legacy=4),),
)
