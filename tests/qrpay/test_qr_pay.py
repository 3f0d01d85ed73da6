"""Scan-to-pay through the gateway: every documented state of Alipay's bar-code flow, timeouts,
answers that cannot be trusted, an unreachable gateway, and settling by query.

The fake gateway (``edgehub/sim/alipay.py``, written from Alipay's public docs) is the truth of
what guests were charged (``charged``) and how often a code was sent to pay (``pays_for``); the
till's view is the replies on its reply topic.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any

import pytest

from edgehub.sim.alipay import AlipayFake, alipay_code
from tests.qrpay.conftest import TILL, qr_pay
from tests.roles.conftest import Store, Till


async def cloud_rows(store: Store, payment_id: str) -> list[dict[str, Any]]:
    rows = await store.journal.read(lambda c: c.execute(
        "SELECT payload FROM outbox WHERE stream='payments' ORDER BY seq").fetchall())
    return [doc for (raw,) in rows if (doc := json.loads(raw))["payment_id"] == payment_id]


async def test_paid_at_once(qr_store: Store, gateway: AlipayFake) -> None:
    code = alipay_code(1)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-1", "sale-1", 4850, code), correlation=b"c1")
        processing = await till.reply("payment_id", "qr-1", "processing")
        assert processing["tender"] == "qr" and processing["device"] == "alipay"
        done = await till.reply("payment_id", "qr-1", "approved")
    assert done["amount_cents"] == 4850 and done["currency"] == "CNY"
    assert done["trade_no"] and done["buyer"] == "159****5620" and done["reference"].startswith("eh")
    assert gateway.charged(code) == 4850 and gateway.pays_for(code) == 1
    # The journal and the cloud hold the reference and a masked code, never the code itself.
    (row,) = await qr_store.journal.read(lambda c: c.execute(
        "SELECT tender, reference, state, result FROM payments WHERE payment_id='qr-1'").fetchall())
    assert row[:3] == ("qr", done["reference"], "approved") and code not in row[3]
    events = [(r["event"], r["state"]) for r in await cloud_rows(qr_store, "qr-1")]
    assert events == [("intent", "sent"), ("final", "approved")]
    assert code not in json.dumps(await cloud_rows(qr_store, "qr-1"))
    assert gateway.trades[done["reference"]].store_id == qr_store.config.store.id


async def test_guest_confirms_with_password_then_paid(qr_store: Store, gateway: AlipayFake) -> None:
    code = gateway.wallet(alipay_code(2), password=True, confirm_after_s=0.3)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-2", "sale-2", 1000, code))
        waiting = await till.reply("payment_id", "qr-2", "processing")
        await qr_store.wait_for(lambda: any("confirming" in d.get("reason", "")
                                            for d in till.replies_for("payment_id", "qr-2")))
        done = await till.reply("payment_id", "qr-2", "approved")
    assert waiting["device"] == "alipay" and done["amount_cents"] == 1000
    assert gateway.pays_for(code) == 1 and len(gateway.calls.query) >= 1 and not gateway.calls.cancel
    assert gateway.charged(code) == 1000


async def test_guest_never_confirms_the_order_is_cancelled(qr_store: Store, gateway: AlipayFake) -> None:
    code = gateway.wallet(alipay_code(3), password=True, confirm_after_s=None)
    async with Till(qr_store.config) as till:
        started = time.monotonic()
        await till.request(TILL, "pay", qr_pay("qr-3", "sale-3", 1000, code))
        done = await till.reply("payment_id", "qr-3", "declined")
    assert 1.4 <= time.monotonic() - started < 5  # pay_deadline_s is 1.5 s here
    assert "did not confirm within 1.5 s" in done["reason"]
    assert gateway.calls.cancel == [done["reference"]] and gateway.charged(code) == 0
    assert gateway.trades[done["reference"]].status == "TRADE_CLOSED"


async def test_guest_confirms_at_the_last_moment_the_cancel_refunds(qr_store: Store, gateway: AlipayFake) -> None:
    """No query tells the box the guest paid; the cancel after the deadline finds the order paid
    and gives the money back: the till hears aborted, the guest is not out of pocket."""
    code = gateway.wallet(alipay_code(4), password=True, confirm_after_s=0.5)
    gateway.query_answer = "system_error"
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-4", "sale-4", 777, code))
        done = await till.reply("payment_id", "qr-4", ("aborted", "approved", "declined", "unknown"))
    assert done["status"] == "aborted" and "money back" in done["reason"]
    assert gateway.charged(code) == 0 and gateway.trades[done["reference"]].refunded


@pytest.mark.parametrize("answer", ["system_error", "acq_system_error", "hang", "drop", "bad_sign"])
async def test_no_trusted_answer_is_queried_never_paid_again(qr_store: Store, gateway: AlipayFake,
                                                            answer: str) -> None:
    """20000, ACQ.SYSTEM_ERROR, no answer within answer_timeout_s, a dropped connection, an answer
    not signed by the gateway's key: the gateway charged the guest; the box finds out by query."""
    code = gateway.wallet(alipay_code(5), answer=answer)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-5", "sale-5", 2500, code))
        done = await till.reply("payment_id", "qr-5", ("approved", "declined", "unknown", "aborted"))
    gateway.release()
    assert done["status"] == "approved" and done["amount_cents"] == 2500
    assert gateway.pays_for(code) == 1 and gateway.calls.query and gateway.charged(code) == 2500


@pytest.mark.parametrize(("wallet", "reason"), [
    ({"balance_cents": 100}, "买家余额不足 (40004/ACQ.BUYER_BALANCE_NOT_ENOUGH)"),
])
async def test_gateway_refuses_nothing_charged(qr_store: Store, gateway: AlipayFake, wallet: dict[str, Any],
                                               reason: str) -> None:
    code = gateway.wallet(alipay_code(6), **wallet)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-6", "sale-6", 2500, code))
        done = await till.reply("payment_id", "qr-6", ("declined", "approved"))
    assert done["status"] == "declined" and done["reason"] == reason
    assert gateway.charged(code) == 0 and not gateway.calls.query


async def test_a_used_code_is_declined_by_the_gateway(qr_store: Store, gateway: AlipayFake) -> None:
    code = alipay_code(7)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-7a", "sale-7", 100, code))
        await till.reply("payment_id", "qr-7a", "approved")
        await till.request(TILL, "pay", qr_pay("qr-7b", "sale-7b", 100, code))
        done = await till.reply("payment_id", "qr-7b", ("declined", "approved"))
    assert done["status"] == "declined" and "ACQ.PAYMENT_AUTH_CODE_INVALID" in done["reason"]
    assert gateway.charged(code) == 100


@pytest.mark.parametrize(("code", "error"), [
    ("134567890123456789", "this is a WeChat Pay code"),
    ("6901234567892", "not an Alipay payment code"),
])
async def test_another_wallets_code_is_refused_at_once(qr_store: Store, gateway: AlipayFake, code: str,
                                                       error: str) -> None:
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-8", "sale-8", 100, code))
        done = await till.reply("payment_id", "qr-8", ("refused", "declined", "approved"))
    assert done["status"] == "refused" and done["error"].startswith(error)
    assert not gateway.calls.pay


async def test_gateway_unreachable_refused_at_once_then_back(qr_store: Store, gateway: AlipayFake) -> None:
    gateway.go_down()
    code = alipay_code(9)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-9", "sale-9", 100, code))
        first = await till.reply("payment_id", "qr-9", ("refused", "unknown", "approved", "declined"))
        assert first["status"] == "refused" and first["error"].startswith("offline: take cash or card")
        assert "nothing was charged" in first["error"]
        # Known down: the next one is refused before anything is journaled or sent.
        started = time.monotonic()
        await till.request(TILL, "pay", qr_pay("qr-10", "sale-10", 100, alipay_code(10)))
        second = await till.reply("payment_id", "qr-10", ("refused", "unknown", "approved", "declined"))
        assert second["status"] == "refused" and second["error"].startswith("offline: take cash or card")
        assert time.monotonic() - started < 0.5
        rows = await qr_store.journal.read(lambda c: c.execute(
            "SELECT COUNT(*) FROM payments WHERE tender='qr'").fetchone()[0])
        assert rows == 0  # the first intent was withdrawn, the second never written
        events = [r["event"] for r in await cloud_rows(qr_store, "qr-9")]
        assert events == ["intent", "withdrawn"]
        gateway.come_up()
        qr = qr_store.roles.payments.tenders.qr
        assert qr is not None
        await qr_store.wait_for(lambda: qr.gateway_down is None, timeout=15)
        await till.request(TILL, "pay", qr_pay("qr-11", "sale-11", 100, alipay_code(11)))
        assert (await till.reply("payment_id", "qr-11", ("approved", "refused")))["status"] == "approved"
    assert not any(c == code for _, c in gateway.calls.pay)


async def test_wan_down_found_before_any_payment(qr_store: Store, gateway: AlipayFake) -> None:
    """The cloud link says the WAN is down: the box probes the gateway at once, and the first QR
    payment after that is refused without waiting for a connect to time out."""
    gateway.go_down()
    tenders = qr_store.roles.payments.tenders
    tenders.wan_down = lambda: "cloud link offline"
    assert tenders.qr is not None
    await qr_store.wait_for(lambda: tenders.qr is not None and tenders.qr.gateway_down is not None, timeout=5)
    async with Till(qr_store.config) as till:
        started = time.monotonic()
        await till.request(TILL, "pay", qr_pay("qr-12", "sale-12", 100, alipay_code(12)))
        done = await till.reply("payment_id", "qr-12", ("refused", "approved", "unknown"))
    assert done["status"] == "refused" and done["error"].startswith("offline: take cash or card")
    assert time.monotonic() - started < 0.5 and not gateway.calls.pay


async def test_unknown_locks_the_sale_and_is_settled_by_query(qr_store: Store, gateway: AlipayFake) -> None:
    code = gateway.wallet(alipay_code(13), answer="system_error")
    gateway.query_answer = gateway.cancel_answer = "system_error"
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-13", "sale-13", 3300, code))
        unknown = await till.reply("payment_id", "qr-13", ("unknown", "approved", "declined"))
        assert unknown["status"] == "unknown" and "locked" in unknown["reason"]
        # The sale is locked: no second payment for it while the first may have charged.
        await till.request(TILL, "pay", qr_pay("qr-14", "sale-13", 3300, alipay_code(14)))
        locked = await till.reply("payment_id", "qr-14", "refused")
        assert "locked to the alipay gateway" in locked["error"]
        gateway.query_answer = gateway.cancel_answer = "normal"
        done = await till.reply("payment_id", "qr-13", ("approved", "declined"), timeout=30)
    assert done["status"] == "approved" and done["settled_by"] == "gateway"
    assert gateway.pays_for(code) == 1 and gateway.charged(code) == 3300
    assert not any(c == alipay_code(14) for _, c in gateway.calls.pay)


async def test_a_resent_payment_is_answered_not_paid_again(qr_store: Store, gateway: AlipayFake) -> None:
    code = alipay_code(15)
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("qr-15", "sale-15", 500, code))
        await till.reply("payment_id", "qr-15", "approved")
        await till.request(TILL, "pay", qr_pay("qr-15", "sale-15", 500, code))
        await qr_store.wait_for(lambda: any(d.get("duplicate") for d in till.replies_for("payment_id", "qr-15")))
        await till.request(TILL, "pay", qr_pay("qr-15", "sale-15", 500, code, tender="cash", auth_code=None))
        refused = await till.reply("payment_id", "qr-15", "refused")
    assert "taken by another payment" in refused["error"]
    await asyncio.sleep(0.1)
    assert gateway.pays_for(code) == 1
