"""The day's close, computed from the journal: what was taken, by which tender and which pinpad or
gateway, what is still unsettled, what was voided, amended and reprinted, orders and covers per
hour. A pure function of one SQLite connection and a business day, so the page, the API, the
printout and the cloud's ``reports`` message all say the same thing.

A business day is ``[day at day_starts_at, next day at day_starts_at)`` in the store's time zone:
with the default 05:00 a restaurant that closes at 02:00 counts those hours to the evening
before. A payment counts to the day it was taken (its intent), whenever it was settled; an order
to the day it was received; an amend, a cancel and a reprint to the day they happened.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
import zoneinfo
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from edgehub.bus.payloads import check_prices, current_order
from edgehub.config import LimitsConfig, ReportsConfig
from edgehub.errors import PayloadError
from edgehub.kitchen.tickets import order_changes, voided_between
from edgehub.roles.payments import payments_between
from edgehub.roles.printqueue import reprints_between
from edgehub.store.orders import orders_between

REPORT_SCHEMA = "day-close/1"


@dataclass(frozen=True)
class BusinessDay:
    day: dt.date
    starts_at: float  # Unix time
    ends_at: float

    @property
    def name(self) -> str:
        return self.day.isoformat()


class Calendar:
    """Business days of one store: ``[reports] day_starts_at`` and ``timezone``."""

    def __init__(self, cfg: ReportsConfig) -> None:
        self.zone: dt.tzinfo | None = zoneinfo.ZoneInfo(cfg.timezone) if cfg.timezone else None
        self.start = dt.time(cfg.day_start_minutes // 60, cfg.day_start_minutes % 60)
        self.timezone_name = cfg.timezone or "local"

    def _local(self, at: float) -> dt.datetime:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        return moment.astimezone(self.zone) if self.zone is not None else moment.astimezone()

    def _at(self, day: dt.date) -> float:
        naive = dt.datetime.combine(day, self.start)
        if self.zone is not None:
            return naive.replace(tzinfo=self.zone).timestamp()
        return naive.timestamp()  # the box's local time

    def day(self, day: dt.date) -> BusinessDay:
        return BusinessDay(day, self._at(day), self._at(day + dt.timedelta(days=1)))

    def day_of(self, at: float) -> BusinessDay:
        local = self._local(at)
        day = local.date() if local.time() >= self.start else local.date() - dt.timedelta(days=1)
        return self.day(day)

    def hour_of(self, at: float) -> int:
        return self._local(at).hour


def compute(conn: sqlite3.Connection, calendar: Calendar, day: BusinessDay, *, store_id: str, currency: str,
            limits: LimitsConfig) -> dict[str, Any]:
    """The report of ``day`` as the journal holds it now."""
    span = (day.starts_at, day.ends_at)
    payments = payments_between(conn, *span)
    by_tender: dict[tuple[str, str], list[int]] = defaultdict(lambda: [0, 0])
    by_device: dict[tuple[str, str, str], list[int]] = defaultdict(lambda: [0, 0])
    outcomes: Counter[str] = Counter()
    outcome_cents: Counter[str] = Counter()
    unknown, by_operator = [], []
    settled: Counter[str] = Counter()
    cash = {"received_cents": 0, "change_cents": 0}
    sale_payments: Counter[str] = Counter()
    totals: Counter[str] = Counter()
    for pid, sale, tender, device, state, amount, cur, at, raw in payments:
        result = json.loads(raw or "{}")
        outcomes[state] += 1
        outcome_cents[state] += amount
        if result.get("settled_by"):
            settled[result["settled_by"]] += 1
        if result.get("settled_by") == "operator":
            by_operator.append({"payment_id": pid, "sale_id": sale, "tender": tender, "device": device,
                                "decision": state, "amount_cents": amount, "currency": cur,
                                "reason": result.get("reason", "")})
        if state in ("unknown", "sent"):
            unknown.append({"payment_id": pid, "sale_id": sale, "tender": tender, "device": device,
                            "amount_cents": amount, "currency": cur, "at": round(at, 3)})
        if state != "approved":
            continue
        by_tender[(tender, cur)][0] += 1
        by_tender[(tender, cur)][1] += amount
        by_device[(tender, device, cur)][0] += 1
        by_device[(tender, device, cur)][1] += amount
        totals[cur] += amount
        sale_payments[sale] += 1
        if tender == "cash":
            cash["received_cents"] += int(result.get("tendered_cents", amount))
            cash["change_cents"] += int(result.get("change_cents", 0))
    cash["net_cents"] = cash["received_cents"] - cash["change_cents"]

    orders = [(o.order_id, o.received_at, o.payload) for o in orders_between(conn, *span)]
    order_ids = {order_id for order_id, _, _ in orders}
    changes = order_changes(conn)
    amends_in_day = sum(1 for _, kind, at, _ in changes if kind == "amend" and span[0] <= at < span[1])
    cancels_in_day = sum(1 for _, kind, at, _ in changes if kind == "cancel" and span[0] <= at < span[1])
    cancelled = {order_id for order_id, kind, _, _ in changes if kind == "cancel"}
    amended: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for order_id, kind, _, payload in changes:
        if kind == "amend" and order_id in order_ids:
            amended[order_id].append(json.loads(payload))
    hours = [{"hour": (calendar.start.hour + n) % 24, "orders": 0, "covers": 0} for n in range(24)]
    order_count = covers_total = order_value = priced = 0
    for order_id, at, payload in orders:
        doc, _version = current_order(json.loads(payload), amended.get(order_id, []))
        if order_id in cancelled:
            continue
        covers: int = doc["covers"] if isinstance(doc.get("covers"), int) else 0
        slot = hours[(calendar.hour_of(at) - calendar.start.hour) % 24]
        slot["orders"] += 1
        slot["covers"] += covers
        order_count += 1
        covers_total += covers
        try:
            value = check_prices(doc, limits)
        except PayloadError:
            value = None
        if value is not None:
            priced += 1
            order_value += value
    voided_tickets = voided_between(conn, *span)
    reprints = reprints_between(conn, *span)
    return {
        "schema": REPORT_SCHEMA,
        "store_id": store_id,
        "day": day.name,
        "starts_at": day.starts_at,
        "ends_at": day.ends_at,
        "timezone": calendar.timezone_name,
        "currency": currency,
        "takings": {
            "count": sum(v[0] for v in by_tender.values()),
            "total_cents": totals.get(currency, 0),
            "by_currency": dict(sorted(totals.items())),
            "by_tender": [{"tender": t, "currency": c, "count": n, "amount_cents": a}
                          for (t, c), (n, a) in sorted(by_tender.items())],
            "by_device": [{"tender": t, "device": d, "currency": c, "count": n, "amount_cents": a}
                          for (t, d, c), (n, a) in sorted(by_device.items())],
        },
        "cash": cash,
        "payments": {
            "approved": outcomes["approved"], "declined": outcomes["declined"], "aborted": outcomes["aborted"],
            "not_found": outcomes["not_found"], "void": outcomes["void"],
            "declined_cents": outcome_cents["declined"],
            "settled_by": dict(sorted(settled.items())),
            "unknown": unknown,
            "settled_by_operator": by_operator,
        },
        "sales": {"paid": len(sale_payments), "split": sum(1 for n in sale_payments.values() if n > 1)},
        "orders": {"count": order_count, "covers": covers_total, "priced": priced, "value_cents": order_value,
                   "cancelled": cancels_in_day, "amended": amends_in_day},
        "voids": {"orders": cancels_in_day, "tickets": voided_tickets},
        "amends": amends_in_day,
        "reprints": reprints,
        "hours": hours,
    }
