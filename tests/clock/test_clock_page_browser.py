"""The box's page in a real headless Chromium shows the store's clock and which terminals are
connected: a real chronyd serving its own clock (the WAN down), a till on the LAN listener that
connects and then leaves, a kitchen screen that never came. The screenshot is kept (tests/browser.py)."""

from __future__ import annotations

import asyncio
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from edgehub.broker import free_port
from edgehub.clock import write_config
from edgehub.config import load_config
from edgehub.hub import Hub
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.clock.conftest import Chronyd, needs_chrony
from tests.conftest import API_TOKEN
from tests.conftest import write_config as write_box_config

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = [needs_chromium, needs_chrony]


async def test_the_page_shows_the_clock_and_the_terminals(tmp_path: Path) -> None:
    ntp, cmd = free_port(), free_port()
    extra = f"""
[clock]
servers = ["127.0.0.1:{free_port()}"]
pools = []
allow = ["127.0.0.0/8"]
port = {ntp}
command_port = {cmd}
check_every_s = 1
"""
    config = load_config(write_box_config(tmp_path / "box", mode="managed", terminals=("pos-1", "kds-grill"),
                                          extra=extra, lan_port=free_port()))
    lines = [f"include {write_config(config)}", "bindaddress 127.0.0.1"]
    assert config.broker.lan_listen is not None
    async with Chronyd(tmp_path / "chrony", "box", lines, ntp), Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        till = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pos-1", protocol=mqtt.MQTTv5)
        till.username_pw_set("pos-1", "pw-pos-1")
        till.connect(config.broker.lan_listen.host, config.broker.lan_listen.port)
        till.loop_start()
        shot = keep("page-clock-terminals.png")
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                page = await browser.new_page(viewport={"width": 1200, "height": 1800})
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"http://127.0.0.1:{hub.api.port}/")
                await page.fill("#secret", API_TOKEN)
                await page.click("#login-form button")
                await page.wait_for_selector("#dashboard:not([hidden])")

                # The till is connected, the kitchen screen not seen yet.
                await page.wait_for_selector("#terminals tr[data-terminal='pos-1'] td.state.connected")
                cells = [c.strip() for c in
                         await page.locator("#terminals tr[data-terminal='pos-1'] td").all_text_contents()]
                assert cells[:3] == ["pos-1", "till", "connected"] and cells[4] == "127.0.0.1", cells
                screen = [c.strip() for c in
                          await page.locator("#terminals tr[data-terminal='kds-grill'] td").all_text_contents()]
                assert screen[1:3] == ["kitchen screen", "not seen yet"], screen
                assert (await page.text_content("#terminals-count")) == "1 of 2 connected"

                # The clock: chrony serving its own clock, the upstream unreachable.
                await page.wait_for_selector("#clock-state:has-text('own clock')")
                summary = await page.text_content("#clock-summary") or ""
                assert summary.startswith("no upstream reachable: serving its own clock at stratum 10")
                assert "unreachable" in (await page.text_content("#clock-sources") or "")

                # The till leaves: the page says so without a reload.
                till.disconnect()
                till.loop_stop()
                await page.wait_for_selector("#terminals tr[data-terminal='pos-1'] td.state.disconnected")
                assert (await page.text_content("#terminals tr[data-terminal='pos-1'] td:last-child")) \
                    == "said goodbye (a clean DISCONNECT)"
                await page.screenshot(path=str(shot), full_page=True)
                assert errors == []
            finally:
                await browser.close()
