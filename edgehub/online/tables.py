"""The online orders' table: each order placed online that the cloud sent down, with the state
last sent back up and how many updates were sent (each numbers its outbox row); the order itself
is in the journal's ``orders``."""

from __future__ import annotations

from edgehub.store.schema import Step, Tables

TABLES = Tables(
    owner="online",
    names=("online_orders",),
    steps=(Step("""
    CREATE TABLE online_orders (
        order_id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        state TEXT NOT NULL,
        updates INTEGER NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    """, legacy=11),),
)
