"""The day's close on the box: computed from the journal, offline, at the end of each business day.

``Reports`` is a hub component. When a business day ends (``[reports] day_starts_at`` in
``timezone``) it computes that day's report (``dayclose.compute``), keeps it in ``day_closes``
and adds it to the outbox as one ``reports`` message (``report:{store}:{day}``) in the same
commit, then prints it in Chinese on ``print_role``. A box that was off when a day ended
closes it at its next start (days with any order or payment, up to ``CATCH_UP_DAYS`` back).
The live report of the current day, or any closed one, is on ``GET /api/v1/reports/day[/{day}]``
and on the box's page; ``POST /api/v1/reports/day/{day}/print`` prints it again.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from aiohttp import web

from edgehub.component import Component, StatusReader
from edgehub.config import Config, role_kind, role_name_problem
from edgehub.context import Context
from edgehub.errors import EdgehubError
from edgehub.reports.dayclose import BusinessDay, Calendar, compute
from edgehub.reports.receipt import ticket
from edgehub.reports.tables import TABLES
from edgehub.roles.payments import any_payment_between
from edgehub.store import Journal
from edgehub.store.orders import any_order_between
from edgehub.store.outbox import add_to_outbox
from edgehub.store.schema import Tables
from edgehub.tasks import cancel_and_wait

__all__ = ["BusinessDay", "Calendar", "ReportPrinter", "Reports", "compute", "setup"]

log = logging.getLogger("edgehub.reports")

CATCH_UP_DAYS = 7
CHECK_EVERY_S = 30.0


class ReportPrinter(Protocol):
    """Prints a ticket on a printer role (the roles' durable print queue)."""

    async def submit(self, role: str, job_id: str, ticket: dict[str, Any]) -> None: ...


def setup(ctx: Context, config: Config, printer: ReportPrinter | None) -> Reports:
    """``config``: ``[reports]`` with the store's name and currency and the limits its sums check."""
    return Reports(config, ctx.journal, printer, clock=ctx.clock)


class Reports(Component):
    name = "reports"

    def __init__(self, config: Config, journal: Journal, printer: ReportPrinter | None, *,
                 clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self.cfg = config.reports
        self.journal = journal
        self.printer = printer
        self.clock = clock
        self.calendar = Calendar(self.cfg)
        self.closed: list[str] = []  # days closed since the hub started
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._closing = asyncio.Lock()
        self.caught_up = asyncio.Event()  # the pass at start (days that ended while the box was off) is done

    async def __aenter__(self) -> Reports:
        await self.journal.ensure(TABLES)
        self._task = asyncio.create_task(self._closer(), name="reports-close")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    # --- closing ---------------------------------------------------------------------------------

    async def _closer(self) -> None:
        while True:
            try:
                await self.close_due()
            except EdgehubError as exc:
                log.error("the day's close failed, trying again: %s", exc)
            self.caught_up.set()
            ends = self.calendar.day_of(self.clock()).ends_at
            wait = min(CHECK_EVERY_S, max(0.05, ends - self.clock() + 0.01))
            try:
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            except TimeoutError:
                pass
            self._wake.clear()

    async def close_due(self) -> list[str]:
        """Close every business day that has ended and is not closed yet (with activity)."""
        async with self._closing:
            today = self.calendar.day_of(self.clock())
            candidates = [self.calendar.day(today.day - dt.timedelta(days=n)) for n in range(CATCH_UP_DAYS, 0, -1)]
            closed = []
            for day in candidates:
                if await self.close(day) is not None:
                    closed.append(day.name)
            return closed

    async def close(self, day: BusinessDay) -> dict[str, Any] | None:
        """Close ``day``: its report kept and queued for the cloud in one commit, then printed.
        None when it was closed before or saw no order and no payment."""
        store, currency, limits = self.config.store.id, self.config.payments.currency, self.config.limits
        now = self.clock()

        def close(conn: sqlite3.Connection) -> dict[str, Any] | None:
            if conn.execute("SELECT 1 FROM day_closes WHERE day=?", (day.name,)).fetchone():
                return None
            span = (day.starts_at, day.ends_at)
            if not any_order_between(conn, *span) and not any_payment_between(conn, *span):
                return None
            report = compute(conn, self.calendar, day, store_id=store, currency=currency, limits=limits)
            report["closed_at"] = now
            text = json.dumps(report, ensure_ascii=False, separators=(",", ":"))
            conn.execute("INSERT INTO day_closes(day, starts_at, ends_at, closed_at, report) VALUES (?,?,?,?,?)",
                         (day.name, day.starts_at, day.ends_at, now, text))
            add_to_outbox(conn, "reports", f"report:{store}:{day.name}", text.encode(), created_at=now)
            return report

        report: dict[str, Any] | None = await self.journal.write(close)
        if report is None:
            return None
        self.closed.append(day.name)
        takings = report["takings"]
        log.info("business day %s closed: %d payments, %d %s taken, %d unknown", day.name, takings["count"],
                 takings["total_cents"], report["currency"], len(report["payments"]["unknown"]))
        if self.cfg.print_at_close and self.cfg.print_role:
            await self.print(report, self.cfg.print_role)
        return report

    # --- reading and printing --------------------------------------------------------------------

    async def report(self, day: BusinessDay) -> dict[str, Any]:
        """The closed report of ``day``, or the day as the journal holds it now (``closed_at`` null)."""
        store, currency, limits = self.config.store.id, self.config.payments.currency, self.config.limits

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            row = conn.execute("SELECT report FROM day_closes WHERE day=?", (day.name,)).fetchone()
            if row is not None:
                doc: dict[str, Any] = json.loads(row[0])
                return doc
            return {**compute(conn, self.calendar, day, store_id=store, currency=currency, limits=limits),
                    "closed_at": None}

        result: dict[str, Any] = await self.journal.read(read)
        return result

    async def print(self, report: dict[str, Any], role: str) -> str:
        if self.printer is None:
            raise EdgehubError("no print queue on this hub")
        job_id = f"dayclose-{report['day']}-{uuid.uuid4().hex[:8]}"
        doc = ticket(report, self.config.store.name, self.clock(), self.calendar.zone)
        await self.printer.submit(role, job_id, doc)
        return job_id

    def status(self) -> dict[str, Any]:
        today = self.calendar.day_of(self.clock())
        return {"day": today.name, "day_ends_at": today.ends_at, "closed_since_start": list(self.closed)}

    async def status_section(self) -> dict[str, Any]:
        return self.status()

    # --- API --------------------------------------------------------------------------------------

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/api/v1/reports/day", self._api_today), web.get("/api/v1/reports/day/{day}", self._api_day),
                web.post("/api/v1/reports/day/{day}/print", self._api_print)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"reports": self.status_section}

    def tables(self) -> Sequence[Tables]:
        return [TABLES]

    def _day(self, request: web.Request) -> BusinessDay:
        text = request.match_info["day"]
        try:
            return self.calendar.day(dt.date.fromisoformat(text))
        except ValueError:
            raise web.HTTPBadRequest(text=json.dumps({"error": f"day: {text!r} is not a date like 2026-12-05"}),
                                     content_type="application/json") from None

    async def _api_today(self, request: web.Request) -> web.Response:
        return web.json_response(await self.report(self.calendar.day_of(self.clock())))

    async def _api_day(self, request: web.Request) -> web.Response:
        return web.json_response(await self.report(self._day(request)))

    async def _api_print(self, request: web.Request) -> web.Response:
        day = self._day(request)
        role = request.query.get("role", self.cfg.print_role)
        if not role:
            return web.json_response({"error": "role: no printer role (reports.print_role is empty)"}, status=400)
        if (problem := role_name_problem(role)) is not None or role_kind(role) != "printer":
            return web.json_response({"error": f"role: {problem or f'{role!r} is not a printer role'}"}, status=400)
        job_id = await self.print(await self.report(day), role)
        return web.json_response({"job_id": job_id, "role": role, "day": day.name}, status=202)
