"""The kitchen's tables: its migrations, its retention rule and what it keeps per order.

``tickets`` (each ticket's latest state), ``ticket_events`` (every change), ``order_changes``
(the tills' amends and cancels, kept once by change id), ``kitchen_watermark`` (the journal
position from which accepted orders still need tickets) and ``kitchen_seqs`` (each station's
last event seq, kept by a trigger). The queries the kitchen runs are in ``tickets.py``.
"""

from __future__ import annotations

import sqlite3

from edgehub.kitchen.tickets import forget_order, order_has_open_ticket
from edgehub.store import orders
from edgehub.store.retention import BATCH, prune_by_key
from edgehub.store.schema import OrderRows, Rule, Step, Tables


def _watermark(conn: sqlite3.Connection) -> None:
    # Orders older than the kitchen never get tickets.
    conn.execute("INSERT INTO kitchen_watermark(id, order_seq) VALUES (1, ?)", (orders.last_seq(conn),))


def prune_ticket_events(conn: sqlite3.Connection, before: float, after: int, limit: int = BATCH
                        ) -> tuple[int, int, bool]:
    """Kitchen events from before ``before`` whose ticket is gone (deleted with its order)."""
    return prune_by_key(conn, "ticket_events", "id", "at",
                        "EXISTS (SELECT 1 FROM tickets t WHERE t.ticket_id = ticket_events.ticket_id)",
                        before, after, limit)


TABLES = Tables(
    owner="kitchen",
    names=("tickets", "ticket_events", "order_changes", "kitchen_watermark", "kitchen_seqs", "ticket_event_seq"),
    steps=(
        # 1: one ticket per order per station, every ticket change as an event, the POS's amends
        # and cancels (kept once by change_id), and the journal position from which accepted
        # orders still need tickets (orders older than the kitchen never do).
        Step("""
    CREATE TABLE tickets (
        ticket_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        station TEXT NOT NULL,
        state TEXT NOT NULL,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        alerted INTEGER NOT NULL DEFAULT 0,
        doc TEXT NOT NULL
    );
    CREATE INDEX tickets_order ON tickets(order_id);
    CREATE INDEX tickets_station_state ON tickets(station, state, updated_at);
    CREATE TABLE ticket_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        ticket_id TEXT NOT NULL,
        station TEXT NOT NULL,
        station_seq INTEGER NOT NULL,
        event TEXT NOT NULL,
        at REAL NOT NULL,
        source TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX ticket_events_ticket ON ticket_events(ticket_id, id);
    CREATE INDEX ticket_events_station ON ticket_events(station, station_seq);
    CREATE TABLE order_changes (
        change_id TEXT PRIMARY KEY,
        order_id TEXT NOT NULL,
        kind TEXT NOT NULL,
        terminal TEXT NOT NULL,
        received_at REAL NOT NULL,
        payload TEXT NOT NULL
    );
    CREATE INDEX order_changes_order ON order_changes(order_id);
    CREATE TABLE kitchen_watermark (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        order_seq INTEGER NOT NULL
    );
    """, legacy=2, then=_watermark),
        # 2 (footprint): fewer B-trees touched by each new ticket, since every page a commit
        # touches is written to the WAL and again at checkpoint. No code reads ticket_events by
        # ticket; a ticket's order is found by its id, which starts with "{order_id}/"; start-up
        # looks only for bumped tickets by station, which a partial index serves without new
        # tickets (the hot path) ever touching it.
        Step("""
    DROP INDEX ticket_events_ticket;
    DROP INDEX tickets_order;
    DROP INDEX tickets_station_state;
    CREATE INDEX tickets_bumped ON tickets(station, updated_at) WHERE state IN ('ready', 'served');
    """, legacy=5),
        # 3 (footprint): each station's last event seq (what the kitchen numbers on from at start)
        # in a one-page table kept by a trigger, instead of the ticket_events(station,
        # station_seq) index that every kitchen event touched, to be read once at start.
        Step("""
    CREATE TABLE kitchen_seqs (station TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO kitchen_seqs(station, seq)
        SELECT station, MAX(station_seq) FROM ticket_events GROUP BY station;
    CREATE TRIGGER ticket_event_seq AFTER INSERT ON ticket_events BEGIN
        INSERT INTO kitchen_seqs(station, seq) VALUES (NEW.station, NEW.station_seq)
            ON CONFLICT(station) DO UPDATE SET seq = max(seq, excluded.seq);
    END;
    DROP INDEX ticket_events_station;
    """, legacy=7),
    ),
    retention=(Rule("ticket_events", prune_ticket_events),),
    order_rows=OrderRows(holds=order_has_open_ticket, forget=forget_order),
)
