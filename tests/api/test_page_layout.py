"""The box's page at 390x844 (the phone an installer holds) and 1280x900, in a real headless
Chromium: before login it shows nothing of the box; after login nothing is wider than the screen,
every action is within reach and works, a bind leaves the Roles table whole (ids never break at
their hyphens), a button's notice leaves again, the kitchen section lists each station with its
screen link, and logging out leaves nothing behind. Screenshots of both sizes go to artifacts/."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.api.conftest import INSTALLER_PIN, Box
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import Terminal, order

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium

SIZES = ((390, 844), (1280, 900))
# Every action of the page, by selector: each must be on the screen, not beside it.
ACTIONS = ("#logout", "#kitchen a", "#devices tr[data-device='prn-front'] button",
           "#devices tr[data-device='prn-front'] button[data-field-check]",
           "#roles tr[data-role='receipt-printer'] button", "#roles tr[data-role='receipt-printer'] input",
           "#bind-role", "#bind-devices", "#bind-new button", "#sync", "#doctor", "#bundle")


async def widest(page: Any) -> int:
    return int(await page.evaluate("document.documentElement.scrollWidth"))


async def broken_ids(page: Any) -> list[str]:
    """Ids drawn on more than one line (broken at a hyphen, say)."""
    found: list[str] = await page.evaluate(
        "[...document.querySelectorAll('td.id span')].filter(s => s.getClientRects().length > 1)"
        ".map(s => s.textContent)")
    return found


async def test_the_page_at_phone_and_desktop_size(box: Box) -> None:
    await box.wait_device_ready()
    async with Terminal(box.config, "pos-1") as pos:  # an order: the grill station has a ticket
        await pos.send(order("LAYOUT-1"))
        assert (await pos.ack())["status"] == "accepted"
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            for width, height in SIZES:
                context = await browser.new_context(viewport={"width": width, "height": height})
                page = await context.new_page()
                await page.clock.install()
                errors: list[str] = []
                page.on("pageerror", lambda exc, errors=errors: errors.append(str(exc)))
                await page.goto(box.base + "/")
                await page.wait_for_selector("#login-view:not([hidden])")

                # Before login: nothing of the box (the issue: "version up broker" and "Log out" showed).
                assert not await page.is_visible("#summary") and not await page.is_visible("#logout")
                body = await page.inner_text("body")
                assert "version" not in body and "s1" not in body and "Test store" not in body, body

                await page.fill("#secret", INSTALLER_PIN)
                await page.click("#login-form button")
                await page.wait_for_selector("#dashboard:not([hidden])")
                await page.wait_for_selector("#devices tr[data-device='prn-front'] td.state.ready")
                kitchen = page.locator("#kitchen tr[data-station='grill']")
                await kitchen.wait_for()
                assert "1" in await kitchen.locator("td").nth(1).inner_text()
                assert "/kds/grill?token=" in (await kitchen.locator("a").get_attribute("href") or "")

                # One bind (the issue: it broke the Roles table), then every action within reach.
                await page.fill("#bind-role", "kitchen-printer")
                await page.fill("#bind-devices", "prn-front, prn-spare-with-a-long-name")
                await page.click("#bind-new button")
                await page.wait_for_selector("#notice.ok:has-text('kitchen-printer bound to')")
                await page.wait_for_selector("#roles tr[data-role='kitchen-printer']")
                assert await widest(page) <= width, f"the page is {await widest(page)} px wide at {width}"
                assert await broken_ids(page) == []
                for selector in ACTIONS:
                    # The status refresh redraws the tables; an element caught mid-redraw has no box.
                    box_ = None
                    for _ in range(50):
                        box_ = await page.locator(selector).first.bounding_box()
                        if box_ is not None:
                            break
                        await asyncio.sleep(0.1)
                    assert box_ is not None and box_["x"] >= 0 and box_["x"] + box_["width"] <= width, (selector, box_)

                # Test print from the phone: the slip comes out; the notice leaves on its own.
                printed = len(box.printer.printed)
                await page.click("#devices tr[data-device='prn-front'] button")
                await page.wait_for_selector("#notice.ok:has-text('Test slip printed on prn-front')")
                assert len(box.printer.printed) == printed + 1
                await page.screenshot(path=str(keep(f"page-{width}x{height}.png")), full_page=True)
                await page.clock.fast_forward(9000)
                await page.wait_for_selector("#notice", state="hidden")
                # A failing action's notice stays longer, and its close button dismisses it.
                await page.fill("#roles tr[data-role='kitchen-printer'] input", "not a device!")
                await page.click("#roles tr[data-role='kitchen-printer'] button")
                await page.wait_for_selector("#notice.fail:has-text('Binding kitchen-printer failed')")
                await page.click("#notice-close")
                await page.wait_for_selector("#notice", state="hidden")

                # Logged out: nothing of the box stays under the login form.
                await page.click("#logout")
                await page.wait_for_selector("#login-view:not([hidden])")
                assert not await page.is_visible("#summary")
                assert await page.text_content("#version") == "" and await page.text_content("#store-id") == ""
                assert await page.locator("#dashboard tbody tr").count() == 0
                assert errors == []
                await context.close()
        finally:
            await browser.close()
