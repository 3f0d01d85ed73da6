"""Printer profiles: the capability database they come from, [[device]] keys, and serial flow
control against a simulated serial printer with a small receive buffer."""

from __future__ import annotations

import asyncio
import json
from importlib import resources
from pathlib import Path

import pytest

from drivers.base import DeviceInfo
from drivers.escpos import EscposPrinter, PrinterTiming
from drivers.escpos_profile import (
    PROFILE_KEYS,
    PrinterProfile,
    capability_profile,
    profile_from_settings,
    profile_problems,
)
from drivers.escpos_render import Ticket, render
from edgehub.config import PRINTER_PROFILE_KEYS, load_config
from edgehub.errors import ConfigError
from edgehub.sim.printer import PtyPrinterSim
from tests.conftest import write_config


def test_the_capability_database_is_where_it_is_read_from() -> None:
    """python-escpos is pinned (==3.1) because escpos_profile reads this file: when it moves or
    changes shape, this fails before a printer is laid out wrong."""
    data = json.loads((resources.files("escpos") / "capabilities.json").read_text(encoding="utf-8"))
    t20 = data["profiles"]["TM-T20II"]
    assert t20["media"]["width"]["pixels"] == 576 and t20["fonts"]["0"]["columns"] == 48
    assert data["profiles"]["POS-5890"]["media"]["width"]["pixels"] == 384
    assert t20["codePages"]["16"] == "CP1252"


def test_profiles_come_from_the_database_then_the_device_keys() -> None:
    assert PROFILE_KEYS == PRINTER_PROFILE_KEYS
    t20 = profile_from_settings({}, "EPSON TM-T20II Receipt")  # the model discovery found
    assert (t20.columns, t20.dots, t20.codepage_number) == (48, 576, 16) and "TM-T20II" in t20.source
    zj = profile_from_settings({"profile": "POS-5890"})
    assert (zj.columns, zj.dots) == (32, 384)
    fifty_eight = profile_from_settings({"paper_mm": "58", "cjk": "gbk", "status": "basic"})
    assert (fifty_eight.columns, fifty_eight.dots, fifty_eight.cjk, fifty_eight.status) == (32, 384, "gbk", "basic")
    assert profile_from_settings({}) == PrinterProfile()  # 80 mm, GB18030, status learned
    assert profile_from_settings({"profile": "TM-U220"}).codepage == "cp437"  # it has no cp1252
    assert dict(profile_problems({"profile": "TM-U220", "codepage": "cp1252"}))["codepage"].startswith(
        "'cp1252' is not a code page of TM-U220")
    assert capability_profile("some unknown printer") is None


def test_bad_profile_keys_are_named() -> None:
    problems = dict(profile_problems({"paper_mm": 76, "cjk": "utf8", "status": "all", "dots": 500,
                                      "codepage": "cp999", "profile": "TM-X1"}))
    assert set(problems) == {"paper_mm", "cjk", "status", "dots", "codepage", "profile"}
    assert "58 or 80" in problems["paper_mm"] and "gb18030, gbk, big5, raster" in problems["cjk"]
    assert "multiple of 8" in problems["dots"] and "TM-T20II" in problems["profile"]


def test_device_profile_keys_in_the_config(tmp_path: Path) -> None:
    good = """
[[device]]
id = "grill-58"
driver = "escpos"
transport = "serial"
address = "/dev/ttyUSB0"
paper_mm = 58
cjk = "gbk"
status = "basic"
flow_control = "xonxoff"
"""
    config = load_config(write_config(tmp_path / "a", extra=good))
    assert dict(config.devices[0].extra) == {"paper_mm": "58", "cjk": "gbk", "status": "basic",
                                             "flow_control": "xonxoff"}
    bad = """
[[device]]
driver = "escpos"
transport = "tcp"
address = "192.0.2.7"
status = "sometimes"
flow_control = "rtscts"

[[device]]
driver = "mt8217"
transport = "serial"
address = "/dev/ttyUSB1"
cjk = "gbk"
"""
    with pytest.raises(ConfigError) as caught:
        load_config(write_config(tmp_path / "b", extra=bad))
    text = str(caught.value)
    assert "device[0].status: must be one of auto, full, basic, asb, none, got 'sometimes'" in text
    assert "device[0].flow_control: only serial printers have flow control" in text
    assert "device[1].cjk: only escpos printers take cjk, this is a mt8217" in text
    assert ".toml:" in text  # FILE:LINE


# -- serial flow control --------------------------------------------------------------------

SERIAL = PrinterTiming(connect=1.0, status_reply=0.3, frame_rest=0.2, settle=0.02, confirm=5.0,
                       poll_interval=0.1, lines_per_second=200.0, feed_and_cut=0.2)


def long_ticket() -> bytes:
    ticket = Ticket().title("JOB XON")
    for n in range(60):
        ticket.text(f"{n:02d} x dish number {n} with a long name")
    return render(ticket)


async def test_xoff_stops_the_job_until_xon_and_is_never_read_as_status() -> None:
    """Issue 21: serial printers had no flow control setting, and an XOFF byte from the printer
    was read as a garbled status (and the printer failed)."""
    async with PtyPrinterSim() as sim:
        info = DeviceInfo("prn-serial", "printer", "serial", sim.path, "escpos", extra={"flow_control": "xonxoff"})
        printer = EscposPrinter(info, timing=SERIAL)
        try:
            assert (await printer.health()).state == "ready"
            sim.xoff()  # receive buffer nearly full: the printer says stop
            await asyncio.sleep(0.1)
            before = sim.received
            job = asyncio.create_task(printer.print_job("xon-1", long_ticket()))
            await asyncio.sleep(0.5)
            assert sim.received == before and not job.done()  # held by the kernel's line discipline
            sim.xon()
            result = await job
            assert result.confirmed_by == "process-id"
            (out,) = sim.printed
            assert [line.text for line in out.lines if "dish" in line.text][-1].startswith("59 x dish")
            assert (await printer.health()).state == "ready"
        finally:
            await printer.close()


async def test_flow_control_bytes_from_a_printer_set_up_without_it_are_not_status() -> None:
    async with PtyPrinterSim() as sim:
        info = DeviceInfo("prn-serial", "printer", "serial", sim.path, "escpos")
        printer = EscposPrinter(info, timing=SERIAL)
        try:
            for _ in range(3):
                sim.xoff()
                sim.xon()
                health = await printer.health()
                assert health.state == "ready", health
            await printer.print_job("xon-2", render(Ticket().text("after XON/XOFF")))
            assert [t.lines[0].text for t in sim.printed] == ["after XON/XOFF"]
        finally:
            await printer.close()
