"""A USB printer (or any bulk-endpoint device) as a ``ByteTransport``, through pyusb.

Same face as ``drivers.transport.StreamTransport`` (``write``, ``read_exactly``, ``read_until``,
``read_some``, ``drain_input``, ``close``), so a driver does not care whether its printer hangs
on TCP, serial or USB. libusb calls block, so each runs in a worker thread in short slices;
bytes a slice reads are kept in our buffer even when the waiting coroutine was cancelled, so a
timeout never loses a reply. ``usb.core.USBError`` becomes ``DeviceUnavailable`` (unplugged,
stalled, no permission) or ``DeviceTimeout``.

Also here: ``parse_device_id`` / ``UsbTransport.device_id()`` for the IEEE-1284 id a printer-class
device returns to ``GET_DEVICE_ID``, ``find_printers`` for interface class 7 devices, and
``device_matcher``: which plugged-in device a ``DeviceInfo`` means.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import re
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

import usb.core
import usb.util

from edgehub.errors import DeviceTimeout, DeviceUnavailable

__all__ = ["PRINTER_CLASS", "UsbTransport", "device_matcher", "find_printers", "parse_device_id"]

PRINTER_CLASS = 7
GET_DEVICE_ID = 0
_READ_SLICE_MS = 50  # one libusb read waits at most this long, so an abandoned thread ends soon
_R = TypeVar("_R")

# Long keys some printers use instead of the short IEEE-1284 ones.
_KEY_ALIASES = {
    "MANUFACTURER": "MFG",
    "MODEL": "MDL",
    "COMMAND SET": "CMD",
    "DESCRIPTION": "DES",
    "CLASS": "CLS",
}


def parse_device_id(raw: bytes) -> dict[str, str]:
    """Parse an IEEE-1284 device id (2-byte big-endian length, then ``KEY:value;`` pairs).

    Keys are upper-cased and the long spellings mapped to the short ones (``MANUFACTURER`` ->
    ``MFG``), so callers can always ask for ``MFG``, ``MDL``, ``CMD``, ``SN``.
    """
    if len(raw) >= 2:
        declared = int.from_bytes(raw[:2], "big")
        # Some firmware counts the length bytes, some does not, some send nonsense: trust the data.
        body = raw[2:declared] if 2 < declared <= len(raw) else raw[2:]
    else:
        body = b""
    text = body.decode("latin-1").strip("\x00 \r\n")
    result: dict[str, str] = {}
    for item in text.split(";"):
        key, sep, value = item.partition(":")
        key = key.strip().upper()
        if not sep or not key:
            continue
        result[_KEY_ALIASES.get(key, key)] = value.strip()
    return result


def device_matcher(serial_number: str, address: str) -> Callable[[Any], bool]:
    """Which plugged-in device ``address`` means (a ``custom_match`` for ``usb.core.find``):

    - ``bus:address`` (what discovery saw): the device there, and with ``serial_number`` when
      one is known (an address is reused after an unplug);
    - ``vvvv:pppp`` (a configured vendor:product): the first device with those ids;
    - anything else is a configured serial number: the device whose serial string it is.
    """
    bus_address = re.fullmatch(r"(\d{1,3}):(\d{1,3})", address)
    ids = re.fullmatch(r"([0-9a-fA-F]{4}):([0-9a-fA-F]{4})", address)
    wanted_serial = serial_number or ("" if bus_address or ids else address)

    def serial_of(dev: Any) -> str:
        try:
            return str(usb.util.get_string(dev, dev.iSerialNumber) or "") if dev.iSerialNumber else ""
        except (usb.core.USBError, ValueError, NotImplementedError):
            return ""

    def match(dev: Any) -> bool:
        if bus_address is not None:
            if (int(dev.bus), int(dev.address)) != (int(bus_address[1]), int(bus_address[2])):
                return False
        elif ids is not None:
            return bool((dev.idVendor, dev.idProduct) == (int(ids[1], 16), int(ids[2], 16)))
        return not wanted_serial or serial_of(dev) == wanted_serial

    return match


def find_printers(backend: object | None = None) -> list[usb.core.Device]:
    """Every USB device with a printer-class (7) interface."""

    def has_printer_interface(dev: usb.core.Device) -> bool:
        if dev.bDeviceClass == PRINTER_CLASS:
            return True
        return any(intf.bInterfaceClass == PRINTER_CLASS for cfg in dev for intf in cfg)

    return list(usb.core.find(find_all=True, backend=backend, custom_match=has_printer_interface))


def _usb_error(exc: usb.core.USBError, label: str, what: str) -> DeviceUnavailable | DeviceTimeout:
    if isinstance(exc, usb.core.USBTimeoutError) or exc.errno == errno.ETIMEDOUT:
        return DeviceTimeout(f"{label}: {what} timed out")
    if exc.errno in (errno.ENODEV, errno.ENOENT, errno.ESHUTDOWN) or "No such device" in str(exc):
        return DeviceUnavailable(f"{label} was unplugged ({what} failed: no such device)")
    if exc.errno in (errno.EACCES, errno.EPERM):
        return DeviceUnavailable(f"{label}: no permission to use the device (check the udev rule for it)")
    if exc.errno == errno.EBUSY:
        return DeviceUnavailable(f"{label} is in use by another program or driver")
    if exc.errno == errno.EPIPE:
        return DeviceUnavailable(f"{label}: endpoint stalled during {what}; replug the device")
    return DeviceUnavailable(f"{label}: {what} failed: {exc}")


class UsbTransport:
    """A claimed interface of a USB device with one bulk OUT and (optionally) one bulk IN endpoint.

    The constructor does no I/O; ``await UsbTransport.open(device)`` (or ``await t.start()``)
    detaches a kernel driver (usblp) if one holds the interface, selects the configuration and
    claims the interface.
    """

    def __init__(
        self, device: usb.core.Device, *, interface: int | None = None, label: str | None = None
    ) -> None:
        self.device = device
        self._want_interface = interface
        self.interface = -1
        self.alt_setting = 0
        self.label = (
            label or f"usb://{device.idVendor:04x}:{device.idProduct:04x}@{device.bus}-{device.address}"
        )
        self._ep_out: Any = None
        self._ep_in: Any = None
        self._detached = False
        self._closed = False
        self._buf = bytearray()
        self._buf_lock = threading.Lock()
        self._io_lock = threading.Lock()  # one libusb read at a time on the IN endpoint

    @classmethod
    async def open(
        cls, device: usb.core.Device, *, interface: int | None = None, timeout: float = 2.0
    ) -> UsbTransport:
        transport = cls(device, interface=interface)
        await transport.start(timeout)
        return transport

    async def _call(self, fn: Callable[[], _R], timeout: float, what: str) -> _R:
        if self._closed:
            raise DeviceUnavailable(f"{self.label} is closed")
        try:
            async with asyncio.timeout(timeout):
                return await asyncio.to_thread(fn)
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.label}: {what} did not finish within {timeout:.1f}s") from exc
        except usb.core.USBError as exc:
            raise _usb_error(exc, self.label, what) from exc
        except (ValueError, NotImplementedError) as exc:
            raise DeviceUnavailable(f"{self.label}: {what} failed: {exc}") from exc

    async def start(self, timeout: float = 2.0) -> None:
        await self._call(self._setup, timeout, "opening the device")

    def _setup(self) -> None:
        dev = self.device
        try:
            cfg = dev.get_active_configuration()
        except usb.core.USBError:
            cfg = None
        if cfg is None:
            dev.set_configuration()
            cfg = dev.get_active_configuration()
        intf = self._pick_interface(cfg)
        self.interface = intf.bInterfaceNumber
        self.alt_setting = intf.bAlternateSetting
        with contextlib.suppress(NotImplementedError):
            if dev.is_kernel_driver_active(self.interface):
                dev.detach_kernel_driver(self.interface)
                self._detached = True
        usb.util.claim_interface(dev, self.interface)

        def direction(want: int) -> Callable[[Any], bool]:
            return lambda ep: bool(
                usb.util.endpoint_direction(ep.bEndpointAddress) == want
                and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_BULK
            )

        self._ep_out = usb.util.find_descriptor(intf, custom_match=direction(usb.util.ENDPOINT_OUT))
        self._ep_in = usb.util.find_descriptor(intf, custom_match=direction(usb.util.ENDPOINT_IN))
        if self._ep_out is None:
            raise ValueError(f"interface {self.interface} has no bulk OUT endpoint")

    def _pick_interface(self, cfg: Any) -> Any:
        interfaces = list(cfg)
        if self._want_interface is not None:
            for intf in interfaces:
                if intf.bInterfaceNumber == self._want_interface:
                    return intf
            raise ValueError(f"the device has no interface {self._want_interface}")
        for intf in interfaces:
            if intf.bInterfaceClass == PRINTER_CLASS:
                return intf
        for intf in interfaces:  # vendor-class printers: the first interface with a bulk OUT
            if any(not usb.util.endpoint_direction(ep.bEndpointAddress) for ep in intf):
                return intf
        raise ValueError("the device has no printer interface")

    # -- the ByteTransport face --------------------------------------------------------------
    async def write(self, data: bytes, timeout: float = 2.0) -> None:
        if not data:
            return
        ms = max(1, int(timeout * 1000))

        def do() -> None:
            sent = self._ep_out.write(data, ms)
            if sent != len(data):
                raise usb.core.USBError(f"short write: {sent} of {len(data)} bytes", None, errno.EIO)

        await self._call(do, timeout + 0.5, f"writing {len(data)} bytes")

    def _read_slice(self, slice_ms: int) -> None:
        """One bounded libusb read; what it gets goes into the buffer even if nobody waits."""
        if self._ep_in is None:
            time.sleep(slice_ms / 1000)
            return
        with self._io_lock:
            try:
                chunk = self._ep_in.read(max(64, int(self._ep_in.wMaxPacketSize)), slice_ms)
            except usb.core.USBTimeoutError:
                return
        if len(chunk):
            with self._buf_lock:
                self._buf += bytes(chunk)

    async def _fill_until(self, done: Callable[[], bool], timeout: float, what: str) -> None:
        deadline = time.monotonic() + timeout
        try:
            async with asyncio.timeout(timeout + 0.5):
                while not done():
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise DeviceTimeout(f"{self.label} sent no {what} within {timeout:.2f}s")
                    slice_ms = max(1, min(_READ_SLICE_MS, int(left * 1000)))
                    await self._call(
                        functools.partial(self._read_slice, slice_ms), max(1.0, left + 0.5), "reading"
                    )
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.label} sent no {what} within {timeout:.2f}s") from exc

    def _take(self, n: int) -> bytes:
        with self._buf_lock:
            data = bytes(self._buf[:n])
            del self._buf[:n]
        return data

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        await self._fill_until(lambda: len(self._buf) >= n, timeout, f"{n}-byte reply")
        return self._take(n)

    async def read_until(self, sep: bytes, timeout: float, limit: int = 4096) -> bytes:
        def found() -> bool:
            if sep in self._buf:
                return True
            if len(self._buf) >= limit:
                raise DeviceUnavailable(f"{self.label} sent {limit} bytes without a frame end")
            return False

        await self._fill_until(found, timeout, f"frame ending {sep!r}")
        return self._take(self._buf.index(sep) + len(sep))

    async def read_some(self, timeout: float, limit: int = 4096) -> bytes:
        await self._fill_until(lambda: len(self._buf) > 0, timeout, "data")
        return self._take(limit)

    @property
    def can_read(self) -> bool:
        """False for a printer interface without a bulk-IN endpoint: it can never answer."""
        return self._ep_in is not None

    def drain_input(self) -> bytes:
        """Drop (and return) bytes already read but not consumed, e.g. a stale status byte."""
        return self._take(len(self._buf))

    async def device_id(self, timeout: float = 1.0) -> dict[str, str]:
        """Ask for the IEEE-1284 device id (printer class GET_DEVICE_ID) and parse it."""
        # wValue = configuration index, wIndex = interface << 8 | alternate setting (as usblp).
        windex = (max(0, self.interface) << 8) | self.alt_setting

        def do() -> bytes:
            return bytes(self.device.ctrl_transfer(0xA1, GET_DEVICE_ID, 0, windex, 1024, int(timeout * 1000)))

        return parse_device_id(await self._call(do, timeout + 0.5, "GET_DEVICE_ID"))

    async def close(self) -> None:
        if self._closed:
            return

        def do() -> None:
            with contextlib.suppress(Exception):
                if self.interface >= 0:
                    usb.util.release_interface(self.device, self.interface)
            with contextlib.suppress(Exception):
                if self._detached:
                    self.device.attach_kernel_driver(self.interface)
            with contextlib.suppress(Exception):
                usb.util.dispose_resources(self.device)

        with contextlib.suppress(Exception):
            async with asyncio.timeout(2.0):
                await asyncio.to_thread(do)
        self._closed = True
