"""A newcomer's first hour: `make run` (``edgehub run --simulate --sim-cloud --sim-orders`` on
config/dev.toml, here on free ports and a temporary folder) as a real process; open the printed
page with the printed token in headless Chromium and, with no other command, see orders come in,
tickets on a kitchen screen (opened from the page's link) moving as the simulated cook works,
the simulated printers printing and the outbox draining to the simulated cloud. Ctrl-C stops it
all: the hub, its Mosquitto, the cloud's Mosquitto. Screenshots go to artifacts/."""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from edgehub.broker import free_port
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import REPO, HubProcess

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium


def dev_config(tmp_path: Path) -> Path:
    """config/dev.toml as it is, on free ports; its relative paths land under tmp_path."""
    text = (REPO / "config" / "dev.toml").read_text()
    for port in ("18830", "18831", "8080"):  # the hub's broker listener, the terminals' one, the page
        text = text.replace(f"127.0.0.1:{port}", f"127.0.0.1:{free_port()}")
    path = tmp_path / "config" / "dev.toml"
    path.parent.mkdir()
    path.write_text(text)
    return path


async def ready_block(log: Path, timeout: float = 20) -> str:
    deadline = time.monotonic() + timeout
    while "  stop " not in log.read_text():
        assert time.monotonic() < deadline, log.read_text()[-3000:]
        await asyncio.sleep(0.1)
    return log.read_text()


def edgehub(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgehub", *args], capture_output=True, text=True, cwd=REPO,
                          timeout=60)


async def number(page: object, selector: str, pattern: str) -> int:
    text = await page.inner_text(selector)  # type: ignore[attr-defined]
    found = re.search(pattern, text)
    return int(found.group(1)) if found else -1


async def test_make_run_shows_the_whole_store_on_the_printed_page(tmp_path: Path) -> None:
    process = HubProcess(dev_config(tmp_path), tmp_path / "make-run.log",
                         extra_args=("--simulate", "--sim-cloud", "--sim-orders", "--sim-orders-every", "0.5"))
    try:
        await asyncio.to_thread(process.start)
        out = await ready_block(process.log_path)
        page_url = re.search(r"  dashboard  (\S+)", out).group(1)  # type: ignore[union-attr]
        token = re.search(r"  log in     with the token (\S+)", out).group(1)  # type: ignore[union-attr]
        assert re.search(r"             wok +http://\S+/kds/wok\?token=\S+", out), out
        assert re.search(r"  pickup     http://\S+/pickup\?token=\S+ +\(the pickup board, pass-display\)", out), out
        assert "sim terminal --config" in out and "(simulated: the outbox drains there" in out
        assert process.proc is not None
        brokers = [p for p in psutil.Process(process.proc.pid).children() if p.name() == "mosquitto"]
        assert len(brokers) == 2  # the store's and the simulated cloud's

        async with playwright_api.async_playwright() as p:
            browser = await p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            try:
                context = await browser.new_context(viewport={"width": 1280, "height": 900})
                page = await context.new_page()
                await page.goto(page_url)
                await page.fill("#secret", token)
                await page.click("#login-form button")
                await page.wait_for_selector("#dashboard:not([hidden])")

                # Orders flow: the count goes up while we watch.
                await page.wait_for_selector("#orders-since-start")
                first = await number(page, "#orders-since-start", r"(\d+) accepted")
                async with asyncio.timeout(20):
                    while await number(page, "#orders-since-start", r"(\d+) accepted") < first + 3:
                        await asyncio.sleep(0.3)
                # The simulated kitchen printers print the stations' tickets.
                async with asyncio.timeout(20):
                    while await number(page, "#printing", r"(\d+) printed") < 1:
                        await asyncio.sleep(0.3)
                # The outbox drains to the simulated cloud: online, everything produced is sent.
                await page.wait_for_selector("#uplink dd:has-text('online')", timeout=20_000)
                await page.wait_for_selector("#outbox tr[data-stream='orders'] progress", timeout=20_000)
                async with asyncio.timeout(20):
                    while True:
                        row_text = await page.inner_text("#outbox tr[data-stream='orders']")
                        sent = re.search(r"(\d+) of (\d+) sent", row_text)
                        if sent and int(sent.group(1)) == int(sent.group(2)) > 0:
                            break
                        await asyncio.sleep(0.3)
                await page.click("#sync")
                await page.wait_for_selector("#sync-result:has-text('Sync started')")
                await page.screenshot(path=str(keep("make-run-page.png")), full_page=True)

                # Tickets on a kitchen screen, opened from the page's own link; the cook moves them.
                row = page.locator("#kitchen tr[data-station='wok']")
                async with context.expect_page() as opened:
                    await row.locator("a").click()
                screen = await opened.value
                await screen.wait_for_selector("#conn.live", timeout=15_000)
                await screen.wait_for_selector("article.ticket", timeout=20_000)
                await screen.wait_for_selector("article.ticket[data-state='in_progress']", timeout=30_000)
                assert "token" not in screen.url
                await screen.screenshot(path=str(keep("make-run-kds.png")))
            finally:
                await browser.close()

        # The tools beside it: sync drains to the simulated cloud and reconciles; the doctor sees it all.
        sync = await asyncio.to_thread(edgehub, "sync", "--config", str(process.config_path), "--timeout", "30")
        assert sync.returncode == 0 and "reconciliation: ok" in sync.stdout, sync.stdout + sync.stderr
        doctor = await asyncio.to_thread(edgehub, "doctor", "--config", str(process.config_path))
        assert doctor.returncode == 0, doctor.stdout
        assert "OK    cloud                 the running hub sends to mqtt://127.0.0.1:" in doctor.stdout, doctor.stdout

        # Ctrl-C: everything it started stops, quietly.
        process.proc.send_signal(signal.SIGINT)
        assert await asyncio.to_thread(process.proc.wait, 15) == 0
        for broker in brokers:
            assert not broker.is_running() or broker.status() == psutil.STATUS_ZOMBIE, broker
    finally:
        process.stop()
    log = process.log_path.read_text()
    assert "Traceback" not in log and "level=error" not in log, log[-3000:]
