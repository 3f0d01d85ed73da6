"""What both scanner drivers (USB HID and serial) share: the scans waiting for a reader, and
the installer's field check.

A scanner sends when the cashier pulls the trigger, not when the hub asks; the driver's reader
task puts each scan (or the error that garbled or ended one) here, and ``read_scan`` takes them.

The field check (``edgehub device test``) waits for one scan: while it waits, the reader hands
the next scan to the check instead of the store (an installer's test code must not land in a
sale) and keeps every byte the scanner sent, so the installer sees its suffix or report layout.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from drivers.base import DeviceInfo, Driver, FieldCheck, FieldStep
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError

# After a check's scan, how long bytes that belong to it (the LF of a CR LF) may still come.
_TRAILING_BYTES_S = 0.15
# The most of a check's raw bytes kept (a HID scan is two 8-byte reports per character).
_CHECK_BYTES_MAX = 4096


class ScanBuffer:
    """Scans in arrival order; when nobody takes them the oldest go (a cashier rescans anyway)."""

    def __init__(self, info: DeviceInfo, maxsize: int = 256) -> None:
        self.info = info
        self._items: asyncio.Queue[str | DeviceError] = asyncio.Queue(maxsize=maxsize)

    def put(self, item: str | DeviceError) -> None:
        if self._items.full():
            self._items.get_nowait()
        self._items.put_nowait(item)

    def empty(self) -> bool:
        return self._items.empty()

    async def next(self, timeout: float) -> str:
        """The next scan; DeviceTimeout if none in time; a queued error is raised."""
        try:
            async with asyncio.timeout(timeout):
                item = await self._items.get()
        except TimeoutError as exc:
            raise DeviceTimeout(f"no scan within {timeout:g}s", self.info.device_id) from exc
        if isinstance(item, DeviceError):
            raise item
        return item


class ScannerDriver(Driver):
    """A scanner driver: its reader task (``_reader``, started by ``open``) puts what the
    scanner sends into ``_scans``, and ``read_scan``/``scans`` take it from there."""

    kind = "scanner"

    def __init__(self, info: DeviceInfo) -> None:
        super().__init__(info)
        self._scans = ScanBuffer(info)
        self._reader: asyncio.Task[None] | None = None
        self._failure: DeviceError | None = None
        # A field check waiting for its scan, and the bytes the scanner sent meanwhile.
        self._check_scan: asyncio.Future[str | DeviceError] | None = None
        self._check_bytes: bytearray | None = None

    def _received(self, data: bytes) -> None:
        """Reader: bytes (or a report) as the scanner sent them, before decoding."""
        if self._check_bytes is not None and len(self._check_bytes) < _CHECK_BYTES_MAX:
            self._check_bytes += data[: _CHECK_BYTES_MAX - len(self._check_bytes)]

    def _deliver(self, item: str | DeviceError) -> None:
        """Reader: one decoded scan, or the error that garbled or ended one."""
        waiter = self._check_scan
        if waiter is not None and not waiter.done():
            waiter.set_result(item)
            if not isinstance(item, DeviceUnavailable):
                return  # the check's scan is the check's
        self._scans.put(item)

    async def read_scan(self, timeout: float) -> str:
        """The next scan. DeviceTimeout if none within ``timeout``, ProtocolError for a garbled
        one; DeviceUnavailable when the scanner is closed and every scan was taken."""
        if self._reader is None and self._scans.empty():
            raise DeviceUnavailable("scanner is not open", self.info.device_id)
        return await self._scans.next(timeout)

    async def field_check(self, wait_s: float) -> FieldCheck:
        """Wait up to ``wait_s`` for one scan and show it with the bytes the scanner sent."""
        if self._reader is None or self._reader.done():
            reason = f"{self._failure}" if self._failure else "the scanner is not open"
            return FieldCheck((FieldStep("scan", False, reason),))
        if self._check_scan is not None and not self._check_scan.done():
            return FieldCheck((FieldStep("scan", False, "another field check of this scanner is waiting for a scan"),))
        waiter: asyncio.Future[str | DeviceError] = asyncio.get_running_loop().create_future()
        self._check_scan, self._check_bytes = waiter, bytearray()
        try:
            try:
                async with asyncio.timeout(wait_s):
                    item = await waiter
            except TimeoutError:
                item = DeviceTimeout(f"no scan within {wait_s:g} s")
            else:
                await asyncio.sleep(_TRAILING_BYTES_S)
            raw = bytes(self._check_bytes)
        finally:
            self._check_scan, self._check_bytes = None, None
            with contextlib.suppress(asyncio.InvalidStateError):
                waiter.cancel()
        return FieldCheck(*self._check_result(item, raw))

    def _check_result(self, item: str | DeviceError, raw: bytes) -> tuple[tuple[FieldStep, ...], dict[str, str]]:
        """The steps and inferred profile of a check that got ``item``; drivers add their own."""
        if isinstance(item, str):
            printable = "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in item)
            return (FieldStep("scan", True, f"scanned {printable!r} ({len(item)} characters)", raw),), {}
        if isinstance(item, DeviceTimeout):
            hint = ("scan a barcode while the check waits" if not raw else
                    "bytes came but no complete scan: see the suffix or report step")
            return (FieldStep("scan", False, f"{item.args[0]}: {hint}", raw),), {}
        return (FieldStep("scan", False, f"the scan was garbled: {item}", raw),), {}

    async def scans(self) -> AsyncIterator[str]:
        """Every good scan until the scanner goes away (then DeviceUnavailable); garbled ones skipped."""
        while True:
            try:
                yield await self.read_scan(timeout=3600.0)
            except (DeviceTimeout, ProtocolError):
                continue
