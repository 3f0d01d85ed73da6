"""HID keyboard-mode scanner: the boot-report decoder, the driver on a synthetic source, pyusb."""

from __future__ import annotations

import asyncio
import errno
import queue
from typing import Any

import pytest
import usb.core
from hypothesis import given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.hid_scanner import SCANNER_VENDOR_IDS, HidReportDecoder, HidScanner
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError

SHIFT = 0x02
USAGE = {
    **{c: 0x04 + i for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")},
    **{d: 0x1E + i for i, d in enumerate("1234567890")},
}
PUNCT = {
    "-": (0x2D, 0),
    "_": (0x2D, SHIFT),
    ".": (0x37, 0),
    "/": (0x38, 0),
    "?": (0x38, SHIFT),
    " ": (0x2C, 0),
    "+": (0x2E, SHIFT),
}


def report(modifiers: int = 0, *keys: int) -> bytes:
    return bytes([modifiers, 0, *keys, *([0] * (6 - len(keys)))])


def type_text(text: str) -> list[bytes]:
    """What a scanner sends for ``text`` + Enter: press, release for every character."""
    out: list[bytes] = []
    for ch in text:
        if ch in PUNCT:
            usage, mod = PUNCT[ch]
        elif ch.isupper():
            usage, mod = USAGE[ch.lower()], 0x20  # right shift
        else:
            usage, mod = USAGE[ch], 0
        out += [report(mod, usage), report()]
    return [*out, report(0, 0x28), report()]


def decode_all(reports: list[bytes]) -> list[str]:
    decoder = HidReportDecoder()
    scans: list[str] = []
    for r in reports:
        scans += decoder.feed(r)
    return scans


def test_declares_scanner_vendors_with_hid_class() -> None:
    assert {m.vendor_id for m in HidScanner.usb_matches} == set(SCANNER_VENDOR_IDS)
    assert {m.interface_class for m in HidScanner.usb_matches} == {3}
    assert {0x0C2E, 0x0536, 0x05E0, 0x05F9, 0x1EAB, 0x23D0} == set(SCANNER_VENDOR_IDS)


def test_letters_digits_shift_punctuation() -> None:
    assert decode_all(type_text("abc-XYZ_0123456789.")) == ["abc-XYZ_0123456789."]
    assert decode_all(type_text("a/b?c d+e")) == ["a/b?c d+e"]
    shifted_digits = [report(SHIFT, 0x1E + i) for i in range(10)]
    assert decode_all([*shifted_digits, report(0, 0x28)]) == ["!@#$%^&*()"]


def test_key_rollover_counts_new_keys_only() -> None:
    a, b, c = USAGE["a"], USAGE["b"], USAGE["c"]
    reports = [report(0, a), report(0, a, b), report(0, b), report(0, b, c), report(), report(0, 0x28)]
    assert decode_all(reports) == ["abc"]
    # the same character twice needs a release in between
    assert decode_all([report(0, a), report(), report(0, a), report(0, a), report(0, 0x28)]) == ["aa"]


def test_enter_ends_each_scan_and_empty_enters_are_ignored() -> None:
    assert decode_all([report(0, 0x28), report(), *type_text("12"), *type_text("34")]) == ["12", "34"]
    assert decode_all([report(0, 0x59), report(0, 0x58)]) == ["1"]  # keypad digit, keypad Enter


def test_ctrl_bracket_is_group_separator() -> None:
    assert decode_all([report(0x01, 0x30), report(), report(0, USAGE["1"]), report(0, 0x28)]) == ["\x1d1"]


@pytest.mark.parametrize(
    "bad",
    [
        b"",
        bytes(7),
        bytes(9),
        bytes([0, 1, 0, 0, 0, 0, 0, 0]),
        report(0, 0x04, 0x04),
        report(0, 0x3A),
        report(0, 0xE0),
        report(0, 0xFF),
        report(0x04, 0x04),
    ],
)
def test_bad_reports_are_protocol_errors(bad: bytes) -> None:
    decoder = HidReportDecoder()
    decoder.feed(report(0, USAGE["x"]))
    with pytest.raises(ProtocolError):
        decoder.feed(bad)
    # the broken scan is dropped; the next one decodes cleanly
    scans: list[str] = []
    for r in [report(), *type_text("ok")]:
        scans += decoder.feed(r)
    assert scans == ["ok"]


def test_error_rollover_report_is_ignored() -> None:
    assert decode_all(
        [report(0, USAGE["a"]), bytes([0, 0, 1, 1, 1, 1, 1, 1]), report(), report(0, 0x28)]
    ) == ["a"]


@settings(max_examples=200)
@given(st.lists(st.binary(min_size=0, max_size=10), max_size=30))
def test_decoder_never_crashes(reports: list[bytes]) -> None:
    decoder = HidReportDecoder(max_len=64)
    for r in reports:
        try:
            for scan in decoder.feed(r):
                assert 0 < len(scan) <= 64 and "\r" not in scan
        except ProtocolError:
            pass


class QueueSource:
    """A synthetic report source, as an evdev reader would be."""

    def __init__(self) -> None:
        self.reports: asyncio.Queue[bytes | DeviceError] = asyncio.Queue()
        self.closed = False

    async def read_report(self) -> bytes:
        item = await self.reports.get()
        if isinstance(item, DeviceError):
            raise item
        return item

    async def close(self) -> None:
        self.closed = True


def _info() -> DeviceInfo:
    return DeviceInfo(device_id="hid-1", kind="scanner", transport="usb", address="1:4", driver="hid_scanner")


async def test_driver_on_synthetic_source() -> None:
    source = QueueSource()
    scanner = HidScanner(_info(), source=source)
    assert (await scanner.health()).state == "failed"
    async with scanner:
        assert (await scanner.health()).state == "ready"
        for r in [*type_text("4006381333931"), b"\x00\x00", *type_text("Second")]:
            source.reports.put_nowait(r)
        assert await scanner.read_scan(1.0) == "4006381333931"
        with pytest.raises(ProtocolError, match="8"):
            await scanner.read_scan(1.0)
        assert await scanner.read_scan(1.0) == "Second"
        assert scanner.bad_reports == 1
        with pytest.raises(DeviceTimeout):
            await scanner.read_scan(0.05)
        source.reports.put_nowait(DeviceUnavailable("unplugged"))
        with pytest.raises(DeviceUnavailable):
            await scanner.read_scan(1.0)
        assert (await scanner.health()).state == "failed"
    assert source.closed


class FakeEndpoint:
    bEndpointAddress = 0x81
    bmAttributes = 0x03
    wMaxPacketSize = 8


class FakeInterface:
    bInterfaceClass = 3
    bInterfaceNumber = 0

    def __iter__(self) -> Any:
        return iter([FakeEndpoint()])


class FakeUsbScanner:
    """The few pyusb Device calls the driver makes, with the kernel's keyboard driver attached."""

    def __init__(self) -> None:
        self.kernel_attached = True
        self.reports: queue.Queue[bytes] = queue.Queue()
        self.present = True

    def get_active_configuration(self) -> list[FakeInterface]:
        return [FakeInterface()]

    def is_kernel_driver_active(self, interface: int) -> bool:
        return self.kernel_attached

    def detach_kernel_driver(self, interface: int) -> None:
        self.kernel_attached = False

    def attach_kernel_driver(self, interface: int) -> None:
        self.kernel_attached = True

    def read(self, endpoint: int, size: int, timeout: int) -> bytes:
        if not self.present:
            raise usb.core.USBError("No such device", errno=errno.ENODEV)
        try:
            return self.reports.get(timeout=timeout / 1000)
        except queue.Empty:
            raise usb.core.USBTimeoutError("Operation timed out", errno=errno.ETIMEDOUT) from None

    def ctrl_transfer(self, *args: Any) -> bytes:
        if not self.present:
            raise usb.core.USBError("No such device", errno=errno.ENODEV)
        return b"\x00\x00"


async def test_pyusb_source_detaches_kernel_driver_and_reads() -> None:
    dev = FakeUsbScanner()
    scanner = HidScanner(_info(), usb_device=dev)
    await scanner.open()
    try:
        assert not dev.kernel_attached  # scans will not leak as keystrokes
        for r in type_text("HELLO123"):
            dev.reports.put(r)
        assert await scanner.read_scan(2.0) == "HELLO123"
        assert (await scanner.health()).state == "ready"
        dev.present = False
        with pytest.raises(DeviceUnavailable, match="gone"):
            await scanner.read_scan(2.0)
        assert (await scanner.health()).state == "failed"
    finally:
        await scanner.close()
    assert dev.kernel_attached  # handed back to the kernel on close
