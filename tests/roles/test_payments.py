"""Payments on a pinpad role: the customer is never charged twice, whatever dies when.

The simulated terminal's ``charges`` is the truth (what cards were really charged); the
terminal-side view is the replies on the till's reply topic.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest

from drivers.base import DeviceInfo, Driver, Health
from drivers.zvt import ZvtPinpad
from edgehub.bus.session import V311
from edgehub.devices import WatchdogTiming
from edgehub.sim.pinpad import PAYMENT_STEPS, ZvtPinpadSim
from tests.roles.conftest import Store, Till, fast_driver, pinpad_info, running_store

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
        # The same id for another amount: refused, not "approved, duplicate" (the till would
        # take 99.99 as paid).
        await till.request(TILL, "pay", pay("pay-1", "sale-1", 9999))
        refused = await till.reply("payment_id", "pay-1", "refused")
        assert refused["error"] == ("payment_id pay-1 is taken by another payment (sale sale-1, 1250 EUR, approved): "
                                    "a new payment needs a new payment_id")
        assert (refused["amount_cents"], refused["currency"]) == (9999, "EUR")
        await asyncio.sleep(0.2)
        assert len(p1.charges) == 1


async def cloud_rows(store: Store, payment_id: str) -> list[dict[str, Any]]:
    """The ``payments`` outbox rows for one payment, in order (what the cloud will get)."""
    rows = await store.journal.read(
        lambda conn: conn.execute("SELECT msg_id, payload FROM outbox WHERE stream='payments' ORDER BY seq").fetchall()
    )
    docs = [{"msg_id": m, **json.loads(p)} for m, p in rows]
    return [d for d in docs if d["payment_id"] == payment_id]


# Each step of a payment at which the terminal dies, and what really happened to the card.
CHARGED = {"after_charge", "hang_after_charge", "after_status"}
FAULTS = [(step, "approved" if step in CHARGED else "not_found") for step in PAYMENT_STEPS]


@pytest.mark.parametrize(("fault", "truth"), FAULTS)
async def test_pinpad_dies_mid_payment_never_charges_twice(store: Store, fault: str, truth: str) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        commands_before = len(p1.commands)

        p1.fault = fault  # type: ignore[assignment]
        await till.request(TILL, "pay", pay("pay-2", "sale-2", 2500))
        unknown = await till.reply("payment_id", "pay-2", ("unknown", truth))
        # The terminal really died at that step (one-shot knob spent), after it got the command.
        assert p1.fault is None and (0x06, 0x01) in p1.commands[commands_before:]
        assert [c.amount_cents for c in p1.charges].count(2500) == (1 if truth == "approved" else 0)
        assert unknown["status"] == "unknown", "a payment whose pinpad died must not look settled"
        assert "locked to pinpad pad-1" in unknown["reason"]
        # Not retried on the spare, and the role moved for new sales.
        await store.wait_for(lambda: store.roles.serving(TILL) == "pad-2")
        assert (0x06, 0x01) not in p2.commands

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

        # The cloud hears every state change of the payment once, in order, each with its own id.
        rows = await cloud_rows(store, "pay-2")
        assert [(r["event"], r["state"]) for r in rows] == [
            ("intent", "sent"),
            ("unknown", "unknown"),
            ("final", truth),
        ]
        assert len({r["msg_id"] for r in rows}) == 3 and rows[-1]["msg_id"] == "payment:pay-2"
        assert all(p1.card_pan not in json.dumps(r) for r in rows)


async def test_probe_of_the_rebooted_pinpad_does_not_undo_its_failure(store: Store) -> None:
    # pad-1 died mid-payment and rebooted: the payment marks it failed while the watchdog's next
    # probe finds it answering again. However the two interleave (here: the probe lands while the
    # failure is still being published), new sales must go to the spare.
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2:
        await two_pinpads(store, p1, p2)
        publish = store.registry._publish  # noqa: SLF001
        assert publish is not None
        gate, held = asyncio.Event(), asyncio.Event()

        async def slow_broker(topic: str, payload: bytes, retain: bool) -> None:
            if topic == store.topics.device_state("pad-1") and b'"failed"' in payload and not gate.is_set():
                held.set()
                await gate.wait()
            assert publish is not None
            await publish(topic, payload, retain)

        store.registry._publish = slow_broker  # noqa: SLF001
        failing = asyncio.create_task(store.roles.device_failed("pad-1", "payment outcome unknown"))
        await held.wait()
        await store.registry.set_health("pad-1", Health("ready"))
        gate.set()
        await failing
        assert store.roles.serving(TILL) == "pad-2"


async def test_unknown_payment_is_not_settled_before_the_terminal_hears_it_is_unknown(store: Store) -> None:
    # The settler looks every second and on every pad-1 event; the rebooted pad-1 answers at once.
    # While the unknown outcome is still being journaled (a slow disk), it must not settle yet.
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        payments = store.roles.payments
        write = store.journal.write
        gate, held = asyncio.Event(), asyncio.Event()

        async def slow_disk(fn: Any, **kw: Any) -> Any:
            payment = payments.open.get("pay-2")
            if payment is not None and payment.state == "unknown" and not held.is_set():
                held.set()
                await gate.wait()
            return await write(fn, **kw)

        store.journal.write = slow_disk  # type: ignore[method-assign]
        p1.fault = "after_ack"
        await till.request(TILL, "pay", pay("pay-2", "sale-2", 2500))
        await held.wait()
        await payments._settle_from_pinpad(payments.open["pay-2"])  # the settler's pass, now  # noqa: SLF001
        gate.set()
        unknown = await till.reply("payment_id", "pay-2", ("unknown", "not_found"))
        assert unknown["status"] == "unknown" and "locked to pinpad pad-1" in unknown["reason"]
        await till.reply("payment_id", "pay-2", "not_found")
        rows = await cloud_rows(store, "pay-2")
        assert [r["event"] for r in rows] == ["intent", "unknown", "final"]


async def test_pinpad_dies_again_while_being_asked_for_its_last_transaction(store: Store) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        p1.fault = "after_charge"
        p1.die_on_repeat = 2  # the settle query meets two more crashes before it gets an answer
        await till.request(TILL, "pay", pay("pay-5", "sale-5", 3100))
        await till.reply("payment_id", "pay-5", "unknown")
        settled = await till.reply("payment_id", "pay-5", "approved")
        assert p1.die_on_repeat == 0 and p1.commands.count((0x06, 0x20)) >= 3
        assert settled["settled_by"] == "pinpad" and settled["device"] == "pad-1"
        assert [c.amount_cents for c in p1.charges + p2.charges].count(3100) == 1


async def test_pinpad_switched_off_between_probes_sends_the_payment_to_the_spare(tmp_path: Path) -> None:
    # The watchdog would notice only in a minute: the payment itself finds the pinpad gone.
    slow_watchdog = WatchdogTiming(pinpad_interval=60.0, pinpad_timeout=1.5)
    async with (
        running_store(tmp_path / "box", watchdog=slow_watchdog) as store,
        ZvtPinpadSim() as p1,
        ZvtPinpadSim() as p2,
        Till(store.config) as till,
    ):
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        driver = store.registry.get("pad-1").driver  # type: ignore[union-attr]
        assert isinstance(driver, ZvtPinpad) and driver.connected
        assert p1._server is not None  # noqa: SLF001
        p1._server.close()  # switched off: the connection reset, nothing listens any more  # noqa: SLF001
        p1.drop_connections()
        await store.wait_for(lambda: not driver.connected, what="the hub saw the reset")
        commands_before = len(p1.commands)

        await till.request(TILL, "pay", pay("pay-6", "sale-6", 700))
        done = await till.reply("payment_id", "pay-6", ("approved", "unknown", "refused"))
        assert done["status"] == "approved" and done["device"] == "pad-2"
        assert p1.commands[commands_before:] == [] and len(p1.charges) == 1
        assert [c.amount_cents for c in p2.charges] == [700]
        rows = await cloud_rows(store, "pay-6")
        assert [(r["event"], r["device"]) for r in rows] == [
            ("intent", "pad-1"),
            ("withdrawn", "pad-1"),
            ("intent", "pad-2"),
            ("final", "pad-2"),
        ]


def long_transactions(info: DeviceInfo) -> Driver:
    """Production drivers; the pinpad waits long for the card, so the hub dies first."""
    if info.driver == "zvt":
        return ZvtPinpad(info, ack_timeout=0.5, transaction_timeout=60.0, connect_timeout=0.5)
    return fast_driver(info)


@pytest.mark.parametrize("charged", [False, True], ids=["before-the-charge", "after-the-charge"])
async def test_hub_dies_mid_payment_and_settles_after_restart(tmp_path: Path, charged: bool) -> None:
    box = tmp_path / "box"
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2:
        async with running_store(box, driver_factory=long_transactions) as store, Till(store.config) as till:
            await two_pinpads(store, p1, p2)
            await till.request(TILL, "pay", pay("warm", "sale-0", 100))
            await till.reply("payment_id", "warm", "approved")
            if charged:
                p1.fault = "hang_after_charge"  # charges the card, then the hub dies before the result
            else:
                p1.card_delay = 60.0  # the customer is still at the terminal when the hub dies
            await till.request(TILL, "pay", pay("pay-7", "sale-7", 1800))
            await till.reply("payment_id", "pay-7", "processing")
            if charged:
                await store.wait_for(lambda: len(p1.charges) == 2, what="the card charged")
            else:
                await store.wait_for(lambda: (0x06, 0x01) in p1.commands[-2:], what="the pinpad asked")
        # The hub is gone (as after kill -9: the intent is journaled, the outcome is not).
        p1.card_delay = 0.0
        async with running_store(box) as store, Till(store.config) as till:
            assert store.roles.payments.open["pay-7"].state == "unknown"
            await two_pinpads(store, p1, p2)
            truth = "approved" if charged else "not_found"
            # The result reaches the terminal on the reply topic journaled before the restart.
            settled = await till.reply("payment_id", "pay-7", truth)
            assert settled["settled_by"] == "pinpad" and "duplicate" not in settled
            # Asking again with the same payment id gives the settled result, not a new charge.
            await till.request(TILL, "pay", pay("pay-7", "sale-7", 1800))
            await store.wait_for(lambda: any(d.get("duplicate") for d in till.replies_for("payment_id", "pay-7")))
            again = next(d for d in till.replies_for("payment_id", "pay-7") if d.get("duplicate"))
            assert again["status"] == truth and again["device"] == "pad-1"
            assert [c.amount_cents for c in p1.charges + p2.charges].count(1800) == (1 if charged else 0)
            rows = await cloud_rows(store, "pay-7")
            assert [r["event"] for r in rows] == ["intent", "final"] and rows[-1]["state"] == truth


async def test_unknown_sale_is_locked_and_new_sales_go_to_the_spare(store: Store) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        # pad-1 charges the card and dies for good before telling anyone.
        p1.fault = "after_charge"
        assert p1._server is not None  # noqa: SLF001
        p1._server.close()  # noqa: SLF001
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


async def test_a_311_till_is_told_why_its_request_was_refused(store: Store) -> None:
    """MQTT 3.1.1 has no response topic: the till names ``reply_to`` and ``request_id`` in the
    payload. A request refused before it is parsed (no such role, a bad field) is answered
    there too, or a till paying on a misnamed pinpad role would wait for nothing."""
    async with Till(store.config, "pos-2", V311) as till:
        await till.request("pinpad.till-9", "pay", {**pay("pay-1", "sale-1", 500), "request_id": "r-1"})
        await till.request(TILL, "pay", {**pay("pay-2", "sale-2", -5), "request_id": "r-2"})
        async with asyncio.timeout(10):
            while len(till.replies) < 2:
                await asyncio.sleep(0.02)
    by_request = {doc["request_id"]: doc for _, doc in till.replies}
    assert by_request["r-1"] == {"schema": "error/1", "role": "pinpad.till-9", "request_id": "r-1",
                                 "error": "no role 'pinpad.till-9' is bound"}
    assert by_request["r-2"]["status"] == "refused" and by_request["r-2"]["error"].startswith("amount_cents")
