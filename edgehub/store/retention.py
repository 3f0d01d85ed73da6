"""Journal retention: the box keeps its recent past; the cloud keeps the rest.

Each owner of tables registers its rules with the journal (``schema.Tables.retention``); the
journal's own are its orders (an owner that keeps rows per order says whether one must stay and
deletes its rows with it: ``schema.OrderRows``) and its dead letters.

Without it the journal grows by every order, ticket, kitchen event, print job and payment for as
long as the box runs, on an SD card, and the start-up check (``PRAGMA quick_check`` reads every
page) grows with it, delaying READY at every start. Once an hour (first a minute after start)
rows older than ``journal.keep_days`` are deleted, in small batches that ride along with the
journal's other commits (``lazy``), so an order's commit never waits behind a large delete.

Never deleted, whatever their age:

- anything as recent as the oldest row still in the outbox: the cloud does not have it yet.
  With the cloud link off, or a WAN down for longer than ``keep_days``, nothing is deleted at all;
- anything within ``keep_days`` of the newest order, even if the clock says otherwise (a clock
  that jumped ahead);
- the outbox itself (the uplink deletes a row when the cloud acknowledged it);
- an order with a ticket still on a station screen (new, in progress, recalled), with its
  tickets and changes;
- a print job still to print (not printed, not failed), a payment not final (sent, unknown),
  and the total of a sale that still has a payment;
- role bindings, downlink documents, counters (``outbox_streams``, ``kitchen_seqs``).

An order_id deleted here is an order_id the hub no longer knows: sent again (months later) it
would be taken as new. A terminal re-sends for minutes, not months.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import sqlite3
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from edgehub.errors import EdgehubError
from edgehub.store.journal import Journal
from edgehub.store.schema import JOURNAL, Prune, Rule, Tables
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.journal")

DAY_S = 86_400.0
EVERY_S = 3600.0
FIRST_AFTER_S = 60.0
# Rows looked at per table per commit, and the pause between two batches: the box's own work
# comes first; a batch adds a few ms to the commit it rides with.
BATCH = 50
PAUSE_S = 0.2


@dataclass
class RetentionStats:
    passes: int = 0
    last_pass_at: float | None = None  # wall clock
    last_cutoff: float | None = None
    held_by_outbox: bool = False  # the last pass kept rows older than keep_days the cloud lacks
    deleted: dict[str, int] = field(default_factory=dict)
    last_error: str = ""


def cutoff(conn: sqlite3.Connection, now: float, keep_s: float) -> tuple[float, bool]:
    """Rows from before this (wall clock) may go: ``keep_s`` back from now or from the newest
    order, whichever is earlier (a clock that jumped ahead does not make recent orders old),
    and never past the outbox's oldest row. The flag: the outbox held the cutoff back (the
    cloud does not have rows older than ``keep_s`` yet, or there is no cloud to take them)."""
    newest = conn.execute("SELECT received_at FROM orders ORDER BY seq DESC LIMIT 1").fetchone()
    limit = min(now, float(newest[0]) if newest else now) - keep_s
    row = conn.execute("SELECT created_at FROM outbox ORDER BY seq LIMIT 1").fetchone()
    if row is None or float(row[0]) >= limit:
        return limit, False
    return float(row[0]), True


def prune_orders(conn: sqlite3.Connection, before: float, after_seq: int, owners: Sequence[Tables] = (),
                 limit: int = BATCH) -> tuple[int, int, bool]:
    """Up to ``limit`` orders after ``after_seq`` looked at; those received before ``before`` that
    no owner holds (a ticket still on a screen) are deleted with every owner's rows of them.
    Returns (deleted, last seq looked at, done)."""
    rows = conn.execute("SELECT seq, order_id, received_at FROM orders WHERE seq > ? ORDER BY seq LIMIT ?",
                        (after_seq, limit)).fetchall()
    kept_by = [t.order_rows for t in owners if t.order_rows is not None]
    deleted, last = 0, after_seq
    for seq, order_id, received_at in rows:
        if received_at >= before:
            return deleted, last, True
        last = seq
        if any(keeper.holds(conn, order_id) for keeper in kept_by):
            continue
        for keeper in kept_by:
            keeper.forget(conn, order_id)
        conn.execute("DELETE FROM orders WHERE seq=?", (seq,))
        deleted += 1
    return deleted, last, len(rows) < limit


def prune_by_key(conn: sqlite3.Connection, table: str, key: str, at: str, keep_if: str,
                 before: float, after: int, limit: int = BATCH) -> tuple[int, int, bool]:
    """Rows of ``table`` in ``key`` order whose time ``at`` is before ``before``, except where
    ``keep_if`` (an owner's rule names its own table and columns here, never input)."""
    rows = conn.execute(f"SELECT {key}, {at}, {keep_if} FROM {table} WHERE {key} > ? ORDER BY {key} LIMIT ?",
                        (after, limit)).fetchall()
    doomed: list[tuple[int]] = []
    last, done = after, len(rows) < limit
    for row_key, row_at, keep in rows:
        if row_at >= before:
            done = True
            break
        last = row_key
        if not keep:
            doomed.append((row_key,))
    conn.executemany(f"DELETE FROM {table} WHERE {key}=?", doomed)
    return len(doomed), last, done


def prune_deadletters(conn: sqlite3.Connection, before: float, after: int, limit: int = BATCH) -> tuple[int, int, bool]:
    return prune_by_key(conn, "deadletters", "id", "received_at", "0", before, after, limit)


def rules(tables: Sequence[Tables]) -> list[Rule]:
    """The retention rules of the journal and of ``tables``, in that order."""
    owners = [t for t in tables if t.owner != JOURNAL.owner]
    own = [Rule("orders", lambda conn, before, after: prune_orders(conn, before, after, owners)),
           Rule("deadletters", prune_deadletters)]
    return own + [rule for t in owners for rule in t.retention]


def _batch(prune: Prune, before: float, position: int, conn: sqlite3.Connection) -> tuple[int, int, bool]:
    return prune(conn, before, position)


class Retention:
    """The hourly pass over the journal, with the rules of every owner registered with it (the
    hub runs it beside the journal; its status is the journal section's ``retention``)."""

    def __init__(self, journal: Journal, keep_days: float, clock: Callable[[], float] = time.time,
                 every_s: float = EVERY_S, first_after_s: float = FIRST_AFTER_S) -> None:
        self.journal = journal
        self.keep_s = keep_days * DAY_S
        self.clock = clock
        self.every_s = every_s
        self.first_after_s = first_after_s
        self.stats = RetentionStats()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Retention:
        if self.keep_s > 0:
            self._task = asyncio.create_task(self._run(), name="journal-retention")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        await asyncio.sleep(self.first_after_s)
        while True:
            try:
                await self.run_once()
            except (EdgehubError, sqlite3.Error) as exc:
                self.stats.last_error = str(exc)
                log.warning("journal retention pass stopped (tried again in an hour): %s", exc)
            await asyncio.sleep(self.every_s)

    async def run_once(self) -> dict[str, int]:
        """One pass: every table down to the cutoff, in batches. Returns what was deleted."""
        now = self.clock()
        before, held = await self.journal.read(lambda conn: cutoff(conn, now, self.keep_s))
        deleted: dict[str, int] = {}
        for rule in rules(list(self.journal.tables.values())):
            table, prune = rule.table, rule.prune
            position, done = 0, False
            while not done:
                n, position, done = await self.journal.write(functools.partial(_batch, prune, before, position),
                                                             lazy=True)
                if n:
                    deleted[table] = deleted.get(table, 0) + n
                if not done:
                    await asyncio.sleep(PAUSE_S)
        self.stats.passes += 1
        self.stats.last_pass_at, self.stats.last_cutoff, self.stats.last_error = now, before, ""
        self.stats.held_by_outbox = held
        for table, n in deleted.items():
            self.stats.deleted[table] = self.stats.deleted.get(table, 0) + n
        if deleted:
            log.info("journal retention: deleted %s (older than %s)",
                     ", ".join(f"{n} {table}" for table, n in deleted.items()),
                     time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(before)))
        return deleted

    def status(self) -> dict[str, Any]:
        return {"keep_days": self.keep_s / DAY_S, "passes": self.stats.passes,
                "last_pass_at": self.stats.last_pass_at, "last_cutoff": self.stats.last_cutoff,
                "deleted": dict(self.stats.deleted), "last_error": self.stats.last_error,
                # Rows older than keep_days kept because the cloud does not have them yet (the
                # WAN is down, or the box has no cloud: then the journal keeps everything).
                "held_by_outbox": self.stats.held_by_outbox}
