"""Checkpoints run on the journal's own checkpoint thread, never inside an order's commit, and
keep the WAL from growing while orders keep coming."""

from __future__ import annotations

import asyncio
import sqlite3
import threading
from pathlib import Path

from edgehub.bus.payloads import Order
from edgehub.store import Journal
from edgehub.store.checkpoint import Checkpointer
from edgehub.store.journal import WAL_AUTOCHECKPOINT


def order(n: int) -> Order:
    return Order(f"c-{n}", "pos-1", {"schema": "order/1", "order_id": f"c-{n}",
                                     "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 1}]})


async def test_the_writer_never_checkpoints_and_the_checkpoint_thread_keeps_the_wal_short(tmp_path: Path) -> None:
    path = tmp_path / "journal.db"
    threads: list[str] = []
    async with Journal(path, "s1", commit_window_ms=0) as journal:
        checkpointer = journal.checkpointer
        original = checkpointer.checkpoint

        def spy(conn: sqlite3.Connection) -> None:
            threads.append(threading.current_thread().name)
            original(conn)

        checkpointer.checkpoint = spy  # type: ignore[method-assign]
        for n in range(3 * checkpointer.after_commits):
            await journal.accept_order(order(n))  # one commit each: nothing else is queued
        async with asyncio.timeout(10):
            while checkpointer.checkpoints < 2:
                await asyncio.sleep(0.02)
        assert set(threads) == {"journal-checkpoint"}
        assert checkpointer.last_error == ""
        # SQLite's own checkpoint inside a commit is only a far-off safety net.
        mark = await journal.write(lambda conn: conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0])
        assert mark == WAL_AUTOCHECKPOINT > 100 * checkpointer.after_commits
        assert journal.stats.commits >= 3 * checkpointer.after_commits
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT COUNT(*) FROM orders").fetchone() == (3 * 64,)


def test_a_checkpoint_is_due_after_so_many_commits_or_after_a_quiet_while(tmp_path: Path) -> None:
    path = tmp_path / "j.db"
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("CREATE TABLE t(x)")

    def connect() -> sqlite3.Connection:
        return sqlite3.connect(path, isolation_level=None, check_same_thread=False)

    writer = connect()
    writer.execute("PRAGMA wal_autocheckpoint=0")
    cp = Checkpointer(connect, after_commits=5, after_s=0.3)
    cp.start()
    try:
        for n in range(4):
            writer.execute("INSERT INTO t VALUES (?)", (n,))
            cp.committed()
        assert cp.checkpoints == 0  # not yet: 4 of 5 commits, and not quiet long enough
        writer.execute("INSERT INTO t VALUES (4)")
        cp.committed()
        deadline = threading.Event()
        for _ in range(100):
            if cp.checkpoints == 1:
                break
            deadline.wait(0.01)
        assert cp.checkpoints == 1
        with sqlite3.connect(path) as reader:  # everything committed is there
            assert reader.execute("SELECT COUNT(*) FROM t").fetchone() == (5,)
        writer.execute("INSERT INTO t VALUES (5)")
        cp.committed()
        for _ in range(200):  # one commit, then quiet: checkpointed after after_s
            if cp.checkpoints == 2:
                break
            deadline.wait(0.01)
        assert cp.checkpoints == 2 and cp.restarts == 0
        # A long WAL is made to start over: the next commit writes from its first frame again.
        cp.restart_frames = 1
        for n in range(5):
            writer.execute("INSERT INTO t VALUES (?)", (10 + n,))
            cp.committed()
        for _ in range(200):
            if cp.restarts == 1:
                break
            deadline.wait(0.01)
        assert cp.restarts == 1
        writer.execute("INSERT INTO t VALUES (99)")
        with sqlite3.connect(path) as probe:
            _busy, frames, _copied = probe.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
        assert frames <= 2, f"the WAL did not start over ({frames} frames)"
    finally:
        cp.stop()
        writer.close()
