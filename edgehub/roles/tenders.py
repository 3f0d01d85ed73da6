"""Tenders besides cards: cash with its drawer, QR codes through the gateway, and split bills.

A ``pay/1`` names its ``tender``; cards go to the pinpad (``payments.py``), the rest come here,
after the same checks (a re-sent ``payment_id`` is answered, never paid again; a sale with a
payment of unknown outcome is locked). A bill may be split over several payments of any
tenders under one ``sale_id``: ``sale_total_cents`` (given with the first payment, or any) fixes
what the sale must reach, a payment beyond what is still due is refused before anything is
asked, and every final answer carries the sale's ``total_cents``, ``paid_cents`` and
``due_cents``.

Cash is recorded as the till says (``approved`` at once: the money is in the drawer), then the
drawer of ``payments.drawer_role`` (or the payment's ``drawer``) is opened with ``ESC p`` on the
printer serving that role, and its open/closed state read back from the printer status (DLE EOT
1, bit 2: pin 3 of the kick connector). A drawer that cannot be opened never undoes the cash.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from drivers.escpos_render import Ticket, render
from edgehub.bus import payloads
from edgehub.errors import DeviceError, EdgehubError
from edgehub.qrpay.flow import QrTender

if TYPE_CHECKING:
    from edgehub.roles.payments import Payment, Payments
    from edgehub.roles.roles import Reply

log = logging.getLogger("edgehub.roles.tenders")

DRAWER_OPEN_WAIT_S = 1.0  # a kicked drawer's switch changes within this once the printer pulsed
DRAWER_KICK_TIMEOUT_S = 5.0  # the till's cash answer waits at most this for the drawer


class Tenders:
    def __init__(self, payments: Payments) -> None:
        self.payments = payments
        self.roles = payments.roles
        self.config = self.roles.config.payments
        self.qr: QrTender | None = None
        self.drawer_kicks = 0
        self.drawers: dict[str, dict[str, Any]] = {}  # drawer role -> last known state
        # Why the cloud link says the WAN is down (the hub wires it in), or None.
        self.wan_down: Callable[[], str | None] = lambda: None

    async def __aenter__(self) -> Tenders:
        if self.config.qr.enabled:
            from edgehub.qrpay import make_acquirer

            self.qr = QrTender(self.payments, self.config.qr, make_acquirer(self.config.qr),
                               wan_down=lambda: self.wan_down())
            await self.qr.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.qr is not None:
            await self.qr.__aexit__(None, None, None)

    # --- split bills -----------------------------------------------------------------------------

    async def sale_problem(self, request: payloads.PayRequest) -> str | None:
        """Why this payment cannot go on its sale (another total, more than is due), or None. A
        total given for the first time is journaled here."""
        wall = self.roles.wall()

        def check(conn: sqlite3.Connection) -> str | None:
            row = conn.execute("SELECT total_cents, currency FROM sales WHERE sale_id=?",
                               (request.sale_id,)).fetchone()
            given = request.sale_total_cents
            if row is not None and given is not None and (given, request.currency) != tuple(row):
                return (f"sale_total_cents: sale {request.sale_id} is {row[0]} {row[1]}, not {given} "
                        f"{request.currency}")
            total = row[0] if row is not None else given
            if total is None:
                return None
            paid = _paid(conn, request.sale_id)
            if paid + request.amount_cents > total:
                return (f"amount_cents {request.amount_cents} is more than the {total - paid} still due on sale "
                        f"{request.sale_id} ({paid} of {total} paid)")
            if row is None:
                conn.execute("INSERT INTO sales(sale_id, total_cents, currency, created_at) VALUES (?,?,?,?)",
                             (request.sale_id, total, request.currency, wall))
            return None

        if request.sale_total_cents is None and not await self.roles.journal.read(
                lambda conn: conn.execute("SELECT 1 FROM sales WHERE sale_id=?", (request.sale_id,)).fetchone()):
            return None  # no total for this sale: nothing to check, and no write (no fsync) to pay for
        result: str | None = await self.roles.journal.write(check)
        return result

    async def sale_summary(self, sale_id: str) -> dict[str, int] | None:
        def read(conn: sqlite3.Connection) -> dict[str, int] | None:
            row = conn.execute("SELECT total_cents FROM sales WHERE sale_id=?", (sale_id,)).fetchone()
            if row is None:
                return None
            paid = _paid(conn, sale_id)
            return {"total_cents": row[0], "paid_cents": paid, "due_cents": max(0, row[0] - paid)}

        try:
            summary: dict[str, int] | None = await self.roles.journal.read(read)
        except EdgehubError:
            return None
        return summary

    # --- paying --------------------------------------------------------------------------------

    async def pay(self, role: str, request: payloads.PayRequest, reply: Reply, terminal: str) -> None:
        if request.tender == "cash":
            await self.cash(role, request, reply, terminal)
            return
        if self.qr is None:
            await self.payments._refuse(role, request, reply, "QR pay is not set up on this box "  # noqa: SLF001
                                        "([payments.qr] acquirer): take cash or card")
            return
        await self.qr.pay(role, request, reply, terminal)

    async def settle_qr(self, payment: Payment) -> None:
        if self.qr is not None:
            await self.qr.settle(payment)

    async def cash(self, role: str, request: payloads.PayRequest, reply: Reply, terminal: str) -> None:
        from edgehub.roles.payments import Payment

        tendered = request.tendered_cents if request.tendered_cents is not None else request.amount_cents
        payment = Payment(request.payment_id, role, request.sale_id, request.amount_cents, request.currency,
                          "cash", "approved", None, reply, terminal, tender="cash", created_at=self.roles.wall())
        payment.result = {"tendered_cents": tendered, "change_cents": tendered - request.amount_cents}
        await self.payments._journal(payment, new=True, final=True)  # noqa: SLF001
        self.payments.stats.approved += 1
        log.info("payment %s: cash %d %s", payment.payment_id, payment.amount_cents, payment.currency)
        drawer_role = request.drawer if request.drawer is not None else self.config.drawer_role
        drawer = await self.open_drawer(drawer_role, payment.payment_id)
        sale = await self.sale_summary(payment.sale_id)
        await self.roles.reply(reply, self.payments._reply_body(payment, "approved", sale=sale, drawer=drawer))  # noqa: SLF001

    # --- the drawer ------------------------------------------------------------------------------

    async def open_drawer(self, role: str, why: str) -> dict[str, Any]:
        """Kick the drawer on the printer serving ``role`` and read back whether it opened."""
        if not role:
            return {"kicked": False, "reason": "no drawer is configured (payments.drawer_role)"}
        device = self.roles.serving(role)
        if device is None:
            seat = self.roles.seats.get(role)
            reason = (seat.reason if seat is not None and seat.reason else f"{role}: no printer serves it")
            return self._drawer(role, {"role": role, "kicked": False,
                                       "reason": f"{reason}; open the drawer with its key"})
        try:
            async with asyncio.timeout(DRAWER_KICK_TIMEOUT_S):
                driver: Any = await self.roles.open_driver(device)
                await driver.print_job(f"drawer:{why}", render(Ticket().kick_drawer()))
                self.drawer_kicks += 1
                opened = await self._drawer_open(driver, wait=True)
        except (DeviceError, TimeoutError) as exc:
            log.warning("drawer on %s (%s) not opened: %s", role, device, exc)
            return self._drawer(role, {"role": role, "device": device, "kicked": False,
                                       "reason": f"{exc or 'no answer'}; open the drawer with its key"})
        found: dict[str, Any] = {"role": role, "device": device, "kicked": True, "open": opened}
        if opened is False:
            found["warning"] = "the drawer did not open (locked, jammed or not connected)"
        return self._drawer(role, found)

    async def _drawer_open(self, driver: Any, wait: bool) -> bool | None:
        deadline = time.monotonic() + (DRAWER_OPEN_WAIT_S if wait else 0.0)
        while True:
            status = await driver.status()
            opened = status.drawer_pin3_high == (self.config.drawer_open_level == "high")
            if opened or time.monotonic() >= deadline:
                return bool(opened)
            await asyncio.sleep(0.1)

    def _drawer(self, role: str, state: dict[str, Any]) -> dict[str, Any]:
        self.drawers[role] = {**state, "at": round(self.roles.wall(), 3)}
        return state

    async def drawer_state(self, role: str) -> dict[str, Any]:
        """The drawer's state now, from the printer's last status (the watchdog reads it often)."""
        device = self.roles.serving(role)
        entry = self.roles.registry.get(device) if device and self.roles.registry is not None else None
        driver = getattr(entry, "driver", None)
        status = getattr(driver, "last_status", None)
        if status is None:
            return {"role": role, "device": device, "open": None}
        return {"role": role, "device": device,
                "open": status.drawer_pin3_high == (self.config.drawer_open_level == "high")}

    async def status(self) -> dict[str, Any]:
        roles = {self.config.drawer_role, *self.drawers} - {""}
        return {"drawers": [await self.drawer_state(role) for role in sorted(roles)],
                "drawer_kicks": self.drawer_kicks,
                "qr": self.qr.status() if self.qr is not None else {"enabled": False}}


def _paid(conn: sqlite3.Connection, sale_id: str) -> int:
    (paid,) = conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM payments WHERE sale_id=? AND state='approved'",
                           (sale_id,)).fetchone()
    return int(paid)
