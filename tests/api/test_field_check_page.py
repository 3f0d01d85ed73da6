"""The field check on the box's page in a real headless Chromium: an installer presses "Field
check" on a scale and on a scanner (and scans), sees each step with the bytes the device sent
and the profile key to set, and after a reload still sees each device's last outcome, which
opens the kept result. The screenshot is kept in the artifacts folder."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.sim.scale import ScaleSim
from edgehub.sim.scanner import SerialScannerSim
from tests.api.conftest import INSTALLER_PIN
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import write_config

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium


async def test_installer_field_checks_a_scale_and_a_scanner_from_the_page(tmp_path: Path) -> None:
    async with (
        ScaleSim.from_profile("mt8217-lb", weight_g=1234) as scale,
        SerialScannerSim.from_profile("serial-crlf") as scanner,
    ):
        extra = f"""installer_pin = "{INSTALLER_PIN}"

[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "counter-scale"
driver = "mt8217"
transport = "serial"
address = "{scale.port}"
model = "Toledo Viva"

[[device]]
id = "till-scanner"
driver = "serial_scanner"
transport = "serial"
address = "{scanner.port}"
"""
        config = load_config(write_config(tmp_path / "box", extra=extra))
        base = f"http://127.0.0.1:{config.api.listen.port}"
        shot = keep("field-check.png")
        async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1200, "height": 1200})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(base + "/")
                    await page.fill("#secret", INSTALLER_PIN)
                    await page.click("#login-form button")
                    await page.wait_for_selector("#devices tr[data-device='counter-scale'] td.state.ready")

                    # The scale: one weighing, the frame's bytes, and the unit its decimals point to.
                    await page.click("button[data-field-check='counter-scale']")
                    await page.wait_for_selector("#field-check[data-device='counter-scale']", timeout=15000)
                    assert await page.get_attribute("#field-check", "data-ok") == "false"
                    weight = await page.text_content("#field-check-steps li[data-step='weight']") or ""
                    assert "02.72 kg = 2720 g, stable" in weight and "02 30 32 2e 37 32 0d" in weight
                    unit = await page.text_content("#field-check-steps li[data-step='unit']") or ""
                    assert 'set unit = "lb"' in unit
                    assert 'unit = "lb"' in (await page.text_content("#field-check-profile") or "")

                    # The scanner: the button waits for a scan; the scan's bytes show, suffix and all.
                    await page.click("button[data-field-check='till-scanner']")
                    await page.wait_for_selector("#field-check-note:has-text('Waiting up to 30 s for a scan')")
                    await asyncio.sleep(0.3)
                    scanner.scan("6901234567892")
                    await page.wait_for_selector("#field-check[data-device='till-scanner'][data-ok='true']",
                                                 timeout=15000)
                    scan = await page.text_content("#field-check-steps li[data-step='scan']") or ""
                    assert "'6901234567892'" in scan and "0d 0a" in scan
                    await page.screenshot(path=str(shot), full_page=True)

                    # Kept with the device: after a reload each row shows its last outcome,
                    # which opens the whole result.
                    await page.reload()
                    badge = "#devices tr[data-device='counter-scale'] button[data-field-check-result]"
                    await page.wait_for_selector(badge)
                    assert (await page.text_content(badge) or "").startswith("failed")
                    scanner_badge = "#devices tr[data-device='till-scanner'] button[data-field-check-result]"
                    assert (await page.text_content(scanner_badge) or "").startswith("passed")
                    await page.click(badge)
                    await page.wait_for_selector("#field-check[data-device='counter-scale']")
                    assert errors == []
                finally:
                    await browser.close()
    assert shot.stat().st_size > 10_000
