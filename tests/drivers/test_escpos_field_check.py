"""The printer's field check (``edgehub device test``) against every simulated unit: the raw
answer to each query, the profile it infers, and a test page with Chinese and an emoji."""

from __future__ import annotations

import asyncio

import pytest

from drivers.base import DeviceInfo
from drivers.escpos import EscposPrinter, PrinterTiming
from edgehub.sim.paper import draw_paper
from edgehub.sim.printer import PrinterSim

QUICK = PrinterTiming(connect=0.5, status_reply=0.2, frame_rest=0.1, settle=0.02, confirm=5.0, poll_interval=0.1,
                      lines_per_second=100.0, feed_and_cut=0.2)

# profile -> (status, cjk) the check must infer, and the [[device]] keys the installer then sets
EXPECTED = {
    "epson": ("full", "gb18030", {}),
    "basic": ("basic", "gb18030", {}),
    "asb-only": ("asb", "gb18030", {}),
    "silent": ("none", "raster", {}),
    "gbk-58": ("full", "gbk", {"paper_mm": "58", "cjk": "gbk"}),
    "no-cjk": ("full", "raster", {"cjk": "raster"}),
}


@pytest.mark.parametrize("profile", sorted(EXPECTED))
async def test_field_check_shows_raw_answers_and_infers_the_profile(profile: str) -> None:
    status, cjk, settings = EXPECTED[profile]
    async with PrinterSim(profile=profile) as sim:
        info = DeviceInfo("prn-1", "printer", "tcp", sim.address, "escpos", extra=settings)
        printer = EscposPrinter(info, timing=QUICK)
        try:
            check = await printer.field_check(5.0)
        finally:
            await printer.close()
        steps = {step.name: step for step in check.steps}
        assert check.profile == {"status": status, "cjk": cjk}, [s.to_dict() for s in check.steps]
        for n in (1, 2, 3, 4):
            step = steps[f"DLE EOT {n}"]
            if n in sim.core.profile.status_queries:
                assert step.ok and len(step.raw) == 1 and step.raw[0] & 0x93 == 0x12
                assert step.to_dict()["raw_hex"] == f"{step.raw[0]:02x}"
            else:  # a fact about the model, not a failure
                assert step.ok and step.raw == b"" and "no answer" in step.detail
        if profile == "epson":
            assert steps["GS I 66 (maker)"].raw == b"_EPSON\x00"
            assert steps["GS I 2 (type id)"].raw[0] & 0x01  # a multi-byte (Chinese) font
        page = steps["test page"]
        assert page.ok, page.detail
        async with asyncio.timeout(5):
            while not sim.printed:
                await asyncio.sleep(0.02)
        (out,) = sim.printed
        paper = draw_paper(out, sim.core.profile)
        assert paper.problems == [] if profile != "silent" else True
        assert out.images  # the emoji line, drawn on the box
        if cjk != "raster":
            assert any("宫保鸡丁" in line.text for line in out.lines)
        assert check.ok


async def test_field_check_of_an_unreachable_printer_says_so() -> None:
    printer = EscposPrinter(DeviceInfo("prn-2", "printer", "tcp", "127.0.0.1:9", "escpos"), timing=QUICK)
    check = await printer.field_check(1.0)
    assert not check.ok and "cannot reach" in check.steps[-1].detail
