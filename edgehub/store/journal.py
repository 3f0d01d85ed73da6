"""The order journal: SQLite in WAL mode with synchronous=FULL and one writer thread.

Durability without giving up throughput: every write is a small function handed to the single
writer thread, which gathers whatever arrives within a few milliseconds (``commit_window_ms``)
into one transaction, each function under its own SAVEPOINT, and fsyncs once for the group. A
caller's await returns only after *its* group has committed, which is when an order may be acked.

A write that nobody waits on to answer a person (an order's kitchen tickets, which start-up
recovery re-makes from the order; deleting outbox rows the cloud acknowledged, which the cloud
dedups if sent again) may be ``lazy``: it does not open a commit of its own but rides along with
the next write that does, or is committed alone after ``LAZY_WAIT_S``. Every commit appends each
page it touched to the WAL and fsyncs; folding these into the orders' commits writes each shared
page (outbox, its indexes and counters) once instead of three times (docs/footprint.md). A write
a person waits on but would not notice a few more milliseconds of (a cook's tap on a kitchen
screen) gives ``within_s``: it rides with an order's commit that opens within that time, or
commits alone when it is over.

Checkpoints (copying the WAL back into the database file) run on a thread of their own, never
inside an order's commit (``edgehub/store/checkpoint.py``).

At open the database is checked (``PRAGMA quick_check``); a corrupt file is moved aside, never
deleted, and a fresh journal is started, so the box keeps taking orders and support can recover
the old one.

On a box of a pair the writer's connection records each group's statements and a ``CommitHook``
turns them into a record for the standby; the group's callers are answered once the standby
holds it too (edgehub/pair/primary.py, docs/pair.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import queue
import sqlite3
import sys
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, TypeVar

from edgehub.bus.payloads import Order, cloud_order, dumps
from edgehub.errors import JournalError, JournalFull
from edgehub.store.checkpoint import Checkpointer
from edgehub.store.outbox import add_many_to_outbox
from edgehub.store.schema import JOURNAL, Tables, apply, migrate

log = logging.getLogger("edgehub.journal")

T = TypeVar("T")
MAX_BATCH = 512
LAZY_WAIT_S = 0.05
# A cook's tap (bump, recall, serve) may wait this long for an order's commit to ride with
# instead of fsyncing alone (each commit writes its pages to the WAL again); well under what a
# person at a screen notices.
TAP_WAIT_S = 0.02
# Under load (at least BUSY_RATE writes someone waits on per second) a group waits up to
# BUSY_WINDOW_S for a second order, so a commit carries two or more and the pages they share are
# written once (docs/footprint.md). It adds at most BUSY_WINDOW_S to an ack, only under load.
BUSY_RATE = 100.0
BUSY_WINDOW_S = 0.005
BUSY_BATCH = 2
RATE_PERIOD_S = 0.5
SWITCH_INTERVAL_S = 0.0005
PAGE_SIZE = 1024
# Checkpoints run on their own thread (edgehub/store/checkpoint.py) every CHECKPOINT_COMMITS
# commits (often, so each copies and fsyncs little at once: an order's ack waits behind it).
# SQLite's automatic one, inside a commit, only if that thread falls far behind.
CHECKPOINT_COMMITS = 64
# A WAL this long (frames) is made to start over (RESTART: the writer waits for the copy of what
# came since the last PASSIVE one); large enough that a burst of orders does not meet it often.
CHECKPOINT_RESTART_FRAMES = 16384
WAL_LIMIT_BYTES = 16 * 2**20  # what the WAL file is cut back to when it starts over
# SQLite's page cache per connection (KiB), below the default 2 MiB, which fills up and is never
# given back: what is touched again is the right edge of a few B-trees and the open tickets; the
# rest comes from the kernel's page cache for a system call.
WRITER_CACHE_KIB = 1024
READER_CACHE_KIB = 512
CHECKPOINT_CACHE_KIB = 64
WAL_AUTOCHECKPOINT = 20000  # frames (1 KiB pages): ~20 MB of WAL
_STOP = object()
# A queued write: the function, its future, its deadline (time.monotonic(); a patient write's
# only) and whether someone waits on it at once (an order: it opens a group of its own).
_Queued = tuple[Callable[[sqlite3.Connection], Any], "asyncio.Future[Any]", float, bool]


def _journal_error(exc: Exception, path: Path, *, whole_group: bool) -> Exception:
    """A full disk as ``JournalFull`` (intake tells the terminal so); a failed group commit as
    ``JournalError``; what one write function raised (its own error) passes through as it is."""
    if isinstance(exc, sqlite3.Error) and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL:
        error: Exception = JournalFull(f"journal {path} is full: the data disk has no room left ({exc})")
    elif whole_group:
        error = JournalError(f"journal commit failed: {exc}")
    else:
        return exc
    error.__cause__ = exc
    return error


def connect(path: Path, cache_kib: int = WRITER_CACHE_KIB,
            factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
    """A connection to the journal with its settings (the writer's, a reader's, a standby's)."""
    conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False, timeout=10.0, factory=factory)
    conn.execute(f"PRAGMA cache_size=-{cache_kib}")
    # Every commit appends each page it touched to the WAL: with small orders committed a few
    # at a time, 1 KiB pages write less than half the bytes of 4 KiB pages (SD-card wear;
    # bench/footprint.py). It only takes effect on a new, empty database.
    conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA foreign_keys=ON")
    # Each write runs under its own SAVEPOINT, so SQLite keeps a statement journal of the
    # pages the group touches; the default spills it past 64 KiB into a temp file: 23 KiB of
    # pwrite() per order at 200 orders/s (strace), for a file deleted at every commit. In
    # memory it is a few pages per group.
    conn.execute("PRAGMA temp_store=MEMORY")
    conn.execute(f"PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT}")
    # Keep the WAL from growing on the SD card after a burst.
    conn.execute(f"PRAGMA journal_size_limit={WAL_LIMIT_BYTES}")
    return conn


def healthy(path: Path) -> bool:
    """``PRAGMA quick_check`` of the journal at ``path`` passes."""
    try:
        conn = sqlite3.connect(f"file:{path}?mode=rw", uri=True, timeout=10.0)
        try:
            rows = conn.execute("PRAGMA quick_check").fetchall()
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        log.error("journal %s failed its check: %s", path, exc)
        return False
    if rows != [("ok",)]:
        log.error("journal %s failed its check: %s", path, "; ".join(str(r[0]) for r in rows[:5]))
        return False
    return True


def move_aside(path: Path, why: str, now: float) -> Path:
    """Rename the journal (and its WAL and shared-memory files) to ``{name}.{why}-{UTC stamp}``:
    kept for support, never deleted, and out of the way of a new journal."""
    stamp = time.strftime("%Y%m%dT%H%M%S", time.gmtime(now))
    target = path.with_name(f"{path.name}.{why}-{stamp}")
    n = 1
    while any(Path(f"{target}{suffix}").exists() for suffix in ("", "-wal", "-shm")):
        n += 1
        target = path.with_name(f"{path.name}.{why}-{stamp}-{n}")
    for suffix in ("", "-wal", "-shm"):
        src = Path(f"{path}{suffix}")
        if src.exists():
            src.rename(Path(f"{target}{suffix}"))
    return target


@dataclass(frozen=True)
class OrderCommit:
    seq: int
    duplicate: bool
    # A known order_id that is not this order again: another terminal's, or other lines. Set
    # only with ``duplicate``; what it says is the terminal's error.
    conflict: str = ""
    # The order alone could not be written (nothing of it was kept); the rest of its write was.
    error: str = ""


def _conflict(order: Order, terminal: str, payload: str) -> str:
    """Why a known ``order_id`` is not a re-send of ``order`` ("" when it is one). A re-send
    comes from the same terminal with the same lines; anything else reusing the id would be
    acked as journaled and silently lost."""
    if terminal != order.terminal:
        return (f"order_id {order.order_id!r} is taken by an order of terminal {terminal}: "
                "order ids are unique in the store")
    if json.loads(payload).get("lines") != order.lines:
        return (f"order_id {order.order_id!r} was taken by an order with other lines: "
                "a new order needs a new order_id (an amend changes an order)")
    return ""


class CommitHook(Protocol):
    """What a pair's replication does at the journal's one writer (edgehub/pair/primary.py).

    ``prepared`` runs in the group's transaction before COMMIT, with the group's INSERT, UPDATE,
    DELETE and REPLACE statements (the writer's connection records them when
    ``recording_factory`` made it), and may add its own bookkeeping; what it returns is handed
    to ``committed`` after COMMIT, which calls ``settle`` (now, or once the standby has the group
    too) to answer the group's callers. ``rolled_back`` says the transaction did not commit
    after all."""

    recording_factory: type[sqlite3.Connection]

    def opened(self, conn: sqlite3.Connection) -> None: ...
    def prepared(self, conn: sqlite3.Connection, statements: list[Any]) -> object | None: ...
    def committed(self, token: object | None, settle: Callable[[], None]) -> None: ...
    def rolled_back(self, token: object | None) -> None: ...


@dataclass
class JournalStats:
    commits: int = 0
    writes: int = 0
    last_commit_ms: float = 0.0
    max_batch: int = 0
    moved_aside: str = ""


class Journal:
    """Async face of the journal. ``async with Journal(...)`` opens, checks and migrates it."""

    def __init__(self, path: Path, store_id: str, commit_window_ms: float = 2.0,
                 clock: Callable[[], float] = time.time, tables: Sequence[Tables] = ()) -> None:
        self.path = path
        # Every owner's tables, by owner: made or migrated when the journal opens (those owned
        # later, when their owner starts: ``ensure``); their retention rules run hourly.
        self.tables: dict[str, Tables] = {JOURNAL.owner: JOURNAL}
        self._ready_owners: set[str] = set()
        self.own(*tables)
        self.store_id = store_id
        self.window_s = commit_window_ms / 1000.0
        self.clock = clock
        self.stats = JournalStats()
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        # A checkpoint copies WAL frames through a buffer of its own, not the page cache.
        self.checkpointer = Checkpointer(functools.partial(self._connect, CHECKPOINT_CACHE_KIB),
                                         after_commits=CHECKPOINT_COMMITS,
                                         restart_frames=CHECKPOINT_RESTART_FRAMES)
        self._reader: sqlite3.Connection | None = None
        self._reader_lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self.commit_observers: list[Callable[[float, int], None]] = []
        self._period_start = time.monotonic()  # the writer thread's own rate estimate
        self._period_writes = 0
        self._was_busy = False
        # A box of a pair: its replication (set before the journal opens; edgehub/pair/).
        self.hook: CommitHook | None = None
        # ``PRAGMA quick_check`` at open; a pair's standby that checked (and has written) the
        # file since turns it off when it takes over, where a big journal's check took seconds.
        self.check_at_open = True

    def own(self, *tables: Tables) -> None:
        """Register ``tables`` before the journal opens: they are made or migrated with it."""
        for t in tables:
            if self.tables.setdefault(t.owner, t) is not t:
                raise ValueError(f"two sets of tables are owned by {t.owner!r}")

    async def ensure(self, tables: Tables) -> None:
        """``tables`` made or migrated in this open journal: at once when they were registered
        before it opened (the hub's components), else now, in one commit (a component started
        alone, as tests do)."""
        if tables.owner in self._ready_owners:
            return
        self.own(tables)
        await self.write(lambda conn: apply(conn, tables))
        self._ready_owners.add(tables.owner)

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Journal:
        self._loop = asyncio.get_running_loop()
        # The writer thread must get the GIL soon after its fsync returns; with the default 5 ms
        # switch interval a busy event loop holds it long enough to dominate ack latency.
        if sys.getswitchinterval() > SWITCH_INTERVAL_S:
            sys.setswitchinterval(SWITCH_INTERVAL_S)
        writer = await asyncio.to_thread(self._open)
        self._thread = threading.Thread(target=self._writer_loop, args=(writer,), name="journal-writer",
                                        daemon=True)
        self._thread.start()
        self.checkpointer.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._closed = True
        self._queue.put(_STOP)
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join)
        await asyncio.to_thread(self.checkpointer.stop)
        if self._reader is not None:
            self._reader.close()

    def _connect(self, cache_kib: int = WRITER_CACHE_KIB,
                 factory: type[sqlite3.Connection] = sqlite3.Connection) -> sqlite3.Connection:
        return connect(self.path, cache_kib, factory)

    def _open(self) -> sqlite3.Connection:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise JournalError(f"cannot create {self.path.parent}: {exc.strerror or exc}") from exc
        if self.check_at_open and self.path.exists() and not self._healthy():
            self._move_aside()
        try:
            conn = self._connect(factory=self.hook.recording_factory if self.hook else sqlite3.Connection)
            before, after = migrate(conn, [t for t in self.tables.values() if t is not JOURNAL])
            self._ready_owners = set(self.tables)
            if self.hook is not None:
                self.hook.opened(conn)
        except sqlite3.Error as exc:
            raise JournalError(f"cannot open journal {self.path}: {exc}") from exc
        if before == 0:
            log.info("journal %s created (schema %d)", self.path, after)
        elif before != after:
            log.info("journal %s migrated from schema %d to %d", self.path, before, after)
        self._reader = self._connect(READER_CACHE_KIB)
        self._reader.execute("PRAGMA query_only=ON")
        return conn

    def _healthy(self) -> bool:
        return healthy(self.path)

    def _move_aside(self) -> None:
        target = move_aside(self.path, "corrupt", self.clock())
        self.stats.moved_aside = str(target)
        log.error("journal %s was corrupt: moved aside to %s and started a new one", self.path, target)

    # --- the writer ------------------------------------------------------------------------

    def _writer_loop(self, conn: sqlite3.Connection) -> None:
        try:
            stop = False
            while not stop:
                item = self._queue.get()
                if item is _STOP:
                    break
                batch, stop = self._gather(item)
                self._commit(conn, batch)
        finally:
            conn.close()
            # Anything still queued when the journal closes is refused, never silently dropped.
            while True:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is not _STOP:
                    self._resolve([(item[1], None, JournalError("journal closed before the write"))])

    def _gather(self, first: _Queued) -> tuple[list[_Queued], bool]:
        """The group that commits with ``first``: what comes before the earliest deadline.

        A write someone waits on at once (an order) gives the group ``commit_window_ms`` from
        when the writer takes it, longer under load until a second such write is there. A patient
        write (lazy, or with ``within_s``) has its own deadline, counted from when it was queued,
        and rides with whatever group is open before it."""
        batch = [first]
        busy = self._busy()
        patient_due = first[2] if not first[3] else float("inf")
        urgent_from = None if not first[3] else time.monotonic()
        urgent = int(first[3])
        while len(batch) < MAX_BATCH:
            limit = patient_due
            if urgent_from is not None:
                # Under load, wait longer for company, but only until the group holds a few.
                window = BUSY_WINDOW_S if busy and urgent < BUSY_BATCH else 0.0
                limit = min(limit, urgent_from + max(self.window_s, window))
            remaining = limit - time.monotonic()
            try:
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is _STOP:
                return batch, True
            batch.append(nxt)
            if nxt[3]:
                urgent += 1
                if urgent_from is None:
                    urgent_from = time.monotonic()
            else:
                patient_due = min(patient_due, nxt[2])
        return batch, False

    def _busy(self) -> bool:
        """Whether writes someone waits on came at BUSY_RATE or faster lately."""
        now = time.monotonic()
        elapsed = now - self._period_start
        if elapsed >= RATE_PERIOD_S:
            self._was_busy = self._period_writes / elapsed >= BUSY_RATE
            self._period_start, self._period_writes = now, 0
        return self._was_busy

    def _commit(self, conn: sqlite3.Connection, batch: list[_Queued]) -> None:
        started = time.perf_counter()
        results: list[tuple[asyncio.Future[Any], Any, BaseException | None]] = []
        hook = self.hook
        # A pair's writer records what each write changed (edgehub/pair/record.py); a write
        # that fails has its statements cut off with its savepoint.
        recording: list[Any] | None = [] if hook is not None else None
        token: object | None = None
        try:
            conn.execute("BEGIN IMMEDIATE")
            if recording is not None:
                conn.record(recording)  # type: ignore[attr-defined]
            for fn, fut, _due, _urgent in batch:
                conn.execute("SAVEPOINT item")
                try:
                    value = fn(conn)
                except Exception as exc:
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        raise  # SQLite undid the whole group itself (disk full, I/O error): all of it failed
                    conn.execute("ROLLBACK TO item")  # a recording connection drops its statements
                    conn.execute("RELEASE item")
                    results.append((fut, None, _journal_error(exc, self.path, whole_group=False)))
                else:
                    conn.execute("RELEASE item")
                    results.append((fut, value, None))
            if hook is not None and recording is not None:
                conn.record(None)  # type: ignore[attr-defined]
                token = hook.prepared(conn, recording)
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if recording is not None:
                conn.record(None)  # type: ignore[attr-defined]
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            log.error("journal commit of %d writes failed: %s", len(batch), exc)
            error = _journal_error(exc, self.path, whole_group=True)
            results = [(fut, None, error) for _, fut, _due, _urgent in batch]
            if hook is not None:
                hook.rolled_back(token)
            hook, token = None, None
        elapsed = time.perf_counter() - started
        self.stats.commits += 1
        self.checkpointer.committed()
        self.stats.writes += len(batch)
        self.stats.last_commit_ms = elapsed * 1000
        self.stats.max_batch = max(self.stats.max_batch, len(batch))
        self._period_writes += sum(1 for item in batch if item[3])
        for observer in self.commit_observers:
            observer(elapsed, len(batch))
        if hook is not None:
            # Answered once the standby holds the group too, while it is in sync.
            hook.committed(token, functools.partial(self._resolve, results))
        else:
            self._resolve(results)

    def _resolve(self, results: list[tuple[asyncio.Future[Any], Any, BaseException | None]]) -> None:
        def settle() -> None:
            for fut, value, exc in results:
                if fut.done():
                    continue
                if exc is not None:
                    fut.set_exception(exc)
                else:
                    fut.set_result(value)

        assert self._loop is not None
        with contextlib.suppress(RuntimeError):  # loop already closed at shutdown
            self._loop.call_soon_threadsafe(settle)

    # --- the async face --------------------------------------------------------------------

    async def write(self, fn: Callable[[sqlite3.Connection], T], *, lazy: bool = False,
                    within_s: float | None = None) -> T:
        """Run ``fn`` inside the next group commit; return once that commit is durable.

        ``lazy``: the write does not need a commit of its own soon; it joins the next one that
        another write asks for, or is committed within ``LAZY_WAIT_S`` (see the module doc).
        ``within_s``: the same with a deadline of its own, for a write a person waits on but
        would not notice a few more milliseconds of (a cook's tap: ``TAP_WAIT_S``)."""
        if self._closed or self._loop is None:
            raise JournalError("journal is not open")
        fut: asyncio.Future[T] = self._loop.create_future()
        if lazy:
            within_s = LAZY_WAIT_S if within_s is None else min(within_s, LAZY_WAIT_S)
        if within_s is None:
            self._queue.put((fn, fut, 0.0, True))
        else:
            self._queue.put((fn, fut, time.monotonic() + within_s, False))
        return await fut

    async def read(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        def run() -> T:
            if self._reader is None:
                raise JournalError("journal is not open")
            with self._reader_lock:
                return fn(self._reader)

        return await asyncio.to_thread(run)

    # --- what the hub writes ---------------------------------------------------------------

    async def accept_order(self, order: Order) -> OrderCommit:
        """Journal an order and its outbox row in one commit; a known order_id is a duplicate."""
        (commit,) = await self.accept_orders([order])
        return commit

    async def accept_orders(self, orders: list[Order], also: Callable[[sqlite3.Connection, list[OrderCommit]], None]
                            | None = None, received_at: float | None = None) -> list[OrderCommit]:
        """``accept_order`` for the orders that came in one turn of the loop, in one write (one
        queue item, one future): each order's commit in the order given. An order that appears
        twice is journaled once; the second is a duplicate. Each order goes under a savepoint of
        its own: one that cannot be written (``OrderCommit.error``) leaves the others written. If
        the write fails as a whole (the group commit failed), none of them is journaled. ``also`` writes its own
        rows in the same commit, knowing each order's commit (online orders' states). ``received_at``:
        when the orders were received, if not now (orders the other box of a pair took alone, handed
        over: edgehub/pair/salvage.py)."""
        received_at = self.clock() if received_at is None else received_at

        def insert(conn: sqlite3.Connection) -> list[OrderCommit]:
            commits, cloud = [], []
            for order in orders:
                conn.execute("SAVEPOINT one_order")
                try:
                    payload = dumps(order.doc)
                    cur = conn.execute(
                        "INSERT OR IGNORE INTO orders(order_id, terminal, received_at, payload) VALUES (?,?,?,?)",
                        (order.order_id, order.terminal, received_at, payload.decode()),
                    )
                    if cur.rowcount == 0:
                        seq, terminal, known = conn.execute(
                            "SELECT seq, terminal, payload FROM orders WHERE order_id=?", (order.order_id,)).fetchone()
                        commit = OrderCommit(seq=seq, duplicate=True, conflict=_conflict(order, terminal, known))
                    else:
                        row = (f"order:{order.order_id}", received_at,
                               cloud_order(self.store_id, order.terminal, received_at, payload))
                        commit = OrderCommit(seq=int(cur.lastrowid or 0), duplicate=False)
                except Exception as exc:
                    # Whatever one order meets here is its own: the others of the write go on.
                    if isinstance(exc, sqlite3.Error) and not conn.in_transaction:
                        raise  # SQLite undid the whole group (disk full, I/O error): not this order's
                    conn.execute("ROLLBACK TO one_order")
                    conn.execute("RELEASE one_order")
                    log.error("order %s from %s not journaled: %s", order.order_id, order.terminal, exc)
                    commits.append(OrderCommit(seq=0, duplicate=False, error=f"could not be journaled: {exc}"))
                    continue
                conn.execute("RELEASE one_order")
                if not commit.duplicate:
                    cloud.append(row)
                commits.append(commit)
            add_many_to_outbox(conn, "orders", cloud)
            if also is not None:
                also(conn, commits)
            return commits

        return await self.write(insert)

    async def add_deadletter(self, topic: str, reason: str, raw: bytes) -> None:
        at = self.clock()

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES (?,?,?,?)",
                         (at, topic, reason, raw))
            # Keep the newest 10,000: dead letters are for support, not a second journal.
            conn.execute("DELETE FROM deadletters WHERE id <= (SELECT MAX(id) FROM deadletters) - 10000")

        await self.write(insert)

    async def counts(self) -> dict[str, int]:
        def run(conn: sqlite3.Connection) -> dict[str, int]:
            orders = conn.execute("SELECT COUNT(*) FROM orders").fetchone()[0]
            outbox = conn.execute("SELECT COUNT(*) FROM outbox").fetchone()[0]
            dead = conn.execute("SELECT COUNT(*) FROM deadletters").fetchone()[0]
            return {"orders": orders, "outbox": outbox, "deadletters": dead}

        return await self.read(run)
