"""The store's open checks, shared by every till and handheld through the box, WAN or not.

A check is an accepted order (``order/1``) as it stands now: its lines after every amend (the
one rule for that is ``payloads.apply_amend``), its version (1 + amends), how far the kitchen is
with it and what was paid against it (approved payments whose ``sale_id`` is the order's
``sale_id``, or its ``order_id``). The kitchen's part comes from the kitchen's order progress
(edgehub/kitchen/progress.py, the one place that says what state an order is in, and the same
facts that tell the tills and pagers "ready"): each ticket change reaches the check through
``ORDER_PROGRESS`` and the check's ``kitchen`` is ``progress.stage`` of the order's progress
(``ordered``, ``in_kitchen``, ``ready``, ``served``, ``expired``, ``voided``). Its ``state`` is
``paid`` once the payments cover what it comes to, else the kitchen's (``ordered`` before it has
a ticket). It closes when it is cancelled, or paid with nothing left to cook (no ticket on a
station screen), or after a day without a change (``stale``).

Terminals read the checks three ways (docs/front.md): every change as a ``check-event/1`` on
``…/checks/event`` (QoS 1, numbered by ``seq``, coalesced to one per check per turn of the event
loop), a snapshot on request (``…/pos/{terminal}/checks/get``, answered in the terminal's own
tree, as kitchen screens do it: a retained full list would go to every till on every change),
and ``GET /pos/v1/checks``. Tills and handhelds may; no other kind of terminal may.

Changes to a check go through the kitchen's amend and cancel (edgehub/kitchen/kitchen.py), which
apply the rule for two tills changing one check (``check_version``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from edgehub.bus import payloads
from edgehub.bus.connection import response_properties
from edgehub.bus.message import Message
from edgehub.bus.payloads import Order
from edgehub.bus.topics import Topics
from edgehub.component import Bus, Component, Listener, MqttBatch, MqttRoute, StatusReader, on
from edgehub.config import LimitsConfig, TerminalConfig
from edgehub.errors import BrokerError, EdgehubError, PayloadError
from edgehub.front.auth import TerminalLogin
from edgehub.intake import ORDER_ACCEPTED
from edgehub.kitchen.kitchen import ORDER_CHANGED, OrderChanged
from edgehub.kitchen.progress import IN_KITCHEN, ORDER_PROGRESS, ORDERED, STAGES, Change, stage
from edgehub.kitchen.tickets import changes_of, tickets_of
from edgehub.roles.payments import PAYMENT_FINAL, approved_by_sale_since, approved_cents
from edgehub.store import Journal, orders
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.front.checks")

STALE_AFTER_S = 24 * 3600  # a check nobody changed for a day is closed (and not loaded at start)
SWEEP_EVERY_S = 60.0
STAFF = ("pos", "handheld")  # who may read the store's checks
PAID, CANCELLED, STALE = "paid", "cancelled", "stale"
CHECK_STATES = (*STAGES, PAID)  # a check's ``state``


@dataclass(slots=True)
class OpenCheck:
    order_id: str
    order_no: str  # the short number staff call (``payloads.order_no_of``)
    terminal: str  # who opened it
    opened_at: float
    doc: dict[str, Any]  # the order as it stands
    version: int
    changed_by: str
    updated_at: float
    tickets: dict[str, tuple[str, str]] = field(default_factory=dict)  # ticket id -> (station, state)
    kitchen: str | None = None  # ``progress.stage`` of the order's progress (None: no ticket yet)
    paid_cents: int = 0
    cancelled: bool = False
    stale: bool = False
    published: tuple[Any, ...] = ()  # what terminals last heard of it

    @property
    def sale_id(self) -> str:
        sale = self.doc.get("sale_id")
        return sale if isinstance(sale, str) and sale else self.order_id

    def view(self, limits: LimitsConfig) -> dict[str, Any]:
        """The ``check`` document terminals read (docs/asyncapi.yaml, Check)."""
        try:
            due = payloads.check_prices(self.doc, limits)
        except PayloadError:
            due = None
        kitchen = self.kitchen
        paid = self.paid_cents > 0 and (due is None or self.paid_cents >= due)
        cooking = kitchen in (ORDERED, IN_KITCHEN)
        closed = (CANCELLED if self.cancelled else PAID if paid and not cooking else STALE if self.stale else None)
        doc = self.doc
        return {
            "order_id": self.order_id, "order_no": self.order_no, "terminal": self.terminal, "table": doc.get("table"),
            "covers": doc.get("covers"), "opened_at": round(self.opened_at, 3),
            "updated_at": round(self.updated_at, 3), "version": self.version, "changed_by": self.changed_by,
            "state": PAID if paid else kitchen or ORDERED, "kitchen": kitchen,
            "tickets": [{"ticket_id": t, "station": station, "state": state}
                        for t, (station, state) in sorted(self.tickets.items())],
            "lines": doc.get("lines", []), "due_cents": due, "paid_cents": self.paid_cents,
            "currency": doc.get("currency"), "sale_id": self.sale_id, "closed": closed,
        }


class Checks(Component):
    """``async with`` loads the open checks from the journal and owns the sweep for stale ones."""

    name = "checks"

    def __init__(self, topics: Topics, journal: Journal, bus: Bus, login: TerminalLogin,
                 terminals: Iterable[TerminalConfig], limits: LimitsConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.topics = topics
        self.journal = journal
        self.bus = bus
        self.login = login
        self.kinds = {t.id: t.kind for t in terminals}
        self.limits = limits
        self.clock = clock
        self.open: dict[str, OpenCheck] = {}
        self._by_sale: dict[str, set[str]] = {}
        self.seq = 0
        self.closed = {PAID: 0, CANCELLED: 0, STALE: 0}
        self._dirty: set[str] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._sweeper: asyncio.Task[None] | None = None

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return [MqttRoute(self.topics.all_checks_requests, self.handle_request)]

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/pos/v1/checks", self._terminal_get), web.get("/api/v1/checks", self._get)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"checks": self.status}

    def listens(self) -> Sequence[Listener]:
        return [on(ORDER_ACCEPTED, self.on_order_accepted), on(ORDER_PROGRESS, self.on_progress),
                on(ORDER_CHANGED, self.on_order_change), on(PAYMENT_FINAL, self.on_payment)]

    async def __aenter__(self) -> Checks:
        since = self.clock() - STALE_AFTER_S
        for check in await self.journal.read(lambda conn: _load(conn, since)):
            if check.view(self.limits)["closed"] is None:
                self._hold(check)
        if self.open:
            log.info("%d open checks", len(self.open))
        self._sweeper = asyncio.create_task(self._sweep(), name="checks-sweep")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._sweeper, *self._tasks)

    def _hold(self, check: OpenCheck) -> None:
        self.open[check.order_id] = check
        self._by_sale.setdefault(check.sale_id, set()).add(check.order_id)
        check.published = self._signature(check.view(self.limits))

    # --- what changes a check --------------------------------------------------------------

    def on_order_accepted(self, order: Order) -> None:
        """``ORDER_ACCEPTED``: a new check (heard before the kitchen makes its tickets)."""
        if order.order_id in self.open:
            return
        now = self.clock()
        check = OpenCheck(order.order_id, order.order_no, order.terminal, now, order.doc, 1, order.terminal, now)
        self.open[order.order_id] = check
        self._by_sale.setdefault(check.sale_id, set()).add(order.order_id)
        self._mark(order.order_id)

    def on_progress(self, change: Change | None) -> None:
        """``ORDER_PROGRESS``: a ticket change, journaled and announced (None: the kitchen
        read its orders again, which changes no check)."""
        if change is None:
            return
        ticket = change.ticket
        check = self.open.get(ticket["order_id"])
        if check is not None:
            check.tickets[ticket["ticket_id"]] = (ticket["station"], ticket["state"])
            check.kitchen = stage(change.order.states())
            check.updated_at = change.at
            self._mark(check.order_id)

    def on_order_change(self, change: OrderChanged) -> None:
        """``ORDER_CHANGED``: an amend or cancel, journaled."""
        check = self.open.get(change.order_id)
        if check is None:
            return  # closed already, or older than a day
        if change.kind == "cancel" or change.doc is None:
            check.cancelled = True
        else:
            sale = check.sale_id
            check.doc = change.doc
            if check.sale_id != sale:
                self._by_sale.get(sale, set()).discard(check.order_id)
                self._by_sale.setdefault(check.sale_id, set()).add(check.order_id)
        check.version, check.changed_by, check.updated_at = change.version, change.by, change.at
        self._mark(check.order_id)

    def on_payment(self, sale_id: str) -> None:
        """``PAYMENT_FINAL``: a payment of ``sale_id`` reached its outcome."""
        if self._by_sale.get(sale_id):
            task = asyncio.get_running_loop().create_task(self._paid(sale_id))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _paid(self, sale_id: str) -> None:
        try:
            paid = await self.journal.read(lambda conn: approved_cents(conn, sale_id))
        except EdgehubError as exc:
            log.error("payments of sale %s not read: %s", sale_id, exc)
            return
        for order_id in list(self._by_sale.get(sale_id, ())):
            check = self.open.get(order_id)
            if check is not None and check.paid_cents != paid:
                check.paid_cents = paid
                check.updated_at = self.clock()
                self._mark(order_id)

    # --- telling the terminals -------------------------------------------------------------

    def _mark(self, order_id: str) -> None:
        if not self._dirty:
            asyncio.get_running_loop().call_soon(self._flush)
        self._dirty.add(order_id)

    @staticmethod
    def _signature(view: dict[str, Any]) -> tuple[Any, ...]:
        return (view["state"], view["kitchen"], view["version"], view["paid_cents"], view["due_cents"],
                view["closed"], tuple((t["ticket_id"], t["state"]) for t in view["tickets"]))

    def _flush(self) -> None:
        dirty, self._dirty = self._dirty, set()
        now = self.clock()
        for order_id in sorted(dirty, key=lambda o: self.open[o].opened_at if o in self.open else 0):
            check = self.open.get(order_id)
            if check is None:
                continue
            view = check.view(self.limits)
            signature = self._signature(view)
            if signature == check.published:
                continue
            event = "opened" if not check.published else "closed" if view["closed"] else "changed"
            check.published = signature
            if view["closed"]:
                self._close(check, view["closed"])
            self.seq += 1
            try:
                self.bus.publish_nowait(self.topics.checks_event, payloads.check_event(self.seq, event, view, now),
                                        qos=1)
            except BrokerError as exc:
                # A till that missed it sees the gap in seq and asks for the checks again.
                log.debug("check event %d not published: %s", self.seq, exc)

    def _close(self, check: OpenCheck, reason: str) -> None:
        self.open.pop(check.order_id, None)
        sales = self._by_sale.get(check.sale_id)
        if sales is not None:
            sales.discard(check.order_id)
            if not sales:
                del self._by_sale[check.sale_id]
        self.closed[reason] = self.closed.get(reason, 0) + 1

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(SWEEP_EVERY_S)
            cutoff = self.clock() - STALE_AFTER_S
            for check in list(self.open.values()):
                if check.updated_at < cutoff:
                    check.stale = True
                    self._mark(check.order_id)

    # --- what terminals ask for ------------------------------------------------------------

    def snapshot(self, table: str | None = None) -> list[dict[str, Any]]:
        views = [c.view(self.limits) for c in sorted(self.open.values(), key=lambda c: c.opened_at)]
        return [v for v in views if table is None or v["table"] == table]

    async def handle_request(self, message: Message) -> None:
        terminal = self.topics.pos_terminal_of(message.topic, "checks/get")
        if terminal is None:
            return
        response_topic, props, problem = response_properties(message, self.topics.own_tree(terminal))
        reply_topic = response_topic or self.topics.checks(terminal)
        kind = self.kinds.get(terminal)
        if problem:
            body = payloads.checks(self.seq, self.clock(), None, error=problem)
        elif kind not in STAFF:
            body = payloads.checks(self.seq, self.clock(), None, error=f"terminal {terminal} is a {kind}; only "
                                   f"{' and '.join(STAFF)} terminals may read the store's checks")
        else:
            try:
                table = payloads.parse_checks_request(message.payload, self.limits)
            except PayloadError as exc:
                body = payloads.checks(self.seq, self.clock(), None, error=str(exc))
            else:
                body = payloads.checks(self.seq, self.clock(), self.snapshot(table))
        try:
            await self.bus.publish(reply_topic, body, qos=1, properties=props)
        except (BrokerError, TimeoutError) as exc:
            log.info("checks for %s not sent: %s", terminal, exc)

    async def _terminal_get(self, request: web.Request) -> web.Response:
        self.login.check(request, STAFF)
        return await self._get(request)

    async def _get(self, request: web.Request) -> web.Response:
        table = request.query.get("table")
        if table is not None and len(table) > self.limits.max_text:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"table: at most {self.limits.max_text} characters"}),
                                     content_type="application/json")
        return web.Response(body=payloads.checks(self.seq, self.clock(), self.snapshot(table)),
                            content_type="application/json", headers={"Cache-Control": "no-cache"})

    async def status(self) -> dict[str, Any]:
        by_state: dict[str, int] = {}
        for check in self.open.values():
            state = check.view(self.limits)["state"]
            by_state[state] = by_state.get(state, 0) + 1
        return {"open": len(self.open), "by_state": by_state, "seq": self.seq, "closed": dict(self.closed)}


# --- loading from the journal ----------------------------------------------------------------


def _load(conn: sqlite3.Connection, since: float) -> list[OpenCheck]:
    """The checks of the orders received since ``since`` (open and closed: the caller decides)."""
    first = orders.first_seq_since(conn, since)
    if first is None:
        return []
    found: dict[str, OpenCheck] = {}
    for order in orders.orders_after(conn, first - 1):
        doc = json.loads(order.payload)
        found[order.order_id] = OpenCheck(order.order_id, payloads.order_no_of(doc, order.seq), order.terminal,
                                          order.received_at, doc, 1, order.terminal, order.received_at)
    for order_id, kind, terminal, at, payload in changes_of(conn, found):
        check = found[order_id]
        if kind == "cancel":
            check.cancelled = True
        else:
            check.doc = payloads.apply_amend(check.doc, json.loads(payload))
            check.version += 1
        check.changed_by, check.updated_at = terminal, max(check.updated_at, at)
    for check in found.values():
        for ticket in tickets_of(conn, check.order_id):
            check.tickets[ticket.ticket_id] = (ticket.station, ticket.state)
            check.updated_at = max(check.updated_at, ticket.updated_at)
        check.kitchen = stage(state for _, state in check.tickets.values())
    sales: dict[str, list[OpenCheck]] = {}
    for check in found.values():
        sales.setdefault(check.sale_id, []).append(check)
    for sale_id, amount in approved_by_sale_since(conn, since).items():
        for check in sales.get(sale_id, ()):
            check.paid_cents = amount
    return list(found.values())
