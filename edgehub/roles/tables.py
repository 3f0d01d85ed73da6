"""The roles' tables: bindings, print jobs, payments and split sales; migrations and retention.

``role_bindings`` (what an installer bound from the API: it wins over the config),
``print_jobs`` (kept until a printer confirms them), ``payments`` (each intent and its outcome)
and ``sales`` (a bill split over several payments, with the total they must reach).
"""

from __future__ import annotations

import sqlite3

from edgehub.roles.ledger import FINAL
from edgehub.store.retention import BATCH, prune_by_key
from edgehub.store.schema import Rule, Step, Tables


def prune_print_jobs(conn: sqlite3.Connection, before: float, after: int, limit: int = BATCH
                     ) -> tuple[int, int, bool]:
    # Kept: a job still to print (queued, sending, reprint).
    return prune_by_key(conn, "print_jobs", "seq", "created_at", "state NOT IN ('printed', 'sent', 'failed')",
                        before, after, limit)


def prune_payments(conn: sqlite3.Connection, before: float, after: int = 0,
                   limit: int = BATCH) -> tuple[int, int, bool]:
    """Final payments last changed before ``before`` (no time order to walk: the table is small)."""
    states = ",".join(f"'{s}'" for s in FINAL)
    cur = conn.execute(
        f"DELETE FROM payments WHERE rowid IN (SELECT rowid FROM payments WHERE updated_at < ? "
        f"AND state IN ({states}) LIMIT ?)", (before, limit))
    return cur.rowcount, 0, cur.rowcount < limit


def prune_sales(conn: sqlite3.Connection, before: float, after: int = 0,
                limit: int = BATCH) -> tuple[int, int, bool]:
    """Split-bill totals of sales whose payments are all gone (pruned above, or never made)."""
    cur = conn.execute(
        "DELETE FROM sales WHERE rowid IN (SELECT rowid FROM sales s WHERE created_at < ? AND NOT EXISTS "
        "(SELECT 1 FROM payments p WHERE p.sale_id = s.sale_id) LIMIT ?)", (before, limit))
    return cur.rowcount, 0, cur.rowcount < limit


TABLES = Tables(
    owner="roles",
    names=("role_bindings", "print_jobs", "payments", "sales"),
    steps=(
        # 1: bindings an installer changed from the API (they win over the config), print jobs
        # until a printer confirms them, and payment intents with their outcome.
        Step("""
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
    """, legacy=3),
        # 2 (security): the terminal that started a payment; only it (or an installer through the
        # API) may ask for it again or settle it. NULL for payments started before this version.
        Step("""
    ALTER TABLE payments ADD COLUMN terminal TEXT;
    """, legacy=8),
        # 3 (money): a payment's tender (card, qr, cash) and its reference at the gateway (the
        # merchant order id a QR payment is queried and cancelled by, journaled before the
        # gateway is called); the sales a till split over several payments, with their total.
        Step("""
    ALTER TABLE payments ADD COLUMN tender TEXT NOT NULL DEFAULT 'card';
    ALTER TABLE payments ADD COLUMN reference TEXT;
    CREATE TABLE sales (
        sale_id TEXT PRIMARY KEY,
        total_cents INTEGER NOT NULL,
        currency TEXT NOT NULL,
        created_at REAL NOT NULL
    );
""", legacy=10),
    ),
    retention=(Rule("print_jobs", prune_print_jobs), Rule("payments", prune_payments), Rule("sales", prune_sales)),
)
