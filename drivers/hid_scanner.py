"""USB HID barcode scanner in keyboard mode: boot reports in, scans out.

A scanner in keyboard mode "types" its code as 8-byte boot reports ``[modifiers, 0, k1..k6]``
(HID 1.11 Appendix B.1; key usages from the Keyboard/Keypad page 0x07 of the HID Usage
Tables). We take the device from the kernel (``detach_kernel_driver``) so a scan never lands as
keystrokes in whatever window has focus, read its interrupt IN endpoint in a thread, and decode
the reports with :class:`HidReportDecoder` (US layout; Enter ends a scan). The report source is
an interface (:class:`ReportSource`), so an evdev reader or a test can feed synthetic reports.

Composite scanners (keyboard plus consumer keys or a vendor channel on one interface) number
their reports: HID 1.11 6.2.2.7 says that once a report descriptor uses a Report ID, every
report starts with its one-byte id, so the keyboard's report arrives as 9 bytes
``[id, modifiers, 0, k1..k6]`` while the device stays in report protocol (which the kernel,
and we after it, leave it in). The interface's report descriptor (GET_DESCRIPTOR 0x22) says
which id is the keyboard's; reports with other ids are another part of the device and are left
alone. The descriptor is parsed with ``hid-parser``; Odoo's IoT box reads scanners through
evdev instead, where the kernel does the same (``iot_drivers/.../keyboard_usb_driver_L.py``).

Which devices are scanners: the makers' vendor ids below, and the ids an installer names
(``[discovery] scanner_usb_ids``): generic scanners on chip makers' ids are the norm.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

from drivers.base import DeviceInfo, FieldStep, Health, UsbMatch
from drivers.scanning import ScannerDriver
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.tasks import cancel_and_wait

__all__ = [
    "SCANNER_VENDOR_IDS",
    "HidReportDecoder",
    "HidScanner",
    "KeyboardReport",
    "PyUsbReportSource",
    "ReportSource",
    "keyboard_report",
]

log = logging.getLogger(__name__)

SCANNER_VENDOR_IDS = {
    0x0C2E: "Honeywell",
    0x0536: "Hand Held Products",
    0x05E0: "Zebra/Symbol",
    0x05F9: "Datalogic",
    0x1EAB: "Newland",
    0x23D0: "Youjie",
}
HID_CLASS = 3

_SHIFT = 0x02 | 0x20
_CTRL = 0x01 | 0x10
_ALT_GUI = 0x04 | 0x08 | 0x40 | 0x80
ENTER, KEYPAD_ENTER, CAPS_LOCK, ERROR_ROLLOVER = 0x28, 0x58, 0x39, 0x01

# usage -> (unshifted, shifted) on a US layout
_KEYS: dict[int, tuple[str, str]] = {
    **{0x04 + i: (c, c.upper()) for i, c in enumerate("abcdefghijklmnopqrstuvwxyz")},
    **{0x1E + i: (d, s) for i, (d, s) in enumerate(zip("1234567890", "!@#$%^&*()", strict=True))},
    0x2B: ("\t", "\t"),
    0x2C: (" ", " "),
    0x2D: ("-", "_"),
    0x2E: ("=", "+"),
    0x2F: ("[", "{"),
    0x30: ("]", "}"),
    0x31: ("\\", "|"),
    0x32: ("#", "~"),
    0x33: (";", ":"),
    0x34: ("'", '"'),
    0x35: ("`", "~"),
    0x36: (",", "<"),
    0x37: (".", ">"),
    0x38: ("/", "?"),
    0x54: ("/", "/"),
    0x55: ("*", "*"),
    0x56: ("-", "-"),
    0x57: ("+", "+"),
    **{0x59 + i: (d, d) for i, d in enumerate("123456789")},
    0x62: ("0", "0"),
    0x63: (".", "."),
}
# Ctrl+key gives the control characters GS1 codes need (Ctrl+] is GS, the field separator).
_CTRL_KEYS = {0x2F: "\x1b", 0x31: "\x1c", 0x30: "\x1d"}
KEYBOARD_PAGE = 0x07
HID_REPORT_DESCRIPTOR = 0x22
_BOOT_REPORT_BITS = 64


@dataclass(frozen=True)
class KeyboardReport:
    """Where a scanner's keyboard input report is: its report id (None: reports carry none)."""

    report_id: int | None = None

    def describe(self) -> str:
        if self.report_id is None:
            return "8-byte boot keyboard reports"
        return f"9-byte reports: report id {self.report_id}, then the 8-byte boot keyboard layout (a composite device)"


def keyboard_report(descriptor: bytes) -> KeyboardReport:
    """The keyboard input report a HID report descriptor declares, in the boot layout
    (modifier byte, reserved byte, six 8-bit key slots). ProtocolError when there is none."""
    import hid_parser  # untyped to mypy: the package ships no py.typed marker

    # The parser warns about usage types it finds odd (consumer pages of composite scanners);
    # only the structure matters here. A filter for its own warning class, not catch_warnings,
    # which is not thread-safe and scanners open in worker threads.
    warnings.filterwarnings("ignore", category=hid_parser.HIDWarning)
    try:
        parsed = hid_parser.ReportDescriptor(list(descriptor))
        reports = [(rid, parsed.get_input_items(rid), int(parsed.get_input_report_size(rid)))
                   for rid in parsed.input_report_ids]
    except Exception as exc:  # a broken descriptor fails in many ways inside the parser
        raise ProtocolError(f"the HID report descriptor does not parse: {exc}") from exc
    for report_id, items, bits in reports:
        pages = {getattr(getattr(item, "usage", None), "page", None) for item in items}
        pages |= {usage.page for item in items for usage in getattr(item, "usages", [])}
        if KEYBOARD_PAGE not in pages:
            continue
        if bits != _BOOT_REPORT_BITS:
            raise ProtocolError(
                f"the keyboard report is {bits // 8} bytes, not the 8-byte boot layout: set the scanner to "
                "plain USB keyboard (HID boot) or USB-COM mode"
            )
        return KeyboardReport(report_id)
    raise ProtocolError("the HID report descriptor declares no keyboard input report")


class HidReportDecoder:
    """Pure decoder: 8-byte boot reports in, complete scans out.

    A key counts when it newly appears in a report (n-key rollover: a scanner may send the next
    key before releasing the last). Bad reports raise ProtocolError and drop the scan in progress,
    since a scan with a lost or wrong character must never reach a sale. With ``report_id``,
    reports start with that id byte, and reports with another id are not the keyboard's.
    """

    def __init__(self, max_len: int = 512, report_id: int | None = None) -> None:
        self._held: set[int] = set()
        self._buf: list[str] = []
        self._max_len = max_len
        self.report_id = report_id

    def reset(self) -> None:
        self._held.clear()
        self._buf.clear()

    def feed(self, report: bytes) -> list[str]:
        if self.report_id is not None and report[:1] != bytes([self.report_id]):
            if report:
                return []  # another report of a composite device (consumer keys, a vendor channel)
            raise ProtocolError("empty HID report")
        if self.report_id is not None:
            report = report[1:]
        if len(report) != 8:
            self._buf.clear()
            hint = (" (a composite scanner's report id first? its report descriptor did not say)"
                    if len(report) == 9 and self.report_id is None else "")
            raise ProtocolError(f"HID boot report has {len(report)} bytes, expected 8{hint}")
        modifiers, reserved, keys = report[0], report[1], report[2:]
        if reserved != 0:
            self._buf.clear()
            raise ProtocolError(f"HID boot report reserved byte is 0x{reserved:02x}, not 0")
        if all(k == ERROR_ROLLOVER for k in keys):
            return []  # phantom state: too many keys down; the next report tells the truth
        pressed = [k for k in keys if k]
        if len(set(pressed)) != len(pressed):
            self._buf.clear()
            raise ProtocolError("HID boot report lists the same key twice")
        for k in pressed:
            if k not in _KEYS and k not in (ENTER, KEYPAD_ENTER, CAPS_LOCK):
                self._buf.clear()
                self._held = set(pressed)
                raise ProtocolError(f"HID usage 0x{k:02x} is not a key a barcode scanner types")
        scans: list[str] = []
        new = [k for k in pressed if k not in self._held]
        self._held = set(pressed)
        for k in new:
            if k in (ENTER, KEYPAD_ENTER):
                if self._buf:
                    scans.append("".join(self._buf))
                    self._buf.clear()
                continue
            if k == CAPS_LOCK:
                continue
            if modifiers & _ALT_GUI:
                self._buf.clear()
                raise ProtocolError("HID scanner sent Alt/GUI key combinations: set it to plain ASCII output")
            if modifiers & _CTRL:
                if 0x04 <= k <= 0x1D:
                    char = chr(k - 0x04 + 1)
                elif k in _CTRL_KEYS:
                    char = _CTRL_KEYS[k]
                else:
                    self._buf.clear()
                    raise ProtocolError(f"HID Ctrl+usage 0x{k:02x} is not a control character")
            else:
                char = _KEYS[k][1 if modifiers & _SHIFT else 0]
            if len(self._buf) >= self._max_len:
                self._buf.clear()
                raise ProtocolError(f"HID scan longer than {self._max_len} characters without Enter")
            self._buf.append(char)
        return scans


class ReportSource(Protocol):
    """Where boot reports come from: pyusb, evdev, or a test."""

    async def read_report(self) -> bytes: ...
    async def close(self) -> None: ...


class PyUsbReportSource:
    """Reads boot reports from a pyusb device's HID interrupt IN endpoint in a thread.

    The kernel's keyboard driver is detached first: otherwise every scan would also be typed
    into the focused window. ``start()`` does the USB setup; the constructor does no I/O.
    """

    def __init__(self, dev: Any, label: str = "usb scanner", poll_ms: int = 100) -> None:
        self._dev = dev
        self.label = label
        self._poll_ms = poll_ms
        self._queue: asyncio.Queue[bytes | DeviceError] = asyncio.Queue(maxsize=1024)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._interface: int | None = None
        self._endpoint: int | None = None
        self._packet = 8
        #: The keyboard report's layout, from the interface's report descriptor.
        self.report = KeyboardReport()

    def _setup(self) -> None:
        import usb.util

        # Every HID interface with an interrupt IN endpoint; the one whose report descriptor
        # declares a keyboard is the scanner's (a composite device has others).
        candidates: list[tuple[Any, Any]] = []
        for intf in self._dev.get_active_configuration():
            if intf.bInterfaceClass != HID_CLASS:
                continue
            for ep in intf:
                if (
                    usb.util.endpoint_direction(ep.bEndpointAddress) == usb.util.ENDPOINT_IN
                    and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_INTR
                ):
                    candidates.append((intf, ep))
                    break
        if not candidates:
            raise DeviceUnavailable(f"{self.label}: no HID interface with an interrupt IN endpoint")
        chosen, problem = candidates[0], ""
        for intf, ep in candidates:
            # Reading an interface's descriptor claims it (usbfs does so for any request to an
            # interface), which the kernel's keyboard driver must let go of first.
            number = intf.bInterfaceNumber
            detached = bool(self._dev.is_kernel_driver_active(number))
            if detached:
                self._dev.detach_kernel_driver(number)
            try:
                self.report = keyboard_report(self._report_descriptor(intf))
            except ProtocolError as exc:
                problem = problem or str(exc)
                with contextlib.suppress(Exception):  # not the keyboard: give it back as it was
                    usb.util.release_interface(self._dev, number)
                    if detached:
                        self._dev.attach_kernel_driver(number)
                continue
            chosen, problem = (intf, ep), ""
            break
        if problem:
            # No readable keyboard descriptor: read boot reports as before, and say why.
            log.warning("%s: %s; reading 8-byte boot keyboard reports", self.label, problem)
        intf, ep = chosen
        self._interface = intf.bInterfaceNumber
        self._endpoint = ep.bEndpointAddress
        self._packet = max(int(ep.wMaxPacketSize), 8)
        if self._dev.is_kernel_driver_active(self._interface):
            self._dev.detach_kernel_driver(self._interface)

    def _report_descriptor(self, intf: Any) -> bytes:
        """The interface's report descriptor: its length from the HID class descriptor (0x21)
        among the interface's extra descriptors, then GET_DESCRIPTOR(0x22) on endpoint 0."""
        import usb.core

        extra = bytes(getattr(intf, "extra_descriptors", None) or b"")
        length = 1024
        if len(extra) >= 9 and extra[1] == 0x21 and extra[6] == HID_REPORT_DESCRIPTOR:
            length = extra[7] | extra[8] << 8
        try:
            data = self._dev.ctrl_transfer(0x81, 0x06, HID_REPORT_DESCRIPTOR << 8, intf.bInterfaceNumber, length, 1000)
        except (usb.core.USBError, ValueError, NotImplementedError) as exc:
            raise ProtocolError(f"the report descriptor cannot be read: {exc}") from exc
        return bytes(data)

    async def start(self) -> None:
        import usb.core

        try:
            async with asyncio.timeout(5):
                await asyncio.to_thread(self._setup)
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.label}: USB setup did not finish in 5s") from exc
        except usb.core.USBError as exc:
            raise DeviceUnavailable(f"{self.label}: cannot take the device from the kernel: {exc}") from exc
        loop = asyncio.get_running_loop()
        self._thread = threading.Thread(target=self._run, args=(loop,), name=self.label, daemon=True)
        self._thread.start()

    def _run(self, loop: asyncio.AbstractEventLoop) -> None:
        import usb.core

        while not self._stop.is_set():
            try:
                data = bytes(self._dev.read(self._endpoint, self._packet, timeout=self._poll_ms))
            except usb.core.USBTimeoutError:
                continue
            except usb.core.USBError as exc:
                if exc.errno == errno.ETIMEDOUT:
                    continue
                gone = DeviceUnavailable(f"{self.label}: device gone ({exc})")
                loop.call_soon_threadsafe(self._queue.put_nowait, gone)
                return
            loop.call_soon_threadsafe(self._put, data)

    def _put(self, data: bytes) -> None:
        if not self._queue.full():
            self._queue.put_nowait(data)

    async def read_report(self) -> bytes:
        item = await self._queue.get()
        if isinstance(item, DeviceError):
            raise item
        return item

    async def alive(self, timeout: float = 0.5) -> bool:
        """GET_STATUS on endpoint 0: a present device answers even when nobody scans."""
        try:
            async with asyncio.timeout(timeout):
                await asyncio.to_thread(self._dev.ctrl_transfer, 0x80, 0x00, 0, 0, 2, int(timeout * 1000))
        except Exception:
            return False
        return True

    async def close(self) -> None:
        self._stop.set()
        if self._thread is not None:
            await asyncio.to_thread(self._thread.join, 1.0)
        if self._interface is not None:
            import usb.util

            # Hand the scanner back to the kernel so it works as a keyboard again (the kernel
            # refuses an interface we still claim).
            with contextlib.suppress(Exception):
                usb.util.release_interface(self._dev, self._interface)
            with contextlib.suppress(Exception):
                self._dev.attach_kernel_driver(self._interface)


class HidScanner(ScannerDriver):
    """A keyboard-mode USB barcode scanner. Pass ``source`` (tests, evdev) or a pyusb device."""

    name: ClassVar[str] = "hid_scanner"
    usb_matches: ClassVar[tuple[UsbMatch, ...]] = tuple(
        UsbMatch(vendor_id=vid, interface_class=HID_CLASS) for vid in SCANNER_VENDOR_IDS
    )

    def __init__(
        self, info: DeviceInfo, *, source: ReportSource | None = None, usb_device: Any = None
    ) -> None:
        super().__init__(info)
        self._source = source
        self._usb_device = usb_device
        self.report = KeyboardReport()  # the source's, once open
        self._decoder = HidReportDecoder()
        self.bad_reports = 0

    async def open(self) -> None:
        if self._reader is not None:
            return
        if self._source is None:
            if self._usb_device is None:
                raise DeviceUnavailable("no USB device given for this scanner", self.info.device_id)
            source = PyUsbReportSource(self._usb_device, label=self.info.device_id)
            await source.start()
            self._source = source
        self._failure = None
        self.report = getattr(self._source, "report", None) or self.report
        self._decoder = HidReportDecoder(report_id=self.report.report_id)
        self._reader = asyncio.create_task(
            self._read_loop(self._source), name=f"scanner-{self.info.device_id}"
        )

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        await cancel_and_wait(reader)
        if self._source is not None:
            with contextlib.suppress(Exception):
                await self._source.close()
            if self._usb_device is not None:
                self._source = None

    async def _read_loop(self, source: ReportSource) -> None:
        while True:
            try:
                report = await source.read_report()
            except DeviceError as exc:
                self._failure = exc
                self._deliver(exc)
                return
            self._received(report)
            try:
                scans = self._decoder.feed(report)
            except ProtocolError as exc:
                self.bad_reports += 1
                self._deliver(ProtocolError(str(exc), self.info.device_id))
                continue
            for scan in scans:
                self._deliver(scan)

    def _check_result(self, item: str | DeviceError, raw: bytes) -> tuple[tuple[FieldStep, ...], dict[str, str]]:
        steps, profile = super()._check_result(item, raw)
        return (*steps, FieldStep("reports", True, self.report.describe())), profile

    async def health(self) -> Health:
        if self._failure is not None:
            return Health("failed", str(self._failure))
        if self._reader is None or self._reader.done():
            return Health("failed", "not open")
        alive = getattr(self._source, "alive", None)
        if alive is not None and not await alive():
            return Health("failed", "device does not answer on USB")
        return Health("ready")
