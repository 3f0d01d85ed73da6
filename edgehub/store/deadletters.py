"""Dead letters written inside another write (``Journal.add_deadletter`` writes one alone)."""

from __future__ import annotations

import sqlite3


def add_deadletter(conn: sqlite3.Connection, received_at: float, topic: str, reason: str, payload: bytes) -> None:
    conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES (?,?,?,?)",
                 (received_at, topic, reason, payload))
