"""One copy, said loudly: the box's page in a real Chromium, and the doctor, while the standby
follows and after it goes away."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from edgehub.config import load_config
from edgehub.doctor import Doctor
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import API_TOKEN
from tests.pair.conftest import ServingBox, box_config, follower, until
from tests.pair.test_pair_config import BASE, PAIR

playwright_api = pytest.importorskip("playwright.async_api")


@needs_chromium
async def test_the_page_says_two_copies_then_one_copy_since_without_a_reload(tmp_path: Path) -> None:
    config = box_config(tmp_path / "a")
    async with ServingBox(config) as box:
        standby = follower(tmp_path / "b" / "journal.sqlite", box)
        standby.start()
        try:
            await until(lambda: box.rep.in_sync, 15, "the standby in sync")
            async with playwright_api.async_playwright() as p:
                browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
                try:
                    page = await browser.new_page(viewport={"width": 1200, "height": 1200})
                    errors: list[str] = []
                    page.on("pageerror", lambda exc: errors.append(str(exc)))
                    await page.goto(box.hub.api.url)
                    await page.fill("#secret", API_TOKEN)
                    await page.click("#login-form button")
                    await page.wait_for_selector("#pair:not([hidden])")
                    await page.wait_for_selector("#pair-copies:has-text('two copies')")
                    assert await page.is_hidden("#pair-banner")
                    await asyncio.to_thread(standby.stop)  # the standby goes away
                    await page.wait_for_selector("#pair-banner:not([hidden])", timeout=15_000)
                    banner = await page.text_content("#pair-banner") or ""
                    assert banner.startswith("ONE COPY since") and "on this box only" in banner, banner
                    assert "one copy" in (await page.text_content("#pair-copies") or "")
                    await page.screenshot(path=str(keep("pair-one-copy.png")), full_page=True)
                    assert errors == []
                finally:
                    await browser.close()
        finally:
            await asyncio.to_thread(standby.stop)


async def test_the_doctor_says_one_copy_and_a_refusal_with_what_to_do(tmp_path: Path) -> None:
    path = tmp_path / "edgehub.toml"
    path.write_text(BASE + PAIR)
    config = load_config(path)

    async def checks(pair: dict[str, Any]) -> dict[str, tuple[str, str, str]]:
        async def status() -> dict[str, Any]:
            return {"store_id": "s1", "version": "x", "pair": pair}

        doctor = Doctor(config, read_status=status)
        return {c.name: (c.status, c.message, c.action) for c in doctor._pair(await status())}  # noqa: SLF001 (the pair checks alone)

    alone = await checks({"role": "primary", "box": "a", "copies": 1, "one_copy_since": 1795430000,
                          "one_copy_reason": "the standby's link ended", "peer": "10.0.0.2:7411",
                          "address": "10.0.0.100/24", "holds_address": True, "fit": True, "refused": {}})
    status, message, action = alone["copies"]
    assert status == "warn" and message.startswith("ONE COPY since") and "the standby's link ended" in message
    assert "catches up by itself" in action
    refused = await checks({"role": "standby", "box": "b", "peer": "10.0.0.1:7411", "address": "10.0.0.100/24",
                            "fit": True, "following": {"state": "refused"},
                            "refused": {"reason": "box a (10.0.0.1:7411) is of store 's9' and box b of store 's1'"}})
    assert refused["pair"][0] == "fail" and "is of store 's9'" in refused["pair"][1]
    synced = await checks({"role": "standby", "box": "b", "peer": "10.0.0.1:7411", "address": "10.0.0.100/24",
                           "fit": True, "holds_address": False, "refused": {},
                           "following": {"state": "in sync", "primary": "a", "seq": 42}})
    assert synced["copies"] == ("ok", "this box (b) is the standby of a, in sync at record 42", "")
    assert synced["floating-address"][0] == "ok"
