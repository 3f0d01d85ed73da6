"""A store box for the API tests: real Mosquitto, a real hub with an installer PIN, one simulated
ESC/POS printer on a loopback port bound to the receipt-printer role, discovery off."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import Config, load_config
from edgehub.hub import Hub
from edgehub.sim.printer import PrinterSim
from tests.conftest import API_TOKEN, write_config

INSTALLER_PIN = "482913"
AUTH = {"Authorization": f"Bearer {API_TOKEN}"}


def box_extra(printer_address: str | None) -> str:
    text = f"""installer_pin = "{INSTALLER_PIN}"

[discovery]
usb = false
serial = false
lan = false
advertise = false
"""
    if printer_address:
        text += f"""
[[device]]
id = "prn-front"
driver = "escpos"
transport = "tcp"
address = "{printer_address}"
model = "TM-T20III"

[[role]]
name = "receipt-printer"
devices = ["prn-front"]
"""
    return text


@dataclass
class Box:
    config: Config
    hub: Hub
    broker: MosquittoProcess
    printer: PrinterSim

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.hub.api.port}"

    async def wait_device_ready(self, device_id: str = "prn-front", timeout: float = 15.0) -> None:
        async with asyncio.timeout(timeout):
            while True:
                entry = self.hub.registry.get(device_id)
                if entry is not None and entry.health.state == "ready":
                    return
                await asyncio.sleep(0.05)


@pytest.fixture
async def box(tmp_path: Path) -> AsyncIterator[Box]:
    async with PrinterSim() as printer:
        # The [api] table is last in write_config's text, so installer_pin lands in it.
        # The stations its kitchen screens open (a station the box does not know is refused).
        stations = "\n[kitchen.stations.grill]\n\n[kitchen.stations.bar]\n"
        config = load_config(write_config(tmp_path / "box", extra=box_extra(printer.address) + stations))
        async with MosquittoProcess(config, die_with_parent=False) as broker, Hub(config) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            yield Box(config, hub, broker, printer)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # unsafe=True: keep cookies for 127.0.0.1 (an IP address) like a browser does.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session
