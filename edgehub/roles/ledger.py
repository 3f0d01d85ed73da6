"""A payment as the box keeps it, and what a tender (cash, QR) needs of the payments to record one.

``Payments`` (``payments.py``) is the ledger: it journals each state of a payment with its cloud
row, answers the terminal and settles what is unknown. The tenders (``tenders.py``,
``qrtender.py``) are given it as a ``Ledger``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol

from edgehub.bus import payloads
from edgehub.roles.serving import Reply

FINAL = ("approved", "declined", "aborted", "not_found", "void")
CURRENCIES = ("EUR", "CHF", "GBP", "USD", "PLN", "CZK", "DKK", "SEK", "CNY", "HKD")


@dataclass
class Payment:
    payment_id: str
    role: str
    sale_id: str
    amount_cents: int
    currency: str
    device_id: str
    state: str  # sent, unknown, or one of FINAL
    after_trace_no: int | None
    reply: Reply
    terminal: str | None = None  # who started it (None: before payments had owners)
    result: dict[str, Any] = field(default_factory=dict)
    needs_operator: bool = False  # the pinpad answered but could not tell: only a person can
    # False while ``_unknown`` journals it and tells the terminal: the settler must not finish
    # it meanwhile (the terminal would hear "unknown" after the result).
    announced: bool = True
    since: float = 0.0  # monotonic time it became unknown
    settle_attempts: int = 0  # times the pinpad was asked and could not settle it
    next_settle_at: float = 0.0  # monotonic; no attempt before this
    settle_error: str = ""  # why the last attempt did not settle it
    tender: str = "card"  # card (on the pinpad ``device_id``), qr (through the gateway), cash
    reference: str | None = None  # qr: the merchant order id at the gateway, journaled first
    created_at: float = 0.0


@dataclass
class PaymentStats:
    approved: int = 0
    declined: int = 0
    unknown: int = 0
    settled_by_pinpad: int = 0
    settled_by_operator: int = 0
    refused: int = 0


class Ledger(Protocol):
    """What a tender uses of the payments."""

    open: dict[str, Payment]  # payment id -> payment whose outcome is not final
    stats: PaymentStats

    async def record(self, payment: Payment, new: bool = False, final: bool = False) -> None: ...

    def reply_body(self, payment: Payment, status: str, **extra: Any) -> bytes: ...

    async def refuse(self, role: str, request: payloads.PayRequest, reply: Reply, reason: str) -> None: ...

    async def finish(self, payment: Payment, state: str, result: dict[str, Any], by: str = "",
                     **extra: Any) -> None: ...

    async def forget(self, payment: Payment) -> None: ...

    def wake_settler(self) -> None: ...
