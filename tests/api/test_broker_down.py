"""With the store broker down the box says so in words a person can act on, for the box it is:
the page (not "[Errno 111] Connection refused"), the kitchen screens (not "live"), the doctor
(`systemctl restart mosquitto` only where systemd runs Mosquitto; under `make run` the hub runs
its own)."""

from __future__ import annotations

import asyncio
import os
import signal
from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.hub import Hub
from tests.api.conftest import INSTALLER_PIN, Box
from tests.browser import CHROMIUM, CHROMIUM_ARGS, needs_chromium
from tests.conftest import SCREEN_TOKEN, write_config

playwright_api = pytest.importorskip("playwright.async_api")


@needs_chromium
async def test_page_and_kitchen_screen_say_the_broker_is_down_and_what_to_do(box: Box) -> None:
    port = box.config.broker.listen.port
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(box.base + "/")
            await page.fill("#secret", INSTALLER_PIN)
            await page.click("#login-form button")
            await page.wait_for_selector("#dashboard:not([hidden])")
            screen = await browser.new_page()
            await screen.goto(f"{box.base}/kds/grill?token={SCREEN_TOKEN}")
            await screen.wait_for_selector("#conn.live")

            await box.broker.stop()
            banner = page.locator("#banner")
            await page.wait_for_selector(f"#banner:has-text('nothing listens on 127.0.0.1:{port}')", timeout=15_000)
            text = await banner.inner_text()
            assert "Errno" not in text and "No orders come in" in text, text
            assert "What to do: Mosquitto runs under systemd: sudo systemctl restart mosquitto" in text, text
            await screen.wait_for_selector("#conn.no-orders", timeout=15_000)
            assert "no new orders" in await screen.inner_text("#conn")

            checks = {c.name: c for c in await box.hub.support.make_doctor().run()}
            assert checks["broker"].status == "fail" and "systemctl restart mosquitto" in checks["broker"].action

            await box.broker.start()
            await page.wait_for_selector("#banner", state="hidden", timeout=15_000)
            await screen.wait_for_selector("#conn.live", timeout=15_000)
        finally:
            await browser.close()


@needs_chromium
async def test_a_kitchen_screen_opened_without_its_token_says_how_to_set_it_up(box: Box) -> None:
    """The issue: `/kds/grill` without a token showed only "wrong screen token"."""
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = await browser.new_page()
            await page.goto(f"{box.base}/kds/grill")
            await page.wait_for_selector("#setup:not([hidden])")
            text = await page.inner_text("#setup")
            assert "not set up yet" in text and "Orders and kitchen" in text and "make run" in text
            assert f"{box.base}/kds/grill?token=" in text
            await page.goto(f"{box.base}/kds/grill?token=a-wrong-token-0123456789")
            await page.wait_for_selector("#setup:not([hidden])")
            assert await page.inner_text("#conn") == "wrong screen token"
        finally:
            await browser.close()


async def test_under_make_run_the_advice_is_to_restart_edgehub_not_systemd(tmp_path: Path) -> None:
    """Managed mode (`make run`): the hub's own Mosquitto, stopped from outside, stays stopped;
    the status, the page's banner and the doctor say to restart edgehub, not `systemctl`."""
    config = load_config(write_config(tmp_path / "box", mode="managed"))
    async with Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        assert hub.broker is not None and hub.broker.pid is not None
        os.kill(hub.broker.pid, signal.SIGTERM)
        async with asyncio.timeout(10):
            while hub.bus.connected.is_set() or "stopped from outside" not in hub.bus.last_error:
                await asyncio.sleep(0.05)
        broker = (await hub.status())["broker"]
        assert broker["mode"] == "managed" and "restart edgehub" in broker["advice"], broker
        assert "systemctl" not in broker["advice"] + broker["last_error"]
        checks = {c.name: c for c in await hub.support.make_doctor().run()}
        assert checks["broker"].status == "fail"
        assert "make run" in checks["broker"].action and "systemctl" not in checks["broker"].action


async def test_every_open_screen_hears_the_link_change_even_when_another_connects_meanwhile(box: Box) -> None:
    """A screen connecting right after the broker went down must not swallow the change for the
    screens already open (they would keep saying "live")."""
    import aiohttp

    from tests.kitchen.test_live import receive, ws_url

    link = [True, ""]
    box.hub.screens.broker_link = lambda: (bool(link[0]), str(link[1]))
    async with aiohttp.ClientSession() as http, http.ws_connect(ws_url(box.hub, "grill")) as first:
        assert (await receive(first, "kds-link/1"))["broker"] == "connected"
        link[:] = [False, "nothing listens on 127.0.0.1:1 (connection refused)"]
        async with http.ws_connect(ws_url(box.hub, "bar")) as second:  # before the watcher's next look
            assert (await receive(second, "kds-link/1"))["broker"] == "down"
            # Sooner than the 5 s heartbeat, which would tell it anyway.
            told = await receive(first, "kds-link/1", timeout=3)
            assert told == {"schema": "kds-link/1", "broker": "down",
                            "reason": "nothing listens on 127.0.0.1:1 (connection refused)"}
