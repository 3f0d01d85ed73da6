"""Cash with its drawer, and a bill split over several tenders."""

from __future__ import annotations

import asyncio
from typing import Any

from edgehub.sim.alipay import AlipayFake, alipay_code
from edgehub.sim.printer import PrinterSim
from tests.qrpay.conftest import TILL, qr_pay
from tests.roles.conftest import Store, Till, printer_info


def cash(payment_id: str, sale_id: str, cents: int, **fields: Any) -> dict[str, Any]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": sale_id, "amount_cents": cents,
            "currency": "CNY", "tender": "cash", **fields}


async def test_cash_opens_the_drawer_and_reads_it_back(qr_store: Store) -> None:
    async with PrinterSim() as printer, Till(qr_store.config) as till:
        await qr_store.add(printer_info("prn-c", printer))
        await qr_store.wait_for(lambda: qr_store.roles.serving("receipt-printer") == "prn-c")
        await till.request(TILL, "pay", cash("cash-1", "sale-1", 8800, tendered_cents=10000))
        done = await till.reply("payment_id", "cash-1", "approved")
        assert done["tender"] == "cash" and (done["tendered_cents"], done["change_cents"]) == (10000, 1200)
        assert done["drawer"] == {"role": "receipt-printer", "device": "prn-c", "kicked": True, "open": True}
        assert printer.core.drawer_open and sum(t.drawer_kicks for t in printer.printed) == 1
        tenders = qr_store.roles.payments.tenders
        assert (await tenders.drawer_state("receipt-printer"))["open"] is True
        printer.core.drawer_open = False  # staff push it shut; the watchdog's next status sees it
        async with asyncio.timeout(10):
            while (await tenders.drawer_state("receipt-printer"))["open"] is not False:
                await asyncio.sleep(0.05)


async def test_a_drawer_that_does_not_open_is_said_but_the_cash_is_kept(qr_store: Store) -> None:
    async with PrinterSim() as printer, Till(qr_store.config) as till:
        await qr_store.add(printer_info("prn-c", printer))
        await qr_store.wait_for(lambda: qr_store.roles.serving("receipt-printer") == "prn-c")
        printer.core.drawer_open_level = "low"  # the store's drawers switch the other way: it reads "closed"
        await till.request(TILL, "pay", cash("cash-2", "sale-2", 500))
        done = await till.reply("payment_id", "cash-2", "approved")
    assert done["drawer"]["kicked"] is True and done["drawer"]["open"] is False
    assert "did not open" in done["drawer"]["warning"]


async def test_cash_with_no_printer_for_the_drawer(qr_store: Store) -> None:
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", cash("cash-3", "sale-3", 500))
        done = await till.reply("payment_id", "cash-3", "approved")
    assert done["drawer"]["kicked"] is False and "open the drawer with its key" in done["drawer"]["reason"]
    rows = await qr_store.journal.read(lambda c: c.execute(
        "SELECT tender, state, device_id FROM payments WHERE payment_id='cash-3'").fetchall())
    assert rows == [("cash", "approved", "cash")]


async def test_a_bill_split_over_qr_and_cash(qr_store: Store, gateway: AlipayFake) -> None:
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", qr_pay("split-1", "table-7", 6000, alipay_code(31), sale_total_cents=10000))
        first = await till.reply("payment_id", "split-1", "approved")
        assert first["sale"] == {"total_cents": 10000, "paid_cents": 6000, "due_cents": 4000}
        # More than is still due: refused before anything is asked.
        await till.request(TILL, "pay", qr_pay("split-2", "table-7", 5000, alipay_code(32)))
        over = await till.reply("payment_id", "split-2", "refused")
        assert over["error"] == "amount_cents 5000 is more than the 4000 still due on sale table-7 (6000 of 10000 paid)"
        # Another total for the same sale is a mistake at the till, not a new bill.
        await till.request(TILL, "pay", cash("split-3", "table-7", 4000, sale_total_cents=12000))
        other = await till.reply("payment_id", "split-3", "refused")
        assert other["error"] == "sale_total_cents: sale table-7 is 10000 CNY, not 12000 CNY"
        await till.request(TILL, "pay", cash("split-4", "table-7", 4000, tendered_cents=5000))
        last = await till.reply("payment_id", "split-4", "approved")
    assert last["sale"] == {"total_cents": 10000, "paid_cents": 10000, "due_cents": 0}
    assert gateway.pays_for(alipay_code(32)) == 0


async def test_qr_and_cash_take_the_store_currency_only(qr_store: Store) -> None:
    async with Till(qr_store.config) as till:
        await till.request(TILL, "pay", cash("cur-1", "sale-9", 500, currency="EUR"))
        done = await till.reply("payment_id", "", "refused")
    assert done["error"] == 'currency: must be one of CNY for tender cash, got "EUR"'
