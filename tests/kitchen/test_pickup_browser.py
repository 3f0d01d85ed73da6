"""The customer-facing pickup board (/pickup) in a real headless Chromium: a display logs in with
its own secret, orders show as numbers in preparation, a bumped order moves to "ready" in large
type with a chime, and the board says "offline" when orders cannot reach the box. A kitchen
screen's secret is refused. The screenshot goes to the artifacts folder (tests/browser.py)."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import Config
from edgehub.hub import Hub
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import SCREEN_TOKEN, Terminal, display_secret, order, write_config
from tests.kitchen.conftest import KITCHEN_TOML

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium

GRILL_SECRET = "grill-screen-secret-0123"
TERMINALS = f"""
[[terminal]]
id = "kds-grill"
kind = "kds"
password = "pw-kds-grill"
stations = ["grill"]
screen_token = "{GRILL_SECRET}"
"""


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    extra = KITCHEN_TOML.replace("[kitchen]\n", f'[kitchen]\nscreen_token = "{SCREEN_TOKEN}"\n', 1) + TERMINALS
    return write_config(tmp_path / "box", terminals=("pos-1", "display-1"), extra=extra)


async def bump(hub: Hub, ticket_id: str) -> None:
    station = ticket_id.split("/")[1]
    async with aiohttp.ClientSession() as http, http.ws_connect(
            f"ws://127.0.0.1:{hub.api.port}/kds/{station}/ws?token={SCREEN_TOKEN}") as ws:
        await ws.send_str(json.dumps({"schema": "kds-command/1", "command_id": "b", "action": "bump",
                                      "ticket_id": ticket_id}))
        async with asyncio.timeout(5):
            while True:
                doc: dict[str, Any] = json.loads((await ws.receive()).data)
                if doc["schema"] == "kds-reply/1":
                    assert doc["ok"], doc
                    return


async def numbers(page: Any, column: str) -> list[str]:
    found: list[str] = await page.eval_on_selector_all(f"#{column}-numbers .number", "n => n.map(e => e.textContent)")
    return found


async def test_the_pickup_board_shows_numbers_preparing_and_ready(config: Config, broker: MosquittoProcess) -> None:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM,
                                              args=[*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"])
            try:
                # A kitchen screen's own secret opens no pickup board.
                page = await (await browser.new_context(viewport={"width": 1920, "height": 1080})).new_page()
                errors: list[str] = []
                page.on("pageerror", lambda exc: errors.append(str(exc)))
                await page.goto(f"{hub.api.url}pickup?token={GRILL_SECRET}")
                await page.wait_for_selector("#login-error:has-text('kitchen screen')")
                await page.fill("#secret", display_secret("display-1"))
                await page.click("#login-form button")
                await page.wait_for_selector("#conn:text-is('live')")
                assert "token" not in page.url

                async with Terminal(config, "pos-1") as pos:
                    for n in range(12):
                        await pos.send(order(f"k{n}", table=f"T{n + 1}"))
                        assert (await pos.ack())["order_no"] == str(n + 1)
                async with asyncio.timeout(5):
                    while await numbers(page, "preparing") != [str(n) for n in range(1, 13)]:
                        await asyncio.sleep(0.05)
                for n in (2, 5, 7, 8, 11):
                    await bump(hub, f"k{n - 1}/grill/1")
                async with asyncio.timeout(5):  # the newest ready first
                    while await numbers(page, "ready") != ["11", "8", "7", "5", "2"]:
                        await asyncio.sleep(0.05)
                assert await numbers(page, "preparing") == ["1", "3", "4", "6", "9", "10", "12"]
                chimes = await page.evaluate("window.pickup.chimes")
                assert chimes and chimes[0]["audio"] == "running"  # made in the page, nothing fetched
                assert await page.locator("#ready-numbers .number.fresh").count() == 5
                # Readable across the room: the ready numbers are large.
                size = await page.eval_on_selector("#ready-numbers .number",
                                                   "e => parseFloat(getComputedStyle(e).fontSize)")
                assert size >= 90, size
                await page.screenshot(path=str(keep("pickup-1920x1080.png")))

                # Orders cannot reach the box: the board says so rather than showing a stale "ready".
                await broker.stop()
                await page.wait_for_selector("#offline:has-text('OFFLINE')", timeout=5_000)
                assert errors == []
            finally:
                await browser.close()
