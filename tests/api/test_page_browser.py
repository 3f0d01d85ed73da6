"""The box's page in a real headless Chromium (Debian's): log in with the installer PIN, see
the store, its printer and role, run the self-check; a screenshot goes to test-artifacts/."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest

from tests.api.conftest import INSTALLER_PIN, Box
from tests.conftest import REPO

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run"]
playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="apt-get install chromium")


async def test_installer_logs_in_and_sees_the_store(box: Box) -> None:
    await box.wait_device_ready()
    artifacts = REPO / "test-artifacts"
    artifacts.mkdir(exist_ok=True)
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1100})
            errors: list[str] = []
            page.on("pageerror", lambda exc: errors.append(str(exc)))
            await page.goto(box.base + "/")
            await page.wait_for_selector("#login-view:not([hidden])")
            await page.fill("#secret", "000000")
            await page.click("#login-form button")
            await page.wait_for_selector("#login-error:has-text('Wrong')")
            await page.fill("#secret", INSTALLER_PIN)
            await page.click("#login-form button")
            await page.wait_for_selector("#dashboard:not([hidden])")
            await page.wait_for_selector("#store-id:has-text('s1')")
            assert await page.text_content("#version") == "0.1.0"
            row = page.locator("#devices tr[data-device='prn-front']")
            await row.wait_for()
            assert "TM-T20III" in (await row.text_content() or "")
            await page.wait_for_selector("#devices tr[data-device='prn-front'] td.state.ready")
            role = page.locator("#roles tr[data-role='receipt-printer']")
            await role.wait_for()
            assert "prn-front" in (await role.text_content() or "")
            assert "°C" in (await page.text_content("#system") or "") or "no sensor" in (
                await page.text_content("#system") or "")

            # Live: the page polls, so a printer running out of paper shows without a reload.
            box.printer.paper_out = True
            failed = "#devices tr[data-device='prn-front'] td.state.failed"
            await page.wait_for_selector(failed, timeout=15000)
            box.printer.paper_out = False
            await page.wait_for_selector("#devices tr[data-device='prn-front'] td.state.ready", timeout=15000)

            await page.click("#devices tr[data-device='prn-front'] button")
            await page.wait_for_selector("#banner:has-text('Test slip printed')")
            assert len(box.printer.printed) == 1

            await page.click("#doctor")
            await page.wait_for_selector("#doctor-results li[data-check='broker']")
            assert await page.get_attribute("#doctor-results", "data-ok") == "true"

            await page.click("#sync")
            await page.wait_for_function("document.querySelector('#sync-result').textContent.length > 1")

            await page.screenshot(path=str(artifacts / "dashboard.png"), full_page=True)
            # The session cookie is invisible to scripts (HttpOnly).
            assert "edgehub_session" not in await page.evaluate("document.cookie")
            assert errors == []
            await page.click("#logout")
            await page.wait_for_selector("#login-view:not([hidden])")
        finally:
            await browser.close()
    await asyncio.sleep(0)
