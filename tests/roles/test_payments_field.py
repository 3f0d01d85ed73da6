"""Card payments in a store whose pinpads behave as real terminals do (``PROFILES``): each is
paid once, on its own pinpad, with no receipt printed and no due task started by the box's
probing; an unknown outcome holds its pinpad (the role says so) and settling backs off on one
connection; a pinpad's currency is its own.

The simulated terminals' ``charges`` are the truth; the till's replies are what the store saw.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import replace
from pathlib import Path

import pytest

from drivers.base import DeviceInfo
from edgehub.sim.pinpad import PROFILES, ZvtPinpadSim
from tests.roles.conftest import Store, Till, pinpad_info, running_store
from tests.roles.test_payments import TILL, pay, two_pinpads

FINAL_OR_NOT = ("approved", "declined", "aborted", "unknown", "refused", "not_found")


@pytest.mark.parametrize("profile", list(PROFILES))
async def test_every_pinpad_profile_is_paid_once_on_its_own_pinpad(store: Store, profile: str) -> None:
    async with ZvtPinpadSim(profile=profile) as p1, ZvtPinpadSim(profile=profile) as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        for n in range(2):
            await till.request(TILL, "pay", pay(f"pay-{n}", f"sale-{n}", 1000 + n))
            done = await till.reply("payment_id", f"pay-{n}", FINAL_OR_NOT)
            assert (done["status"], done["device"]) == ("approved", "pad-1"), done
        probes = store.watchdog.probes["pad-1"]
        await store.watchdog.wait_probes("pad-1", probes + 5)  # the watchdog keeps looking at pad-1
        assert [c.amount_cents for c in p1.charges] == [1000, 1001]
        assert not p2.charges and (0x06, 0x01) not in p2.commands
        # No repeat receipt printed, no due task started: the box only asked to pay.
        assert (0x06, 0x20) not in p1.commands and p1.reprints == 0
        assert (0x05, 0x01) not in p1.commands and p1.due_tasks_run == []
        entry = store.registry.get("pad-1")
        assert entry is not None and entry.health.state == "ready"
        assert store.roles.serving(TILL) == "pad-1"


ONE_PINPAD = """
[[role]]
name = "pinpad.bar"
devices = ["pad-1"]
"""


async def test_an_unknown_outcome_holds_its_pinpad_and_settling_backs_off_on_one_connection(
    tmp_path: Path,
) -> None:
    role = "pinpad.bar"
    async with (
        running_store(tmp_path / "box", ONE_PINPAD) as store,
        ZvtPinpadSim() as p1,
        Till(store.config) as till,
    ):
        await store.add(pinpad_info("pad-1", p1))
        await store.wait_for(lambda: store.roles.serving(role) == "pad-1")
        await till.request(role, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")

        # Charged, result sent, dead before the completion; then, back again, its printer is
        # out of paper: "repeat receipt" is refused twice (CC) before it answers.
        p1.fault = "after_status"
        p1.repeat_refusal, p1.repeat_refusal_times = 0xCC, 2
        await till.request(role, "pay", pay("pay-2", "sale-2", 2500))
        await till.reply("payment_id", "pay-2", "unknown")
        connections = p1.connections

        # The pinpad answers again, but serves nobody while the payment is unknown, and says why.
        asks: list[float] = []
        held_reason = ""

        def sample() -> bool:
            nonlocal held_reason
            while len(asks) < p1.commands.count((0x06, 0x20)):
                asks.append(time.monotonic())
            seat = store.roles.seats[role]
            if seat.serving is None and "holds payment pay-2" in seat.reason:
                held_reason = held_reason or seat.reason
            return bool(till.replies_for("payment_id", "pay-2")[-1]["status"] == "approved")

        await store.wait_for(sample, what="settled from the pinpad")
        assert held_reason.startswith("pinpad.bar: no healthy pinpad (pad-1 holds payment pay-2 (sale sale-2)")
        assert "takes no payment until it is settled" in held_reason
        # Asked three times, 1 s then 2 s apart (the backoff), all on the one reconnection.
        assert len(asks) == 3, asks
        assert asks[1] - asks[0] >= 0.9 and asks[2] - asks[1] >= 1.9
        assert p1.connections <= connections + 1
        settled = till.replies_for("payment_id", "pay-2")[-1]
        assert settled["settled_by"] == "pinpad" and [c.amount_cents for c in p1.charges] == [100, 2500]
        entry = store.registry.get("pad-1")
        assert entry is not None and entry.health.state == "ready"  # never marked failed for CC
        await store.wait_for(lambda: store.roles.serving(role) == "pad-1", what="pad-1 serves again")
        status = await store.roles.status()
        assert status["payments"]["open"] == [] and status["payments"]["settled_by_pinpad"] == 1


async def test_held_pinpad_is_named_in_the_status_while_its_payment_is_unknown(store: Store) -> None:
    async with ZvtPinpadSim() as p1, ZvtPinpadSim() as p2, Till(store.config) as till:
        await two_pinpads(store, p1, p2)
        p1.fault = "after_charge"
        assert p1._server is not None  # noqa: SLF001
        p1._server.close()  # and it does not come back  # noqa: SLF001
        await till.request(TILL, "pay", pay("pay-3", "sale-3", 4200))
        await till.reply("payment_id", "pay-3", "unknown")
        status = await store.roles.status()
        [open_payment] = status["payments"]["open"]
        assert {k: open_payment[k] for k in ("payment_id", "sale_id", "device", "state", "needs_operator")} == {
            "payment_id": "pay-3", "sale_id": "sale-3", "device": "pad-1", "state": "unknown", "needs_operator": False
        }
        [seat] = [s for s in status["roles"] if s["role"] == TILL]
        assert seat["device"] == "pad-2"


def _cny(device_id: str, sim: ZvtPinpadSim, **extra: str) -> DeviceInfo:
    return DeviceInfo(device_id, "pinpad", "tcp", f"127.0.0.1:{sim.port}", "zvt", extra={"currency": "CNY", **extra})


async def test_a_pinpad_charges_in_its_own_currency(store: Store) -> None:
    async with (
        ZvtPinpadSim(currency_code=156, password="888888") as p1,
        ZvtPinpadSim(currency_code=156) as p2,
        Till(store.config) as till,
    ):
        await store.add(_cny("pad-1", p1, password="888888"))
        await store.add(_cny("pad-2", p2))
        await store.wait_for(lambda: store.roles.serving(TILL) == "pad-1")
        await till.request(TILL, "pay", {**pay("pay-cny", "sale-1", 6800), "currency": "CNY"})
        done = await till.reply("payment_id", "pay-cny", FINAL_OR_NOT)
        assert (done["status"], done["currency"]) == ("approved", "CNY")
        await till.request(TILL, "pay", pay("pay-eur", "sale-2", 6800))  # the till's default: EUR
        refused = await till.reply("payment_id", "pay-eur", FINAL_OR_NOT)
        assert refused["status"] == "refused"
        assert refused["error"] == ("pinpad pad-1 serving pinpad.till-1 charges CNY, this payment is in EUR: "
                                    "nothing was sent (the [[device]] currency and the till must agree)")
        assert [c.amount_cents for c in p1.charges] == [6800] and p1.commands.count((0x06, 0x01)) == 1


async def test_a_status_probed_pinpad_is_asked_at_its_own_interval(store: Store) -> None:
    async with ZvtPinpadSim(profile="due-tasks") as p1:
        info = pinpad_info("pad-1", p1)
        await store.add(replace(info, extra={"probe": "status", "probe_interval_s": "0.5"}))
        started = time.monotonic()
        await asyncio.sleep(1.6)  # the watchdog's pinpad interval here is 0.1 s
        asked = p1.commands.count((0x05, 0x01))
        elapsed = time.monotonic() - started
        assert 2 <= asked <= elapsed / 0.5 + 2, asked
        assert p1.due_tasks_run == ["end-of-day"]  # chosen for this terminal: it runs its due task


async def test_a_pinpad_that_refuses_the_boxs_registration_sends_the_sale_to_the_spare(tmp_path: Path) -> None:
    from edgehub.devices import WatchdogTiming

    async with (
        running_store(tmp_path / "box", watchdog=WatchdogTiming(pinpad_interval=60.0, pinpad_timeout=1.5)) as store,
        ZvtPinpadSim() as p1,
        ZvtPinpadSim() as p2,
        Till(store.config) as till,
    ):
        await two_pinpads(store, p1, p2)
        await till.request(TILL, "pay", pay("warm", "sale-0", 100))
        await till.reply("payment_id", "warm", "approved")
        # Someone set a new password on pad-1 and rebooted it, between two watchdog probes.
        p1.password = bytes.fromhex("999999")
        p1.drop_connections()
        await till.request(TILL, "pay", pay("pay-5", "sale-5", 5500))
        done = await till.reply("payment_id", "pay-5", FINAL_OR_NOT)
        assert (done["status"], done["device"]) == ("approved", "pad-2")
        entry = store.registry.get("pad-1")
        assert entry is not None and entry.health.state == "failed"
        assert "check the ZVT password and currency" in entry.health.reason
        assert p1.commands.count((0x06, 0x01)) == 1 and [c.amount_cents for c in p2.charges] == [5500]
