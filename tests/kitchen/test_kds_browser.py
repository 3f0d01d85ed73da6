"""The station page in a real headless Chromium: an order from a simulated POS shows up within a
second, a tap starts and bumps it, and a screenshot is kept in test-artifacts/kds.png."""

from __future__ import annotations

import asyncio
import os
import time

import pytest

from edgehub.hub import Hub
from edgehub.sim.terminal import TerminalSim
from tests.conftest import API_TOKEN, REPO

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(
    not os.path.exists(CHROMIUM), reason=f"{CHROMIUM} is not installed (apt-get install -y chromium)"
)
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


async def test_order_appears_tap_bumps_and_screenshot(hub: Hub) -> None:
    from playwright.async_api import async_playwright

    sim = TerminalSim(
        hub.config.broker.listen.host,
        hub.config.broker.listen.port,
        hub.config.store.id,
        "pos-1",
        "pw-pos-1",
        run_id="kds",
    )
    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1280, "height": 720})
            await page.goto(f"{hub.api.url}kds/grill?token={API_TOKEN}")
            await page.wait_for_selector("#conn.live", timeout=15_000)
            assert "token" not in page.url  # the token left the address bar
            # make_order(n=0) sends a cheeseburger to the grill and a cola to the bar.
            sent = time.monotonic()
            report_task = asyncio.create_task(sim.run(orders=1, rate=0, timeout=10))
            card = page.locator('article.ticket[data-ticket="pos-1-kds-000000/grill/1"]')
            await card.wait_for(timeout=5_000)
            appeared = time.monotonic() - sent
            assert (await report_task).accepted == 1
            assert appeared < 1.0, f"the ticket took {appeared:.2f}s to appear"
            assert "Cheeseburger" in await card.inner_text()
            assert "green" in (await card.get_attribute("class") or "")
            assert "Cheeseburger" in await page.locator("#allday").inner_text()
            await card.click()  # new -> in progress
            await page.locator('article.ticket[data-state="in_progress"]').wait_for(timeout=5_000)
            artifacts = REPO / "test-artifacts"
            artifacts.mkdir(exist_ok=True)
            await page.screenshot(path=str(artifacts / "kds.png"), full_page=True)
            await card.click()  # in progress -> bumped off the screen
            await card.wait_for(state="detached", timeout=5_000)
            assert hub.kitchen.snapshot("grill")["recent"][0]["state"] == "ready"
            await page.click("#recall")  # the last bumped comes back
            await page.locator('article.ticket[data-state="recalled"]').wait_for(timeout=5_000)
        finally:
            await browser.close()
    shot = REPO / "test-artifacts" / "kds.png"
    assert shot.stat().st_size > 1000
