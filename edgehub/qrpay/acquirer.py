"""The contract between the box and a chain's payment gateway for scan-to-pay (付款码支付).

An ``Acquirer`` pays with a guest's payment code under a merchant order id the box journaled
first, queries that order, and cancels it; each call returns a ``GatewayAnswer`` and never
raises for what the gateway or the network did. ``sent=False`` means the request certainly
never left the box (no connection could be made): nothing can have been charged. Any other
failure after the request may have been sent is ``state="unknown"``: the caller queries, never
pays again. A chain swaps gateways by adding a module with one class that follows this.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Protocol

# paid: the money is the merchant's. waiting: the guest is confirming (password) on the phone.
# failed: the gateway refused and nothing was charged. closed: the order is closed unpaid.
# refunded: a cancel found it paid and gave the money back. not_found: the gateway has no such
# order. retry: the gateway asks for the same cancel again. unknown: no answer to trust.
AnswerState = Literal["paid", "waiting", "failed", "closed", "refunded", "not_found", "retry", "unknown"]


@dataclass(frozen=True)
class GatewayOrder:
    """One QR payment as the gateway sees it."""

    reference: str  # the merchant order id (out_trade_no), journaled before the first call
    auth_code: str
    amount_cents: int
    currency: str
    subject: str
    store_id: str
    terminal_id: str = ""


@dataclass(frozen=True)
class GatewayAnswer:
    state: AnswerState
    sent: bool = True
    reason: str = ""
    trade_no: str = ""  # the gateway's own transaction id
    amount_cents: int | None = None
    buyer: str = ""  # the guest's account as the gateway masks it (e.g. 159****5620)
    code: str = ""  # the gateway's result code and sub-code, for support
    seconds: float = 0.0


class Acquirer(Protocol):
    name: str
    currency: str

    def code_problem(self, auth_code: str) -> str | None:
        """Why this scanned code cannot be paid here (another wallet's code), or None."""

    async def pay(self, order: GatewayOrder) -> GatewayAnswer: ...

    async def query(self, reference: str) -> GatewayAnswer: ...

    async def cancel(self, reference: str) -> GatewayAnswer: ...

    async def reachable(self) -> str | None:
        """None when a connection to the gateway can be made now, else why not (no request sent)."""

    async def __aenter__(self) -> Acquirer: ...

    async def __aexit__(self, *exc: object) -> None: ...


def wallet_of(auth_code: str) -> str:
    """Which wallet issued a payment code, by the prefixes the wallets publish: Alipay's codes are
    16-24 digits starting 25-30 (Alipay, 当面付 条码支付, "付款码" field of alipay.trade.pay);
    WeChat Pay's are 18 digits starting 10-15 (WeChat Pay, 付款码支付 "auth_code" rule)."""
    if auth_code.isdigit():
        head = int(auth_code[:2])
        if 25 <= head <= 30 and 16 <= len(auth_code) <= 24:
            return "alipay"
        if 10 <= head <= 15 and len(auth_code) == 18:
            return "wechat"
    return "unknown"


def masked_code(auth_code: str) -> str:
    """What may be journaled or shown of a payment code: its wallet's prefix and last four."""
    return f"{auth_code[:2]}…{auth_code[-4:]}" if len(auth_code) > 6 else "…"
