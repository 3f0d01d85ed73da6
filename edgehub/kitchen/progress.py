"""An order's progress through the kitchen: the "ready" facts the front of house reads.

This is the one place that says what state an order is in as far as the kitchen knows, from
the states of its tickets (one per station it touches, ``tickets.py``):

- ``in_kitchen``: at least one of its tickets is on a station screen (new, in progress, recalled);
- ``ready``: none is on a screen and at least one is bumped and not yet served: waiting at the pass;
- ``served``: none is on a screen or at the pass, and at least one was served;
- ``expired``: none was served and at least one expired (open 12 h, nobody bumped it);
- ``voided``: every ticket was voided: the order was cancelled.

The front of house (an open check, an online order's state sent up) tells ``in_kitchen`` apart
as ``ordered`` while no cook has touched any of its tickets (``stage``).

What changed, for the tills, pagers and displays (``order-ready/1``'s ``event``):

- ``ticket_ready``: a station bumped its ticket while others still cook (a runner takes the drinks);
- ``order_ready``: the order became ready (its last ticket on a screen was bumped);
- ``recalled``: a ready or served order went back to the kitchen (a recall, an amend adding dishes);
- ``served``, ``expired``, ``voided``: the order left the kitchen so (the board drops its number).

It is fed only with the kitchen's announced events, which are committed to the journal, so it
never tells the front what the journal does not hold; the kitchen rebuilds it from the journal
at start (``Progress.rebuild``). It holds the orders still in the kitchen or at the pass, at
most ``MAX_ORDERS`` (the oldest leave first) and ready ones for ``FORGET_READY_S``; an order that
is done (served, expired, voided) is announced and forgotten. ``Kitchen.order_progress`` answers for any
order, from the journal when it is not held here. Pure: no I/O, the clock is passed in.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgehub.component import Signal

IN_KITCHEN, READY, SERVED, EXPIRED, VOIDED = "in_kitchen", "ready", "served", "expired", "voided"
ORDER_STATES = (IN_KITCHEN, READY, SERVED, EXPIRED, VOIDED)
DONE = frozenset({SERVED, EXPIRED, VOIDED})  # the order left the kitchen
ORDERED = "ordered"  # ``stage``: in the kitchen, no cook has touched a ticket of it yet
STAGES = (ORDERED, *ORDER_STATES)
TICKET_READY, ORDER_READY, RECALLED = "ticket_ready", "order_ready", "recalled"
FRONT_EVENTS = (TICKET_READY, ORDER_READY, RECALLED, SERVED, EXPIRED, VOIDED)

log = logging.getLogger("edgehub.kitchen.progress")

_ON_SCREEN = frozenset({"new", "in_progress", "recalled"})
_TOUCHED = frozenset({"in_progress", "recalled", "ready", "served"})  # a cook started or bumped it
MAX_ORDERS = 5000  # orders held (in the kitchen or at the pass); the oldest leave first
FORGET_READY_S = 4 * 3600  # a ready order nobody served leaves memory after this (as the kitchen's)


def station_of(ticket_id: str) -> str:
    """The station in a ticket id, ``{order_id}/{station}/{n}`` (an order id may hold "/")."""
    return ticket_id.rsplit("/", 2)[1]


def order_state(ticket_states: Iterable[str]) -> str:
    """The order's state from its tickets' states (see the module's text)."""
    states = list(ticket_states)
    if any(s in _ON_SCREEN for s in states):
        return IN_KITCHEN
    if "ready" in states:
        return READY
    if "served" in states or not states:
        return SERVED
    return EXPIRED if "expired" in states else VOIDED


def stage(ticket_states: Iterable[str]) -> str | None:
    """How far the kitchen is with an order as the front of house tells it (an open check's
    ``kitchen``, an online order's state sent up): ``order_state``, with ``ordered`` for an order
    in the kitchen that no cook has touched yet (every ticket still new, or voided); None for an
    order with no ticket."""
    states = tuple(ticket_states)
    if not states:
        return None
    state = order_state(states)
    return ORDERED if state == IN_KITCHEN and not _TOUCHED.intersection(states) else state


def front_event(before: str | None, after: str, ticket_event: str) -> str | None:
    """What the front hears about a ticket change that moved its order from ``before`` (None:
    not known, a new order) to ``after``; None when nothing the front cares about changed."""
    if after == READY and before != READY:
        return ORDER_READY
    if after == IN_KITCHEN and (before in (READY, *DONE) or (before is None and ticket_event == "recalled")):
        return RECALLED  # (a served order is no longer held, but a recall says it was bumped)
    if after in DONE and before != after:
        return after
    if after == IN_KITCHEN and ticket_event == "bumped":
        return TICKET_READY
    return None


@dataclass(slots=True)
class OrderProgress:
    """One order as the kitchen sees it: the state of each of its tickets (as announced)."""

    order_id: str
    order_no: str
    terminal: str
    table: str | None
    created_at: float
    # (ticket_id, state) of each ticket, flat: (id, state, id, state, …). Held for every order in
    # the kitchen or at the pass, so kept small: a tuple of four is 88 bytes, a dict of two 184
    # (docs/footprint.md, Memory). The station is the id's middle part ({order_id}/{station}/{n}).
    flat: tuple[str, ...] = ()
    state: str = IN_KITCHEN
    since: float = 0.0  # when it entered ``state``
    ready_at: float | None = None

    @property
    def tickets(self) -> dict[str, str]:
        """ticket_id -> state, in the order the tickets were made."""
        return dict(zip(self.flat[::2], self.flat[1::2], strict=True))

    def set_ticket(self, ticket_id: str, state: str) -> None:
        flat = self.flat
        for i in range(0, len(flat), 2):
            if flat[i] == ticket_id:
                self.flat = (*flat[:i + 1], state, *flat[i + 2:])
                return
        self.flat = (*flat, ticket_id, state)

    def states(self) -> tuple[str, ...]:
        return self.flat[1::2]

    def doc(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "order_id": self.order_id,
            "order_no": self.order_no,
            "terminal": self.terminal,
            "state": self.state,
            "since": round(self.since, 3),
            "created_at": round(self.created_at, 3),
            "tickets": [{"ticket_id": t, "station": station_of(t), "state": st} for t, st in self.tickets.items()],
        }
        if self.table:
            out["table"] = self.table
        if self.ready_at is not None:
            out["ready_at"] = round(self.ready_at, 3)
        return out


@dataclass(frozen=True, slots=True)
class Change:
    """An order's progress after one ticket change, and what the front hears of it (None: only
    the board's view moved, e.g. a new order, a cook starting a ticket)."""

    order: OrderProgress
    event: str | None
    ticket: Mapping[str, Any]  # the changed ticket (kds-event/1 ``ticket``)
    at: float


Listener = Callable[[Change | None], None]  # None: everything was rebuilt (read it all again)
# Each change of progress, as the kitchen announced it (the kitchen forwards its Progress's).
ORDER_PROGRESS: Signal[Change | None] = Signal("order progress")


def _progress(ticket: Mapping[str, Any]) -> OrderProgress:
    return OrderProgress(
        order_id=ticket["order_id"],
        order_no=str(ticket.get("order_no") or ""),
        terminal=str(ticket.get("terminal") or ""),
        table=ticket.get("table"),
        created_at=float(ticket["created_at"]),
        since=float(ticket["created_at"]),
    )


class Progress:
    """The orders in the kitchen or at the pass, fed with the kitchen's announced events."""

    def __init__(self, max_orders: int = MAX_ORDERS) -> None:
        self.max_orders = max_orders
        self._orders: dict[str, OrderProgress] = {}  # oldest first (insertion order)
        self.listeners: list[Listener] = []

    def __len__(self) -> int:
        return len(self._orders)

    def get(self, order_id: str) -> OrderProgress | None:
        """The order's progress, if it is in the kitchen or at the pass (else None: ask
        ``Kitchen.order_progress``, which reads the journal)."""
        return self._orders.get(order_id)

    def orders(self) -> list[OrderProgress]:
        """The orders held, oldest first."""
        return list(self._orders.values())

    def rebuild(self, tickets: Iterable[Mapping[str, Any]]) -> None:
        """Start again from tickets the journal holds (each a ticket document): every order with
        a ticket on a screen or at the pass, with all its tickets."""
        by_order: dict[str, list[Mapping[str, Any]]] = {}
        for ticket in tickets:
            by_order.setdefault(ticket["order_id"], []).append(ticket)
        orders = [progress_of(found) for found in by_order.values()]
        held = sorted((o for o in orders if o is not None and o.state in (IN_KITCHEN, READY)),
                      key=lambda o: (o.created_at, o.order_id))
        self._orders = {o.order_id: o for o in held}
        self._trim()
        self._tell(None)

    def apply(self, ticket: Mapping[str, Any], ticket_event: str, at: float) -> Change:
        """One announced ticket change (in the station's order): the order's new progress."""
        order_id = ticket["order_id"]
        order = self._orders.get(order_id)
        before = order.state if order is not None else None
        if order is None:
            order = _progress(ticket)
        order.set_ticket(ticket["ticket_id"], ticket["state"])
        for key in ("table", "order_no"):
            if ticket.get(key):
                setattr(order, key, str(ticket[key]))
        after = order_state(order.states())
        if after != order.state or before is None:
            order.since = at
        order.state = after
        if after == READY and before != READY:
            order.ready_at = at
        elif after == IN_KITCHEN:
            order.ready_at = None
        if after in (IN_KITCHEN, READY):
            self._orders[order_id] = order
            self._trim()
        else:
            self._orders.pop(order_id, None)  # done: announced below, then forgotten
        change = Change(order, front_event(before, after, ticket_event), ticket, at)
        self._tell(change)
        return change

    def forget_ready_before(self, cutoff: float) -> int:
        """Ready orders nobody served since before ``cutoff`` leave memory (not the journal)."""
        stale = [o.order_id for o in self._orders.values() if o.state == READY and o.since < cutoff]
        for order_id in stale:
            del self._orders[order_id]
        if stale:
            self._tell(None)
        return len(stale)

    def _trim(self) -> None:
        while len(self._orders) > self.max_orders:
            del self._orders[next(iter(self._orders))]

    def _tell(self, change: Change | None) -> None:
        for listener in self.listeners:
            try:
                listener(change)
            except Exception:  # a listener's failure must not stop the kitchen's screens
                log.exception("order progress listener %r failed", listener)


def progress_of(tickets: list[Mapping[str, Any]]) -> OrderProgress | None:
    """One order's progress from all its tickets (documents), e.g. as the journal holds them;
    None for an order with no ticket."""
    if not tickets:
        return None
    order = _progress(min(tickets, key=lambda t: (t["created_at"], t["ticket_id"])))
    for ticket in tickets:
        order.set_ticket(ticket["ticket_id"], ticket["state"])
        order.since = max(order.since, float(ticket.get("updated_at") or ticket["created_at"]))
        if ticket["state"] == "ready":
            order.ready_at = max(order.ready_at or 0.0, float(ticket.get("ready_at") or ticket["updated_at"]))
    order.state = order_state(order.states())
    return order
