"""Serial / USB-CDC barcode scanner driver (``/dev/ttyACM*``, ``/dev/ttyUSB*``): one scan per line.

A scanner in USB-COM mode needs no keyboard layout and never types into a focused window.
The driver owns one reader task that turns the byte stream into scans; the hub takes them
with :meth:`SerialScanner.read_scan` or ``async for code in scanner.scans()``. A scanner is
never asked anything, so health is "port open and the reader alive".

What ends a scan is set on the scanner itself (its "suffix" or "postamble": PSC's programming
guide offers none, ETX, CR, LF and HT; Champtek's none, CR LF, CR, LF and ETX), so it is the
device's ``terminator`` (``[[device]] terminator``). An ETX suffix is not read: set such a
scanner to CR or to none.

- ``"auto"`` (default): CR, LF or CR LF ends a scan, and so does a pause of ``idle_ms`` after
  the last byte (a scanner set to send no suffix). A scanner sends a code in one burst (a few
  ms at 9600 baud, one USB packet on CDC-ACM), so a pause of 100 ms lies between scans only.
- ``"cr"``, ``"lf"``, ``"crlf"``, ``"tab"``: only that ends a scan; bytes left without it when
  the line goes quiet for ``idle_ms`` are reported as a garbled scan, never glued to the next.
- ``"none"``: only the pause ends a scan.
"""

from __future__ import annotations

import asyncio
from typing import ClassVar, Literal, get_args

from drivers.base import DeviceInfo, FieldStep, Health
from drivers.scanning import ScannerDriver
from drivers.transport import StreamTransport
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.tasks import cancel_and_wait

__all__ = ["TERMINATORS", "ScanLineDecoder", "SerialScanner", "Terminator", "suffix_of"]

MAX_SCAN = 512
CR, LF, TAB = 0x0D, 0x0A, 0x09
Terminator = Literal["auto", "cr", "lf", "crlf", "tab", "none"]
TERMINATORS: tuple[Terminator, ...] = get_args(Terminator)
DEFAULT_IDLE_MS = 100
_NAMES = {"cr": "CR", "lf": "LF", "crlf": "CR LF", "tab": "TAB"}
_ENDS = {"cr": (CR,), "lf": (LF,), "tab": (TAB,), "auto": (CR, LF)}


def suffix_of(raw: bytes) -> Terminator:
    """What a scanner ends its codes with, from the bytes of one scan."""
    for ending, name in ((b"\r\n", "crlf"), (b"\r", "cr"), (b"\n", "lf"), (b"\t", "tab")):
        if raw.endswith(ending):
            return name  # type: ignore[return-value]  # the names are Terminator values
    return "none"


class ScanLineDecoder:
    """Bytes in, complete scans out, as ``terminator`` says (see the module doc). ``idle()`` is
    called when the line has been quiet for ``idle_ms`` after a byte."""

    def __init__(self, terminator: Terminator = "auto", max_len: int = MAX_SCAN) -> None:
        if terminator not in TERMINATORS:
            raise ValueError(f"terminator must be one of {', '.join(TERMINATORS)}, got {terminator!r}")
        self.terminator: Terminator = terminator
        self._buf = bytearray()
        self._max_len = max_len
        self._overlong = False
        self._cr = False  # crlf: a CR came, its LF not yet

    @property
    def pending(self) -> bool:
        return bool(self._buf) or self._overlong or self._cr

    def feed(self, data: bytes) -> list[str | ProtocolError]:
        out: list[str | ProtocolError] = []
        for b in data:
            item = self._byte(b)
            if item is not None:
                out.append(item)
        return out

    def _byte(self, b: int) -> str | ProtocolError | None:
        if self.terminator == "crlf":
            if self._cr:
                self._cr = False
                if b == LF:
                    return self._end()
                self._take(CR)  # a CR without its LF is part of the data (and garbles it)
            if b == CR:
                self._cr = True
                return None
        elif b in _ENDS.get(self.terminator, ()):
            if not self._buf and not self._overlong:
                return None  # a blank line, or the LF of a CR LF
            return self._end()
        self._take(b)
        return None

    def _take(self, b: int) -> None:
        if len(self._buf) >= self._max_len:
            self._overlong = True
        else:
            self._buf.append(b)

    def idle(self) -> list[str | ProtocolError]:
        """The line went quiet: what waits is a scan (``auto``, ``none``) or a broken one."""
        if not self.pending:
            return []
        if self.terminator in ("auto", "none"):
            return [self._end()]
        raw = bytes(self._buf) + (b"\r" if self._cr else b"")
        self._clear()
        return [ProtocolError(
            f"scan {raw!r} was not ended by {_NAMES[self.terminator]}: the scanner's suffix is set to "
            "something else (the field check shows what it sends)"
        )]

    def _end(self) -> str | ProtocolError:
        item = (
            ProtocolError(f"scan longer than {self._max_len} characters dropped")
            if self._overlong
            else self._finish(bytes(self._buf))
        )
        self._clear()
        return item

    def _clear(self) -> None:
        self._buf.clear()
        self._overlong = self._cr = False

    @staticmethod
    def _finish(raw: bytes) -> str | ProtocolError:
        # GS (0x1D) separates GS1 fields and is part of the code; other controls are noise.
        if any((b < 0x20 and b not in (0x1D, 0x09)) or b == 0x7F for b in raw):
            return ProtocolError(f"scan {raw!r} has control characters: wrong baud rate, noise, or a suffix "
                                 "this device's terminator does not expect")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError:
            return ProtocolError(f"scan {raw!r} is not text: wrong baud rate or noise")


class SerialScanner(ScannerDriver):
    """A barcode scanner on a serial or CDC-ACM port (``info.address``); ``terminator`` and
    ``idle_ms`` default to ``info.extra`` (the ``[[device]]`` keys), else ``"auto"`` and 100."""

    name: ClassVar[str] = "serial_scanner"

    def __init__(
        self,
        info: DeviceInfo,
        *,
        baudrate: int = 9600,
        terminator: Terminator | None = None,
        idle_ms: int | None = None,
    ) -> None:
        super().__init__(info)
        self.baudrate = baudrate
        chosen = terminator or info.extra.get("terminator", "auto")
        self.terminator: Terminator = ScanLineDecoder(chosen).terminator  # type: ignore[arg-type]
        self.idle_s = (idle_ms or int(info.extra.get("idle_ms", DEFAULT_IDLE_MS))) / 1000
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
        decoder = ScanLineDecoder(self.terminator)
        while True:
            try:
                data = await transport.read_some(timeout=self.idle_s if decoder.pending else 3600.0)
            except DeviceTimeout:
                for item in decoder.idle():
                    self._deliver(item)
                continue
            except DeviceError as exc:
                self._failure = exc
                self._deliver(DeviceUnavailable(f"scanner gone: {exc}", self.info.device_id))
                return
            self._received(data)
            for item in decoder.feed(data):
                self._deliver(item)

    def _check_result(self, item: str | DeviceError, raw: bytes) -> tuple[tuple[FieldStep, ...], dict[str, str]]:
        steps, profile = super()._check_result(item, raw)
        if not raw:
            return steps, profile
        sent = suffix_of(raw)
        said = "no suffix" if sent == "none" else f"{_NAMES[sent]} after each code"
        if self.terminator in ("auto", sent):
            step = FieldStep("suffix", True, f"the scanner sends {said}; terminator {self.terminator!r} takes it")
        else:
            step = FieldStep("suffix", False, f"the scanner sends {said}, but this device's terminator is "
                                              f"{self.terminator!r}: set terminator = \"{sent}\" (or \"auto\") "
                                              "in its [[device]] entry, or set the scanner's suffix")
        return (*steps, step), {**profile, "terminator": sent}

    async def health(self) -> Health:
        if self._failure is not None:
            return Health("failed", f"scanner gone: {self._failure}")
        if self._transport is None or self._reader is None or self._reader.done():
            return Health("failed", "port not open")
        return Health("ready")
