"""The kitchen with the WAN down, printing for real: a hub whose cloud does not answer takes an
order, its grill ticket reaches the station topic and prints in large type on the grill's
printer role (a simulated ESC/POS printer on a loopback port, through the durable role queue),
a rush from the POS puts the next ticket first, a cook's tap bumps, a cancel prints a VOID slip;
every change waits in the outbox for the cloud."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from edgehub.broker import MosquittoProcess, free_port
from edgehub.bus import payloads
from edgehub.bus.payloads import KdsCommand
from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.sim.printer import PrintedTicket, PrinterSim
from tests.conftest import Terminal, order, write_config
from tests.kitchen.conftest import KITCHEN_TOML, Screen

BURGER = [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "station": "grill", "modifiers": ["no onions"]}]


@pytest.fixture
async def offline_hub(tmp_path: Path) -> AsyncIterator[tuple[Hub, PrinterSim]]:
    async with PrinterSim() as printer:
        extra = KITCHEN_TOML + f"""
[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "prn-grill"
driver = "escpos"
transport = "tcp"
address = "{printer.address}"

[[role]]
name = "kitchen-printer"
devices = ["prn-grill"]

[cloud]
enabled = true
url = "mqtt://127.0.0.1:{free_port()}"
username = "box-s1"
password = "cloud-pw"
connect_timeout_s = 1
"""
        config = load_config(write_config(tmp_path / "box", terminals=("pos-1", "kds-1"), extra=extra))
        async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            yield hub, printer


async def printed(printer: PrinterSim, n: int) -> list[PrintedTicket]:
    async with asyncio.timeout(15):
        while len(printer.printed) < n:
            await asyncio.sleep(0.05)
    return printer.printed


async def test_kitchen_works_the_same_with_the_wan_down(offline_hub: tuple[Hub, PrinterSim]) -> None:
    hub, printer = offline_hub
    assert hub.uplink is not None
    async with Screen(hub.config, "grill") as grill, Terminal(hub.config, "pos-1") as pos:
        await pos.send(order("W-1", table="12", lines=BURGER))
        assert (await pos.ack())["status"] == "accepted"
        created = await grill.next("event")
        assert (created["event"], created["ticket"]["ticket_id"]) == ("created", "W-1/grill/1")

        # The slip, in large type (double width and height), with what the cook needs.
        slip = (await printed(printer, 1))[0]
        text = slip.text
        assert "GRILL" in text and "Table 12" in text and "2 x Cheeseburger" in text and "no onions" in text
        big = [line for line in slip.lines if line.text.strip()]
        assert big and all(line.double_width and line.double_height for line in big), big
        assert slip.cut

        # A rush from the POS goes above the older ticket on the screen.
        await pos.send(order("W-2", rush=True, lines=BURGER))
        assert (await pos.ack())["status"] == "accepted"
        assert (await grill.next("event"))["ticket"]["rush"] is True
        snapshot = hub.kitchen.snapshot("grill")
        assert [t["ticket_id"] for t in snapshot["tickets"]] == ["W-2/grill/1", "W-1/grill/1"]
        assert "RUSH" in (await printed(printer, 2))[1].text

        # The cook bumps the rush ticket; the POS cancels the other: a VOID slip prints.
        await hub.kitchen.command("grill", KdsCommand("c1", "bump", "W-2/grill/1", None), "test")
        assert (await grill.next("event"))["event"] == "bumped"
        await pos.send({"schema": "cancel/1", "order_id": "W-1", "reason": "guest left"},
                       topic=hub.topics.cancel("pos-1"))
        assert (await pos.ack())["status"] == "accepted"
        assert (await grill.next("event"))["event"] == "voided"
        void = (await printed(printer, 3))[2].text.splitlines()
        assert void[0] == "*** VOID ***" and void.count("*** VOID ***") == 2, void  # first and last
        assert "2 x Cheeseburger" in void and "order cancelled: guest" in void, void

    # Nothing went to the cloud, nothing was lost: every change waits in the outbox.
    assert hub.uplink.state != "online"
    counters = await hub.outbox.counters()
    assert counters["kitchen"].pending >= 4 and counters["kitchen"].acked == 0  # 2 created, bumped, voided
    assert counters["orders"].pending >= 3  # two orders and the cancel
    assert payloads.KDS_EVENT_SCHEMA == created["schema"]
