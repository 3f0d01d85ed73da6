"""The day's close on the box's page, in a real headless Chromium under the page's strict CSP:
takings by tender, the orders-per-hour chart drawn, and the print button putting the Chinese
close on the receipt printer."""

from __future__ import annotations

import asyncio

import pytest

from tests.api.conftest import INSTALLER_PIN, Box
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import Terminal, order
from tests.roles.conftest import Till

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium


async def test_the_day_on_the_page_with_its_chart(box: Box) -> None:
    await box.wait_device_ready()
    async with Terminal(box.config, "pos-1") as pos, Till(box.config, "pos-2") as till:
        for n, covers in ((1, 2), (2, 4)):
            await pos.send(order(f"DAY-{n}", covers=covers))
            assert (await pos.ack())["status"] == "accepted"
        await till.request("pinpad.till-2", "pay", {"schema": "pay/1", "payment_id": "c-1", "sale_id": "s-1",
                                                    "amount_cents": 4200, "currency": "CNY", "tender": "cash"})
        await till.reply("payment_id", "c-1", "approved")
    hour = box.hub.reports.calendar.hour_of(box.hub.reports.clock())
    shot = keep("day-close.png")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 1200})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            # A CSP refusal is a console error starting "Refused to"; the 401 before login is not one.
            page.on("console", lambda msg: errors.append(msg.text) if "Refused to" in msg.text else None)
            await page.goto(box.base + "/")
            await page.fill("#secret", INSTALLER_PIN)
            await page.click("#login-form button")
            await page.wait_for_selector("#dashboard:not([hidden])")
            await page.wait_for_selector(f"#day-chart rect.bar[data-hour='{hour}'][data-orders='2']")
            assert await page.locator("#day-chart rect").count() == 24
            cash_row = page.locator("#day-tenders tr[data-tender='cash'] td")
            cells = [c.strip() for c in await cash_row.all_text_contents()]
            assert cells == ["Cash 现金", "1", "¥42.00"], cells
            figures = await page.text_content("#day-figures") or ""
            assert "2 (6 covers)" in figures and "none" in figures
            await page.click("#day-print")
            await page.wait_for_selector("#day-print-result:has-text('queued on receipt-printer')")
            await page.screenshot(path=str(shot), full_page=True)
            assert not errors, errors  # nothing refused by the CSP, no script error
        finally:
            await browser.close()
    for _ in range(200):
        if any("日结报表" in t.text for t in box.printer.printed):
            break
        await asyncio.sleep(0.05)
    assert any("日结报表" in t.text and "¥42.00" in t.text for t in box.printer.printed)
