"""Card payments on pinpad roles: never charged twice, whatever dies when.

``pay/1`` on ``…/role/{role}/cmd/pay/{terminal}``: the intent (payment, sale, amount, pinpad, the
pinpad's newest trace number as a baseline) is journaled *before* the pinpad is asked; the
terminal hears ``processing`` at once and the result when the pinpad gives it. The baseline is
what the box already knows (the trace numbers its pinpads reported, kept in the journal): the
pinpad is asked for its last transaction only to settle an unknown outcome, since real
terminals may print a receipt for that question.

A pinpad that could not be reached at all took no money (the driver's contract), so the
payment may go to the next healthy pinpad. A pinpad that dies *during* the transaction leaves
the outcome ``unknown``: the payment is never sent to a spare. The sale is locked to that pinpad
(new payments for it are refused) until the outcome is settled, either by the pinpad's
last-transaction record once it answers again, or by an operator's ``settle/1`` decision from
the terminal (approved, declined, void). The pinpad itself is *held* meanwhile: it serves no
role (a new payment on it would become the last transaction settling reads), and the role's
state says why. Other sales go to a healthy spare. Settling asks again after 1, 2, 4 … up to
60 s (``SETTLE_BACKOFF_S``) while the pinpad answers without settling it, on the pinpad's one
open connection.

Only amounts, results and masked references (last four PAN digits, receipt and trace numbers)
leave the driver; that is all that is journaled, published and sent to the cloud.

A payment belongs to the terminal that started it (the terminal named in the command topic,
which the broker lets each terminal write only as itself). Another terminal that sends its
payment_id again, or asks to settle it, is refused without a word of the payment; an installer
settles any payment through the API (``POST /api/v1/payments/{id}/settle``). Tills and kiosks
may start payments on the pinpad roles their ``pinpad_roles`` lists (every one when unset);
kitchen screens never (docs/security.md).
"""

from __future__ import annotations

import asyncio
import collections
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgehub.bus import payloads
from edgehub.bus.message import Message
from edgehub.component import Signal
from edgehub.config import LimitsConfig, PaymentsConfig, StoreConfig
from edgehub.errors import (
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    EdgehubError,
    PayloadError,
    PaymentError,
)
from edgehub.roles.ledger import CURRENCIES, FINAL, Payment, PaymentStats
from edgehub.roles.serving import Reply, Requester, Serving
from edgehub.roles.tenders import Tenders
from edgehub.store import Journal
from edgehub.store.outbox import add_to_outbox
from edgehub.store.timeorder import first_rowid_since
from edgehub.tasks import wait_to_tick

if TYPE_CHECKING:
    from drivers.zvt import PaymentResult

log = logging.getLogger("edgehub.roles.pay")

SETTLE_TIMEOUT_S = 30.0
# Seconds between settle attempts while the pinpad answers but cannot settle (busy, printer not
# ready, a reply it cannot read), one step further after each such attempt.
SETTLE_BACKOFF_S = (1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 60.0)

__all__ = ["CURRENCIES", "FINAL", "PAYMENT_FINAL", "Payment", "Payments", "any_payment_between",
           "approved_by_sale_since", "approved_cents", "payments_between"]


# The sale id of each payment whose outcome was journaled as final (the front's open checks).
PAYMENT_FINAL: Signal[str] = Signal("payment final")


class Payments:
    """The ledger of every payment (``ledger.Ledger``): card payments on the pinpads here, cash
    and QR codes through ``tenders``."""

    def __init__(self, journal: Journal, serving: Serving, cfg: PaymentsConfig, limits: LimitsConfig,
                 store: StoreConfig, *, clock: Callable[[], float], wall: Callable[[], float],
                 tick_s: float) -> None:
        self.journal = journal
        self.serving = serving
        self.cfg = cfg
        self.limits = limits
        self.store = store
        self.clock = clock
        self.wall = wall
        self.tick_s = tick_s
        self.open: dict[str, Payment] = {}  # payment id -> payment whose outcome is not final
        self.stats = PaymentStats()
        self._settle_wake = asyncio.Event()
        self._lock_by_sale: dict[str, asyncio.Lock] = collections.defaultdict(asyncio.Lock)
        #: Newest trace number each pinpad reported in a final payment (from the journal): the
        #: baseline of the next payment on it when its driver has seen none yet.
        self.last_trace: dict[str, int] = {}
        # Cash, QR codes and split bills (edgehub/roles/tenders.py).
        self.tenders = Tenders(self, serving, journal, cfg, store, clock=clock, wall=wall)
        # Told the sale id of each payment whose outcome is journaled as final (the roles' setup
        # sends it on as PAYMENT_FINAL).
        self.on_final: list[Callable[[str], None]] = []

    def waiting(self, role: str) -> int:
        return sum(1 for p in self.open.values() if p.role == role)

    def held(self) -> dict[str, str]:
        """Pinpads holding a payment whose outcome is unknown, with why they serve no role."""
        out: dict[str, str] = {}
        now = self.clock()
        for p in sorted(self.open.values(), key=lambda p: p.since):
            if p.state != "unknown" or p.tender != "card" or p.device_id in out:
                continue  # a QR payment holds its sale, not a pinpad
            if p.needs_operator:
                how = "an operator's settle/1 decision"
            elif p.settle_attempts:
                wait = max(0.0, p.next_settle_at - now)
                how = f"settling: asked {p.settle_attempts}x, next in {wait:.0f}s ({p.settle_error})"
            else:
                how = "settling from its last transaction"
            out[p.device_id] = (
                f"holds payment {p.payment_id} (sale {p.sale_id}) whose outcome is unknown; "
                f"takes no payment until it is settled ({how})"
            )
        return out

    def status(self) -> list[dict[str, Any]]:
        """The payments whose outcome is not final, for ``/api/v1/status``."""
        now = self.clock()
        return [
            {
                "payment_id": p.payment_id,
                "role": p.role,
                "sale_id": p.sale_id,
                "device": p.device_id,
                "amount_cents": p.amount_cents,
                "currency": p.currency,
                "state": p.state,
                "needs_operator": p.needs_operator,
                "for_s": round(now - p.since, 1) if p.state == "unknown" else None,
                "settle_attempts": p.settle_attempts,
                "next_settle_in_s": round(max(0.0, p.next_settle_at - now), 1)
                if p.state == "unknown" and not p.needs_operator
                else None,
                "settle_error": p.settle_error,
            }
            for p in sorted(self.open.values(), key=lambda p: p.payment_id)
        ]

    def wake_settler(self) -> None:
        self._settle_wake.set()

    def device_changed(self, device_id: str) -> None:
        if any(p.device_id == device_id for p in self.open.values()):
            self._settle_wake.set()

    async def load(self) -> None:
        """Open payments from before: one that was on the pinpad when the hub stopped is unknown."""
        def load(conn: sqlite3.Connection) -> tuple[list[tuple[Any, ...]], list[tuple[Any, ...]]]:
            conn.execute("UPDATE payments SET state='unknown' WHERE state='sent'")
            open_rows = conn.execute(
                "SELECT payment_id, role, sale_id, amount_cents, currency, device_id, state, after_trace_no, "
                "reply_topic, correlation, request_id, terminal, tender, reference, created_at "
                "FROM payments WHERE state='unknown'"
            ).fetchall()
            traces = conn.execute(
                "SELECT device_id, json_extract(result, '$.trace_no') FROM payments "
                "WHERE json_extract(result, '$.trace_no') IS NOT NULL ORDER BY updated_at, rowid"
            ).fetchall()
            return open_rows, traces

        open_rows, traces = await self.journal.write(load)
        self.last_trace.update({device: int(trace) for device, trace in traces})
        now = self.clock()
        for row in open_rows:
            pid, role, sale, amount, currency, device, state, after, topic, corr, request_id, terminal = row[:12]
            self.open[pid] = Payment(
                pid, role, sale, amount, currency, device, state, after, Reply(topic, corr, request_id), terminal,
                since=now, tender=row[12], reference=row[13], created_at=row[14],
            )

    # --- pay -----------------------------------------------------------------------------------

    async def handle_pay(self, role: str, requester: Requester, message: Message, raw: bytes) -> None:
        try:
            request = payloads.parse_pay(raw, requester.own_tree, CURRENCIES, self.cfg.currency)
        except PayloadError as exc:
            await self.journal.add_deadletter(message.topic, f"pay rejected: {exc}", raw)
            refusal = requester.refusal(raw)
            await self.serving.reply(
                refusal, payloads.pay_reply(role, "", "refused", refusal.request_id, error=str(exc))
            )
            return
        reply = requester.reply(request.request.reply_to, request.request.request_id)
        # One decision at a time per sale, so two quick requests cannot both pass the lock check.
        async with self._lock_by_sale[request.sale_id]:
            await self._pay(role, request, reply, requester.terminal)
        if not self._lock_by_sale[request.sale_id].locked():
            self._lock_by_sale.pop(request.sale_id, None)

    async def _pay(self, role: str, request: payloads.PayRequest, reply: Reply, terminal: str) -> None:
        known = await self.journal.read(lambda c: _row(c, request.payment_id))
        if known is not None and not _owned_by(known, terminal):
            # Not a word of the payment (its sale, amount, result, card) to another terminal.
            await self.serving.reply(reply, payloads.pay_reply(
                role, request.payment_id, "refused", reply.request_id,
                error=f"payment_id {request.payment_id} is not this terminal's: a new payment needs a new "
                      "payment_id"))
            self.stats.refused += 1
            return
        if known is not None:
            was = known["fields"]
            if (was["sale_id"], was["amount_cents"], was["currency"], was.get("tender", "card")) != (
                request.sale_id, request.amount_cents, request.currency, request.tender
            ):
                # A re-send is the same payment again. Answered "approved, duplicate", another
                # one under a used id would read to the till as paid without a card being asked.
                await self.refuse(
                    role, request, reply,
                    f"payment_id {request.payment_id} is taken by another payment (sale {was['sale_id']}, "
                    f"{was['amount_cents']} {was['currency']}, {known['state']}): a new payment needs a new "
                    "payment_id",
                )
                return
            await self.serving.reply(
                reply,
                payloads.pay_reply(
                    role,
                    request.payment_id,
                    known["state"],
                    reply.request_id,
                    duplicate=True,
                    **known["fields"],
                ),
            )
            return
        locked = next((p for p in self.open.values() if p.sale_id == request.sale_id), None)
        if locked is not None:
            where = f"pinpad {locked.device_id}" if locked.tender == "card" else f"the {locked.device_id} gateway"
            await self.refuse(
                role,
                request,
                reply,
                f"sale {request.sale_id} is locked to {where} until payment "
                f"{locked.payment_id} is settled (its outcome is unknown)",
            )
            return
        if problem := await self.tenders.sale_problem(request):
            await self.refuse(role, request, reply, problem)
            return
        if request.tender != "card":
            await self.tenders.pay(role, request, reply, terminal)
            return
        if role not in self.serving.seats:
            await self.refuse(role, request, reply, f"no role {role!r} is bound: card payments need a pinpad")
            return
        tried: list[str] = []
        while True:
            device = self.serving.try_acquire(role)
            if device is None or device in tried:
                if device is not None:
                    self.serving.release(role)
                reason = self.serving.seats[role].reason or f"{role}: no healthy pinpad"
                await self.refuse(
                    role, request, reply, reason if tried == [] else f"{role}: no healthy pinpad"
                )
                return
            tried.append(device)
            try:
                sent = await self._pay_on(role, device, request, reply, terminal)
            finally:
                self.serving.release(role)
            if sent:
                return

    async def _pay_on(self, role: str, device: str, request: payloads.PayRequest, reply: Reply,
                      terminal: str) -> bool:
        """Pay on one pinpad. False when it could not be reached (nothing charged: try the next)."""
        try:
            driver: Any = await self.serving.open_driver(device)
        except (DeviceError, TimeoutError) as exc:
            await self.serving.device_failed(device, f"cannot reach pinpad: {_text(exc)}")
            return False
        charges_in = getattr(driver, "currency", request.currency)
        if charges_in != request.currency:
            await self.refuse(
                role, request, reply,
                f"pinpad {device} serving {role} charges {charges_in}, this payment is in {request.currency}: "
                "nothing was sent (the [[device]] currency and the till must agree)",
            )
            return True
        # The settle rule needs to know which transaction came before this one: the newest trace
        # number this driver saw, else the newest the journal holds for this pinpad.
        baseline = getattr(driver, "last_trace_no", None)
        if baseline is None:
            baseline = self.last_trace.get(device)
        payment = Payment(
            request.payment_id,
            role,
            request.sale_id,
            request.amount_cents,
            request.currency,
            device,
            "sent",
            baseline,
            reply,
            terminal,
            created_at=self.wall(),
        )
        await self.record(payment, new=True)
        self.open[payment.payment_id] = payment
        await self.serving.reply(reply, self.reply_body(payment, "processing"))
        guard = float(getattr(driver, "transaction_timeout", 180.0)) + 30.0
        try:
            async with asyncio.timeout(guard):
                result: PaymentResult = await driver.pay(request.amount_cents, after_trace_no=baseline)
        except (DeviceUnavailable, DeviceTimeout) as exc:
            # The driver raises these only when the command never reached the pinpad.
            await self.forget(payment)
            await self.serving.device_failed(device, f"cannot reach pinpad: {_text(exc)}")
            return False
        except PaymentError as exc:
            from drivers.zvt import RegistrationRefused

            if isinstance(exc, RegistrationRefused):  # the box's own setup, not this card: nothing sent
                await self.forget(payment)
                await self.serving.device_failed(device, _text(exc))
                return False
            await self.finish(payment, "declined", {"reason": _text(exc)})
            return True
        except (DeviceError, TimeoutError) as exc:
            await self._unknown(payment, f"no outcome from the pinpad: {_text(exc)}")
            return True
        if result.outcome == "unknown":
            await self._unknown(payment, result.reason)
        else:
            await self.finish(payment, result.outcome, _masked(result))
        return True

    async def refuse(self, role: str, request: payloads.PayRequest, reply: Reply, reason: str) -> None:
        self.stats.refused += 1
        log.info("payment %s refused: %s", request.payment_id, reason)
        await self.serving.reply(
            reply,
            payloads.pay_reply(
                role,
                request.payment_id,
                "refused",
                reply.request_id,
                sale_id=request.sale_id,
                amount_cents=request.amount_cents,
                currency=request.currency,
                error=reason,
            ),
        )

    async def _unknown(self, payment: Payment, reason: str) -> None:
        payment.state = "unknown"
        payment.announced = False
        payment.since = self.clock()
        payment.result = {
            "reason": f"{reason}; the sale is locked to pinpad {payment.device_id} until settled"
        }
        body = self.reply_body(payment, "unknown")
        self.stats.unknown += 1
        self.serving.evaluate()  # the pinpad is held from now on: new sales go elsewhere
        try:
            await self.record(payment)
            log.warning(
                "payment %s on %s: outcome unknown (%s)", payment.payment_id, payment.device_id, reason
            )
            await self.serving.reply(payment.reply, body)
        finally:
            payment.announced = True
        self.serving.mark_dirty(payment.role)
        self._settle_wake.set()

    async def finish(self, payment: Payment, state: str, result: dict[str, Any], by: str = "",
                      **extra: Any) -> None:
        payment.state = state
        payment.result = {**result, **({"settled_by": by} if by else {})}
        await self.record(payment, final=True)
        self.open.pop(payment.payment_id, None)
        if isinstance(trace := payment.result.get("trace_no"), int):
            self.last_trace[payment.device_id] = trace
        self.serving.evaluate()  # a pinpad held by this payment is free again
        if state == "approved":
            self.stats.approved += 1
        elif state in ("declined", "aborted"):
            self.stats.declined += 1
        self.serving.mark_dirty(payment.role)
        sale = await self.tenders.sale_summary(payment.sale_id)
        await self.serving.reply(payment.reply, self.reply_body(payment, state, sale=sale, **extra))

    def reply_body(self, payment: Payment, status: str, **extra: Any) -> bytes:
        return payloads.pay_reply(
            payment.role,
            payment.payment_id,
            status,
            payment.reply.request_id,
            sale_id=payment.sale_id,
            amount_cents=payment.amount_cents,
            currency=payment.currency,
            device=payment.device_id,
            tender=payment.tender if payment.tender != "card" else None,
            **payment.result,
            **extra,
        )

    # --- journal -------------------------------------------------------------------------------

    async def record(self, payment: Payment, new: bool = False, final: bool = False) -> None:
        """Write the payment's state and, in the same commit, its ``payments`` outbox row: the
        cloud hears every state change (intent, unknown, needs an operator, final) exactly when
        it is in the journal. The final row's id is ``payment:{id}`` (a payment ends once); the
        others carry a fresh suffix, since an intent may be journaled again after a pinpad that
        could not be reached."""
        at = self.wall()
        p = payment
        result = payloads.dumps(p.result).decode()
        event = "final" if final else "intent" if new else "needs_operator" if p.needs_operator else p.state
        msg_id = f"payment:{p.payment_id}" if final else f"payment:{p.payment_id}:{event}:{uuid.uuid4().hex[:12]}"
        row = self._cloud_row(p, event, at)

        def write(conn: sqlite3.Connection) -> None:
            if new:
                conn.execute(
                    "INSERT INTO payments(payment_id, role, sale_id, amount_cents, currency, device_id, "
                    "state, after_trace_no, created_at, updated_at, reply_topic, correlation, request_id, "
                    "result, terminal, tender, reference) "
                    "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                    (
                        p.payment_id,
                        p.role,
                        p.sale_id,
                        p.amount_cents,
                        p.currency,
                        p.device_id,
                        p.state,
                        p.after_trace_no,
                        at,
                        at,
                        p.reply.topic,
                        p.reply.correlation,
                        p.reply.request_id,
                        result,
                        p.terminal,
                        p.tender,
                        p.reference,
                    ),
                )
            else:
                conn.execute(
                    "UPDATE payments SET state=?, result=?, updated_at=? WHERE payment_id=?",
                    (p.state, result, at, p.payment_id),
                )
            add_to_outbox(conn, "payments", msg_id, row)

        await self.journal.write(write)
        if final:
            for listener in self.on_final:
                try:
                    listener(p.sale_id)
                except Exception:  # a listener's fault must not touch a journaled payment
                    log.exception("payment listener %r failed for sale %s", listener, p.sale_id)

    def _cloud_row(self, p: Payment, event: str, at: float) -> dict[str, Any]:
        """The ``cloud-payment/1`` document: amounts, results and masked references only."""
        return {
            "schema": "cloud-payment/1",
            "store_id": self.store.id,
            "event": event,
            "payment_id": p.payment_id,
            "sale_id": p.sale_id,
            "role": p.role,
            "device": p.device_id,
            "state": p.state,
            "amount_cents": p.amount_cents,
            "currency": p.currency,
            "tender": p.tender,
            **({"reference": p.reference} if p.reference else {}),
            "at": at,
            **p.result,
        }

    async def forget(self, payment: Payment) -> None:
        """The pinpad never got the command: the intent goes, nothing was charged. The cloud,
        which heard the intent, hears that it was withdrawn, in the same commit."""
        self.open.pop(payment.payment_id, None)
        at = self.wall()
        row = self._cloud_row(payment, "withdrawn", at) | {"state": "withdrawn"}
        msg_id = f"payment:{payment.payment_id}:withdrawn:{uuid.uuid4().hex[:12]}"

        def forget(conn: sqlite3.Connection) -> None:
            gone = conn.execute(
                "DELETE FROM payments WHERE payment_id=? AND state='sent'", (payment.payment_id,)
            ).rowcount
            if gone:
                add_to_outbox(conn, "payments", msg_id, row)

        await self.journal.write(forget)

    # --- settling ------------------------------------------------------------------------------

    async def settler(self) -> None:
        """Settle unknown payments from their pinpad's memory as soon as it answers again; one
        that answers without settling is asked again after a growing pause."""
        while True:
            # On the grid: with the other periodic wakeups.
            await wait_to_tick(self._settle_wake, max(1.0, self.tick_s * 5))
            self._settle_wake.clear()
            for payment in list(self.open.values()):
                if (
                    payment.state == "unknown"
                    and payment.announced
                    and not payment.needs_operator
                    and self.clock() >= payment.next_settle_at
                ):
                    try:
                        if payment.tender == "qr":
                            await self.tenders.settle_qr(payment)
                            continue
                        await self._settle_from_pinpad(payment)
                    except EdgehubError as exc:
                        self._settle_failed(payment, _text(exc))

    def _settle_failed(self, payment: Payment, why: str) -> None:
        payment.settle_attempts += 1
        pause = SETTLE_BACKOFF_S[min(payment.settle_attempts, len(SETTLE_BACKOFF_S)) - 1]
        payment.next_settle_at = self.clock() + pause
        payment.settle_error = why
        log.info(
            "payment %s: pinpad %s cannot settle it yet (attempt %d, again in %gs): %s",
            payment.payment_id, payment.device_id, payment.settle_attempts, pause, why,
        )
        self.serving.evaluate()  # the role's reason names the attempt

    async def _settle_from_pinpad(self, payment: Payment) -> None:
        from drivers.zvt import PaymentResult, TerminalBusy

        if payment.state != "unknown" or not payment.announced or payment.needs_operator:
            return  # settled meanwhile, or still being recorded as unknown (see ``_unknown``)
        entry = self.serving.device(payment.device_id)
        if entry is None or not entry.present or not entry.health.usable:
            return  # not an attempt: the pinpad is asked as soon as it answers again
        driver: Any = await self.serving.open_driver(payment.device_id)
        pending = PaymentResult(
            "unknown",
            "payment",
            payment.amount_cents,
            payment.currency,
            after_trace_no=payment.after_trace_no,
        )
        try:
            async with asyncio.timeout(SETTLE_TIMEOUT_S):
                settled: PaymentResult = await driver.settle(pending)
        except DeviceUnavailable as exc:
            if not isinstance(exc, TerminalBusy):
                # Not an attempt: nothing was asked. It is settled as soon as it answers again.
                await self.serving.device_failed(payment.device_id, f"cannot reach pinpad: {_text(exc)}")
                return
            self._settle_failed(payment, _text(exc))
            return
        except (DeviceError, TimeoutError) as exc:
            self._settle_failed(payment, _text(exc))
            return
        if settled.outcome == "unknown":
            payment.needs_operator = True
            payment.result = {"reason": settled.reason}
            await self.record(payment)
            self.serving.evaluate()
            log.warning("payment %s needs an operator's decision: %s", payment.payment_id, settled.reason)
            await self.serving.reply(payment.reply, self.reply_body(payment, "unknown"))
            return
        self.stats.settled_by_pinpad += 1
        log.info(
            "payment %s settled from pinpad %s: %s", payment.payment_id, payment.device_id, settled.outcome
        )
        await self.finish(payment, settled.outcome, _masked(settled), by="pinpad")

    async def handle_settle(self, role: str, requester: Requester, message: Message, raw: bytes) -> None:
        try:
            request = payloads.parse_settle(raw, requester.own_tree, self.limits)
        except PayloadError as exc:
            refusal = requester.refusal(raw)
            await self.serving.reply(
                refusal, payloads.pay_reply(role, "", "refused", refusal.request_id, error=str(exc))
            )
            return
        reply = requester.reply(request.request.reply_to, request.request.request_id)
        known = await self.journal.read(lambda c: _row(c, request.payment_id))
        if known is not None and not _owned_by(known, requester.terminal):
            await self.serving.reply(reply, payloads.pay_reply(
                role, request.payment_id, "refused", reply.request_id,
                error=f"payment {request.payment_id} is not this terminal's: its own terminal settles it, or an "
                      "installer from the box's API"))
            return
        await self.settle(role, request, reply, request.operator or requester.terminal)

    async def lookup(self, payment_id: str) -> dict[str, Any] | None:
        """A payment as the API shows it (masked references only), or None."""
        known = await self.journal.read(lambda c: _row(c, payment_id))
        if known is None:
            return None
        return {"payment_id": payment_id, "role": known["role"], "terminal": known["terminal"],
                "state": known["state"], **known["fields"]}

    async def settle(self, role: str, request: payloads.SettleRequest, reply: Reply, operator: str) -> bool:
        """An operator's decision on an unknown payment (a terminal's ``settle/1``, or an installer
        through the API). Answers on ``reply``; True when it settled the payment."""
        payment = self.open.get(request.payment_id)
        if payment is None or payment.role != role or payment.state != "unknown":
            known = await self.journal.read(lambda c: _row(c, request.payment_id))
            state = known["state"] if known else "refused"
            error = (
                "no such payment"
                if known is None
                else f"payment is {known['state']}, only an unknown outcome can be settled"
            )
            fields = known["fields"] if known else {}
            await self.serving.reply(
                reply,
                payloads.pay_reply(
                    role, request.payment_id, state, reply.request_id, **{**fields, "error": error}
                ),
            )
            return False
        self.stats.settled_by_operator += 1
        log.warning("payment %s settled by %s as %s", payment.payment_id, operator, request.decision)
        if reply.topic is not None:
            payment.reply = reply  # the operator's terminal hears the result
        await self.finish(payment, request.decision, {"reason": f"settled by {operator}"}, by="operator")
        return True


def _masked(result: PaymentResult) -> dict[str, Any]:
    """The parts of a pinpad result that may leave the driver."""
    return {
        "receipt_no": result.receipt_no,
        "trace_no": result.trace_no,
        "masked_pan": result.masked_pan,
        "terminal_id": result.terminal_id,
        "reason": result.reason,
    }


def _text(exc: BaseException) -> str:
    return "no answer" if isinstance(exc, TimeoutError) and not str(exc) else str(exc)


def _owned_by(known: dict[str, Any], terminal: str) -> bool:
    """A payment from before payments had owners answers any terminal, as it did then."""
    return known["terminal"] is None or known["terminal"] == terminal


def _row(conn: sqlite3.Connection, payment_id: str) -> dict[str, Any] | None:
    row = conn.execute(
        "SELECT state, sale_id, amount_cents, currency, device_id, result, terminal, role, tender FROM payments "
        "WHERE payment_id=?",
        (payment_id,),
    ).fetchone()
    if row is None:
        return None
    state, sale, amount, currency, device, result, terminal, role, tender = row
    return {
        "terminal": terminal,
        "role": role,
        "state": "processing" if state == "sent" else state,
        "fields": {
            "sale_id": sale,
            "amount_cents": amount,
            "currency": currency,
            "device": device,
            **({"tender": tender} if tender != "card" else {}),
            **json.loads(result),
        },
    }


# --- what the reports read ---------------------------------------------------------------------


def payments_between(conn: sqlite3.Connection, start: float, end: float) -> list[tuple[Any, ...]]:
    """Payments started from ``start`` (included) to ``end`` (excluded), oldest first: (payment id,
    sale id, tender, device, state, amount, currency, created at, result JSON)."""
    return conn.execute(
        "SELECT payment_id, sale_id, tender, device_id, state, amount_cents, currency, created_at, result "
        "FROM payments WHERE created_at >= ? AND created_at < ? ORDER BY created_at", (start, end)).fetchall()


def any_payment_between(conn: sqlite3.Connection, start: float, end: float) -> bool:
    row = conn.execute("SELECT EXISTS(SELECT 1 FROM payments WHERE created_at >= ? AND created_at < ?)",
                       (start, end)).fetchone()
    return bool(row[0])


def approved_cents(conn: sqlite3.Connection, sale_id: str) -> int:
    """What the approved payments of ``sale_id`` add up to."""
    row = conn.execute("SELECT COALESCE(SUM(amount_cents), 0) FROM payments WHERE sale_id=? AND state='approved'",
                       (sale_id,)).fetchone()
    return int(row[0])


def approved_by_sale_since(conn: sqlite3.Connection, since: float) -> dict[str, int]:
    """Sale id -> the approved payments started since ``since`` add up to."""
    first = first_rowid_since(conn, "payments", "created_at", since)
    if first is None:
        return {}
    return {sale_id: int(amount) for sale_id, amount in conn.execute(
        "SELECT sale_id, SUM(amount_cents) FROM payments WHERE rowid >= ? AND state='approved' GROUP BY sale_id",
        (first,))}
