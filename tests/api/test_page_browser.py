"""The box's page in a real headless Chromium (Debian's), as an installer uses it: log in with the
installer PIN; see the store, its printer (kind, model, transport, id, state) and role (primary,
spares, who serves now), the outbox with an order waiting, disk, memory and temperature; watch a
printer run out of paper without reloading; press test print, bind a device to a new role,
run the self-check and sync now, and see each one do what it says. The screenshot is kept in
the artifacts folder (tests/browser.py)."""

from __future__ import annotations

import pytest

from tests.api.conftest import INSTALLER_PIN, Box
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import Terminal, order

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium


async def test_installer_logs_in_sees_the_store_and_every_button_works(box: Box) -> None:
    await box.wait_device_ready()
    async with Terminal(box.config, "pos-1") as pos:  # one order waits in the outbox (no cloud)
        await pos.send(order("PAGE-1"))
        assert (await pos.ack())["status"] == "accepted"
    shot = keep("dashboard.png")
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page(viewport={"width": 1200, "height": 1400})
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

            # Store id, version, uptime.
            await page.wait_for_selector("#store-id:has-text('s1')")
            assert await page.text_content("#version") == "0.1.0"
            assert (await page.text_content("#uptime") or "").endswith(("s", "min", "h", "days"))

            # The device with kind, model, transport, id and state.
            row = page.locator("#devices tr[data-device='prn-front']")
            await page.wait_for_selector("#devices tr[data-device='prn-front'] td.state.ready")
            cells = [c.strip() for c in await row.locator("td").all_text_contents()]
            assert cells[:5] == ["printer", "TM-T20III", "tcp", "prn-front", "ready"], cells

            # The role: primary, spares, who serves now.
            role = page.locator("#roles tr[data-role='receipt-printer']")
            await page.wait_for_selector("#roles tr[data-role='receipt-printer'] td.state.serving")
            cells = [c.strip() for c in await role.locator("td").all_text_contents()]
            assert cells[:4] == ["receipt-printer", "prn-front", "—", "prn-front"], cells

            # The outbox: the order in its stream; this box has no cloud, so it is kept, not "0 of 1 sent".
            stream = page.locator("#outbox tr[data-stream='orders']")
            await stream.wait_for()
            assert "kept on the box (no cloud)" in (await stream.text_content() or "")
            system = await page.text_content("#system") or ""
            assert "Disk free" in system and "Memory available" in system
            assert "°C" in system or "no sensor" in system

            # Live: the page polls, so a printer running out of paper shows without a reload.
            box.printer.paper_out = True
            failed = "#devices tr[data-device='prn-front'] td.state.failed"
            await page.wait_for_selector(failed, timeout=15000)
            assert "paper" in (await row.text_content() or "")  # the reason
            box.printer.paper_out = False
            await page.wait_for_selector("#devices tr[data-device='prn-front'] td.state.ready", timeout=15000)

            # Test print: the slip comes out of the (simulated) printer.
            await page.click("#devices tr[data-device='prn-front'] button")
            await page.wait_for_selector("#notice.ok:has-text('Test slip printed on prn-front')")
            assert len(box.printer.printed) == 1
            assert "edgehub test print" in [line.text for line in box.printer.printed[0].lines]

            # Bind: the printer to a new role, primary first, a spare after it.
            await page.fill("#bind-role", "kitchen-printer")
            await page.fill("#bind-devices", "prn-front, prn-spare")
            await page.click("#bind-new button")
            await page.wait_for_selector("#notice.ok:has-text('kitchen-printer bound to prn-front, prn-spare')")
            bound = page.locator("#roles tr[data-role='kitchen-printer']")
            await page.wait_for_selector("#roles tr[data-role='kitchen-printer'] td.state.serving")
            cells = [c.strip() for c in await bound.locator("td").all_text_contents()]
            assert cells[:4] == ["kitchen-printer", "prn-front", "prn-spare", "prn-front"], cells
            assert box.hub.roles.serving("kitchen-printer") == "prn-front"

            # A refused bind says why, and changes nothing.
            await page.fill("#roles tr[data-role='kitchen-printer'] input", "prn-front, not a device!")
            await page.click("#roles tr[data-role='kitchen-printer'] button")
            await page.wait_for_selector("#notice.fail:has-text('Binding kitchen-printer failed')")
            assert box.hub.roles.serving("kitchen-printer") == "prn-front"

            # Self-check: every check listed with its verdict.
            await page.click("#doctor")
            await page.wait_for_selector("#doctor-results li[data-check='broker']")
            assert await page.get_attribute("#doctor-results", "data-ok") == "true"
            for check in ("journal", "disk-write", "device prn-front", "role receipt-printer"):
                item = page.locator(f"#doctor-results li[data-check='{check}']")
                assert (await item.locator(".status").text_content()) in ("ok", "warn"), check

            # A bind that leaves the role down (a typo) is accepted, but not shown as a success.
            await page.fill("#bind-role", "scanner")
            await page.fill("#bind-devices", "scanner-typo")
            await page.click("#bind-new button")
            await page.wait_for_selector("#notice.fail:has-text('scanner bound to scanner-typo, but it is down')")

            # The box stops answering: the page says so and greys out what it showed, which is no
            # longer the box now; when the box answers again, it is live again.
            await page.route("**/api/v1/status", lambda route: route.abort())
            await page.wait_for_selector("body.stale #banner:has-text('The box does not answer')", timeout=15000)
            assert await page.text_content("#broker-state") == "not known"
            await page.unroute("**/api/v1/status")
            await page.wait_for_selector("body:not(.stale) #banner[hidden]", state="attached", timeout=15000)

            # Sync now: this box has no cloud configured, and the page says so.
            assert await page.is_disabled("#sync")
            await page.wait_for_selector("#uplink dd:has-text('not configured on this box')")

            await page.screenshot(path=str(shot), full_page=True)
            # The session cookie is invisible to scripts (HttpOnly).
            assert "edgehub_session" not in await page.evaluate("document.cookie")
            assert errors == []
            await page.click("#logout")
            await page.wait_for_selector("#login-view:not([hidden])")
        finally:
            await browser.close()
    assert shot.stat().st_size > 10_000
