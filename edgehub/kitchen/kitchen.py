"""The kitchen component: accepted orders become station tickets, screens move them along.

Flow of every change (a new order, a cook's tap, a POS amend or cancel): the change is decided
and applied to the in-memory tickets at once, on the event loop, so the next tap is judged
against it; then it is journaled (ticket, event, outbox row in one group commit); only after
that commit is it announced — on ``…/kds/{station}/event`` for native KDS apps and to the
station's websocket screens — and sent to the station's printer. A failed commit reloads the
tickets from the journal, so memory never claims what the disk does not hold. The one
exception is a new order's tickets: the order is durable before they exist and start-up
recovery re-makes them from it, so they are announced at once and journaled with the next
commit (see ``on_order_accepted``).

Reconnecting screens get a snapshot (``…/kds/{station}/snapshot/get`` or the websocket's first
message) rather than a retained state topic: a retained full state would be re-sent to every
screen on every change (tens of kB, hundreds of times a second at the rush), while a snapshot
costs only when a screen connects; each event's per-station ``seq`` lets a screen notice a gap
and ask again.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import json
import logging
import sqlite3
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

from edgehub.bus import payloads
from edgehub.bus.payloads import Amend, Cancel, KdsCommand, Order
from edgehub.bus.topics import Topics
from edgehub.component import Bus, Component, Listener, MqttBatch, MqttRoute, Signal, StatusReader, on
from edgehub.config import KitchenConfig, LimitsConfig
from edgehub.errors import BrokerError, EdgehubError, JournalError, PayloadError, TicketRefused
from edgehub.intake import ORDER_ACCEPTED
from edgehub.kitchen.amend import additions, apply_header, diff_lines
from edgehub.kitchen.face import KitchenMqtt
from edgehub.kitchen.printing import KitchenPrinter, job_id, slip_ticket
from edgehub.kitchen.progress import OrderProgress, Progress, progress_of
from edgehub.kitchen.routing import Routed, Router
from edgehub.kitchen.tables import TABLES
from edgehub.kitchen.tickets import (
    BUMPED,
    HEADER_KEYS,
    LIVE,
    OF_ORDER,
    OPEN,
    READY,
    RECALLED,
    RUSH_PRIORITY,
    SERVED,
    VOIDED,
    Event,
    Ticket,
    add_to_outbox,
    colour,
    load,
    move_watermark,
    stale_open,
    stored_ticket,
    unrouted_orders,
    with_order_no,
    write_alert,
    write_events,
)
from edgehub.store import Journal, orders
from edgehub.store.journal import TAP_WAIT_S
from edgehub.store.schema import Tables
from edgehub.tasks import sleep_to_tick

log = logging.getLogger("edgehub.kitchen")

KEEP_BUMPED = 20  # bumped tickets per station kept at hand for recall
FORGET_AFTER_S = 4 * 3600  # a finished ticket older than this leaves memory (never the journal)
SWEEP_EVERY_S = 600  # how often the journal is searched for open tickets not held in memory
SWEEP_BATCH = 500  # tickets expired from the journal per sweep
SCREEN_QUEUE = 2000  # a screen further behind than this is dropped; it reconnects to a snapshot
# What an amend may change in a ticket's header (the order's short number stays).
AMENDABLE = ("table", "covers", "course", "note")


@dataclass
class KitchenStats:
    tickets: int = 0
    events: int = 0
    alerts: int = 0
    amends: int = 0
    cancels: int = 0
    changes_by_other_tills: int = 0  # amends and cancels of an order another till placed
    refused: int = 0
    publish_failures: int = 0
    print_failures: int = 0
    journal_failures: int = 0
    recovered_orders: int = 0
    expired: int = 0
    not_held: int = 0  # open tickets put out of memory by max_open_per_station (all time)


@dataclass
class StationView:
    """What the station's screens see: its open tickets (the ``Ticket`` objects themselves, no
    copy; a snapshot renders them) as of event ``seq``, and the last bumped for recall."""

    seq: int = 0
    tickets: dict[str, Ticket] = field(default_factory=dict)  # open tickets by id
    recent: list[dict[str, Any]] = field(default_factory=list)  # bumped, newest first
    hidden: int = 0  # open in the journal, not held in memory (beyond max_open_per_station)
    # (created_at, ticket_id) of the open tickets, a heap: the oldest is evicted first when the
    # station holds too many. Entries of tickets that left since are skipped when met.
    by_age: list[tuple[float, str]] = field(default_factory=list)

    def hold(self, ticket: Ticket) -> None:
        held = self.tickets.get(ticket.ticket_id)
        self.tickets[ticket.ticket_id] = ticket
        if held is not None:
            return  # held already (a change to an open ticket)
        heapq.heappush(self.by_age, (ticket.created_at, ticket.ticket_id))
        if len(self.by_age) > 2 * len(self.tickets) + 64:
            self.by_age = [(t.created_at, t.ticket_id) for t in self.tickets.values()]
            heapq.heapify(self.by_age)

    def pop_oldest(self) -> Ticket:
        while True:
            created_at, ticket_id = heapq.heappop(self.by_age)
            ticket = self.tickets.get(ticket_id)
            if ticket is not None and ticket.created_at == created_at:
                del self.tickets[ticket_id]
                return ticket


class ScreenFeed:
    """One connected screen: the messages for it, in order, starting with a snapshot."""

    def __init__(self, station: str) -> None:
        self.station = station
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue(SCREEN_QUEUE)
        self.dropped = asyncio.Event()

    def push(self, doc: dict[str, Any]) -> None:
        try:
            self.queue.put_nowait(doc)
        except asyncio.QueueFull:
            self.dropped.set()


@dataclass
class _OrderFacts:
    order: tuple[str, float, dict[str, Any]] | None  # terminal, received_at, doc
    change: tuple[str, dict[str, Any]] | None  # the change id's terminal and payload, if known
    cancelled: bool
    tickets: list[Ticket]
    amends: list[tuple[str, float, dict[str, Any]]] = field(default_factory=list)  # in the order applied

    def current(self) -> tuple[dict[str, Any], int, str, float]:
        """The order as it stands (``payloads.apply_amend``), its version, and who changed it last, when."""
        assert self.order is not None
        doc, version = payloads.current_order(self.order[2], [a[2] for a in self.amends])
        by, at = (self.amends[-1][0], self.amends[-1][1]) if self.amends else (self.order[0], self.order[1])
        return doc, version, by, at


@dataclass(frozen=True)
class OrderChanged:
    """An amend or cancel, journaled: what ``ORDER_CHANGED`` carries. ``doc`` is
    the order as it stands after it (None for a cancel), ``version`` its version (1 + amends)."""

    order_id: str
    kind: str
    doc: dict[str, Any] | None
    version: int
    by: str
    at: float


# Every amend and cancel, once journaled (ticket changes: ``progress.ORDER_PROGRESS``).
ORDER_CHANGED: Signal[OrderChanged] = Signal("order changed")


class Kitchen(Component):
    name = "kitchen"

    def __init__(
        self,
        config: KitchenConfig,
        topics: Topics,
        journal: Journal,
        store_id: str,
        limits: LimitsConfig | None = None,
        bus: Bus | None = None,
        clock: Callable[[], float] = time.time,
        printer: KitchenPrinter | None = None,
        tick_s: float = 1.0,
        terminal_kinds: Mapping[str, str] | None = None,
    ) -> None:
        self.config = config
        # terminal id -> pos, kds or kiosk: who may change another terminal's order (``_may_change``)
        self.terminal_kinds = dict(terminal_kinds or {})
        self.topics = topics
        self.journal = journal
        self.store_id = store_id
        self.limits = limits or LimitsConfig()
        self.bus = bus
        self.clock = clock
        # Wiring the print queue later is one line: ``kitchen.printer = print_queue``.
        self.printer = printer
        self.tick_s = tick_s
        self.router = Router(config)
        self.stats = KitchenStats()
        # Each order's progress (in the kitchen, ready, …) as announced: what the front hears.
        self.progress = Progress()
        self._tickets: dict[str, Ticket] = {}
        self._by_order: dict[str, list[str]] = {}
        self._seq: dict[str, int] = {}
        # Seq numbers handed out but not yet announced, and events ready but held back behind
        # them: a station's events go out in seq order (see ``_announce``).
        self._unannounced: dict[str, set[int]] = {}
        self._held: dict[str, dict[int, Event]] = {}
        self._views: dict[str, StationView] = {}
        self._feeds: dict[str, set[ScreenFeed]] = {}
        self._cancelled: set[str] = set()
        self._created: list[Event] = []  # new orders' tickets on their way to the journal
        self._inflight: dict[str, asyncio.Future[None]] = {}  # amend/cancel ids being committed
        self._tasks: set[asyncio.Task[Any]] = set()
        self._ticker: asyncio.Task[None] | None = None
        self._reloading: asyncio.Task[None] | None = None
        self._next_sweep = 0.0
        # Stations kitchen screens are set up for (their terminals' ``stations``): known stations.
        self.screen_stations: tuple[str, ...] = ()
        self._order_locks: dict[str, list[Any]] = {}  # order id -> [its lock, changes waiting on it]
        # Who hears of every amend and cancel once it is journaled (ticket changes: ``progress``).
        self.on_order_change: list[Callable[[OrderChanged], None]] = []

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return KitchenMqtt(self).routes()

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"kitchen": self.status}

    def listens(self) -> Sequence[Listener]:
        return [on(ORDER_ACCEPTED, self.on_order_accepted)]

    def tables(self) -> Sequence[Tables]:
        return [TABLES]

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Kitchen:
        await self.journal.ensure(TABLES)
        await self._reload()
        self._ticker = asyncio.create_task(self._tick_loop(), name="kitchen-ticker")
        return self

    async def __aexit__(self, *exc: object) -> None:
        tasks = [t for t in (self._ticker, self._reloading) if t is not None]
        for task in tasks:
            task.cancel()
        # Commits already queued finish (the journal closes after us); publishing is best effort.
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=5)
        for task in [*tasks, *self._tasks]:
            task.cancel()
        await asyncio.gather(*tasks, *self._tasks, return_exceptions=True)

    async def _reload(self) -> None:
        """(Re)build memory from the journal, then give tickets to accepted orders lacking them."""
        cap = self.config.max_open_per_station
        ready_since = self.clock() - FORGET_AFTER_S
        # Tickets not yet journaled are made again below, from their orders.
        self._created.clear()
        loaded = await self.journal.read(lambda conn: load(conn, KEEP_BUMPED, cap, ready_since))
        self._tickets.clear()
        self._by_order.clear()
        self._views.clear()
        self._seq = dict(loaded.seqs)
        self._unannounced.clear()
        self._held.clear()
        self._cancelled = loaded.cancelled
        for ticket in loaded.tickets:
            ticket.printer_role = self.config.station(ticket.station).printer_role
            self._remember(ticket)
        for ticket in sorted(loaded.tickets, key=lambda t: t.updated_at):
            self._view_apply(ticket.doc())
        for station, seq in self._seq.items():
            self._view(station).seq = seq
        self.progress.rebuild(t.doc() for t in loaded.tickets)
        for station, count in loaded.open_counts.items():
            view = self._view(station)
            view.hidden = max(0, count - len(view.tickets))
            if view.hidden:
                self._warn_hidden(station, view)
        unrouted = await self.journal.read(unrouted_orders)
        events: list[Event] = []
        for order_id, terminal, received_at, doc in unrouted:
            events += self._create(order_id, terminal, doc, received_at, "recovery")
        self.stats.recovered_orders += len(unrouted)
        if unrouted:
            log.warning(
                "%d accepted orders had no kitchen tickets (the hub stopped in between); made them now",
                len(unrouted),
            )

        def write(conn: sqlite3.Connection) -> None:
            write_events(conn, self.store_id, events)
            move_watermark(conn)

        await self.journal.write(write)
        self._announce(events)

    # --- memory ----------------------------------------------------------------------------

    def _remember(self, ticket: Ticket) -> None:
        self._tickets[ticket.ticket_id] = ticket
        ids = self._by_order.setdefault(ticket.order_id, [])
        if ticket.ticket_id not in ids:
            ids.append(ticket.ticket_id)

    def _view(self, station: str) -> StationView:
        view = self._views.get(station)
        if view is None:
            view = self._views[station] = StationView(seq=self._seq.get(station, 0))
        return view

    def _view_apply(self, doc: dict[str, Any]) -> None:
        view = self._view(doc["station"])
        ticket_id = doc["ticket_id"]
        if doc["version"] > 1:  # a new ticket (version 1) was never bumped
            view.recent = [t for t in view.recent if t["ticket_id"] != ticket_id]
        if doc["state"] in OPEN:
            ticket = self._tickets.get(ticket_id)
            if ticket is not None:
                view.hold(ticket)
                if len(view.tickets) > self.config.max_open_per_station:
                    self._put_out_of_memory(view)
            return
        view.tickets.pop(ticket_id, None)
        if doc["state"] in BUMPED:
            view.recent.insert(0, doc)
            del view.recent[KEEP_BUMPED:]

    def _put_out_of_memory(self, view: StationView) -> None:
        """The station holds more open tickets than ``max_open_per_station``: the oldest leaves
        memory (and the screens); it stays open in the journal, counted, and still expires."""
        while len(view.tickets) > self.config.max_open_per_station:
            oldest = view.pop_oldest()
            self._forget(oldest)
            view.hidden += 1
            self.stats.not_held += 1
            if view.hidden == 1 or view.hidden % 1000 == 0:
                self._warn_hidden(oldest.station, view)

    def _warn_hidden(self, station: str, view: StationView) -> None:
        log.warning(
            "kitchen station %s has %d open tickets beyond the %d its screens show (nobody bumps "
            "them: no screen, or it is off?); the oldest are kept only in the journal and expire "
            "after %g h", station, view.hidden, self.config.max_open_per_station,
            self.config.expire_open_after_h,
        )

    def _forget(self, ticket: Ticket) -> None:
        """Out of memory (never the journal)."""
        self._tickets.pop(ticket.ticket_id, None)
        ids = self._by_order.get(ticket.order_id, [])
        with contextlib.suppress(ValueError):
            ids.remove(ticket.ticket_id)
        if not ids:
            self._by_order.pop(ticket.order_id, None)

    def _event(
        self, ticket: Ticket, name: str, at: float, source: str, detail: dict[str, Any] | None = None
    ) -> Event:
        seq = self._seq.get(ticket.station, 0) + 1
        self._seq[ticket.station] = seq
        self._unannounced.setdefault(ticket.station, set()).add(seq)
        ticket.last_seq = seq
        return Event(seq, name, ticket.doc(), at, source, detail)

    def _create(
        self, order_id: str, terminal: str, doc: Mapping[str, Any], at: float, source: str
    ) -> list[Event]:
        """A new order's tickets: its lines routed, one ticket per station."""
        return [
            self._new_ticket(order_id, terminal, share, at, source)
            for share in self.router.route(doc).values()
        ]

    def _new_ticket(self, order_id: str, terminal: str, share: Routed, at: float, source: str) -> Event:
        """A ticket for one station's share, already routed: an amend's share keeps the station
        the amended order routed it to (a line's own ``station`` is not in its ticket line, so
        it could not be routed again) and each line its place in the order. Numbered after the
        order's earlier tickets at that station (1 for a new order)."""
        station = share.station
        number = 1 + max((t.number for t in self._order_tickets(order_id) if t.station == station), default=0)
        rush = bool(share.header.get("rush"))
        ticket = Ticket(
            ticket_id=f"{order_id}/{station}/{number}",
            order_id=order_id,
            station=station,
            terminal=terminal,
            created_at=at,
            lines=list(share.lines),
            header={k: share.header[k] for k in HEADER_KEYS if k in share.header},
            rush=rush,
            priority=RUSH_PRIORITY if rush else 0,
            updated_at=at,
            version=1,
            printer_role=self.config.station(station).printer_role,
        )
        self._remember(ticket)
        self.stats.tickets += 1
        return self._event(ticket, "created", at, source)

    def _order_tickets(self, order_id: str) -> list[Ticket]:
        return [self._tickets[i] for i in self._by_order.get(order_id, ()) if i in self._tickets]

    # --- commit, then announce -------------------------------------------------------------

    async def _commit(
        self, events: list[Event], extra: Callable[[sqlite3.Connection], None] | None = None,
        lazy: bool = False, announce: bool = True, within_s: float | None = None,
    ) -> None:
        """Journal ``events`` (and ``extra`` rows) in one commit, then announce them. ``lazy``:
        ride along with the journal's next commit (see Journal.write) rather than fsync alone;
        ``within_s``: may wait that long for company (a cook's tap); ``announce=False``: the
        caller announced them already (a new order's tickets)."""

        # New orders' tickets not yet handed to the journal go first: a change to a ticket is
        # never journaled before the ticket itself (one FIFO writer, one commit).
        created, self._created = self._created, []

        def write(conn: sqlite3.Connection) -> None:
            if extra is not None:
                extra(conn)
            write_events(conn, self.store_id, created + events)

        try:
            await self.journal.write(write, lazy=lazy, within_s=within_s)
        except (JournalError, sqlite3.Error) as exc:
            self.stats.journal_failures += 1
            log.error("kitchen change not journaled (%s); reloading the tickets from the journal", exc)
            self._withdraw(events)
            self._schedule_reload()
            raise JournalError(f"kitchen change not journaled: {exc}") from exc
        if announce:
            self._announce(events)

    def _schedule_reload(self) -> None:
        if self._reloading is None or self._reloading.done():
            self._reloading = asyncio.create_task(self._reload_quietly(), name="kitchen-reload")

    async def _reload_quietly(self) -> None:
        try:
            await self._reload()
        except EdgehubError as exc:
            log.error("kitchen reload failed: %s", exc)

    def _announce(self, events: list[Event]) -> None:
        """Screens first (in process, in order), then MQTT and printers in the background.

        A station's events go out in seq order, so a screen that sees a gap may rightly ask for
        a snapshot: a new order's tickets (announced at once) wait while a cook's tap with an
        earlier seq is still being committed, a few milliseconds at most."""
        ready: list[Event] = []
        for station in dict.fromkeys(ev.station for ev in events):
            held = self._held.setdefault(station, {})
            held.update((ev.seq, ev) for ev in events if ev.station == station)
            ready += self._release(station)
        self._emit(ready)

    def _release(self, station: str) -> list[Event]:
        """The held events of ``station`` whose every earlier seq is out (or withdrawn)."""
        held, pending = self._held.get(station, {}), self._unannounced.get(station, set())
        out = []
        while held:
            seq = min(held)
            if min(pending, default=seq) < seq:
                break  # an earlier change is still being committed
            pending.discard(seq)
            out.append(held.pop(seq))
        return out

    def _withdraw(self, events: list[Event]) -> None:
        """Events whose commit failed are never announced: stop holding later ones for them
        (screens see the gap and ask for a snapshot, which the reload makes true again)."""
        ready: list[Event] = []
        for station in dict.fromkeys(ev.station for ev in events):
            self._unannounced.get(station, set()).difference_update(ev.seq for ev in events)
            ready += self._release(station)
        self._emit(ready)

    def _emit(self, events: list[Event]) -> None:
        published: list[tuple[str, dict[str, Any] | bytes]] = []
        for ev in events:
            self.stats.events += 1
            self._view_apply(ev.ticket)
            self.progress.apply(ev.ticket, ev.event, ev.at)
            view = self._view(ev.station)
            view.seq = max(view.seq, ev.seq)
            feeds = self._feeds.get(ev.station)
            if feeds:  # websocket screens; native ones take ``body`` from MQTT
                doc = ev.payload()
                for feed in feeds:
                    feed.push(doc)
            published.append((self.topics.kds_event(ev.station), ev.body))
            role = self.config.station(ev.station).printer_role
            if self.printer is not None and role and ev.event in ("created", "amended", "voided", "recalled"):
                self._spawn(self._print(role, ev))
        if published and self.bus is not None:
            # On the loop's next turn, so a command's reply still goes out before its event.
            asyncio.get_running_loop().call_soon(self._publish_now, published)

    def _publish_now(self, items: list[tuple[str, dict[str, Any] | bytes]]) -> None:
        """Events handed to the MQTT session in order, without a task or a wait for each
        PUBACK (the session re-sends after a reconnect; screens resync on a seq gap)."""
        for topic, doc in items:
            self._publish_nowait(topic, doc)

    def _publish_nowait(self, topic: str, doc: dict[str, Any] | bytes, properties: Any = None) -> None:
        """One message handed to the MQTT session without waiting for its PUBACK."""
        if self.bus is None:
            return
        try:
            self.bus.publish_nowait(topic, doc if isinstance(doc, bytes) else payloads.dumps(doc), qos=1,
                                    properties=properties)
        except BrokerError as exc:
            self.stats.publish_failures += 1
            log.debug("kitchen publish to %s failed: %s", topic, exc)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _publish_all(self, items: list[tuple[str, dict[str, Any] | bytes]]) -> None:
        await asyncio.gather(*(self._publish(topic, doc) for topic, doc in items))

    async def _publish(self, topic: str, doc: dict[str, Any] | bytes, properties: Any = None) -> None:
        if self.bus is None:
            return
        body = doc if isinstance(doc, bytes) else payloads.dumps(doc)
        try:
            await self.bus.publish(topic, body, qos=1, properties=properties)
        except (BrokerError, TimeoutError) as exc:
            # Screens that missed it see a gap in seq (or reconnect) and take a snapshot.
            self.stats.publish_failures += 1
            log.debug("kitchen publish to %s failed: %s", topic, exc)

    async def _print(self, role: str, ev: Event) -> None:
        assert self.printer is not None
        try:
            await self.printer.submit(role, job_id(ev.ticket), slip_ticket(ev.ticket, ev.event))
        except Exception as exc:  # the print queue's own failure must not stop the kitchen
            self.stats.print_failures += 1
            log.error("kitchen slip %s for role %s not queued: %s", job_id(ev.ticket), role, exc)

    # --- orders ----------------------------------------------------------------------------

    def on_order_accepted(self, order: Order) -> None:
        """On ``ORDER_ACCEPTED`` (after the order's ack): its tickets, on the screens now, journaled with
        the next commit.

        The one change announced before its own commit, and safely so: the order is durable
        already (this hook runs after its commit) and the tickets are a pure function of it —
        start-up recovery makes the same tickets (same ids) for an accepted order that has
        none — so a screen never shows a ticket the box could not restore. Waiting for the
        tickets' commit would put a second fsync (or, lazily, the next order's) between the
        POS and the cook; a cook's tap on the ticket is journaled after it (one FIFO writer).
        """
        if self._by_order.get(order.order_id):
            return  # already made (the start-up recovery got there first)
        events = self._create(
            order.order_id, order.terminal, {**order.doc, "order_no": order.order_no}, self.clock(),
            f"pos:{order.terminal}"
        )
        self._announce(events)
        if not self._created:
            self._spawn(self._commit_created())
        self._created += events

    async def _commit_created(self) -> None:
        """New orders' tickets, journaled together: those of every order taken in this turn of
        the loop (a group commit resolves its orders at once). Lazy: they join the next order's
        commit instead of fsyncing alone (a crash in between is covered: start-up recovery
        makes tickets for such orders)."""
        await asyncio.sleep(0)
        if self._created:  # else a cook's change took them along (``_commit``)
            with contextlib.suppress(JournalError):  # logged in _commit; the reload re-makes them
                await self._commit([], lazy=True, announce=False)

    # --- cook actions ----------------------------------------------------------------------

    def _find(self, station: str, ticket_id: str | None, action: str) -> Ticket:
        if ticket_id is None:
            bumped = [t for t in self._tickets.values() if t.station == station and t.state in BUMPED]
            if not bumped:
                raise TicketRefused("-", action, f"nothing was bumped at {station} lately")
            return max(bumped, key=lambda t: (t.ready_at or t.updated_at, t.last_seq))
        ticket = self._tickets.get(ticket_id)
        if ticket is None or ticket.station != station:
            raise TicketRefused(
                ticket_id, action, f"no such ticket at {station} (or it is too old to change)"
            )
        return ticket

    async def command(self, station: str, cmd: KdsCommand, source: str) -> dict[str, Any]:
        """Apply a screen's command; returns the ticket after it, or raises TicketRefused."""
        try:
            ticket = self._find(station, cmd.ticket_id, cmd.action)
            at = self.clock()
            if cmd.action == "priority":
                if ticket.state not in OPEN:
                    raise TicketRefused(
                        ticket.ticket_id,
                        "priority",
                        f"the ticket is {ticket.state}; only a ticket on the screen has a priority",
                    )
                assert cmd.priority is not None
                if cmd.priority == ticket.priority:
                    raise TicketRefused(
                        ticket.ticket_id, "priority", f"the priority is already {cmd.priority}"
                    )
                detail = {"priority": cmd.priority, "before": ticket.priority}
                ticket.priority = cmd.priority
                ticket.touch(at)
                ev = self._event(ticket, "priority", at, source, detail)
            else:
                ev = self._event(ticket, ticket.apply(cmd.action, at), at, source)
        except TicketRefused:
            self.stats.refused += 1
            raise
        # A tap rides with the next order's commit if one comes within TAP_WAIT_S: at the rush,
        # four taps per order each fsyncing alone wrote their pages to the WAL again and again.
        await self._commit([ev], within_s=TAP_WAIT_S)
        return ev.ticket

    # --- POS amend / cancel ----------------------------------------------------------------

    async def _facts(self, order_id: str, change_id: str) -> _OrderFacts:
        def read(conn: sqlite3.Connection) -> _OrderFacts:
            row = orders.order(conn, order_id)
            known = conn.execute(
                "SELECT terminal, payload FROM order_changes WHERE change_id=?", (change_id,)
            ).fetchone()
            cancelled = conn.execute(
                "SELECT 1 FROM order_changes WHERE order_id=? AND kind='cancel'", (order_id,)
            ).fetchone()
            tickets = [
                stored_ticket(doc, alerted)
                for doc, alerted in conn.execute(
                    f"SELECT doc, alerted FROM tickets t WHERE {OF_ORDER.format(order='?1')}", (order_id,)
                )
            ]
            amends = [(terminal, at, json.loads(payload)) for terminal, at, payload in conn.execute(
                "SELECT terminal, received_at, payload FROM order_changes WHERE order_id=? AND kind='amend' "
                "ORDER BY rowid", (order_id,))]
            order = (row.terminal, row.received_at, with_order_no(json.loads(row.payload), row.seq)) if row else None
            change = (known[0], json.loads(known[1])) if known else None
            return _OrderFacts(order, change, cancelled is not None, tickets, amends)

        return await self.journal.read(read)

    async def _once(self, change_id: str, apply: Callable[[], Any]) -> bool:
        """Run ``apply`` once per change id; a copy arriving meanwhile waits for the first.
        Returns True when this was a duplicate."""
        running = self._inflight.get(change_id)
        if running is not None:
            await asyncio.shield(running)
            return True
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._inflight[change_id] = fut
        try:
            duplicate: bool = await apply()
        except BaseException as exc:
            fut.set_exception(exc)
            fut.exception()  # retrieved: the waiting copies get it, nobody else must
            raise
        else:
            fut.set_result(None)
            return duplicate
        finally:
            self._inflight.pop(change_id, None)

    def _may_change(self, order_id: str, owner: str, terminal: str, kind: str) -> str:
        """The rule for changing another till's order (docs/kitchen.md): any till (``pos``) of the
        store may amend or cancel any order, as staff hand tables over at a shift change or fix
        a colleague's mistake; a self-order kiosk, which guests use, only its own orders. The
        owner is told and the change is kept with who made it. Returns the owner."""
        if owner != terminal and self.terminal_kinds.get(terminal) == "kiosk":
            raise PayloadError("order_id", f"order {order_id!r} was placed by terminal {owner}; "
                                           f"a kiosk may {kind} only its own orders")
        return owner

    def _tell_owner(self, kind: str, order_id: str, amend_id: str, by: str, owner: str, at: float,
                    doc: dict[str, Any]) -> None:
        """An order changed by another till: its owner hears of it on ``…/pos/{owner}/notice``."""
        if owner == by:
            return
        self.stats.changes_by_other_tills += 1
        log.info("order %s of %s: %s by %s", order_id, owner, kind, by)
        if self.bus is None:
            return
        body = payloads.order_change(kind, order_id, amend_id, by, owner, at, doc)
        try:
            self.bus.publish_nowait(self.topics.notice(owner), body, qos=1)
        except (BrokerError, ValueError) as exc:
            self.stats.publish_failures += 1
            log.warning("till %s not told of the %s of order %s by %s: %s", owner, kind, order_id, by, exc)

    def _change_row(
        self, change_id: str, order_id: str, kind: str, terminal: str, owner: str, at: float,
        doc: dict[str, Any],
    ) -> Callable[[sqlite3.Connection], None]:
        body = json.dumps(doc, separators=(",", ":"), ensure_ascii=False)
        cloud = payloads.dumps(
            {
                "schema": f"cloud-order-{kind}/1",
                "store_id": self.store_id,
                "terminal": terminal,  # who made the change
                "order_terminal": owner,  # who placed the order
                "received_at": at,
                kind: doc,
            }
        )

        def insert(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO order_changes(change_id, order_id, kind, terminal, received_at, payload) "
                "VALUES (?,?,?,?,?,?)",
                (change_id, order_id, kind, terminal, at, body),
            )
            add_to_outbox(conn, "orders", f"order-{kind}:{change_id}", at, cloud)

        return insert

    def _adopt(self, tickets: list[Ticket]) -> None:
        """Take tickets read from the journal into memory, unless memory holds newer ones."""
        for ticket in tickets:
            if ticket.ticket_id not in self._tickets:
                ticket.printer_role = self.config.station(ticket.station).printer_role
                if ticket.state in OPEN:  # open and not in memory: it was beyond the cap
                    view = self._view(ticket.station)
                    view.hidden = max(0, view.hidden - 1)
                self._remember(ticket)

    async def amend(self, amend: Amend) -> bool:
        """Apply a POS amend to the order's tickets. Returns True for a re-sent amend. Raises
        PayloadError (unknown or cancelled order) or JournalError."""
        change_id = f"amend:{amend.order_id}:{amend.amend_id}"

        async def apply() -> bool:
            facts = await self._facts(amend.order_id, change_id)
            if facts.change is not None:
                if facts.change != (amend.terminal, amend.doc):
                    # Acked as a re-send, another change under a used id would be lost unseen.
                    raise PayloadError("amend_id", f"{amend.amend_id!r} is taken by another change of order "
                                       f"{amend.order_id!r}: a new change needs a new amend_id")
                return True
            if facts.order is None:
                raise PayloadError("order_id", f"no accepted order {amend.order_id!r} to amend")
            owner = self._may_change(amend.order_id, facts.order[0], amend.terminal, "amend")
            if facts.cancelled or amend.order_id in self._cancelled:
                raise PayloadError(
                    "order_id", f"order {amend.order_id!r} was cancelled; it cannot be amended"
                )
            current, version, _by, _at = facts.current()
            self._check_version(amend.order_id, amend.doc, facts)
            merged = payloads.apply_amend(current, amend.doc)
            # The check as it will stand must itself be a valid order (200 lines at most, a total
            # that adds up …), whatever each change was on its own.
            payloads.validate_order({**merged, "schema": payloads.ORDER_SCHEMA}, amend.order_id, amend.terminal,
                                    0, self.limits)
            effective = amend
            if "add_lines" in amend.doc:  # the tickets take the check's whole new list of lines
                lines_doc = {k: v for k, v in amend.doc.items() if k != "add_lines"} | {"lines": merged["lines"]}
                effective = replace(amend, doc=lines_doc)
            self._adopt(facts.tickets)
            at = self.clock()
            events = self._amend_tickets(effective, facts.order, at, f"pos:{amend.terminal}")
            self.stats.amends += 1
            await self._commit(  # journaled as sent: replayed through payloads.apply_amend
                events,
                self._change_row(change_id, amend.order_id, "amend", amend.terminal, owner, at, amend.doc),
            )
            self._tell_owner("amend", amend.order_id, amend.amend_id, amend.terminal, owner, at, amend.doc)
            self._changed(OrderChanged(amend.order_id, "amend", merged, version + 1, amend.terminal, at))
            return False

        async with self._one_change_at_a_time(amend.order_id):
            return await self._once(change_id, apply)

    async def cancel(self, cancel: Cancel) -> bool:
        """Void every ticket of the order not yet served (VOID slips print). True if re-sent."""
        change_id = f"cancel:{cancel.order_id}"

        async def apply() -> bool:
            facts = await self._facts(cancel.order_id, change_id)
            if facts.change is not None:
                return True
            if facts.order is None:
                raise PayloadError("order_id", f"no accepted order {cancel.order_id!r} to cancel")
            owner = self._may_change(cancel.order_id, facts.order[0], cancel.terminal, "cancel")
            self._check_version(cancel.order_id, cancel.doc, facts)
            self._adopt(facts.tickets)
            at = self.clock()
            reason = f"order cancelled{': ' + cancel.reason if cancel.reason else ''}"
            events = []
            for ticket in self._order_tickets(cancel.order_id):
                if ticket.state in LIVE:
                    ticket.void_reason = reason
                    events.append(
                        self._event(
                            ticket, ticket.apply("void", at), at, f"pos:{cancel.terminal}", {"reason": reason}
                        )
                    )
            self._cancelled.add(cancel.order_id)
            self.stats.cancels += 1
            await self._commit(
                events,
                self._change_row(change_id, cancel.order_id, "cancel", cancel.terminal, owner, at, cancel.doc),
            )
            self._tell_owner("cancel", cancel.order_id, "", cancel.terminal, owner, at, cancel.doc)
            self._changed(OrderChanged(cancel.order_id, "cancel", None, facts.current()[1], cancel.terminal, at))
            return False

        async with self._one_change_at_a_time(cancel.order_id):
            return await self._once(change_id, apply)

    @contextlib.asynccontextmanager
    async def _one_change_at_a_time(self, order_id: str) -> AsyncIterator[None]:
        """Amends and cancels of one order are applied one after another, each reading the
        journal after the last one's commit: a check's version (``check_version``) is then
        always the version the next change meets."""
        entry = self._order_locks.setdefault(order_id, [asyncio.Lock(), 0])
        entry[1] += 1
        try:
            async with entry[0]:
                yield
        finally:
            entry[1] -= 1
            if not entry[1]:
                self._order_locks.pop(order_id, None)

    @staticmethod
    def _check_version(order_id: str, change: dict[str, Any], facts: _OrderFacts) -> None:
        """The rule for two tills changing one check (docs/front.md): a change that names the
        version it was made on (``check_version``) is refused if the check moved on since, saying
        who changed it; the first change to reach the box wins, the other till reads the check
        again. Additions (``add_lines``) need no version: they all land."""
        wanted = payloads.check_version(change)
        if wanted is None:
            return
        _doc, version, by, at = facts.current()
        if wanted != version:
            when = time.strftime("%H:%M:%S", time.localtime(at))
            raise PayloadError("check_version", f"order {order_id!r} is at version {version}, not {wanted}: "
                               f"{by} changed it at {when}; read the check again and make the change on it")

    def _changed(self, change: OrderChanged) -> None:
        for listener in self.on_order_change:
            try:
                listener(change)
            except Exception:  # a listener's fault must not undo a journaled change
                log.exception("order change listener %r failed", listener)

    def _amend_tickets(
        self, amend: Amend, order: tuple[str, float, dict[str, Any]], at: float, source: str
    ) -> list[Event]:
        order_id = amend.order_id
        terminal, _received, order_doc = order
        tickets = self._order_tickets(order_id)
        # The order's header as it stands now: the latest ticket carries earlier amends.
        header: dict[str, Any] = {k: order_doc[k] for k in (*HEADER_KEYS, "rush") if k in order_doc}
        if tickets:
            latest = max(tickets, key=lambda t: t.updated_at)
            header = {"order_no": order_doc.get("order_no"), **latest.header, "rush": latest.rush}
        changed_header = {
            k: amend.doc[k]
            for k in (*AMENDABLE, "rush")
            if k in amend.doc and amend.doc[k] != header.get(k)
        }
        header.update(changed_header)
        routed = self.router.route(header | {"lines": amend.lines}) if amend.lines is not None else None
        events: list[Event] = []
        stations = {t.station for t in tickets} | set(routed or ())
        for station in sorted(stations):
            mine = [t for t in tickets if t.station == station]
            latest_t = max(mine, key=lambda t: t.number) if mine else None
            share = routed.get(station) if routed is not None else None
            new_lines = list(share.lines) if share is not None else []
            # A new ticket takes the share as routed here (station, header, the lines' places in
            # the order); routing its ticket lines again would lose a line's own station.
            if latest_t is None or latest_t.state == VOIDED:
                if share is not None and new_lines:
                    events.append(self._new_ticket(order_id, terminal, share, at, source))
                continue
            if latest_t.state == SERVED:
                # Already on the table: only what is added needs cooking, on a new ticket.
                extra = additions(latest_t.open_lines(), new_lines) if share is not None else []
                if share is not None and extra:
                    events.append(
                        self._new_ticket(order_id, terminal, replace(share, lines=tuple(extra)), at, source)
                    )
                continue
            if routed is not None and not new_lines:
                latest_t.void_reason = "removed from the order"
                events.append(
                    self._event(
                        latest_t, latest_t.apply("void", at), at, source, {"reason": latest_t.void_reason}
                    )
                )
                continue
            detail: dict[str, Any] = {}
            if routed is not None:
                marked, summary = diff_lines(latest_t.open_lines(), new_lines)
                if summary:
                    latest_t.lines = marked
                    detail.update(summary)
            if changed_header:
                apply_header(latest_t, changed_header)
                detail["header"] = changed_header
            if not detail:
                continue
            if latest_t.state == READY and (detail.get("added") or detail.get("changed")):
                latest_t.state = RECALLED  # more to cook: back on the screen
                detail["state"] = "recalled"
            latest_t.amended = True
            latest_t.touch(at)
            events.append(self._event(latest_t, "amended", at, source, detail))
        return events

    # --- red alerts ------------------------------------------------------------------------

    async def check_overdue(self) -> list[dict[str, Any]]:
        """Raise one alert per open ticket that crossed into red; journaled, then announced."""
        now = self.clock()
        alerts = []
        for ticket in self._tickets.values():
            if ticket.state in OPEN and not ticket.alerted:
                age = now - ticket.created_at
                if age >= self.config.station(ticket.station).red_after_s:
                    ticket.alerted = True
                    alerts.append(payloads.kds_alert(ticket.station, ticket.doc(), age, now))
        if not alerts:
            return []

        def write(conn: sqlite3.Connection) -> None:
            for alert in alerts:
                write_alert(conn, self.store_id, alert)

        await self.journal.write(write)
        self.stats.alerts += len(alerts)
        _log_alerts(alerts)
        for alert in alerts:
            for feed in self._feeds.get(alert["station"], ()):
                feed.push(alert)
        if self.bus is not None:
            self._spawn(self._publish_all([(self.topics.kds_alert(a["station"]), a) for a in alerts]))
        return alerts

    async def _tick_loop(self) -> None:
        while True:
            await sleep_to_tick(self.tick_s)  # on the grid: with the other periodic wakeups
            try:
                await self.check_overdue()
            except EdgehubError as exc:
                log.error("red-alert check failed: %s", exc)
            try:
                await self.expire_stale()
            except EdgehubError as exc:
                log.error("expiring stale kitchen tickets failed: %s", exc)
            self._forget_old()

    def _forget_old(self) -> None:
        """What memory holds besides the open tickets is what a restart loads (``load``): the
        last KEEP_BUMPED bumped per station (for recall), and ready tickets (bumped, not yet
        served) of the last FORGET_AFTER_S, at most ``max_open_per_station`` per station. Served,
        voided and expired tickets leave memory as soon as they are off the recall list, so a
        day's served tickets no longer pile up for hours (docs/footprint.md, Memory); an amend or
        cancel reads them back from the journal (``_adopt``)."""
        cutoff = self.clock() - FORGET_AFTER_S
        self.progress.forget_ready_before(cutoff)
        keep = {t["ticket_id"] for view in self._views.values() for t in view.recent}
        ready: dict[str, list[Ticket]] = {}
        for ticket in list(self._tickets.values()):
            if ticket.state in OPEN or ticket.ticket_id in keep:
                continue
            if ticket.state == READY and ticket.updated_at >= cutoff:
                ready.setdefault(ticket.station, []).append(ticket)
            else:
                self._forget(ticket)
        cap = self.config.max_open_per_station
        for tickets in ready.values():
            if len(tickets) > cap:
                tickets.sort(key=lambda t: (t.updated_at, t.last_seq), reverse=True)
                for ticket in tickets[cap:]:
                    self._forget(ticket)

    async def expire_stale(self) -> list[Event]:
        """Close as ``expired`` every open ticket nobody touched for ``expire_open_after_h``:
        those in memory at every tick, those only in the journal (beyond the per-station cap)
        every SWEEP_EVERY_S. Journaled with their outbox rows in one commit, then announced."""
        now = self.clock()
        cutoff = now - self.config.expire_open_after_h * 3600
        stale = [t for t in self._tickets.values() if t.state in OPEN and t.updated_at < cutoff]
        hidden = {s for s, v in self._views.items() if v.hidden}
        if hidden and now >= self._next_sweep:
            self._next_sweep = now + SWEEP_EVERY_S
            held = set(self._tickets)
            for ticket in await self.journal.read(lambda conn: stale_open(conn, cutoff, SWEEP_BATCH)):
                if ticket.ticket_id not in held:
                    ticket.printer_role = self.config.station(ticket.station).printer_role
                    view = self._view(ticket.station)
                    view.hidden = max(0, view.hidden - 1)
                    stale.append(ticket)
            if len(stale) >= SWEEP_BATCH:
                self._next_sweep = now  # more to do: again at the next tick
        if not stale:
            return []
        events = [self._event(t, t.apply("expire", now), now, "hub:expiry") for t in stale]
        for ticket in stale:
            self._forget(ticket)  # final: nothing left to do with it in memory
        self.stats.expired += len(events)
        await self._commit(events)
        log.info("%d kitchen tickets open for more than %g h closed as expired", len(events),
                 self.config.expire_open_after_h)
        return events

    # --- what screens read -----------------------------------------------------------------

    async def order_progress(self, order_id: str) -> OrderProgress | None:
        """An order's progress through the kitchen (edgehub/kitchen/progress.py): as held in memory
        while it is in the kitchen or at the pass, else from its tickets in the journal; None for
        an order with no ticket (unknown, or not routed yet)."""
        held = self.progress.get(order_id)
        if held is not None:
            return held

        def read(conn: sqlite3.Connection) -> list[Mapping[str, Any]]:
            return [
                stored_ticket(doc, alerted).doc()
                for doc, alerted in conn.execute(
                    f"SELECT doc, alerted FROM tickets t WHERE {OF_ORDER.format(order='?1')}", (order_id,)
                )
            ]

        return progress_of(await self.journal.read(read))

    def snapshot(self, station: str) -> dict[str, Any]:
        view = self._view(station)
        cfg = self.config.station(station)
        now = self.clock()
        tickets = []
        all_day: dict[str, int] = {}
        for ticket in sorted(view.tickets.values(), key=Ticket.sort_key):
            doc = ticket.doc()
            age = now - doc["created_at"]
            tickets.append(
                {**doc, "age_s": round(age, 1), "colour": colour(age, cfg.amber_after_s, cfg.red_after_s)}
            )
            for line in doc["lines"]:
                if line.get("change") != "removed":
                    all_day[line["name"]] = all_day.get(line["name"], 0) + int(line["qty"])
        return payloads.kds_snapshot(
            station, view.seq, now, cfg.amber_after_s, cfg.red_after_s, tickets, list(view.recent), all_day
        )

    def attach(self, station: str) -> ScreenFeed:
        """A new screen: its feed starts with the full current state, then every event."""
        feed = ScreenFeed(station)
        feed.push(self.snapshot(station))
        self._feeds.setdefault(station, set()).add(feed)
        return feed

    def detach(self, feed: ScreenFeed) -> None:
        self._feeds.get(feed.station, set()).discard(feed)

    def station_names(self) -> list[str]:
        """The stations of this kitchen, the ones a screen may show: the configured ones in config
        order, the default station, then the others it knows (sorted): those routing rules (its
        own and the cloud's) send lines to, those kitchen screens are set up for, and any that
        had a ticket (an order line may name any station)."""
        router = self.router.config
        others = {*self.config.sku_rules.values(), *self.config.category_rules.values(), router.default_station,
                  *router.sku_rules.values(), *router.category_rules.values(), *self.screen_stations, *self._seq,
                  *(t.station for t in self._tickets.values() if t.state in OPEN)}
        names = [*self.config.stations, self.config.default_station, *sorted(others)]
        return list(dict.fromkeys(names))

    def web_screens(self) -> dict[str, int]:
        """Browser screens connected now, per station (their websockets)."""
        return {station: len(feeds) for station, feeds in self._feeds.items() if feeds}

    async def status(self) -> dict[str, Any]:
        open_by_station: dict[str, int] = {}
        for ticket in self._tickets.values():
            if ticket.state in OPEN:
                open_by_station[ticket.station] = open_by_station.get(ticket.station, 0) + 1
        hidden = {s: v.hidden for s, v in self._views.items() if v.hidden > 0}
        warnings = [
            f"station {s}: {n} open tickets beyond the {self.config.max_open_per_station} its screens "
            f"show (is its screen off?); kept in the journal, they expire after "
            f"{self.config.expire_open_after_h:g} h"
            for s, n in sorted(hidden.items())
        ]
        return {
            "stations": self.station_names(),
            # open tickets per station (journal truth: those in memory plus those beyond the cap)
            "open": {s: open_by_station.get(s, 0) + hidden.get(s, 0) for s in {*open_by_station, *hidden}},
            "open_in_memory": open_by_station,
            "open_not_in_memory": hidden,
            "warnings": warnings,
            "screens": {s: len(f) for s, f in self._feeds.items() if f},
            **vars(self.stats),
        }


# --- helpers -------------------------------------------------------------------------------------


ALERTS_LOGGED_ONE_BY_ONE = 5


def _log_alerts(alerts: list[dict[str, Any]]) -> None:
    """A line per ticket that turned red, as long as a station's come a few at a time. A box
    started after hours off finds every ticket left open overdue at once: then that station gets
    one line with the count and the oldest."""
    stations: dict[str, list[dict[str, Any]]] = {}
    for alert in alerts:
        stations.setdefault(alert["station"], []).append(alert)
    for station, group in stations.items():
        if len(group) <= ALERTS_LOGGED_ONE_BY_ONE:
            for alert in group:
                log.info("ticket %s at %s is red (%.0f s)", alert["ticket_id"], station, alert["age_s"])
        else:
            oldest = max(group, key=lambda a: a["age_s"])
            log.info("%d tickets at %s turned red at once; the oldest is %s (%.0f s)",
                     len(group), station, oldest["ticket_id"], oldest["age_s"])
