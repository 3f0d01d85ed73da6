"""What keeps the box's footprint small, asserted as outcomes (speed is measured in bench/)."""

from __future__ import annotations

import asyncio
import gc
import sqlite3
from pathlib import Path

from edgehub.gctuning import FreezeSurvivors
from edgehub.store import Journal
from edgehub.store.schema import migrate


async def test_a_lazy_write_rides_with_the_next_order_commit(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1") as journal:
        before = journal.stats.commits

        def lazy(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES (1, 't', 'lazy', x'')")

        lazy_write = asyncio.create_task(journal.write(lazy, lazy=True))
        await asyncio.sleep(0)  # queued first
        await journal.add_deadletter("t", "durable", b"")
        await lazy_write
        assert journal.stats.commits == before + 1  # one commit, one fsync, for both
        reasons = await journal.read(lambda c: [r[0] for r in c.execute("SELECT reason FROM deadletters")])
        assert sorted(reasons) == ["durable", "lazy"]


async def test_a_lazy_write_alone_is_committed_all_the_same(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1") as journal:
        value = await asyncio.wait_for(journal.write(lambda conn: 42, lazy=True), timeout=10)
        assert value == 42


async def test_a_lazy_write_queued_at_close_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal(path, "s1") as journal:
        task = asyncio.create_task(journal.write(
            lambda conn: conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) "
                                      "VALUES (1, 't', 'last', x'')"), lazy=True))
        await asyncio.sleep(0)
    await task
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT reason FROM deadletters").fetchall() == [("last",)]


def test_new_tickets_touch_no_order_or_station_index() -> None:
    """Migration 5: the kitchen's hot path writes fewer B-trees; a ticket's order is its id range."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type='index' AND sql IS NOT NULL")}
    assert {"ticket_events_ticket", "tickets_order", "tickets_station_state"}.isdisjoint(indexes)
    assert "tickets_bumped" in indexes
    from edgehub.kitchen.tickets import OF_ORDER

    for ticket_id, order_id in [("a/grill/1", "a"), ("a/b/bar/1", "a/b"), ("ab/grill/1", "ab")]:
        conn.execute("INSERT INTO tickets(ticket_id, order_id, station, state, created_at, updated_at, doc) "
                     "VALUES (?, ?, 'grill', 'new', 0, 0, '{}')", (ticket_id, order_id))
    found = conn.execute(f"SELECT ticket_id FROM tickets t WHERE {OF_ORDER.format(order='?1')} ORDER BY 1",
                         ("a",)).fetchall()
    assert found == [("a/grill/1",)]  # not order "ab", nor order "a/b" whose ids also start "a/"
    plan = " ".join(str(r) for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT 1 FROM tickets t WHERE {OF_ORDER.format(order='?1')}", ("a",)))
    assert "sqlite_autoindex_tickets_1" in plan


def test_full_collections_freeze_their_survivors_and_thaw_hourly() -> None:
    now = [0.0]
    policy = FreezeSurvivors(thaw_every_s=3600, clock=lambda: now[0])
    policy.install()
    try:
        keep = [[i] for i in range(1000)]
        gc.collect()
        assert gc.get_freeze_count() >= len(keep)
        now[0] = 3601
        gc.collect()
        assert gc.get_freeze_count() == 0 and policy.thaws == 1
    finally:
        policy.uninstall()
        gc.set_threshold(700, 10, 10)


def test_after_a_burst_full_collections_hand_freed_memory_back_at_most_every_trim_every_s() -> None:
    """RSS stayed at the high-water mark of a rush: glibc keeps freed pages until malloc_trim."""
    now, rss, trims = [0.0], [50.0], []

    def trim() -> None:
        trims.append(now[0])
        rss[0] = 55.0

    policy = FreezeSurvivors(clock=lambda: now[0], trim=trim, rss=lambda: rss[0],
                             trim_every_s=60, trim_above_mb=4)
    policy.install()
    try:
        rss[0] = 90.0  # a burst came and went
        now[0] = 30
        gc.collect()
        assert trims == []  # not within a minute of the last look
        now[0] = 61
        gc.collect()
        assert trims == [61] and policy.trims == 1
        now[0] = 200
        rss[0] = 57.0  # steady: less than trim_above_mb over what the last trim left
        gc.collect()
        assert trims == [61]
        now[0] = 300
        rss[0] = 70.0
        gc.collect(1)  # only full collections trim
        assert trims == [61]
        gc.collect()
        assert trims == [61, 300]
    finally:
        policy.uninstall()
        gc.set_threshold(700, 10, 10)


def test_malloc_trim_is_found_on_glibc() -> None:
    import platform

    from edgehub.gctuning import malloc_trim, rss_mb

    if platform.libc_ver()[0] == "glibc":
        assert malloc_trim is not None
        malloc_trim()
    assert rss_mb() > 0
