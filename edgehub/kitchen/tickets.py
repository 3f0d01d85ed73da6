"""Kitchen tickets: one per order per station, their state machine and how they are journaled.

States: ``new`` → ``in_progress`` (a cook started it) → ``ready`` (bumped off the station screen)
→ ``served``. A bumped (ready or served) ticket can be ``recalled`` back onto the screen; a
ticket the POS cancels or amends away is ``voided``; a ticket left open (untouched) longer than
``kitchen.expire_open_after_h`` is ``expired`` by the hub (final, like voided). ``next_state`` refuses every other move
with a reason a cook understands (``TicketRefused``), and nothing changes.

A ticket's id is ``{order_id}/{station}/{n}``: ``n`` is 1 for the ticket the order made and grows
only when an amend adds dishes to a station whose ticket was already served or voided.

Journal: ``tickets`` holds each ticket's latest state (its public document in ``doc``, deflated),
``ticket_events`` every change with the station's sequence number, and each change also lands
in the outbox (stream ``kitchen``) in the same commit, so the cloud sees every change once.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from edgehub.bus import payloads
from edgehub.errors import TicketRefused
from edgehub.store import orders, outbox

NEW, IN_PROGRESS, READY, SERVED, RECALLED, VOIDED, EXPIRED = (
    "new",
    "in_progress",
    "ready",
    "served",
    "recalled",
    "voided",
    "expired",
)
STATES = (NEW, IN_PROGRESS, READY, SERVED, RECALLED, VOIDED, EXPIRED)
OPEN = frozenset({NEW, IN_PROGRESS, RECALLED})  # on the station screen, ageing
BUMPED = frozenset({READY, SERVED})  # off the screen, may be recalled
LIVE = frozenset({NEW, IN_PROGRESS, RECALLED, READY})  # the POS can still change or void it
RUSH_PRIORITY = 5  # a rush goes above everything a cook has not explicitly raised further
# The order's fields a ticket carries in its header (``order_no``: the order's short number).
HEADER_KEYS = ("order_no", "table", "covers", "course", "note")

# action -> {from state: to state}
TRANSITIONS: dict[str, dict[str, str]] = {
    "start": {NEW: IN_PROGRESS, RECALLED: IN_PROGRESS},
    "bump": {NEW: READY, IN_PROGRESS: READY, RECALLED: READY},
    "serve": {READY: SERVED},
    "recall": {READY: RECALLED, SERVED: RECALLED},
    "void": {NEW: VOIDED, IN_PROGRESS: VOIDED, READY: VOIDED, RECALLED: VOIDED},
    # The hub's own move (never a screen's): an open ticket nobody touched for too long.
    "expire": {NEW: EXPIRED, IN_PROGRESS: EXPIRED, RECALLED: EXPIRED},
}
# The event each action produces.
EVENTS = {
    "start": "started",
    "bump": "bumped",
    "serve": "served",
    "recall": "recalled",
    "void": "voided",
    "expire": "expired",
}

_LABEL = {
    NEW: "new",
    IN_PROGRESS: "in progress",
    READY: "ready",
    SERVED: "served",
    RECALLED: "recalled",
    VOIDED: "voided",
    EXPIRED: "expired",
}


def refusal(action: str, state: str) -> str:
    """Why ``action`` is not allowed on a ticket in ``state`` (only for refused pairs)."""
    if action not in TRANSITIONS:
        return f"unknown action {action!r} (known: {', '.join(TRANSITIONS)})"
    if state == VOIDED:
        return "the ticket was voided (the order was cancelled or changed); there is nothing to do"
    if state == EXPIRED:
        return "the ticket expired (it stayed open too long) and is closed; there is nothing to do"
    if action == "expire":
        return f"the ticket is {_LABEL[state]}; only a ticket on the screen can expire"
    if action == "start":
        if state == IN_PROGRESS:
            return "the ticket is already in progress"
        return f"the ticket is {_LABEL[state]} (bumped); recall it first to work on it again"
    if action == "bump":
        return f"the ticket is already {_LABEL[state]}"
    if action == "serve":
        if state == SERVED:
            return "the ticket is already served"
        return f"the ticket is {_LABEL[state]}, not ready; bump it first"
    if action == "recall":
        return f"the ticket is {_LABEL[state]} and still on the screen; only a bumped ticket can be recalled"
    if action == "void":
        return "the ticket was served already; a served ticket cannot be voided"
    return f"cannot {action} a ticket that is {_LABEL.get(state, state)}"  # pragma: no cover


def next_state(ticket_id: str, state: str, action: str) -> str:
    """The state after ``action``, or ``TicketRefused`` with the reason."""
    target = TRANSITIONS.get(action, {}).get(state)
    if target is None:
        raise TicketRefused(ticket_id, action, refusal(action, state))
    return target


def colour(age_s: float, amber_after_s: float, red_after_s: float) -> str:
    if age_s >= red_after_s:
        return "red"
    return "amber" if age_s >= amber_after_s else "green"


@dataclass(slots=True)  # thousands live in memory on a busy day: no per-object __dict__
class Ticket:
    ticket_id: str
    order_id: str
    station: str
    terminal: str
    created_at: float
    lines: list[dict[str, Any]]
    header: dict[str, Any] = field(default_factory=dict)  # HEADER_KEYS
    state: str = NEW
    priority: int = 0
    rush: bool = False
    updated_at: float = 0.0
    started_at: float | None = None
    ready_at: float | None = None
    served_at: float | None = None
    voided_at: float | None = None
    expired_at: float | None = None
    void_reason: str = ""
    amended: bool = False
    version: int = 0
    alerted: bool = False
    printer_role: str | None = None
    last_seq: int = 0  # the station seq of its latest event (ties at a frozen clock)

    @property
    def number(self) -> int:
        return int(self.ticket_id.rpartition("/")[2])

    def doc(self) -> dict[str, Any]:
        """The ticket as screens, native KDS apps and the cloud see it (kds-event/1 ``ticket``)."""
        out: dict[str, Any] = {
            "ticket_id": self.ticket_id,
            "order_id": self.order_id,
            "station": self.station,
            "terminal": self.terminal,
            "state": self.state,
            "priority": self.priority,
            "rush": self.rush,
            "created_at": round(self.created_at, 3),
            "updated_at": round(self.updated_at, 3),
            "version": self.version,
            "amended": self.amended,
            "lines": [dict(line) for line in self.lines],
        }
        out.update(self.header)
        for key in ("started_at", "ready_at", "served_at", "voided_at", "expired_at"):
            value = getattr(self, key)
            if value is not None:
                out[key] = round(value, 3)
        if self.void_reason:
            out["void_reason"] = self.void_reason
        return out

    @classmethod
    def from_doc(cls, doc: dict[str, Any], alerted: bool = False) -> Ticket:
        header: dict[str, Any] = {k: doc[k] for k in HEADER_KEYS if k in doc}
        return cls(
            ticket_id=doc["ticket_id"],
            order_id=doc["order_id"],
            station=doc["station"],
            terminal=doc.get("terminal", ""),
            created_at=doc["created_at"],
            lines=list(doc["lines"]),
            header=header,
            state=doc["state"],
            priority=doc.get("priority", 0),
            rush=doc.get("rush", False),
            updated_at=doc.get("updated_at", doc["created_at"]),
            started_at=doc.get("started_at"),
            ready_at=doc.get("ready_at"),
            served_at=doc.get("served_at"),
            voided_at=doc.get("voided_at"),
            expired_at=doc.get("expired_at"),
            void_reason=doc.get("void_reason", ""),
            amended=doc.get("amended", False),
            version=doc.get("version", 0),
            alerted=alerted,
        )

    def apply(self, action: str, at: float) -> str:
        """Move the ticket by ``action`` (raises TicketRefused); returns the event name."""
        target = next_state(self.ticket_id, self.state, action)
        self.state = target
        if target == IN_PROGRESS and self.started_at is None:
            self.started_at = at
        elif target == READY:
            self.ready_at = at
        elif target == SERVED:
            self.served_at = at
        elif target == VOIDED:
            self.voided_at = at
        elif target == EXPIRED:
            self.expired_at = at
        self.touch(at)
        return EVENTS[action]

    def touch(self, at: float) -> None:
        self.updated_at = at
        self.version += 1

    def open_lines(self) -> list[dict[str, Any]]:
        return [line for line in self.lines if line.get("change") != "removed"]

    def sort_key(self) -> tuple[int, float, str]:
        """Screen order: higher priority first, then the oldest first."""
        return (-self.priority, self.created_at, self.ticket_id)


class _once:
    """``functools.cached_property`` without its lock: Python 3.11's takes an RLock on every
    first access, two per ticket event at the rush. Two threads (the loop, the journal's writer)
    may both compute a value; it is the same bytes either way."""

    def __init__(self, func: Callable[[Any], bytes]) -> None:
        self.func = func
        self.name = func.__name__

    def __get__(self, instance: Any, owner: type | None = None) -> Any:
        if instance is None:
            return self
        value = instance.__dict__[self.name] = self.func(instance)
        return value


@dataclass(frozen=True)
class Event:
    """One ticket change, numbered in its station's sequence, as it goes to the journal."""

    seq: int
    event: str
    ticket: dict[str, Any]
    at: float
    source: str
    detail: dict[str, Any] | None = None

    @property
    def station(self) -> str:
        station: str = self.ticket["station"]
        return station

    def payload(self) -> dict[str, Any]:
        """The ``kds-event/1`` document (for the station's websocket screens)."""
        return payloads.kds_event(self.station, self.seq, self.event, self.ticket, self.at, self.source, self.detail)

    @_once
    def ticket_json(self) -> bytes:
        """The ticket encoded once: the journal's ``tickets.doc`` and the inside of ``body``."""
        return payloads.dumps(self.ticket)

    @_once
    def body(self) -> bytes:
        """The ``kds-event/1`` document as sent: the same bytes as ``dumps(payload())``, built
        around ``ticket_json`` so the ticket is encoded once for the topic, journal and outbox."""
        return payloads.kds_event_raw(self.station, self.seq, self.event, self.ticket_json, self.at, self.source,
                                      self.detail)


# --- the journal side ----------------------------------------------------------------------------


def add_to_outbox(
    conn: sqlite3.Connection, stream: str, msg_id: str, created_at: float, payload: bytes
) -> None:
    """One cloud-bound row in the caller's commit; ``payload`` is made by ``payloads.dumps``."""
    outbox.add_to_outbox(conn, stream, msg_id, payload, created_at=created_at, checked=True)


def write_events(conn: sqlite3.Connection, store_id: str, events: Iterable[Event]) -> None:
    """Journal ticket changes: latest state, the event, the outbox row; all in the caller's commit."""
    events = list(events)
    conn.executemany(
        "INSERT INTO tickets(ticket_id, order_id, station, state, created_at, updated_at, doc) "
        "VALUES (?,?,?,?,?,?,?) ON CONFLICT(ticket_id) DO UPDATE SET state=excluded.state, "
        "updated_at=excluded.updated_at, doc=excluded.doc",
        [(ev.ticket["ticket_id"], ev.ticket["order_id"], ev.station, ev.ticket["state"], ev.ticket["created_at"],
          ev.ticket["updated_at"], outbox.deflate_json(ev.ticket_json)) for ev in events],
    )
    conn.executemany(
        "INSERT INTO ticket_events(ticket_id, station, station_seq, event, at, source, detail) "
        "VALUES (?,?,?,?,?,?,?)",
        [(ev.ticket["ticket_id"], ev.station, ev.seq, ev.event, ev.at, ev.source,
          json.dumps(ev.detail, separators=(",", ":"), ensure_ascii=False) if ev.detail else "{}") for ev in events],
    )
    outbox.add_many_to_outbox(conn, "kitchen", [
        (f"kitchen:{ev.ticket['ticket_id']}:{ev.ticket['version']}", ev.at,
         payloads.cloud_kitchen_raw(store_id, ev.body))
        for ev in events
    ])


def write_alert(conn: sqlite3.Connection, store_id: str, alert: dict[str, Any]) -> None:
    conn.execute("UPDATE tickets SET alerted=1 WHERE ticket_id=?", (alert["ticket_id"],))
    add_to_outbox(
        conn,
        "kitchen",
        f"kitchen-alert:{alert['ticket_id']}",
        alert["at"],
        payloads.cloud_kitchen(store_id, alert),
    )


def stored_ticket(doc: str | bytes, alerted: int) -> Ticket:
    """A ``tickets`` row's ticket. ``doc`` is stored deflated (``outbox.deflate_json``: ~430 ->
    ~100 bytes, so a 1 KiB page holds about seven ticket rows instead of two, and a cook's taps
    on tickets of neighbouring orders touch fewer pages: docs/footprint.md); rows written before
    schema 7 are JSON text."""
    raw = doc.encode() if isinstance(doc, str) else outbox.decode_payload(doc)
    return Ticket.from_doc(json.loads(raw), bool(alerted))


@dataclass
class Loaded:
    """What the kitchen knows at start: tickets worth keeping in memory, station sequences."""

    tickets: list[Ticket]
    seqs: dict[str, int]
    cancelled: set[str]
    open_counts: dict[str, int] = field(default_factory=dict)  # open in the journal, per station


OPEN_SQL = "state IN ('new','in_progress','recalled')"


def _newest(conn: sqlite3.Connection, where: str, order: str, per_station: int,
            args: tuple[Any, ...] = ()) -> list[Ticket]:
    """Up to ``per_station`` tickets per station matching ``where``, the first by ``order``."""
    return [
        stored_ticket(doc, alerted)
        for doc, alerted in conn.execute(
            "SELECT doc, alerted FROM (SELECT doc, alerted, ROW_NUMBER() OVER "
            f"(PARTITION BY station ORDER BY {order}) AS n FROM tickets WHERE {where}) WHERE n <= ?",
            (*args, per_station),
        )
    ]


def load(conn: sqlite3.Connection, keep_bumped: int, max_open: int = 10**9,
         ready_since: float = 0.0) -> Loaded:
    """The newest ``max_open`` open tickets per station (the rest stay in the journal, counted),
    ready tickets bumped since ``ready_since`` (as many per station), plus the last
    ``keep_bumped`` bumped ones per station (for recall)."""
    tickets = _newest(conn, OPEN_SQL, "created_at DESC, ticket_id DESC", max_open)
    tickets += _newest(conn, "state = 'ready' AND updated_at >= ?", "updated_at DESC", max_open, (ready_since,))
    seen = {t.ticket_id for t in tickets}
    open_counts = {
        station: n
        for station, n in conn.execute(f"SELECT station, COUNT(*) FROM tickets WHERE {OPEN_SQL} GROUP BY station")
    }
    seqs = {
        station: seq
        for station, seq in conn.execute("SELECT station, seq FROM kitchen_seqs")
    }
    for station in seqs:  # every station that ever had a ticket has events
        for doc, alerted in conn.execute(
            "SELECT doc, alerted FROM tickets WHERE station=? AND state IN ('ready','served') "
            "ORDER BY updated_at DESC LIMIT ?",
            (station, keep_bumped),
        ):
            ticket = stored_ticket(doc, alerted)
            if ticket.ticket_id not in seen:
                tickets.append(ticket)
                seen.add(ticket.ticket_id)
    cancelled = {
        row[0]
        for row in conn.execute(
            "SELECT order_id FROM order_changes WHERE kind='cancel' AND received_at > "
            "(SELECT COALESCE(MAX(received_at), 0) - 86400 FROM order_changes)"
        )
    }
    return Loaded(tickets, seqs, cancelled, open_counts)


def stale_open(conn: sqlite3.Connection, before: float, limit: int) -> list[Ticket]:
    """Open tickets (in the journal, whether in memory or not) unchanged since ``before``."""
    return [
        stored_ticket(doc, alerted)
        for doc, alerted in conn.execute(
            f"SELECT doc, alerted FROM tickets WHERE {OPEN_SQL} AND updated_at < ? "
            "ORDER BY updated_at LIMIT ?",
            (before, limit),
        )
    ]


# A ticket's id is "{order_id}/{station}/{n}": its order's tickets are a range of the primary
# key (no index on order_id to write with every ticket); order_id is checked as well, since an
# order id may itself contain "/" ("0" sorts right after "/").
OF_ORDER = "t.ticket_id >= {order} || '/' AND t.ticket_id < {order} || '0' AND t.order_id = {order}"


def unrouted_orders(conn: sqlite3.Connection) -> list[tuple[str, str, float, dict[str, Any]]]:
    """Accepted orders that have no ticket: the hub stopped between the order's commit and its
    tickets' commit. Only orders after the watermark (set when the kitchen first ran, moved
    forward at each start) are looked at; a cancelled order needs none. Each document carries its
    ``order_no``."""
    (mark,) = conn.execute("SELECT order_seq FROM kitchen_watermark WHERE id=1").fetchone()
    found = []
    for order in orders.orders_after(conn, mark):
        if conn.execute(f"SELECT 1 FROM tickets t WHERE {OF_ORDER.format(order='?1')}", (order.order_id,)).fetchone():
            continue
        if conn.execute("SELECT 1 FROM order_changes WHERE order_id=? AND kind='cancel'", (order.order_id,)).fetchone():
            continue
        found.append((order.order_id, order.terminal, order.received_at,
                      with_order_no(json.loads(order.payload), order.seq)))
    return found


def with_order_no(doc: dict[str, Any], seq: int) -> dict[str, Any]:
    """An order's document with its short number (``payloads.order_no_of``) for the tickets."""
    return {**doc, "order_no": payloads.order_no_of(doc, seq)}


def move_watermark(conn: sqlite3.Connection) -> None:
    conn.execute("UPDATE kitchen_watermark SET order_seq = ? WHERE id=1", (orders.last_seq(conn),))


# --- what the journal's retention and the reports ask of the kitchen -------------------------------


def order_has_open_ticket(conn: sqlite3.Connection, order_id: str) -> bool:
    """A ticket of the order is still on a station screen: the order stays."""
    return any(state in OPEN for (state,) in conn.execute(
        f"SELECT t.state FROM tickets t WHERE {OF_ORDER.format(order='?1')}", (order_id,)))


def forget_order(conn: sqlite3.Connection, order_id: str) -> None:
    """The order's tickets and changes go with it (their events go by their own rule, later)."""
    conn.execute(f"DELETE FROM tickets WHERE ticket_id IN (SELECT t.ticket_id FROM tickets t WHERE "
                 f"{OF_ORDER.format(order='?1')})", (order_id,))
    conn.execute("DELETE FROM order_changes WHERE order_id=?", (order_id,))


def order_changes(conn: sqlite3.Connection) -> list[tuple[str, str, float, str]]:
    """Every amend and cancel kept, in the order they were received: (order id, kind, received at,
    payload)."""
    return conn.execute("SELECT order_id, kind, received_at, payload FROM order_changes ORDER BY rowid"
                        ).fetchall()


def voided_between(conn: sqlite3.Connection, start: float, end: float) -> int:
    """Tickets voided from ``start`` (included) to ``end`` (excluded)."""
    (count,) = conn.execute("SELECT COUNT(*) FROM ticket_events WHERE event='voided' AND at >= ? AND at < ?",
                            (start, end)).fetchone()
    return int(count)


def changes_of(conn: sqlite3.Connection, order_ids: Iterable[str]) -> list[tuple[str, str, str, float, str]]:
    """The amends and cancels of ``order_ids`` as received: (order id, kind, terminal, received
    at, payload)."""
    return conn.execute(
        "SELECT order_id, kind, terminal, received_at, payload FROM order_changes WHERE order_id IN "
        "(SELECT value FROM json_each(?)) ORDER BY rowid", (json.dumps(list(order_ids)),)).fetchall()


def tickets_of(conn: sqlite3.Connection, order_id: str) -> list[Ticket]:
    """The tickets of an order as the journal holds them."""
    return [stored_ticket(doc, alerted) for doc, alerted in
            conn.execute(f"SELECT doc, alerted FROM tickets t WHERE {OF_ORDER.format(order='?1')}", (order_id,))]
