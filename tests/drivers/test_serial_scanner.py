"""Serial scanner driver against the pty scanner simulator."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.serial_scanner import ScanLineDecoder, SerialScanner
from edgehub.errors import DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.sim.scanner import SerialScannerSim


def _info(port: str) -> DeviceInfo:
    return DeviceInfo(
        device_id="scanner-1", kind="scanner", transport="serial", address=port, driver="serial_scanner"
    )


async def test_scans_with_cr_and_crlf() -> None:
    async with SerialScannerSim() as sim, SerialScanner(_info(sim.port)) as scanner:
        assert isinstance(scanner, SerialScanner)
        assert (await scanner.health()).state == "ready"
        sim.scan("4006381333931")
        assert await scanner.read_scan(1.0) == "4006381333931"
        sim.terminator = b"\r\n"
        sim.scan("ABC-123")
        sim.scan("]C1\x1d0104012345012345")
        assert await scanner.read_scan(1.0) == "ABC-123"
        assert await scanner.read_scan(1.0) == "]C1\x1d0104012345012345"
        with pytest.raises(DeviceTimeout):
            await scanner.read_scan(0.05)


async def test_scan_split_across_reads() -> None:
    # A quiet line of idle_ms ends a scan; 2 s keeps a loaded machine's late second read in it.
    async with SerialScannerSim() as sim, SerialScanner(_info(sim.port), idle_ms=2000) as scanner:
        assert isinstance(scanner, SerialScanner)
        sim.send_raw(b"9780")
        await asyncio.sleep(0.05)
        sim.send_raw(b"201379624\r")
        assert await scanner.read_scan(1.0) == "9780201379624"


async def test_garbled_scan_is_protocol_error_and_next_scan_works() -> None:
    async with SerialScannerSim() as sim, SerialScanner(_info(sim.port)) as scanner:
        assert isinstance(scanner, SerialScanner)
        sim.send_raw(b"\xff\x00\x13\r")
        sim.scan("OK1")
        with pytest.raises(ProtocolError):
            await scanner.read_scan(1.0)
        assert await scanner.read_scan(1.0) == "OK1"


async def test_unplug_fails_health_and_reader() -> None:
    async with SerialScannerSim() as sim:
        scanner = SerialScanner(_info(sim.port))
        assert (await scanner.health()).state == "failed"  # not open: constructor did no I/O
        await scanner.open()
        try:
            sim.unplug()
            with pytest.raises(DeviceUnavailable):
                await scanner.read_scan(1.0)
            health = await scanner.health()
            assert health.state == "failed" and "gone" in health.reason
        finally:
            await scanner.close()


async def test_scans_iterator() -> None:
    async with SerialScannerSim() as sim, SerialScanner(_info(sim.port)) as scanner:
        assert isinstance(scanner, SerialScanner)
        for code in ("A1", "B2", "C3"):
            sim.scan(code)
        got = []
        async with asyncio.timeout(2):
            async for code in scanner.scans():
                got.append(code)
                if len(got) == 3:
                    break
        assert got == ["A1", "B2", "C3"]


@settings(max_examples=200)
@given(st.lists(st.binary(max_size=40), max_size=8))
def test_decoder_never_crashes_and_splits_on_cr(chunks: list[bytes]) -> None:
    decoder = ScanLineDecoder(max_len=32)
    for chunk in chunks:
        for item in decoder.feed(chunk):
            if isinstance(item, str):
                assert "\r" not in item and 0 < len(item) <= 32
            else:
                assert isinstance(item, ProtocolError)
