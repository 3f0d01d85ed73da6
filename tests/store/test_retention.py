"""Journal retention: old rows go once the cloud has them; what is still needed stays."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgehub.config import ConfigError, load_config
from edgehub.store import Journal
from edgehub.store.outbox import add_to_outbox
from edgehub.store.retention import BATCH, DAY_S, Retention
from tests.conftest import ALL_TABLES, write_config

NOW = 1_800_000_000.0
OLD = NOW - 200 * DAY_S  # older than the default 90 days
NEW = NOW - 10 * DAY_S  # the store's latest order: cutoffs count back from it or from now


def add_order(conn: sqlite3.Connection, order_id: str, at: float, ticket_state: str | None = "served") -> None:
    conn.execute("INSERT INTO orders(order_id, terminal, received_at, payload) VALUES (?, 'pos-1', ?, '{}')",
                 (order_id, at))
    if ticket_state is not None:
        ticket_id = f"{order_id}/grill/1"
        conn.execute("INSERT INTO tickets(ticket_id, order_id, station, state, created_at, updated_at, doc) "
                     "VALUES (?, ?, 'grill', ?, ?, ?, '{}')", (ticket_id, order_id, ticket_state, at, at))
        for n, event in enumerate(("created", "ready")):
            conn.execute("INSERT INTO ticket_events(ticket_id, station, station_seq, event, at, source, detail) "
                         "VALUES (?, 'grill', (SELECT COALESCE(MAX(station_seq), 0) + 1 FROM ticket_events), "
                         "?, ?, 'pos:pos-1', '{}')", (ticket_id, event, at + n))
    conn.execute("INSERT INTO order_changes(change_id, order_id, kind, terminal, received_at, payload) "
                 "VALUES (?, ?, 'amend', 'pos-1', ?, '{}')", (f"chg-{order_id}", order_id, at))


def mark_kitchen_done(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE kitchen_watermark SET order_seq = (SELECT MAX(seq) FROM orders) WHERE id = 1")


def count(conn: sqlite3.Connection, table: str, where: str = "1", *args: Any) -> int:
    return int(conn.execute(f"SELECT COUNT(*) FROM {table} WHERE {where}", args).fetchone()[0])


def order_ids(conn: sqlite3.Connection) -> set[str]:
    return {row[0] for row in conn.execute("SELECT order_id FROM orders")}


@pytest.fixture
async def journal(tmp_path: Path) -> Any:
    async with Journal(tmp_path / "journal.sqlite", "s1", tables=ALL_TABLES) as j:
        yield j


async def test_old_orders_go_with_their_tickets_events_and_changes(journal: Journal) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        for i in range(BATCH * 2 + 50):  # more than one batch
            add_order(conn, f"old-{i}", OLD + i)
        add_order(conn, "recent", NEW)

    await journal.write(seed)
    deleted = await Retention(journal, keep_days=90, clock=lambda: NOW).run_once()

    assert deleted == {"orders": BATCH * 2 + 50, "ticket_events": 2 * (BATCH * 2 + 50)}

    def look(conn: sqlite3.Connection) -> tuple[set[str], int, int, int]:
        return (order_ids(conn), count(conn, "tickets"), count(conn, "ticket_events"), count(conn, "order_changes"))

    assert await journal.read(look) == ({"recent"}, 1, 2, 1)
    assert await journal.read(lambda conn: conn.execute("PRAGMA integrity_check").fetchall()) == [("ok",)]


async def test_what_is_still_needed_stays(journal: Journal) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        add_order(conn, "old-served", OLD)
        add_order(conn, "old-on-screen", OLD + 1, ticket_state="in_progress")  # still on a station screen
        add_order(conn, "old-voided", OLD + 2, ticket_state="voided")
        mark_kitchen_done(conn)
        # After the kitchen's start-up watermark (taken since the hub last started), and one that
        # no station got a ticket for: old is old.
        add_order(conn, "old-since-start", OLD + 3)
        add_order(conn, "old-routed-nowhere", OLD + 4, ticket_state=None)
        conn.execute("INSERT INTO print_jobs(job_id, role, created_at, ticket, state) VALUES "
                     "('printed', 'receipt-printer', ?, '{}', 'printed'), "
                     "('failed', 'receipt-printer', ?, '{}', 'failed'), "
                     "('waiting', 'receipt-printer', ?, '{}', 'queued')", (OLD, OLD, OLD))
        conn.execute("INSERT INTO payments(payment_id, role, sale_id, amount_cents, currency, device_id, state, "
                     "created_at, updated_at, result) VALUES "
                     "('p-done', 'pinpad', 's1', 100, 'EUR', 'pp', 'approved', ?, ?, '{}'), "
                     "('p-unknown', 'pinpad', 's2', 100, 'EUR', 'pp', 'unknown', ?, ?, '{}')", (OLD, OLD, OLD, OLD))
        conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES "
                     "(?, 't', 'old', x''), (?, 't', 'recent', x'')", (OLD, NEW))
        add_order(conn, "recent", NEW, ticket_state=None)

    await journal.write(seed)
    await Retention(journal, keep_days=90, clock=lambda: NOW).run_once()

    def look(conn: sqlite3.Connection) -> dict[str, Any]:
        return {
            "orders": order_ids(conn),
            "tickets": {row[0] for row in conn.execute("SELECT ticket_id FROM tickets")},
            "events": count(conn, "ticket_events"),
            "print_jobs": {row[0] for row in conn.execute("SELECT job_id FROM print_jobs")},
            "payments": {row[0] for row in conn.execute("SELECT payment_id FROM payments")},
            "deadletters": {row[0] for row in conn.execute("SELECT reason FROM deadletters")},
        }

    assert await journal.read(look) == {
        "orders": {"old-on-screen", "recent"},
        "tickets": {"old-on-screen/grill/1"},
        "events": 2,
        "print_jobs": {"waiting"},
        "payments": {"p-unknown"},
        "deadletters": {"recent"},
    }


async def test_nothing_the_cloud_does_not_have_yet_goes(journal: Journal) -> None:
    # A row waiting in the outbox since before the orders (the cloud link off, or the WAN down
    # for months): nothing newer than it is deleted, however old.
    def seed(conn: sqlite3.Connection) -> None:
        add_to_outbox(conn, "audit", "a-1", {"what": "waiting"}, created_at=OLD - 5)
        for i in range(5):
            add_order(conn, f"old-{i}", OLD + i)
        add_order(conn, "recent", NEW, ticket_state=None)

    await journal.write(seed)
    retention = Retention(journal, keep_days=90, clock=lambda: NOW)
    assert await retention.run_once() == {}
    assert await journal.read(order_ids) == {f"old-{i}" for i in range(5)} | {"recent"}
    assert retention.status()["last_cutoff"] == OLD - 5 and retention.status()["held_by_outbox"] is True

    # The cloud acknowledges it (the uplink deletes the row): the next pass deletes the orders.
    await journal.write(lambda conn: conn.execute("DELETE FROM outbox"))
    assert (await retention.run_once())["orders"] == 5
    assert await journal.read(order_ids) == {"recent"}
    assert retention.status()["deleted"] == {"orders": 5, "ticket_events": 10}
    assert retention.status()["held_by_outbox"] is False


async def test_a_clock_that_jumped_ahead_does_not_make_recent_orders_old(journal: Journal) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        add_order(conn, "old", OLD)
        add_order(conn, "recent", NEW)

    await journal.write(seed)
    # A year ahead: only what is older than 90 days before the newest order goes.
    assert (await Retention(journal, keep_days=90, clock=lambda: NOW + 365 * DAY_S).run_once())["orders"] == 1
    assert await journal.read(order_ids) == {"recent"}


async def test_keep_days_zero_keeps_everything(journal: Journal) -> None:
    await journal.write(lambda conn: add_order(conn, "old", OLD))
    async with Retention(journal, keep_days=0, clock=lambda: NOW, first_after_s=0) as retention:
        assert retention._task is None  # noqa: SLF001
    assert await journal.read(order_ids) == {"old"}


def test_keep_days_is_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(write_config(tmp_path, extra="[journal]\nkeep_days = 3\n"))
    assert "journal.keep_days: must be 0 (keep everything) or 7 to 3650 days" in str(err.value)
    assert load_config(write_config(tmp_path / "ok", extra="[journal]\nkeep_days = 0\n")).journal.keep_days == 0
    assert load_config(write_config(tmp_path / "default")).journal.keep_days == 90


async def test_a_failed_pass_is_tried_again_later() -> None:
    class Broken:
        calls = 0

        async def read(self, fn: Any) -> Any:
            Broken.calls += 1
            raise sqlite3.OperationalError("disk I/O error")

    async with Retention(Broken(), keep_days=90, every_s=0.01, first_after_s=0) as retention:
        for _ in range(200):
            if Broken.calls >= 2:
                break
            await asyncio.sleep(0.01)
        assert retention._task is not None and not retention._task.done()  # noqa: SLF001
    assert Broken.calls >= 2 and retention.status()["last_error"] == "disk I/O error"


async def test_old_sales_and_closed_days_go_once_their_payments_are_gone(journal: Journal) -> None:
    def seed(conn: sqlite3.Connection) -> None:
        add_order(conn, "recent", NEW)
        sales = (("old-paid", OLD, "approved"), ("old-unknown", OLD, "unknown"), ("new", NEW, "approved"))
        for sale, at, state in sales:
            conn.execute("INSERT INTO sales(sale_id, total_cents, currency, created_at) VALUES (?, 100, 'CNY', ?)",
                         (sale, at))
            conn.execute("INSERT INTO payments(payment_id, role, sale_id, amount_cents, currency, device_id, state, "
                         "created_at, updated_at, result, tender) VALUES (?, 'pinpad', ?, 100, 'CNY', 'cash', ?, "
                         "?, ?, '{}', 'cash')", (f"p-{sale}", sale, state, at, at))
        for day, at in (("2026-01-01", OLD), ("2026-12-01", NEW)):
            conn.execute("INSERT INTO day_closes(day, starts_at, ends_at, closed_at, report) VALUES (?, ?, ?, ?, '{}')",
                         (day, at - DAY_S, at, at))

    await journal.write(seed)
    deleted = await Retention(journal, keep_days=90, clock=lambda: NOW).run_once()
    assert deleted["payments"] == 1 and deleted["sales"] == 1 and deleted["day_closes"] == 1
    kept = await journal.read(lambda conn: (
        {r[0] for r in conn.execute("SELECT sale_id FROM sales")},
        {r[0] for r in conn.execute("SELECT day FROM day_closes")}))
    assert kept == ({"old-unknown", "new"}, {"2026-12-01"})  # a sale whose payment is not final stays
