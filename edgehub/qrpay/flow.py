"""One QR payment under the box's money rules: journal first, never pay twice, settle by query.

The merchant order id (``reference``) is journaled with the intent before the gateway is called.
Then, following the gateway's documented bar-code flow (Alipay, 当面付 "轮询和撤销"): ``paid``
ends it; ``failed`` or ``closed`` is declined (nothing charged); ``waiting`` (the guest confirms
with a password) and anything without a trusted answer is queried by the reference every
``poll_interval_s`` until ``pay_deadline_s``; then the order is cancelled right after the last
query (closed: declined; already paid: the cancel refunds it, ``aborted``). When even that gets
no trusted answer the payment is ``unknown``: its sale is locked and the settler queries (and
cancels) later, after a restart too. The guest's code is sent once, in one pay: never again.

A pay that could not connect (``sent=False``) took nothing: the intent is withdrawn and the till
is told at once "offline: take cash or card". The gateway's reachability is watched: after a
connection to it failed, and whenever the cloud link says the WAN is down, the box tries a TLS
connection to the gateway every ``PROBE_EVERY_S``; while the last one failed, QR payments are
refused the same way at once, before anything is journaled or sent. (A cloud that is down while
the internet works does not stop QR pay: only the gateway's own answer does.)
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from edgehub.bus import payloads
from edgehub.config import QrConfig
from edgehub.errors import EdgehubError
from edgehub.qrpay.acquirer import Acquirer, GatewayAnswer, GatewayOrder, masked_code
from edgehub.tasks import cancel_and_wait

if TYPE_CHECKING:
    from edgehub.roles.payments import Payment, Payments
    from edgehub.roles.roles import Reply

log = logging.getLogger("edgehub.qrpay")

PROBE_EVERY_S = 5.0
CANCEL_TRIES = 3
SETTLE_BACKOFF_MAX_S = 60.0
OFFLINE = "offline: take cash or card"


class QrTender:
    def __init__(self, payments: Payments, cfg: QrConfig, acquirer: Acquirer,
                 wan_down: Callable[[], str | None] = lambda: None) -> None:
        self.payments = payments
        self.roles = payments.roles
        self.cfg = cfg
        self.acquirer = acquirer
        # Why the cloud link says the WAN is down, or None: a reason to probe the gateway now.
        self.wan_down = wan_down
        self.gateway_down: str | None = None  # the last connection to the gateway failed
        self._watch: asyncio.Task[None] | None = None
        self._probe_now = asyncio.Event()
        self.stats = {"paid": 0, "declined": 0, "unknown": 0, "refused_offline": 0, "queries": 0, "cancels": 0}

    async def __aenter__(self) -> QrTender:
        await self.acquirer.__aenter__()
        self._watch = asyncio.create_task(self._watch_gateway(), name="qr-gateway-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._watch)
        await self.acquirer.__aexit__(None, None, None)

    def status(self) -> dict[str, Any]:
        return {"enabled": True, "acquirer": self.acquirer.name, "offline": self.offline_reason(), **self.stats}

    def offline_reason(self) -> str | None:
        return self.gateway_down

    # --- paying --------------------------------------------------------------------------------

    async def pay(self, role: str, request: payloads.PayRequest, reply: Reply, terminal: str) -> None:
        from edgehub.roles.payments import Payment

        refuse = self.payments._refuse  # noqa: SLF001
        if (why := self.offline_reason()) is not None:
            self.stats["refused_offline"] += 1
            await refuse(role, request, reply, f"{OFFLINE} ({why})")
            return
        code = request.auth_code
        if code is None:
            assert request.scanner is not None
            code = await self._scan(role, request, reply)
            if code is None:
                return
        if (problem := self.acquirer.code_problem(code)) is not None:
            await refuse(role, request, reply, problem)
            return
        payment = Payment(request.payment_id, role, request.sale_id, request.amount_cents, request.currency,
                          self.acquirer.name, "sent", None, reply, terminal, tender="qr",
                          reference=f"eh{uuid.uuid4().hex}", created_at=self.roles.wall())
        payment.result = {"code": masked_code(code)}
        await self.payments._journal(payment, new=True)  # noqa: SLF001
        self.payments.open[payment.payment_id] = payment
        await self.roles.reply(reply, self.payments._reply_body(payment, "processing"))  # noqa: SLF001
        store = self.roles.config.store
        assert payment.reference is not None
        order = GatewayOrder(payment.reference, code, payment.amount_cents, payment.currency,
                             self.cfg.subject or store.name or store.id, store.id,
                             terminal_id=role.partition(".")[2] or role)
        deadline = time.monotonic() + self.cfg.pay_deadline_s
        answer = await self.acquirer.pay(order)
        if not answer.sent:
            self.stats["refused_offline"] += 1
            self._mark_down(answer.reason)
            await self.payments._forget(payment)  # noqa: SLF001
            await refuse(role, request, reply, f"{OFFLINE} (the {self.acquirer.name} gateway cannot be "
                         f"reached: {answer.reason}); nothing was charged")
            return
        try:
            await self._conclude(payment, answer, deadline)
        except EdgehubError as exc:  # the journal failed: the outcome must still be settled later
            log.error("payment %s: %s", payment.payment_id, exc)

    async def _scan(self, role: str, request: payloads.PayRequest, reply: Reply) -> str | None:
        scanner = request.scanner
        assert scanner is not None
        await self.roles.reply(reply, payloads.pay_reply(
            role, request.payment_id, "scanning", reply.request_id, sale_id=request.sale_id,
            amount_cents=request.amount_cents, currency=request.currency, tender="qr",
            reason=f"scan the guest's payment code on {scanner}"))
        code = await self.roles.next_scan(scanner, self.cfg.scan_wait_s)
        if code is None:
            await self.payments._refuse(role, request, reply, f"no code was scanned on {scanner} within "  # noqa: SLF001
                                        f"{self.cfg.scan_wait_s:g} s; nothing was charged")
            return None
        code = code.strip()
        if not payloads.AUTH_CODE_RE.match(code):
            await self.payments._refuse(role, request, reply, f"what {scanner} scanned is no payment code "  # noqa: SLF001
                                        f"({len(code)} characters): nothing was charged")
            return None
        return code

    async def _conclude(self, payment: Payment, answer: GatewayAnswer, deadline: float) -> None:
        told_waiting = queried = False  # asked at least once before a cancel, whatever the deadline
        seen = answer.state in ("waiting", "paid", "closed")  # the gateway has the order
        while True:
            if await self._final(payment, answer, by=""):
                return
            if answer.state == "waiting" and not told_waiting:
                told_waiting = True
                await self.roles.reply(payment.reply, self.payments._reply_body(  # noqa: SLF001
                    payment, "processing", reason="the guest is confirming the payment on the phone"))
            if queried and time.monotonic() + self.cfg.poll_interval_s > deadline:
                break
            await asyncio.sleep(self.cfg.poll_interval_s)
            answer = await self._query(payment)
            queried = True
            seen = seen or answer.state in ("waiting", "paid", "closed")
        # The deadline: cancel at once after the last query (the gateway's rule), so a guest who
        # confirms only now gets the money back rather than a sale the till thinks unpaid.
        answer = await self._cancel(payment)
        if answer.state == "closed":
            await self._finish(payment, "declined", f"the guest did not confirm within "
                               f"{self.cfg.pay_deadline_s:g} s; cancelled at the gateway", answer)
            return
        if answer.state == "refunded":
            await self._finish(payment, "aborted", answer.reason, answer)
            return
        if answer.state == "not_found" and seen:
            await self._finish(payment, "declined", "the gateway closed the order unpaid", answer)
            return
        await self._unknown(payment, answer.reason or "no trusted answer from the gateway")

    async def _final(self, payment: Payment, answer: GatewayAnswer, by: str) -> bool:
        if answer.state == "paid":
            await self._finish(payment, "approved", "", answer, by)
        elif answer.state in ("failed", "closed"):
            await self._finish(payment, "declined", answer.reason, answer, by)
        elif answer.state == "refunded":
            await self._finish(payment, "aborted", answer.reason, answer, by)
        else:
            return False
        return True

    async def _finish(self, payment: Payment, state: str, reason: str, answer: GatewayAnswer, by: str = "") -> None:
        if payment.state not in ("sent", "unknown"):
            return  # an operator decided while the gateway was being asked: the decision stands
        self.stats["paid" if state == "approved" else "declined"] += 1
        result = {**payment.result, "reference": payment.reference, "trade_no": answer.trade_no or None,
                  "buyer": answer.buyer or None, "gateway_code": answer.code or None, "reason": reason or None}
        log.info("payment %s (qr %s): %s%s", payment.payment_id, payment.reference, state,
                 f" ({reason})" if reason else "")
        await self.payments._finish(payment, state, {k: v for k, v in result.items() if v is not None}, by=by)  # noqa: SLF001

    async def _unknown(self, payment: Payment, reason: str) -> None:
        self.stats["unknown"] += 1
        payment.state = "unknown"
        payment.since = self.roles.clock()
        payment.announced = False
        payment.result = {**payment.result, "reference": payment.reference,
                          "reason": f"{reason}; the sale is locked until the gateway settles it"}
        try:
            await self.payments._journal(payment)  # noqa: SLF001
            log.warning("payment %s (qr %s): outcome unknown (%s)", payment.payment_id, payment.reference, reason)
            await self.roles.reply(payment.reply, self.payments._reply_body(payment, "unknown"))  # noqa: SLF001
        finally:
            payment.announced = True
        self.roles.mark_dirty(payment.role)
        self.payments._settle_wake.set()  # noqa: SLF001

    async def _query(self, payment: Payment) -> GatewayAnswer:
        assert payment.reference is not None
        self.stats["queries"] += 1
        answer = await self.acquirer.query(payment.reference)
        if not answer.sent:
            self._mark_down(answer.reason)
        return answer

    async def _cancel(self, payment: Payment) -> GatewayAnswer:
        assert payment.reference is not None
        answer = GatewayAnswer("unknown", reason="not cancelled")
        for attempt in range(CANCEL_TRIES):
            self.stats["cancels"] += 1
            answer = await self.acquirer.cancel(payment.reference)
            if answer.state != "retry":
                break
            await asyncio.sleep(0.2 * (attempt + 1))
        return answer

    # --- settling --------------------------------------------------------------------------------

    async def settle(self, payment: Payment) -> None:
        """Ask the gateway what became of an unknown QR payment; never pay it again."""
        # The settler asks again no sooner than next_settle_at: 1 s, then doubling to a minute.
        payment.settle_attempts += 1
        payment.next_settle_at = self.roles.clock() + min(2.0 ** (payment.settle_attempts - 1),
                                                          SETTLE_BACKOFF_MAX_S)
        age = self.roles.wall() - payment.created_at
        answer = await self._query(payment)
        payment.settle_error = answer.reason
        if payment.state != "unknown":
            return  # settled by an operator meanwhile
        if await self._final(payment, answer, by="gateway"):
            return
        if answer.state == "waiting" and age >= self.cfg.pay_deadline_s:
            answer = await self._cancel(payment)
            if answer.state == "closed":
                await self._finish(payment, "declined", "the guest did not confirm; cancelled at the gateway",
                                   answer, "gateway")
            elif answer.state == "refunded":
                await self._finish(payment, "aborted", answer.reason, answer, "gateway")
        elif answer.state == "not_found" and age >= self.cfg.not_found_after_s:
            # Long after the code expired: a cancel makes sure a late pay cannot land, then the
            # order is known never to have been charged (the till may take the money again).
            answer = await self._cancel(payment)
            if answer.state in ("not_found", "closed"):
                await self._finish(payment, "not_found", "the gateway has no such order: nothing was charged",
                                   answer, "gateway")
            elif answer.state == "refunded":
                await self._finish(payment, "aborted", answer.reason, answer, "gateway")

    # --- the gateway's reachability ---------------------------------------------------------------

    def _mark_down(self, reason: str) -> None:
        if self.gateway_down is None:
            log.warning("%s gateway unreachable: %s", self.acquirer.name, reason)
        self.gateway_down = f"the {self.acquirer.name} gateway cannot be reached: {reason}"
        self._probe_now.set()

    async def _watch_gateway(self) -> None:
        """Probe the gateway while it is known down or the WAN is said to be: a TLS connection,
        no request. Refusing at once needs a recent answer, not a 3 s connect per payment."""
        last = 0.0
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    await self._probe_now.wait()
            self._probe_now.clear()
            wan = self.wan_down()
            if (self.gateway_down is None and wan is None) or time.monotonic() - last < PROBE_EVERY_S:
                continue
            last = time.monotonic()
            try:
                why = await self.acquirer.reachable()
            except Exception as exc:  # the watch must survive anything a probe meets
                why = str(exc) or type(exc).__name__
            if why is None and self.gateway_down is not None:
                log.info("%s gateway reachable again", self.acquirer.name)
                self.gateway_down = None
                self.payments._settle_wake.set()  # noqa: SLF001
            elif why is not None:
                if self.gateway_down is None:
                    log.warning("%s gateway unreachable%s: %s", self.acquirer.name,
                                f" ({wan})" if wan else "", why)
                self.gateway_down = f"the {self.acquirer.name} gateway cannot be reached: {why}"
