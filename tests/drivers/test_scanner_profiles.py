"""Every simulated scanner profile (a real unit's setting) scanned through the drivers: serial
scanners with each suffix (CR, CR LF, LF, none), HID scanners in boot layout, with a report id
(composite), and on a chip maker's vendor id. Before per-device terminators and report ids, the
LF and no-suffix scanners never delivered a scan and the report-id one had every scan refused."""

from __future__ import annotations

import asyncio

import pytest
import usb.core

from drivers.base import DeviceInfo
from drivers.hid_scanner import HidReportDecoder, HidScanner, keyboard_report
from drivers.serial_scanner import ScanLineDecoder, SerialScanner, suffix_of
from edgehub.errors import DeviceTimeout, ProtocolError
from edgehub.sim.scanner import SERIAL_SCANNER_PROFILES, SerialScannerSim
from edgehub.sim.usb import HID_SCANNER_PROFILES, SimHidScanner, SimUsbBackend, keyboard_report_descriptor

CODES = ("4006381333931", "ABC-123", "]C1\x1d0104012345012345")


def _serial(port: str, **extra: str) -> DeviceInfo:
    return DeviceInfo(device_id="scn-s", kind="scanner", transport="serial", address=port,
                      driver="serial_scanner", extra=extra)


@pytest.mark.parametrize("profile", sorted(SERIAL_SCANNER_PROFILES))
async def test_serial_profile_scans_with_the_default_terminator(profile: str) -> None:
    async with SerialScannerSim.from_profile(profile) as sim, SerialScanner(_serial(sim.port)) as scanner:
        assert isinstance(scanner, SerialScanner) and scanner.terminator == "auto"
        for code in CODES:
            sim.scan(code)  # one trigger pull at a time, as a cashier scans
            assert await scanner.read_scan(2.0) == code
        with pytest.raises(DeviceTimeout):
            await scanner.read_scan(0.3)  # nothing doubled, nothing left over


@pytest.mark.parametrize(("profile", "terminator"),
                         [("serial-cr", "cr"), ("serial-lf", "lf"), ("serial-crlf", "crlf"), ("serial-none", "none")])
async def test_serial_profile_with_its_own_terminator(profile: str, terminator: str) -> None:
    async with (
        SerialScannerSim.from_profile(profile) as sim,
        SerialScanner(_serial(sim.port, terminator=terminator, idle_ms="60")) as scanner,
    ):
        assert isinstance(scanner, SerialScanner)
        for code in CODES:
            sim.scan(code)
            assert await scanner.read_scan(2.0) == code


async def test_a_scanner_whose_suffix_is_not_the_configured_one_gives_errors_not_glued_scans() -> None:
    async with (
        SerialScannerSim.from_profile("serial-lf") as sim,
        SerialScanner(_serial(sim.port, terminator="cr")) as scanner,
    ):
        assert isinstance(scanner, SerialScanner)
        sim.scan("111")
        with pytest.raises(ProtocolError, match="not ended by CR"):
            await scanner.read_scan(2.0)
        sim.send_raw(b"222\r")  # the next scan stands on its own
        assert await scanner.read_scan(2.0) == "222"


def test_decoder_modes() -> None:
    def run(terminator: str, data: bytes, idle: bool = False) -> list[str | str]:
        decoder = ScanLineDecoder(terminator)  # type: ignore[arg-type]
        out = decoder.feed(data) + (decoder.idle() if idle else [])
        return [x if isinstance(x, str) else f"error: {x}" for x in out]

    assert run("auto", b"a\rb\nc\r\nd\n\n") == ["a", "b", "c", "d"]
    assert run("auto", b"tail", idle=True) == ["tail"]
    assert run("crlf", b"a\r\nb\r\n") == ["a", "b"]
    assert run("crlf", b"a\rb\r\n")[0].startswith("error")  # a lone CR garbles the scan
    assert run("tab", b"a\tb\t") == ["a", "b"]
    assert run("lf", b"a\r\n")[0].startswith("error")
    assert run("none", b"abc", idle=True) == ["abc"]
    assert run("none", b"abc\r", idle=True)[0].startswith("error")
    assert run("cr", b"abc", idle=True)[0].startswith("error: scan b'abc' was not ended by CR")
    assert [suffix_of(s) for s in (b"x\r\n", b"x\r", b"x\n", b"x\t", b"x")] == ["crlf", "cr", "lf", "tab", "none"]
    with pytest.raises(ValueError, match="terminator"):
        ScanLineDecoder("semicolon")  # type: ignore[arg-type]


def _hid_info(serial: str) -> DeviceInfo:
    return DeviceInfo(device_id="scn-h", kind="scanner", transport="usb", address="1:2", driver="hid_scanner",
                      serial_number=serial)


@pytest.mark.parametrize("profile", sorted(HID_SCANNER_PROFILES))
async def test_hid_profile_scans(profile: str) -> None:
    sim = SimHidScanner.from_profile(profile)
    backend = SimUsbBackend([sim])
    dev = usb.core.find(backend=backend, idVendor=sim.vendor_id)
    scanner = HidScanner(_hid_info(sim.serial_number), usb_device=dev)
    await scanner.open()
    try:
        assert scanner.report.report_id == sim.report_id
        for code in ("4006381333931", "Abc-123"):
            sim.type_text(code)
            assert await scanner.read_scan(3.0) == code
        if sim.report_id is not None:
            sim.send_report(bytes([sim.report_id + 1, 0xE9, 0x00]))  # volume up: the consumer report
            sim.type_text("after")
            assert await scanner.read_scan(3.0) == "after"
        assert scanner.bad_reports == 0
    finally:
        await scanner.close()
    assert sim.kernel_driver[0]  # handed back to the kernel


def test_report_ids_from_the_descriptor() -> None:
    assert keyboard_report(keyboard_report_descriptor()).report_id is None
    assert keyboard_report(keyboard_report_descriptor(7)).report_id == 7
    with pytest.raises(ProtocolError, match="no keyboard"):
        keyboard_report(bytes.fromhex("05010902a1010901a10005091901290315002501950375018102c0c0"))  # a mouse
    with pytest.raises(ProtocolError):
        keyboard_report(b"\xff\xff\xff")
    decoder = HidReportDecoder(report_id=1)
    assert decoder.feed(bytes([2, 0xE9, 0])) == []
    assert decoder.feed(bytes([1, 0, 0, 0x04, 0, 0, 0, 0, 0])) == []
    assert decoder.feed(bytes([1, 0, 0, 0x28, 0, 0, 0, 0, 0])) == ["a"]
    with pytest.raises(ProtocolError, match="report id first"):
        HidReportDecoder().feed(bytes(9))


async def test_field_check_takes_the_next_scan_and_shows_its_bytes() -> None:
    async with SerialScannerSim.from_profile("serial-crlf") as sim, SerialScanner(_serial(sim.port)) as scanner:
        assert isinstance(scanner, SerialScanner)
        check = asyncio.create_task(scanner.field_check(5.0))
        await asyncio.sleep(0.1)
        sim.scan("6901234567892")
        result = await check
        assert result.ok, result.to_dict()
        scan, suffix = result.steps
        assert scan.raw == b"6901234567892\r\n" and "'6901234567892'" in scan.detail
        assert suffix.name == "suffix" and "CR LF" in suffix.detail
        assert result.profile == {"terminator": "crlf"}
        with pytest.raises(DeviceTimeout):
            await scanner.read_scan(0.2)  # the installer's test code did not reach the store


async def test_field_check_says_which_terminator_to_set() -> None:
    async with (
        SerialScannerSim.from_profile("serial-lf") as sim,
        SerialScanner(_serial(sim.port, terminator="cr", idle_ms="50")) as scanner,
    ):
        assert isinstance(scanner, SerialScanner)
        check = asyncio.create_task(scanner.field_check(5.0))
        await asyncio.sleep(0.1)
        sim.scan("123")
        result = await check
        assert not result.ok
        assert result.profile == {"terminator": "lf"}
        assert 'set terminator = "lf"' in result.steps[-1].detail and result.steps[0].raw == b"123\n"


async def test_field_check_without_a_scan_and_on_a_hid_scanner() -> None:
    sim = SimHidScanner.from_profile("hid-report-id")
    dev = usb.core.find(backend=SimUsbBackend([sim]), idVendor=sim.vendor_id)
    scanner = HidScanner(_hid_info(sim.serial_number), usb_device=dev)
    await scanner.open()
    try:
        waited = await scanner.field_check(0.2)
        assert not waited.ok and "no scan within 0.2 s" in waited.steps[0].detail
        check = asyncio.create_task(scanner.field_check(5.0))
        await asyncio.sleep(0.1)
        sim.type_text("A1")
        result = await check
        assert result.ok
        assert result.steps[0].raw[:9] == bytes([1, 2, 0, 0x04, 0, 0, 0, 0, 0])  # id 1, shift, 'a'
        assert "report id 1" in result.steps[1].detail
    finally:
        await scanner.close()
