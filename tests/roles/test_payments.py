"""Payments on a pinpad role: the customer is never charged twice, whatever dies when.

The simulated terminal's ``charges`` is the truth (what cards were really charged); the
terminal-side view is the replies on the till's reply topic.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from edgehub.sim.pinpad import ZvtPinpadSim
from tests.roles.conftest import Store, Till, pinpad_info

TILL = "pinpad.till-1"


def pay(payment_id: str, sale_id: str, cents: int) -> dict[str, Any]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": sale_id, "amount_cents": cents}


async def two_pinpads(store: Store, p1: ZvtPinpadSim, p2: ZvtPinpadSim) -> None:
    await store.add(pinpad_info("pad-1", p1))
    await store.add(pinpad_info("pad-2", p2))
    await store.wait_for(lambda: store.roles.serving(TILL) == "pad-1")


async def test_payment_approved_with_masked_card(store: Store) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("pay-1", "sale-1", 1250), correlation=b"x")
        assert (await till.reply("payment_id", "pay-1", "processing"))["device"] == "pad-1"
        done = await till.reply("payment_id", "pay-1", "approved")
        assert done["amount_cents"] == 1250 and done["masked_pan"] == "****0119"
        assert p1.card_pan not in str(till.replies)
        assert [c.amount_cents for c in p1.charges] == [1250] and not p2.charges
        # The same payment id again: the result, not a second charge.
        await till.request(TILL, "pay", pay("pay-1", "sale-1", 1250))
        await store.wait_for(lambda: any(d.get("duplicate") for d in till.replies_for("payment_id", "pay-1")))
        await asyncio.sleep(0.2)
        assert len(p1.charges) == 1


FAULTS = [
    ("before_ack", "not_found"),
    ("after_intermediate", "not_found"),
    ("after_charge", "approved"),
    ("hang", "not_found"),
]


@pytest.mark.parametrize(("fault", "truth"), FAULTS)
async def test_pinpad_dies_mid_payment_never_charges_twice(store: Store, fault: str, truth: str) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")

        p1.fault = fault  # type: ignore[assignment]
        await till.request(TILL, "pay", pay("pay-2", "sale-2", 2500))
        unknown = await till.reply("payment_id", "pay-2", ("unknown", truth))
        assert unknown["status"] == "unknown", "a payment whose pinpad died must not look settled"
        assert "locked to pinpad pad-1" in unknown["reason"]
        # Not retried on the spare, and the role moved for new sales.
        await store.wait_for(lambda: store.roles.serving(TILL) == "pad-2")
        assert not p2.charges

        # The final outcome comes from pad-1's last-transaction record once it answers again.
        settled = await till.reply("payment_id", "pay-2", truth)
        assert settled["settled_by"] == "pinpad"
        assert [c.amount_cents for c in p1.charges].count(2500) == (1 if truth == "approved" else 0)

        # A sale the pinpad never charged may be paid again: it goes to the healthy spare.
        if truth == "not_found":
            await till.request(TILL, "pay", pay("pay-2b", "sale-2", 2500))
            again = await till.reply("payment_id", "pay-2b", ("approved", "refused"))
            assert again["status"] == "approved" and again["device"] == "pad-2"
        charged = [c.amount_cents for c in p1.charges + p2.charges]
        assert charged.count(2500) == 1


async def test_unknown_sale_is_locked_and_new_sales_go_to_the_spare(store: Store) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        # pad-1 charges the card and dies for good before telling anyone.
        p1.fault = "after_charge"
        assert p1._server is not None
        p1._server.close()
        await till.request(TILL, "pay", pay("pay-3", "sale-3", 4200))
        await till.reply("payment_id", "pay-3", "unknown")
        await till.request(TILL, "pay", pay("pay-3b", "sale-3", 4200))
        refused = await till.reply("payment_id", "pay-3b", "refused")
        assert "sale sale-3 is locked to pinpad pad-1" in refused["error"]
        await till.request(TILL, "pay", pay("pay-4", "sale-4", 900))
        other = await till.reply("payment_id", "pay-4", "approved")
        assert other["device"] == "pad-2"
        # The pinpad is not coming back: the operator looked at its journal and decides.
        await till.request(
            TILL,
            "settle",
            {"schema": "settle/1", "payment_id": "pay-3", "decision": "approved", "operator": "manager"},
        )
        final = await till.reply("payment_id", "pay-3", "approved")
        assert final["settled_by"] == "operator"
        assert [c.amount_cents for c in p1.charges + p2.charges].count(4200) == 1
        # Settling twice is refused: the payment is no longer unknown.
        await till.request(TILL, "settle", {"schema": "settle/1", "payment_id": "pay-3", "decision": "void"})
        await store.wait_for(
            lambda: any(
                "only an unknown" in d.get("error", "") for d in till.replies_for("payment_id", "pay-3")
            )
        )


async def test_all_pinpads_down_refuses_clearly(store: Store) -> None:
    async with Till(store.config) as till:
        await till.request(TILL, "pay", pay("pay-9", "sale-9", 500))
        refused = await till.reply("payment_id", "pay-9", "refused")
        assert refused["error"].startswith("pinpad.till-1: no healthy pinpad")
