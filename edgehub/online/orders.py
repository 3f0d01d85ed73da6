"""Orders placed online, from the cloud to the kitchen, and their state back to the cloud.

The cloud publishes each order placed online (a delivery platform, the mini-program, a kiosk run
by the cloud) on ``cloud/{store}/down/orders`` (``cloud-down-order/1``, QoS 1, not retained;
docs/cloud.md). The box:

1. journals it as an order of terminal ``cloud:{channel}`` (``orders``, so it is deduped by
   ``order_id`` with the tills' orders and goes up in the ``orders`` stream like theirs), with its
   state ``accepted`` (``online_orders`` and a ``cloud-order-state/1`` outbox row), in one commit;
2. only then acknowledges the MQTT message to the cloud (a PUBACK): an order the box did not keep
   is sent again, one it kept and sees again is acknowledged again and taken once;
3. hands it to whoever takes a till's accepted order (the open checks, the kitchen: tickets on
   the stations it routes to, slips on their printers);
4. sends each move of the kitchen's progress back up (``in_kitchen``: a cook started it,
   ``ready``, ``served``: ``progress.stage``, from the same facts that tell the tills "ready"), a
   till's cancel (``cancelled``) or a refusal (``rejected``, with the reason), numbered per order.

Orders that arrive in a burst (the WAN comes back after an hour of lunch orders) are taken a
batch at a time (``BATCH``), one journal write each; before each batch the box gives way for up
to ``GIVE_WAY_MAX_S`` while a till's order is being taken, and after it pauses as long as the
batch took (a backlog gets at most half of the event loop): the tills' acks do not wait behind
the backlog (bench/online.py measures both).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgehub.bus.payloads import Unaddressable
from edgehub.component import Component, Listener, Signals, StatusReader, on
from edgehub.config import LimitsConfig
from edgehub.errors import EdgehubError, JournalError, PayloadError
from edgehub.intake import ORDER_ACCEPTED
from edgehub.kitchen.kitchen import ORDER_CHANGED, OrderChanged
from edgehub.kitchen.progress import IN_KITCHEN, ORDER_PROGRESS, READY, SERVED, Change, stage
from edgehub.online.tables import TABLES
from edgehub.store import Journal
from edgehub.store.deadletters import add_deadletter
from edgehub.store.journal import OrderCommit
from edgehub.store.outbox import add_to_outbox
from edgehub.store.schema import Tables
from edgehub.tasks import cancel_and_wait
from edgehub.uplink.cloudapi import CHANNEL_RE, CloudOrder, cloud_order_id, order_state, parse_cloud_order

log = logging.getLogger("edgehub.online")

BATCH = 4  # orders journaled together: one commit, then the loop is handed back
PAUSE_MAX_S = 0.1  # the longest pause between two batches
GIVE_WAY_MAX_S = 0.02  # before each batch, wait this long at most while a till's order is taken
GIVE_WAY_POLL_S = 0.001
RETRY_S = 1.0  # after the journal refused a batch (it is taken again; the cloud is not acked)
TRACK_S = 24 * 3600  # how long an online order's kitchen progress is followed
SWEEP_EVERY_S = 3600.0
ACCEPTED, CANCELLED, REJECTED = "accepted", "cancelled", "rejected"
# The kitchen's progress the cloud hears of (``ordered`` is what ``accepted`` already says).
SENT_PROGRESS = (IN_KITCHEN, READY, SERVED)
DOWN_TOPIC = "cloud/down/orders"  # how dead letters name where a refused message came from


@dataclass
class Tracked:
    """An online order whose progress the box still sends up."""

    order_id: str
    channel: str
    state: str
    updates: int
    received_at: float


@dataclass
class OnlineStats:
    received: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    deadlettered: int = 0
    journal_failures: int = 0
    updates_sent: int = 0


class OnlineOrders(Component):
    """``async with`` owns the task that takes orders from the cloud into the journal."""

    name = "online_orders"

    def __init__(self, journal: Journal, store_id: str, limits: LimitsConfig,
                 signals: Signals, give_way: Callable[[], bool],
                 keep_days: float = 90.0, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.store_id = store_id
        self.limits = limits
        self.signals = signals  # ORDER_ACCEPTED goes out here: a till's order goes the same way
        self.give_way = give_way
        self.keep_days = keep_days
        self.clock = clock
        self.stats = OnlineStats()
        self.tracked: dict[str, Tracked] = {}
        self._queue: collections.deque[tuple[bytes, Callable[[], None]]] = collections.deque()
        self._wake = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._writes: set[asyncio.Task[None]] = set()
        self.last_received_at: float | None = None

    def listens(self) -> Sequence[Listener]:
        return [on(ORDER_PROGRESS, self.on_progress), on(ORDER_CHANGED, self.on_order_change)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"online_orders": self.status}

    def tables(self) -> Sequence[Tables]:
        return [TABLES]

    async def __aenter__(self) -> OnlineOrders:
        await self.journal.ensure(TABLES)
        since = self.clock() - TRACK_S
        for tracked in await self.journal.read(lambda conn: _load(conn, since)):
            self.tracked[tracked.order_id] = tracked
        self._tasks = [asyncio.create_task(self._run(), name="online-orders"),
                       asyncio.create_task(self._sweep(), name="online-orders-sweep")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Orders not taken yet were not acknowledged: the cloud sends them again.
        await cancel_and_wait(*self._tasks)
        if self._writes:
            await asyncio.wait(list(self._writes), timeout=5)

    # --- in from the cloud -----------------------------------------------------------------

    def take(self, raw: bytes, ack: Callable[[], None]) -> None:
        """One ``cloud-down-order/1`` message; ``ack`` acknowledges it to the cloud."""
        self.stats.received += 1
        self.last_received_at = self.clock()
        self._queue.append((raw, ack))
        self._wake.set()

    async def _run(self) -> None:
        while True:
            if not self._queue:
                self._wake.clear()
                await self._wake.wait()
                continue
            until = time.monotonic() + GIVE_WAY_MAX_S
            # Polled: the intake counts the orders it is taking; it has no event to wait on.
            while self.give_way() and time.monotonic() < until:  # noqa: ASYNC110
                await asyncio.sleep(GIVE_WAY_POLL_S)
            batch = [self._queue.popleft() for _ in range(min(BATCH, len(self._queue)))]
            started = time.monotonic()
            try:
                await self._take(batch)
            except JournalError as exc:
                self.stats.journal_failures += 1
                log.error("%d online orders not journaled (%s); trying again in %g s", len(batch), exc, RETRY_S)
                self._queue.extendleft(reversed(batch))
                await asyncio.sleep(RETRY_S)
            except Exception:  # not acknowledged: the cloud sends them again on the next connection
                log.exception("%d online orders not taken", len(batch))
            # As long again for everything else (the tills first): a backlog takes at most half of
            # the event loop, however long it is.
            await asyncio.sleep(min(PAUSE_MAX_S, time.monotonic() - started) if self._queue else 0)

    async def _take(self, batch: list[tuple[bytes, Callable[[], None]]]) -> None:
        taken: list[tuple[CloudOrder, Callable[[], None]]] = []
        for raw, ack in batch:
            try:
                taken.append((parse_cloud_order(raw, self.limits), ack))
            except Unaddressable as exc:
                await self._deadletter(raw, exc.reason)
                ack()
            except PayloadError as exc:
                await self._reject(cloud_order_id(raw), raw, str(exc))
                ack()
        if not taken:
            return
        at = self.clock()
        states: dict[str, tuple[str, str]] = {}  # order id -> (state, reason) written for it

        def also(conn: sqlite3.Connection, commits: list[OrderCommit]) -> None:
            for (cloud, _ack), commit in zip(taken, commits, strict=True):
                order_id = cloud.order.order_id
                if commit.duplicate and not commit.conflict:
                    continue
                refusal = commit.conflict or commit.error
                state, reason = (REJECTED, refusal) if refusal else (ACCEPTED, "")
                if _insert(conn, self.store_id, order_id, cloud.channel, state, at, reason):
                    states[order_id] = (state, reason)

        commits = await self.journal.accept_orders([cloud.order for cloud, _ in taken], also=also)
        for (cloud, ack), commit in zip(taken, commits, strict=True):
            ack()
            order = cloud.order
            if commit.conflict or commit.error:
                self.stats.rejected += 1
                log.warning("online order %s from %s refused: %s", order.order_id, cloud.channel,
                            commit.conflict or commit.error)
                continue
            if commit.duplicate:
                self.stats.duplicates += 1
                continue
            self.stats.accepted += 1
            if order.order_id in states:
                self.tracked[order.order_id] = Tracked(order.order_id, cloud.channel, ACCEPTED, 1, at)
            order = replace(order, seq=commit.seq)  # its short number (``order_no``) comes from it
            self.signals.emit(ORDER_ACCEPTED, order)  # a listener's fault is logged, the next order goes

    async def _reject(self, order_id: str | None, raw: bytes, reason: str) -> None:
        """A cloud order that cannot be taken: kept among the dead letters and, when it names an
        order id, told to the cloud (``rejected`` with the reason), once."""
        self.stats.rejected += 1
        log.warning("online order %s refused: %s", order_id or "?", reason)
        if order_id is None:
            await self._deadletter(raw, reason)
            return
        at = self.clock()

        def write(conn: sqlite3.Connection) -> None:
            add_deadletter(conn, at, DOWN_TOPIC, f"rejected online order {order_id}: {reason}", raw)
            _insert(conn, self.store_id, order_id, _channel(raw), REJECTED, at, reason)

        await self.journal.write(write)

    async def _deadletter(self, raw: bytes, reason: str) -> None:
        self.stats.deadlettered += 1
        log.warning("online order dead-lettered: %s", reason)
        try:
            await self.journal.add_deadletter(DOWN_TOPIC, reason, raw)
        except EdgehubError as exc:
            log.error("online order dead letter not journaled: %s", exc)

    # --- the kitchen's progress back up ----------------------------------------------------

    def on_progress(self, change: Change | None) -> None:
        """``ORDER_PROGRESS``: an online order whose progress moved tells the cloud."""
        if change is None:
            return
        tracked = self.tracked.get(change.order.order_id)
        if tracked is not None:
            progress = stage(change.order.states())
            if progress in SENT_PROGRESS and progress != tracked.state:
                self._send(tracked, str(progress))

    def on_order_change(self, change: OrderChanged) -> None:
        tracked = self.tracked.get(change.order_id)
        if tracked is not None and change.kind == "cancel":
            self._send(tracked, CANCELLED, f"cancelled at the store by {change.by}")
            del self.tracked[change.order_id]

    def _send(self, tracked: Tracked, state: str, reason: str = "") -> None:
        tracked.state = state
        tracked.updates += 1
        n, at = tracked.updates, self.clock()
        doc = order_state(self.store_id, tracked.order_id, tracked.channel, state, n, at, reason)

        def write(conn: sqlite3.Connection) -> None:
            conn.execute("UPDATE online_orders SET state=?, updates=?, updated_at=? WHERE order_id=?",
                         (state, n, at, tracked.order_id))
            add_to_outbox(conn, "orders", f"order-state:{tracked.order_id}:{n}", doc, created_at=at)

        async def commit() -> None:
            try:
                # Nobody waits on it at the store: it rides with the next commit.
                await self.journal.write(write, lazy=True)
            except EdgehubError as exc:
                log.error("state %s of online order %s not journaled: %s", state, tracked.order_id, exc)
                return
            self.stats.updates_sent += 1

        task = asyncio.get_running_loop().create_task(commit())
        self._writes.add(task)
        task.add_done_callback(self._writes.discard)

    async def _sweep(self) -> None:
        """Followed for a day; the table keeps its rows as long as the journal keeps orders."""
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            now = self.clock()
            for order_id in [o for o, t in self.tracked.items() if t.received_at < now - TRACK_S]:
                del self.tracked[order_id]
            if self.keep_days > 0:
                cutoff = now - self.keep_days * 86400
                with contextlib.suppress(EdgehubError):
                    await self.journal.write(functools.partial(_forget, cutoff=cutoff), lazy=True)

    # --- status ----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for tracked in self.tracked.values():
            by_state[tracked.state] = by_state.get(tracked.state, 0) + 1
        return {**vars(self.stats), "waiting": len(self._queue), "following": by_state,
                "last_received_at": self.last_received_at}


def _insert(conn: sqlite3.Connection, store_id: str, order_id: str, channel: str, state: str, at: float,
            reason: str) -> bool:
    """The first state of an online order, with its outbox row (update 1), unless it has one."""
    cur = conn.execute("INSERT OR IGNORE INTO online_orders(order_id, channel, state, updates, received_at, "
                       "updated_at) VALUES (?,?,?,1,?,?)", (order_id, channel, state, at, at))
    if cur.rowcount == 0:
        return False
    add_to_outbox(conn, "orders", f"order-state:{order_id}:1", order_state(store_id, order_id, channel, state, 1,
                                                                           at, reason), created_at=at)
    return True


def _forget(conn: sqlite3.Connection, cutoff: float) -> None:
    conn.execute("DELETE FROM online_orders WHERE updated_at < ?", (cutoff,))


def _channel(raw: bytes) -> str:
    """The channel a refused order names, if it names a usable one."""
    with contextlib.suppress(ValueError, AttributeError):
        channel = json.loads(raw).get("channel")
        if isinstance(channel, str) and CHANNEL_RE.match(channel):
            return channel
    return "unknown"


def _load(conn: sqlite3.Connection, since: float) -> list[Tracked]:
    return [Tracked(order_id, channel, state, updates, received_at) for order_id, channel, state, updates, received_at
            in conn.execute("SELECT order_id, channel, state, updates, received_at FROM online_orders "
                            "WHERE received_at >= ? AND state NOT IN (?, ?)", (since, CANCELLED, REJECTED))]
