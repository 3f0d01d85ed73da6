"""Serial / USB-CDC barcode scanner driver (``/dev/ttyACM*``): one scan per CR or CRLF line.

A scanner in USB-COM mode needs no keyboard layout and never types into a focused window.
The driver owns one reader task that turns the byte stream into scans; the hub takes them
with :meth:`SerialScanner.read_scan` or ``async for code in scanner.scans()``. A scanner is
never asked anything, so health is "port open and the reader alive".
"""

from __future__ import annotations

import asyncio
from typing import ClassVar

from drivers.base import DeviceInfo, Health
from drivers.scanning import ScannerDriver
from drivers.transport import StreamTransport
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.tasks import cancel_and_wait

__all__ = ["ScanLineDecoder", "SerialScanner"]

MAX_SCAN = 512


class ScanLineDecoder:
    """Bytes in, complete scans out. CR ends a scan; a LF right after it is dropped."""

    def __init__(self, max_len: int = MAX_SCAN) -> None:
        self._buf = bytearray()
        self._max_len = max_len
        self._overlong = False

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        out: list[str | ProtocolError] = []
        for b in data:
            if b == 0x0D:
                if self._overlong:
                    out.append(ProtocolError(f"scan longer than {self._max_len} characters dropped"))
                elif self._buf:
                    out.append(self._finish(bytes(self._buf)))
                self._buf.clear()
                self._overlong = False
            elif b == 0x0A and not self._buf:
                continue  # the LF of a CRLF, or a blank line
            elif len(self._buf) >= self._max_len:
                self._overlong = True
            else:
                self._buf.append(b)
        return out

    @staticmethod
    def _finish(raw: bytes) -> str | ProtocolError:
        # GS (0x1D) separates GS1 fields and is part of the code; other controls are noise.
        if any((b < 0x20 and b not in (0x1D, 0x09)) or b == 0x7F for b in raw):
            return ProtocolError(f"scan {raw!r} has control characters: wrong baud rate or noise")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return ProtocolError(f"scan {raw!r} is not text: wrong baud rate or noise")


class SerialScanner(ScannerDriver):
    """A barcode scanner on a serial or CDC-ACM port (``info.address``)."""

    name: ClassVar[str] = "serial_scanner"

    def __init__(self, info: DeviceInfo, *, baudrate: int = 9600) -> None:
        super().__init__(info)
        self.baudrate = baudrate
        self._transport: StreamTransport | None = None

    async def open(self) -> None:
        if self._transport is not None:
            return
        self._transport = await StreamTransport.serial(self.info.address, self.baudrate, 8, "N", 1)
        self._failure = None
        self._reader = asyncio.create_task(
            self._read_loop(self._transport), name=f"scanner-{self.info.device_id}"
        )

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        await cancel_and_wait(reader)
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def _read_loop(self, transport: StreamTransport) -> None:
        decoder = ScanLineDecoder()
        while True:
            try:
                data = await transport.read_some(timeout=3600.0)
            except DeviceTimeout:
                continue
            except DeviceError as exc:
                self._failure = exc
                self._scans.put(DeviceUnavailable(f"scanner gone: {exc}", self.info.device_id))
                return
            for item in decoder.feed(data):
                self._scans.put(item)

    async def health(self) -> Health:
        if self._failure is not None:
            return Health("failed", f"scanner gone: {self._failure}")
        if self._transport is None or self._reader is None or self._reader.done():
            return Health("failed", "port not open")
        return Health("ready")
