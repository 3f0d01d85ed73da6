"""The day's close: a business day of orders, payments, failures and settlements built through a
real hub (real Mosquitto, the simulated receipt printers and pinpad, the fake Alipay gateway), and
every figure of its report checked, on the API, on paper in Chinese and in the cloud's message."""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import ReportsConfig, load_config
from edgehub.hub import Hub
from edgehub.reports.dayclose import Calendar
from edgehub.sim.alipay import AlipayFake, GatewayFiles, alipay_code, make_gateway_files
from edgehub.sim.pinpad import ZvtPinpadSim
from edgehub.sim.printer import PrinterSim
from tests.conftest import API_TOKEN, Terminal, order, write_config
from tests.qrpay.conftest import qr_toml
from tests.roles.conftest import Till

SHANGHAI = zoneinfo.ZoneInfo("Asia/Shanghai")
TILL = "pinpad.till-1"


def at(day: int, hour: int, minute: int = 0) -> float:
    return dt.datetime(2026, 12, day, hour, minute, tzinfo=SHANGHAI).timestamp()


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_business_days_start_at_the_configured_time() -> None:
    calendar = Calendar(ReportsConfig(day_starts_at="05:00", timezone="Asia/Shanghai"))
    assert calendar.day_of(at(5, 23, 50)).name == "2026-12-05"
    assert calendar.day_of(at(6, 1, 30)).name == "2026-12-05"  # after midnight: still the evening before
    assert calendar.day_of(at(6, 5, 0)).name == "2026-12-06"
    day = calendar.day(dt.date(2026, 12, 5))
    assert (day.starts_at, day.ends_at) == (at(5, 5), at(6, 5))
    # A day with a daylight-saving change is 23 or 25 hours long, not 24.
    berlin = Calendar(ReportsConfig(day_starts_at="04:00", timezone="Europe/Berlin")).day(dt.date(2026, 3, 28))
    assert berlin.ends_at - berlin.starts_at == 23 * 3600


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> GatewayFiles:
    return make_gateway_files(tmp_path_factory.mktemp("gw"))


@pytest.fixture
def gateway(files: GatewayFiles) -> Iterator[AlipayFake]:
    with AlipayFake(files) as fake:
        yield fake


def priced(order_id: str, covers: int, lines: list[tuple[str, int, int]], **fields: Any) -> dict[str, Any]:
    return order(order_id, covers=covers, currency="CNY",
                 lines=[{"sku": sku, "name": sku, "qty": qty, "price_cents": price, "station": "wok"}
                        for sku, qty, price in lines], **fields)


async def test_a_day_of_business_every_figure(tmp_path: Path, gateway: AlipayFake) -> None:
    async with PrinterSim() as printer, PrinterSim() as spare, ZvtPinpadSim() as pinpad:
        devices = f"""
[reports]
day_starts_at = "05:00"
timezone = "Asia/Shanghai"
print_role = "receipt-printer"

[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "prn-c"
driver = "escpos"
transport = "tcp"
address = "{printer.address}"

[[device]]
id = "prn-d"
driver = "escpos"
transport = "tcp"
address = "{spare.address}"

[[device]]
id = "pad-1"
driver = "zvt"
transport = "tcp"
address = "127.0.0.1:{pinpad.port}"

[[role]]
name = "receipt-printer"
devices = ["prn-c", "prn-d"]

[[role]]
name = "pinpad.till-1"
devices = ["pad-1"]
"""
        config = load_config(write_config(tmp_path / "box", extra=qr_toml(gateway.files, gateway.url) + devices))
        clock = Clock(at(5, 10, 0))
        async with MosquittoProcess(config, die_with_parent=False):
            hub = Hub(config)
            hub.journal.clock = hub.roles.wall = hub.kitchen.clock = hub.reports.clock = clock
            async with hub, Terminal(config, "pos-1") as pos, Till(config) as till:
                await asyncio.wait_for(hub.ready.wait(), 10)
                await asyncio.wait_for(hub.reports.caught_up.wait(), 10)
                for role, device in (("receipt-printer", "prn-c"), (TILL, "pad-1")):
                    async with asyncio.timeout(20):
                        while hub.roles.serving(role) != device:
                            await asyncio.sleep(0.05)
                await build_the_day(hub, pos, till, gateway, clock, printer)
                live = await api(hub, "GET", "/api/v1/reports/day/2026-12-05")
                assert live["closed_at"] is None
                check_every_figure(live)
                # The day ends: closed, kept, queued for the cloud once, printed in Chinese.
                clock.now = at(6, 5, 1)
                # The order at 04:50 on the 5th belongs to the 4th, which is closed with it.
                assert await hub.reports.close_due() == ["2026-12-04", "2026-12-05"]
                assert await hub.reports.close_due() == []
                closed = await api(hub, "GET", "/api/v1/reports/day/2026-12-05")
                assert closed["closed_at"] == at(6, 5, 1)
                check_every_figure(closed)
                rows = await hub.journal.read(lambda c: c.execute(
                    "SELECT msg_id, payload FROM outbox WHERE stream='reports'").fetchall())
                assert [r[0] for r in rows] == ["report:s1:2026-12-04", "report:s1:2026-12-05"]
                assert json.loads(rows[1][1]) == closed
                assert json.loads(rows[0][1])["orders"]["count"] == 1
                async with asyncio.timeout(20):
                    while not any("营业日 2026-12-05" in t.text for t in printer.printed + spare.printed):
                        await asyncio.sleep(0.05)
                paper = next(t.text for t in printer.printed + spare.printed if "营业日 2026-12-05" in t.text)
                for needle in ("日结报表", "收款合计", "¥110.00", "现金 2笔", "¥35.00",
                               "扫码 2笔", "¥75.00", "银行卡 1笔", "EUR 48.00", "pad-1 1笔", "alipay 2笔",
                               "结果未知(待确认)", "qr-unknown", "人工确认", "订单", "就餐人数", "退单",
                               "重打", "11时"):
                    assert needle in paper, f"{needle!r} not on the printed close:\n{paper}"
                # Printed again on request, through the durable queue.
                job = await api(hub, "POST", "/api/v1/reports/day/2026-12-05/print", status=202)
                assert job["role"] == "receipt-printer"
                bad = await api(hub, "GET", "/api/v1/reports/day/yesterday", status=400)
                assert bad["error"].startswith("day: 'yesterday' is not a date")


async def build_the_day(hub: Hub, pos: Terminal, till: Till, gateway: AlipayFake, clock: Clock,
                        printer: PrinterSim) -> None:
    async def send(doc: dict[str, Any], topic: str | None = None) -> None:
        await pos.send(doc, topic)
        ack = await pos.ack()
        assert ack["status"] == "accepted", ack

    # The evening before the business day: not counted.
    clock.now = at(5, 4, 50)
    await send(order("o-early", covers=9))
    clock.now = at(5, 11, 5)
    await send(priced("o1", 2, [("DUMPLING", 2, 1800), ("TEA", 1, 1200)], total_cents=4800))
    clock.now = at(5, 11, 20)
    await send(priced("o2", 4, [("DUCK", 1, 6000)], discounts=[{"name": "会员", "amount_cents": 500}],
                      total_cents=5500))
    clock.now = at(5, 12, 10)
    await send(order("o3", covers=3))  # an old till: no prices
    clock.now = at(5, 12, 40)
    await send(priced("o4", 2, [("NOODLE", 2, 900)]))
    clock.now = at(5, 12, 45)
    await send({"schema": "cancel/1", "order_id": "o4", "reason": "guest left"},
               hub.topics.cancel("pos-1"))
    clock.now = at(5, 13, 0)
    await send({"schema": "amend/1", "order_id": "o2", "amend_id": "a1", "covers": 5}, hub.topics.amend("pos-1"))
    clock.now = at(5, 23, 50)
    await send(order("o5", covers=1))
    clock.now = at(6, 1, 30)
    await send(order("o6", covers=2))

    async def pay(doc: dict[str, Any], final: tuple[str, ...] = ("approved", "declined", "unknown")) -> dict[str, Any]:
        await till.request(TILL, "pay", {"schema": "pay/1", **doc})
        return await till.reply("payment_id", doc["payment_id"], final, timeout=30)

    clock.now = at(5, 11, 30)
    assert (await pay({"payment_id": "card-1", "sale_id": "s1", "amount_cents": 4800, "currency": "EUR"}))[
        "status"] == "approved"
    clock.now = at(5, 12, 0)
    split = {"sale_id": "s2", "sale_total_cents": 5500, "currency": "CNY"}
    assert (await pay({**split, "payment_id": "qr-1", "amount_cents": 3000, "tender": "qr",
                       "auth_code": alipay_code(101)}))["status"] == "approved"
    clock.now = at(5, 12, 5)
    cash = await pay({**split, "payment_id": "cash-1", "amount_cents": 2500, "tender": "cash",
                      "tendered_cents": 3000})
    assert cash["sale"]["due_cents"] == 0 and cash["change_cents"] == 500
    clock.now = at(5, 12, 20)
    gateway.wallet(alipay_code(102), balance_cents=100)
    assert (await pay({"payment_id": "qr-poor", "sale_id": "s3", "amount_cents": 1000, "currency": "CNY",
                       "tender": "qr", "auth_code": alipay_code(102)}))["status"] == "declined"
    # Two payments whose outcome the gateway will not tell: one stays unknown, one an operator
    # settles at the till after checking the guest's phone.
    gateway.wallet(alipay_code(103), answer="system_error")
    gateway.wallet(alipay_code(104), answer="system_error")
    gateway.query_answer = gateway.cancel_answer = "system_error"
    clock.now = at(5, 19, 0)
    assert (await pay({"payment_id": "qr-unknown", "sale_id": "s4", "amount_cents": 2000, "currency": "CNY",
                       "tender": "qr", "auth_code": alipay_code(103)}))["status"] == "unknown"
    clock.now = at(5, 19, 30)
    assert (await pay({"payment_id": "qr-operator", "sale_id": "s5", "amount_cents": 4500, "currency": "CNY",
                       "tender": "qr", "auth_code": alipay_code(104)}))["status"] == "unknown"
    await till.request(TILL, "settle", {"schema": "settle/1", "payment_id": "qr-operator", "decision": "approved",
                                        "operator": "manager Li"})
    assert (await till.reply("payment_id", "qr-operator", "approved"))["settled_by"] == "operator"
    clock.now = at(6, 1, 35)
    assert (await pay({"payment_id": "cash-2", "sale_id": "s6", "amount_cents": 1000, "currency": "CNY",
                       "tender": "cash"}))["status"] == "approved"
    clock.now = at(6, 5, 30)  # the next business day
    assert (await pay({"payment_id": "cash-next", "sale_id": "s7", "amount_cents": 999, "currency": "CNY",
                       "tender": "cash"}))["status"] == "approved"
    # A receipt whose printer dies while printing it comes out again on the spare, marked REPRINT.
    clock.now = at(5, 20, 0)
    printer.slow = 3.0
    await hub.roles.printqueue.submit("receipt-printer", {"lines": ["小票 o1"]}, "receipt-o1",
                                      _no_reply())
    await asyncio.sleep(0.5)
    await printer.kill()
    async with asyncio.timeout(30):
        while not await hub.journal.read(lambda c: c.execute(
                "SELECT reprint FROM print_jobs WHERE job_id='receipt-o1' AND state='printed'").fetchone()):
            await asyncio.sleep(0.05)
    printer.slow = 0.0
    await printer.revive()


def _no_reply() -> Any:
    from edgehub.roles.roles import Reply

    return Reply(None, None, None)


def check_every_figure(report: dict[str, Any]) -> None:
    assert report["day"] == "2026-12-05" and report["currency"] == "CNY" and report["timezone"] == "Asia/Shanghai"
    takings = report["takings"]
    # card 48.00 EUR (the pinpad's currency), qr 30.00 + 45.00 (operator), cash 25.00 + 10.00
    assert takings["count"] == 5
    assert takings["by_currency"] == {"CNY": 11000, "EUR": 4800}
    assert takings["total_cents"] == 11000
    assert takings["by_tender"] == [
        {"tender": "card", "currency": "EUR", "count": 1, "amount_cents": 4800},
        {"tender": "cash", "currency": "CNY", "count": 2, "amount_cents": 3500},
        {"tender": "qr", "currency": "CNY", "count": 2, "amount_cents": 7500},
    ]
    assert takings["by_device"] == [
        {"tender": "card", "device": "pad-1", "currency": "EUR", "count": 1, "amount_cents": 4800},
        {"tender": "cash", "device": "cash", "currency": "CNY", "count": 2, "amount_cents": 3500},
        {"tender": "qr", "device": "alipay", "currency": "CNY", "count": 2, "amount_cents": 7500},
    ]
    assert report["cash"] == {"received_cents": 4000, "change_cents": 500, "net_cents": 3500}
    payments = report["payments"]
    assert (payments["approved"], payments["declined"], payments["aborted"], payments["not_found"]) == (5, 1, 0, 0)
    assert payments["declined_cents"] == 1000
    assert payments["settled_by"] == {"operator": 1}
    assert [(p["payment_id"], p["amount_cents"], p["tender"]) for p in payments["unknown"]] == [
        ("qr-unknown", 2000, "qr")]
    (by_hand,) = payments["settled_by_operator"]
    assert (by_hand["payment_id"], by_hand["decision"], by_hand["amount_cents"]) == ("qr-operator", "approved", 4500)
    assert "manager Li" in by_hand["reason"]
    assert report["sales"] == {"paid": 4, "split": 1}
    # o1..o6 minus the cancelled o4; o2 amended to 5 covers; priced: o1 48.00 and o2 55.00.
    assert report["orders"] == {"count": 5, "covers": 2 + 5 + 3 + 1 + 2, "priced": 2, "value_cents": 10300,
                                "cancelled": 1, "amended": 1}
    assert report["voids"] == {"orders": 1, "tickets": 1}
    assert report["amends"] == 1 and report["reprints"] == 1
    hours = {slot["hour"]: (slot["orders"], slot["covers"]) for slot in report["hours"] if slot["orders"]}
    assert hours == {11: (2, 7), 12: (1, 3), 23: (1, 1), 1: (1, 2)}
    assert [slot["hour"] for slot in report["hours"]][:2] == [5, 6]


async def api(hub: Hub, method: str, path: str, status: int = 200) -> dict[str, Any]:
    async with aiohttp.ClientSession() as session, session.request(
            method, f"{hub.api.url.rstrip('/')}{path}", headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
        assert r.status == status, await r.text()
        doc: dict[str, Any] = await r.json()
        return doc
