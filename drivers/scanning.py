"""What both scanner drivers (USB HID and serial) share: the scans waiting for a reader.

A scanner sends when the cashier pulls the trigger, not when the hub asks; the driver's reader
task puts each scan (or the error that garbled or ended one) here, and ``read_scan`` takes them.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from drivers.base import DeviceInfo, Driver
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError


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

    async def read_scan(self, timeout: float) -> str:
        """The next scan. DeviceTimeout if none within ``timeout``, ProtocolError for a garbled
        one; DeviceUnavailable when the scanner is closed and every scan was taken."""
        if self._reader is None and self._scans.empty():
            raise DeviceUnavailable("scanner is not open", self.info.device_id)
        return await self._scans.next(timeout)

    async def scans(self) -> AsyncIterator[str]:
        """Every good scan until the scanner goes away (then DeviceUnavailable); garbled ones skipped."""
        while True:
            try:
                yield await self.read_scan(timeout=3600.0)
            except (DeviceTimeout, ProtocolError):
                continue
