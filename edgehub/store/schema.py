"""Versioned schema of the journal. Migrations only ever move forward, one step at a time.

``PRAGMA user_version`` holds the version; each step runs in its own transaction, so a power
cut mid-upgrade leaves the previous version intact. An upgraded box keeps every row.
"""

from __future__ import annotations

import sqlite3

# The outbox's per-stream counters, kept by triggers. Created by migration 4 and again by
# migration 6, which rebuilds the table (a dropped table takes its triggers along): one text
# for both. Like every migration's text it is never edited; a change is a new migration.
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
    # 2: the kitchen: one ticket per order per station, every ticket change as an event, the
    # POS's amendments and cancellations (kept once by change_id), and the journal position
    # from which accepted orders still need tickets (orders older than this upgrade never do).
    """
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
    INSERT INTO kitchen_watermark(id, order_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM orders;
    """,
    # 3: roles: bindings an installer changed from the API (they win over the config), print
    # jobs until a printer confirms them, and payment intents with their outcome.
    """
    CREATE TABLE role_bindings (
        role TEXT PRIMARY KEY,
        devices TEXT NOT NULL,
        failback_after_s REAL NOT NULL,
        updated_at REAL NOT NULL,
        updated_by TEXT NOT NULL
    );
    CREATE TABLE print_jobs (
        seq INTEGER PRIMARY KEY AUTOINCREMENT,
        job_id TEXT NOT NULL UNIQUE,
        role TEXT NOT NULL,
        created_at REAL NOT NULL,
        ticket TEXT NOT NULL,
        reply_topic TEXT,
        correlation BLOB,
        request_id TEXT,
        state TEXT NOT NULL DEFAULT 'queued',
        device_id TEXT,
        reprint INTEGER NOT NULL DEFAULT 0,
        attempts INTEGER NOT NULL DEFAULT 0,
        done_at REAL
    );
    CREATE INDEX print_jobs_waiting ON print_jobs(state, seq) WHERE state != 'printed';
    CREATE TABLE payments (
        payment_id TEXT PRIMARY KEY,
        role TEXT NOT NULL,
        sale_id TEXT NOT NULL,
        amount_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        device_id TEXT NOT NULL,
        state TEXT NOT NULL,
        after_trace_no INTEGER,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL,
        reply_topic TEXT,
        correlation BLOB,
        request_id TEXT,
        result TEXT NOT NULL
    );
    CREATE INDEX payments_open ON payments(state) WHERE state IN ('sent', 'unknown');
    """,
    # 4 (uplink): every outbox row also numbered within its stream (the cloud's gap check), the
    # per-stream counters kept by triggers (backlog in O(1); produced = pending + acked + dropped),
    # and the last version of each downlink document (menu, routing, config) the cloud pushed.
    # Rows already waiting are numbered in store order; nothing was ever deleted before this.
    """
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
"""
    + _OUTBOX_TRIGGERS
    + """CREATE TABLE downlink (
        kind TEXT PRIMARY KEY,
        version INTEGER NOT NULL,
        received_at REAL NOT NULL,
        payload BLOB NOT NULL
    );
    """,
    # 5 (footprint): fewer B-trees touched by each new ticket, since every page a commit touches
    # is written to the WAL and again at checkpoint (docs/footprint.md). No code reads
    # ticket_events by ticket; a ticket's order is found by its id, which starts with
    # "{order_id}/"; start-up looks only for bumped tickets by station, which a partial index
    # serves without new tickets (the hot path) ever touching it.
    """
    DROP INDEX ticket_events_ticket;
    DROP INDEX tickets_order;
    DROP INDEX tickets_station_state;
    CREATE INDEX tickets_bumped ON tickets(station, updated_at) WHERE state IN ('ready', 'served');
    """,
    # 6 (footprint): the outbox rebuilt without the two indexes every order's and every kitchen
    # event's row touched (insert and delete), which cost a page per commit each in the WAL
    # (docs/footprint.md). A msg_id of the per-order streams is unique by construction: an
    # order's row is added only when its order_id is new (orders.order_id is UNIQUE), an order
    # change's only with its order_changes row (change_id is its PRIMARY KEY), a kitchen row
    # names its ticket's version, which only grows. The other streams keep a unique msg_id and
    # their (stream, seq) index, partial, for telemetry's TTL and quota and the oldest row of a
    # rare stream; the oldest row of orders or kitchen is found in seq order, where they are
    # most rows. seq keeps counting where it was (the sequence is carried over, so a seq the
    # cloud has seen is never used again); every row and both triggers stay as they were.
    """
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
"""
    + _OUTBOX_TRIGGERS,
    # 7 (footprint): each station's last event seq (what the kitchen numbers on from at start) in
    # a one-page table kept by a trigger, instead of the ticket_events(station, station_seq)
    # index that every kitchen event touched, a leaf per station in every commit, to be read
    # once at start (docs/footprint.md).
    """
    CREATE TABLE kitchen_seqs (station TEXT PRIMARY KEY, seq INTEGER NOT NULL) WITHOUT ROWID;
    INSERT INTO kitchen_seqs(station, seq)
        SELECT station, MAX(station_seq) FROM ticket_events GROUP BY station;
    CREATE TRIGGER ticket_event_seq AFTER INSERT ON ticket_events BEGIN
        INSERT INTO kitchen_seqs(station, seq) VALUES (NEW.station, NEW.station_seq)
            ON CONFLICT(station) DO UPDATE SET seq = max(seq, excluded.seq);
    END;
    DROP INDEX ticket_events_station;
    """,
    # 8 (security): the terminal that started a payment; only it (or an installer through the
    # API) may ask for it again or settle it. NULL for payments started before this version.
    """
    ALTER TABLE payments ADD COLUMN terminal TEXT;
    """,
    # 9 (devices): the installer's last field check of each device (`edgehub device test`),
    # kept with the device across restarts and put in support bundles; one row per device.
    """
    CREATE TABLE field_checks (
        device_id TEXT PRIMARY KEY,
        checked_at REAL NOT NULL,
        ok INTEGER NOT NULL,
        result TEXT NOT NULL
    );
    """,
    # 10 (money): a payment's tender (card, qr, cash) and its reference at the gateway (the
    # merchant order id a QR payment is queried and cancelled by, journaled before the gateway
    # is called); the sales a till split over several payments, with the total they must reach;
    # the business days closed, each with the report sent to the cloud.
    """
    ALTER TABLE payments ADD COLUMN tender TEXT NOT NULL DEFAULT 'card';
    ALTER TABLE payments ADD COLUMN reference TEXT;
    CREATE TABLE sales (
        sale_id TEXT PRIMARY KEY,
        total_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        created_at REAL NOT NULL
    );
    CREATE TABLE day_closes (
        day TEXT PRIMARY KEY,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        closed_at REAL NOT NULL,
        report TEXT NOT NULL
    );
    """,
    # 11 (online orders): orders placed online (delivery platforms, mini-program, the cloud's
    # kiosk) that the cloud sends down, with the state last sent back up and how many updates
    # were sent (each numbers its outbox row); the order itself is in ``orders``.
    """
    CREATE TABLE online_orders (
        order_id TEXT PRIMARY KEY,
        channel TEXT NOT NULL,
        state TEXT NOT NULL,
        updates INTEGER NOT NULL,
        received_at REAL NOT NULL,
        updated_at REAL NOT NULL
    ) WITHOUT ROWID;
    """,
)

SCHEMA_VERSION = len(MIGRATIONS)


def migrate(conn: sqlite3.Connection, to: int = SCHEMA_VERSION) -> tuple[int, int]:
    """Bring the database up to SCHEMA_VERSION (or up to ``to``: a journal as an older release
    left it, for upgrade tests); returns (from, to)."""
    (current,) = conn.execute("PRAGMA user_version").fetchone()
    if current > SCHEMA_VERSION:
        from edgehub.errors import JournalError

        raise JournalError(
            f"journal schema version {current} is newer than this edgehub ({SCHEMA_VERSION}); "
            "install the newer edgehub again or restore a backup"
        )
    start = current
    while current < min(to, SCHEMA_VERSION):
        script = MIGRATIONS[current]
        current += 1
        # executescript commits first; wrap the step so it lands whole or not at all.
        conn.executescript(f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {current};\nCOMMIT;")
    return start, current
