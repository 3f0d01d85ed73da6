"""The ESC/POS receipt and kitchen printer driver (Epson and the many printers that copy it).

What it matches: USB printer-class interfaces (and vendor-class ones of printer makers), the LAN printer
DNS-SD types and raw port 9100. How it talks: any ``ByteTransport`` (TCP, serial, USB).

How it reports health: the real-time status requests ``DLE EOT 1..4``, one byte each, validated
(``byte & 0x93 == 0x12``) and parsed into a ``PrinterStatus``. Silence is *unknown*, never
"offline": the watchdog sees ``failed / no answer``, but nothing is read into the bits.

How it knows a job printed depends on ``confirm`` (``[[device]] confirm = ...``):

- ``"process-id"``: after the job it sends Epson's ``GS ( H`` fn48 with a 4-byte token that is
  new for every job; the printer echoes ``37 22 token 00`` once everything before it has printed.
  A job counts as printed only when that echo came *and* the status after it shows no error.
- ``"status"``, for the many clones (Xprinter/Zjiang, some Citizen/Bixolon) that ignore
  ``GS ( H``: DLE EOT is a *real-time* command, answered at once even while the printer still
  works through its buffer, so "no error" right after sending proves nothing. The driver waits
  for as long as the job takes at a conservative line rate (``PrinterTiming.print_time``), and the
  job counts as printed only when a status read after that reports online, no error, paper in,
  cover closed. Error, paper end or cover open at any point fails it; "offline" with no cause is
  waited out for at most another ``print_time``.
- ``"auto"`` (the default): ``GS ( H`` on the first job; a printer that leaves it unanswered for
  ``PrinterTiming.confirm`` while DLE EOT says it is fine does not do process ids: that job is
  confirmed by status, and every later one too (logged once). A printer that answered it once is
  never demoted: a later missing echo is a timeout as in ``"process-id"``.

While waiting it polls status, so paper running out mid-job fails the job within about
``poll_interval`` instead of at the end of the wait.

The bytes coming back are a stream of frames, and not all of them answer us: automatic status
back (4 bytes, first matches ``0xx1xx00``), late answers to a request that timed out, and echoes
of earlier jobs' tokens. Every read goes through one frame parser so none of them is misread as
the reply we wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import ClassVar, Literal, get_args

from drivers.base import DeviceInfo, Driver, Health, UsbMatch
from drivers.transport import ByteTransport, StreamTransport
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError

__all__ = [
    "CHIP_VENDOR_IDS",
    "CONFIRM_MODES",
    "ESCPOS_VENDOR_IDS",
    "ConfirmMode",
    "Connector",
    "EscposPrinter",
    "PrintResult",
    "PrinterNotReady",
    "PrinterStatus",
    "PrinterTiming",
    "confirm_request",
]

log = logging.getLogger(__name__)

Connector = Callable[[], Awaitable[ByteTransport]]

#: How jobs are confirmed (the ``confirm`` key of a printer's ``[[device]]``); see the module doc.
ConfirmMode = Literal["auto", "process-id", "status"]
CONFIRM_MODES: tuple[ConfirmMode, ...] = get_args(ConfirmMode)

# Epson, Star, Bixolon, Samsung SRP, Citizen (two ids), SNBC, Custom, and the chip-vendor ids
# cheap clones ship with (Winbond/Nuvoton, STMicro, NXP).
ESCPOS_VENDOR_IDS: tuple[int, ...] = (
    0x04B8,
    0x0519,
    0x1504,
    0x0419,
    0x1D90,
    0x2730,
    0x154F,
    0x0DD4,
    0x0416,
    0x0483,
    0x1FC9,
)

# Winbond/Nuvoton, STMicro, NXP: chips inside clone printers, scanners, STM32 virtual COM ports alike.
CHIP_VENDOR_IDS: frozenset[int] = frozenset({0x0416, 0x0483, 0x1FC9})

_STATUS_MASK, _STATUS_BITS = 0x93, 0x12  # a DLE EOT reply: 0xx1xx10
_ASB_BITS = 0x10  # first byte of an automatic status back frame: 0xx1xx00
_CONFIRM_HEADER, _CONFIRM_ID = 0x37, 0x22


def confirm_request(token: bytes) -> bytes:
    """``GS ( H`` fn48: "tell me when everything before this has printed", tagged with ``token``."""
    if len(token) != 4 or any(not 0x20 <= b <= 0x7E for b in token):
        raise ValueError("a GS ( H token is 4 printable ASCII bytes")
    return b"\x1d\x28\x48\x06\x00\x30\x30" + token


@dataclass(frozen=True)
class PrinterStatus:
    """What the printer said about itself (DLE EOT 1..4, or an automatic status back frame)."""

    offline: bool = False
    cover_open: bool = False
    feed_button: bool = False
    paper_near_end: bool = False
    paper_end: bool = False
    error: bool = False
    mechanical_error: bool = False
    autocutter_error: bool = False
    unrecoverable_error: bool = False
    recoverable_error: bool = False
    # Level of the drawer kick-out connector's pin 3 (DLE EOT 1 bit 2, ASB byte 1 bit 2): the
    # drawer's open/closed switch. Which level means "open" depends on the drawer (payments.md).
    drawer_pin3_high: bool = False
    raw: bytes = b""

    @classmethod
    def from_dle_eot(cls, printer: int, offline_cause: int, error_cause: int, paper: int) -> PrinterStatus:
        """From the replies to DLE EOT 1, 2, 3 and 4 (each already validated)."""
        return cls(
            offline=bool(printer & 0x08),
            drawer_pin3_high=bool(printer & 0x04),
            cover_open=bool(offline_cause & 0x04),
            feed_button=bool(offline_cause & 0x08),
            paper_end=bool(offline_cause & 0x20 or paper & 0x60),
            error=bool(offline_cause & 0x40),
            mechanical_error=bool(error_cause & 0x04),
            autocutter_error=bool(error_cause & 0x08),
            unrecoverable_error=bool(error_cause & 0x20),
            recoverable_error=bool(error_cause & 0x40),
            paper_near_end=bool(paper & 0x0C),
            raw=bytes((printer, offline_cause, error_cause, paper)),
        )

    @classmethod
    def from_asb(cls, frame: bytes) -> PrinterStatus:
        """From a 4-byte automatic status back frame (``GS a``)."""
        b1, b2, b3 = frame[0], frame[1], frame[2]
        return cls(
            offline=bool(b1 & 0x08),
            drawer_pin3_high=bool(b1 & 0x04),
            cover_open=bool(b1 & 0x20),
            feed_button=bool(b1 & 0x40),
            mechanical_error=bool(b2 & 0x04),
            autocutter_error=bool(b2 & 0x08),
            unrecoverable_error=bool(b2 & 0x20),
            recoverable_error=bool(b2 & 0x40),
            error=bool(b2 & 0x6C),
            paper_near_end=bool(b3 & 0x03),
            paper_end=bool(b3 & 0x0C),
            raw=bytes(frame[:4]),
        )

    def problems(self) -> list[str]:
        """Why the printer cannot print, in words for the person at the printer."""
        reasons = []
        if self.unrecoverable_error:
            reasons.append("unrecoverable error (switch the printer off and on)")
        if self.autocutter_error:
            reasons.append("autocutter error (paper jammed in the cutter?)")
        if self.mechanical_error:
            reasons.append("mechanical error (print head or paper jammed?)")
        if self.recoverable_error:
            reasons.append("recoverable error (print head overheated?)")
        if self.cover_open:
            reasons.append("cover open")
        if self.paper_end:
            reasons.append("paper end")
        if self.error and not reasons:
            reasons.append("printer error")
        if self.offline and not reasons:
            reasons.append("offline")
        return reasons

    def health(self) -> Health:
        problems = self.problems()
        if problems:
            return Health("failed", ", ".join(problems))
        if self.paper_near_end:
            return Health("degraded", "paper near end")
        return Health("ready")


@dataclass(frozen=True)
class PrintResult:
    """A job the printer confirmed and reported no error after.

    ``confirmed_by`` is ``"process-id"`` (the ``GS ( H`` echo came) or ``"status"`` (no echo
    asked for, or none came from a printer that does not do process ids: DLE EOT after the job's
    print time).
    """

    job_id: str
    bytes_sent: int
    status: PrinterStatus  # read after the confirmation
    seconds: float
    confirmed_by: Literal["process-id", "status"] = "process-id"

    @property
    def warning(self) -> str:
        """Something to tell staff although the job printed (e.g. "paper near end"), or ""."""
        return self.status.health().reason


class PrinterNotReady(DeviceError):
    """The printer reports a problem (paper end, cover open, error...).

    ``job_sent`` False: it was reported before sending, nothing was sent, reprint anywhere.
    ``job_sent`` True: it was reported while or after the job printed: count it as not printed.
    """

    def __init__(self, message: str, device_id: str | None, status: PrinterStatus, job_sent: bool) -> None:
        super().__init__(message, device_id)
        self.status = status
        self.job_sent = job_sent


@dataclass(frozen=True)
class PrinterTiming:
    """Every time limit the driver uses, in seconds (tests pass short ones)."""

    connect: float = 3.0
    status_reply: float = 0.5  # one DLE EOT answer; real printers answer within a few ms
    frame_rest: float = 0.3  # the rest of a frame once its first byte came
    settle: float = 0.05  # quiet time that lets late replies land after a timeout
    write_base: float = 2.0
    write_per_kb: float = 1.5  # 9600 baud serial moves about 1 KB/s
    confirm: float = 30.0  # a long kitchen ticket, or a logo, takes a while to print
    poll_interval: float = 0.5  # status polls while waiting for the confirmation
    # Confirming by status (printers without GS ( H): the time a job surely takes to print. The
    # slowest printers of this class (older 58 mm clones) feed about 50 mm/s; a double-height
    # line with its spacing is about 7 mm, so about 7 lines/s. We assume 6, plus the feed to the
    # cutter and the cut. Too slow a guess only delays the confirmation; too fast a one would
    # count a job as printed while paper can still run out under it.
    lines_per_second: float = 6.0
    feed_and_cut: float = 1.5

    @property
    def health_budget(self) -> float:
        return self.connect + 4 * self.status_reply + 4 * self.frame_rest + 2 * self.settle + 0.5

    def print_time(self, data: bytes) -> float:
        """How long ``data`` takes to print at the conservative line rate (for ``"status"``)."""
        return self.feed_and_cut + estimated_lines(data) / self.lines_per_second


def estimated_lines(data: bytes) -> float:
    """The paper a job feeds, in text lines, for the status wait: line feeds, ``ESC d n`` and
    ``GS V 65/66 n`` feeds, raster images (``GS v 0``: 24 dot rows a line, their pixel bytes
    skipped rather than read as commands), and a generous allowance per barcode and QR code."""
    lines, i, end = 0.0, 0, len(data)
    while i < end:
        found = (data.find(b"\n", i), data.find(b"\x1b", i), data.find(b"\x1d", i))
        i = min((j for j in found if j >= 0), default=end)  # text between is on lines already counted
        if i >= end:
            break
        if data[i] == 0x0A:
            lines, i = lines + 1, i + 1
        elif data.startswith(b"\x1bd", i) and i + 2 < end:  # ESC d n: feed n lines
            lines, i = lines + data[i + 2], i + 3
        elif data.startswith((b"\x1dVA", b"\x1dVB"), i) and i + 3 < end:  # feed n lines, then cut
            lines, i = lines + data[i + 3], i + 4
        elif data.startswith(b"\x1dv0", i) and i + 8 <= end:  # GS v 0 m xL xH yL yH pixels
            width_bytes, height = data[i + 4] | data[i + 5] << 8, data[i + 6] | data[i + 7] << 8
            lines, i = lines + height / 24, i + 8 + width_bytes * height
        elif data.startswith(b"\x1dk", i):  # a 1D barcode: at most 255 dots high, ~10 lines
            lines, i = lines + 10, i + 2
        elif data.startswith(b"\x1d(k\x03\x001Q", i):  # print the stored QR code
            lines, i = lines + 16, i + 8
        else:
            i += 1
    return lines


def _host_port(address: str) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address; the port defaults to 9100."""
    m = re.fullmatch(r"\[([^\]]+)\](?::(\d+))?", address)
    if m:
        return m.group(1), int(m.group(2) or 9100)
    if address.count(":") == 1:
        host, port = address.split(":")
        return host, int(port)
    return address, 9100


class EscposPrinter(Driver):
    """One ESC/POS printer. ``print_job`` prints and confirms; ``status``/``health`` ask it.

    ``connect`` makes the transport (a test gives any ``ByteTransport``); by default it comes
    from ``info``: ``tcp`` address ``host[:port]``, ``serial`` device path (``info.extra``
    ``baudrate``, ``bytesize``, ``parity``, ``stopbits``), ``usb`` by ``info.serial_number`` or
    address ``bus:address`` through pyusb (``usb_backend`` is handed to ``usb.core.find``).

    ``confirm`` is how jobs are confirmed (``"auto"``, ``"process-id"``, ``"status"``, see the
    module doc); by default ``info.extra["confirm"]`` (the ``[[device]]`` key), else ``"auto"``.
    What ``"auto"`` learned lasts as long as this driver object: the registry keeps one per
    device across reconnects, and a new one (the device failed or moved) tries ``GS ( H`` again.
    """

    name: ClassVar[str] = "escpos"
    kind = "printer"
    # Any printer-class interface (7), whoever made it; on a printer maker's vendor id also a
    # vendor-specific one (Epson's and Star's "vendor-defined class" USB mode). The chip makers'
    # ids clones ship with are on scanners and virtual COM ports too: by class only.
    usb_matches = (
        UsbMatch(interface_class=7),
        *(UsbMatch(vendor_id=vid, interface_class=0xFF) for vid in ESCPOS_VENDOR_IDS if vid not in CHIP_VENDOR_IDS),
    )
    zeroconf_types = ("_pdl-datastream._tcp.local.", "_printer._tcp.local.", "_ipp._tcp.local.")
    tcp_ports = (9100,)

    def __init__(
        self,
        info: DeviceInfo,
        *,
        connect: Connector | None = None,
        timing: PrinterTiming | None = None,
        usb_backend: object | None = None,
        confirm: ConfirmMode | None = None,
    ) -> None:
        super().__init__(info)
        mode = confirm or info.extra.get("confirm", "auto")
        if mode not in CONFIRM_MODES:
            raise ValueError(f"confirm must be one of {', '.join(CONFIRM_MODES)}, got {mode!r}")
        self.confirm: ConfirmMode = mode
        # Whether the printer answers GS ( H: None until "auto" has seen it answer or not.
        self._process_ids: bool | None = {"process-id": True, "status": False}.get(mode)
        self._connect = connect
        self.timing = timing or PrinterTiming()
        self._usb_backend = usb_backend
        self._transport: ByteTransport | None = None
        self._lock = asyncio.Lock()
        self._rx = bytearray()  # bytes read but not yet parsed into frames
        self._desynced = False  # a reply may still be on its way: settle before the next request
        self._confirmed: set[bytes] = set()  # tokens echoed outside a wait (stale or early)
        # Tokens start at a random point so a new process never takes an old job's late echo.
        self._token_seq = random.randrange(95**4)
        self.last_status: PrinterStatus | None = None
        self.last_status_at = 0.0
        self.last_asb: PrinterStatus | None = None
        self._last_health: Health | None = None

    @property
    def confirmed_by(self) -> Literal["process-id", "status"] | None:
        """How jobs are confirmed now; None while ``"auto"`` has not tried ``GS ( H`` yet."""
        if self._process_ids is None:
            return None
        return "process-id" if self._process_ids else "status"

    @property
    def label(self) -> str:
        return self._transport.label if self._transport else f"{self.info.transport}://{self.info.address}"

    # -- connection --------------------------------------------------------------------------
    async def open(self) -> None:
        if self._transport is not None:
            return
        try:
            async with asyncio.timeout(self.timing.connect):
                transport = await (self._connect or self._default_connect)()
        except (TimeoutError, DeviceTimeout) as exc:
            raise DeviceUnavailable(
                f"printer at {self.label} did not accept a connection within {self.timing.connect:.1f}s",
                self.info.device_id,
            ) from exc
        self._transport = transport
        self._rx.clear()
        self._desynced = True  # whatever a previous connection left behind is not for us

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()

    async def _default_connect(self) -> ByteTransport:
        info = self.info
        if info.transport == "tcp":
            host, port = _host_port(info.address)
            return await StreamTransport.tcp(host, port, timeout=self.timing.connect)
        if info.transport == "serial":
            extra = info.extra
            return await StreamTransport.serial(
                info.address,
                baudrate=int(extra.get("baudrate", 9600)),
                bytesize=int(extra.get("bytesize", 8)),
                parity=extra.get("parity", "N"),
                stopbits=float(extra.get("stopbits", 1)),
                timeout=self.timing.connect,
            )
        return await self._connect_usb()

    async def _connect_usb(self) -> ByteTransport:
        import usb.core

        from drivers.usb_transport import UsbTransport, device_matcher

        serial_number, address = self.info.serial_number, self.info.address
        match = device_matcher(serial_number, address)
        try:
            device = await asyncio.to_thread(usb.core.find, backend=self._usb_backend, custom_match=match)
        except usb.core.NoBackendError as exc:
            raise DeviceUnavailable(
                "libusb is not installed: cannot reach USB printers", self.info.device_id
            ) from exc
        if device is None:
            what = f"serial number {serial_number}" if serial_number else f"address {address}"
            raise DeviceUnavailable(f"USB printer with {what} is not plugged in", self.info.device_id)
        return await UsbTransport.open(device, timeout=self.timing.connect)

    @contextlib.asynccontextmanager
    async def _conversation(self) -> AsyncIterator[ByteTransport]:
        """Exclusive use of the connection; a failure leaves the connection in a known state."""
        async with self._lock:
            await self.open()
            transport = self._transport
            assert transport is not None
            try:
                yield transport
            except DeviceUnavailable:
                await self.close()  # gone: the next call reconnects
                raise
            except (DeviceTimeout, ProtocolError):
                self._desynced = True
                raise
            except BaseException:  # cancelled mid-request: a reply may still come
                self._desynced = True
                raise

    # -- frames ------------------------------------------------------------------------------
    async def _read_frame(self, t: ByteTransport, timeout: float) -> tuple[str, bytes]:
        """The next frame: ("status", 1 byte), ("asb", 4 bytes) or ("confirm", token)."""
        if not self._rx:
            self._rx += await t.read_some(max(0.001, timeout))
        first = self._rx[0]
        if first & _STATUS_MASK == _STATUS_BITS:
            size, kind = 1, "status"
        elif first & _STATUS_MASK == _ASB_BITS:
            size, kind = 4, "asb"
        elif first == _CONFIRM_HEADER:
            size, kind = 7, "confirm"
        else:
            self._rx.clear()
            raise ProtocolError(
                f"printer at {self.label} sent byte 0x{first:02x}, which is no status reply or known frame",
                self.info.device_id,
            )
        while len(self._rx) < size:
            try:
                self._rx += await t.read_some(self.timing.frame_rest)
            except DeviceTimeout as exc:
                got = bytes(self._rx)
                self._rx.clear()
                raise ProtocolError(
                    f"printer at {self.label} sent a truncated {kind} frame ({got.hex(' ')})",
                    self.info.device_id,
                ) from exc
        frame = bytes(self._rx[:size])
        del self._rx[:size]
        if kind == "confirm":
            if frame[1] != _CONFIRM_ID or frame[6] != 0:
                raise ProtocolError(
                    f"printer at {self.label} sent a malformed job confirmation ({frame.hex(' ')})",
                    self.info.device_id,
                )
            return kind, frame[2:6]
        if kind == "asb":
            self.last_asb = PrinterStatus.from_asb(frame)
        return kind, frame

    def _absorb_stale(self) -> None:
        """Take frames already buffered (nobody asked for them): keep echoes, drop the rest."""
        while self._rx:
            first = self._rx[0]
            if first & _STATUS_MASK == _STATUS_BITS:
                del self._rx[:1]  # a late answer to a request that timed out
            elif first & _STATUS_MASK == _ASB_BITS and len(self._rx) >= 4:
                self.last_asb = PrinterStatus.from_asb(bytes(self._rx[:4]))
                del self._rx[:4]
            elif first == _CONFIRM_HEADER and len(self._rx) >= 7:
                if self._rx[1] == _CONFIRM_ID and self._rx[6] == 0:
                    self._confirmed.add(bytes(self._rx[2:6]))
                del self._rx[:7]
            elif first in (_CONFIRM_HEADER,) or first & _STATUS_MASK == _ASB_BITS:
                return  # a frame still arriving: the next read completes it
            else:
                log.debug("%s: dropping stale byte 0x%02x", self.label, first)
                del self._rx[:1]

    async def _settle(self, t: ByteTransport) -> None:
        """Before a request: make sure no old reply can be taken for the new one."""
        self._rx += t.drain_input()
        if self._desynced:
            for _ in range(8):  # a device that never stops talking must not hold us forever
                try:
                    self._rx += await t.read_some(self.timing.settle)
                except DeviceTimeout:
                    break
            self._absorb_stale()
            self._rx.clear()  # a partial frame left after a timeout can only be stale
            self._desynced = False
        else:
            self._absorb_stale()

    # -- status ------------------------------------------------------------------------------
    async def _query_status(self, t: ByteTransport) -> PrinterStatus:
        await self._settle(t)
        replies: list[int] = []
        for n in (1, 2, 3, 4):
            await t.write(bytes((0x10, 0x04, n)), timeout=self.timing.status_reply + 1.0)
            replies.append(await self._status_reply(t, n))
        status = PrinterStatus.from_dle_eot(*replies)
        self.last_status, self.last_status_at = status, time.monotonic()
        return status

    async def _status_reply(self, t: ByteTransport, n: int) -> int:
        deadline = time.monotonic() + self.timing.status_reply
        for _ in range(32):  # frames in between (ASB, echoes) are fine, an endless stream is not
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                kind, frame = await self._read_frame(t, left)
            except DeviceTimeout:
                break
            if kind == "status":
                return frame[0]
            if kind == "confirm":
                self._confirmed.add(frame)
        raise DeviceTimeout(
            f"printer at {self.label} gave no answer to status request DLE EOT {n} "
            f"within {self.timing.status_reply:.2f}s (status unknown)",
            self.info.device_id,
        )

    async def status(self) -> PrinterStatus:
        """Ask the printer (DLE EOT 1..4). Raises DeviceTimeout (no answer: unknown),
        ProtocolError (garbled answer) or DeviceUnavailable (connection gone)."""
        if self._lock.locked() and self.last_status is not None:
            # A job holds the connection: it reads status before sending, polls it while waiting
            # for the confirmation and fails itself on a problem, so its latest reading is the
            # answer (asking again would only queue behind the job).
            return self.last_status
        async with asyncio.timeout(self.timing.health_budget + self.timing.confirm):
            async with self._conversation() as t:
                _, status = await self._query_status_reconnecting(t)
                return status

    async def _query_status_reconnecting(self, t: ByteTransport) -> tuple[ByteTransport, PrinterStatus]:
        """Status on the open connection; if that connection died since last use (the printer
        rebooted, a NAT forgot us), once more on a new one. Nothing has been sent for a job yet."""
        try:
            return t, await self._query_status(t)
        except DeviceUnavailable:
            await self.close()
            await self.open()
            assert self._transport is not None
            return self._transport, await self._query_status(self._transport)

    async def health(self) -> Health:
        """One bounded status round trip mapped to ready / degraded / failed. Never raises."""
        try:
            async with asyncio.timeout(self.timing.health_budget):
                health = (await self.status()).health()
        except (DeviceTimeout, TimeoutError):
            health = Health("failed", "no answer")
        except ProtocolError:
            health = Health("failed", "garbled status reply")
        except DeviceUnavailable:
            health = Health("failed", "not reachable")
        except DeviceError as exc:
            health = Health("failed", str(exc))
        except Exception as exc:  # the watchdog must always get an answer
            log.exception("%s: health check failed unexpectedly", self.label)
            health = Health("failed", f"driver error: {exc}")
        if health != self._last_health:
            # The device registry logs each change for the store (INFO/WARNING); this is the driver's view.
            log.debug("printer %s (%s): %s%s", self.info.device_id, self.label, health.state,
                      f" ({health.reason})" if health.reason else "")
            self._last_health = health
        return health

    # -- printing ----------------------------------------------------------------------------
    def _next_token(self) -> bytes:
        self._token_seq = (self._token_seq + 1) % 95**4
        n, out = self._token_seq, bytearray()
        for _ in range(4):
            n, digit = divmod(n, 95)
            out.append(0x20 + digit)
        return bytes(out)

    async def print_job(self, job_id: str, data: bytes) -> PrintResult:
        """Print ``data`` (ESC/POS bytes of one ticket) and wait until the printer confirms it.

        Returns only when the job printed. Raises ``PrinterNotReady`` (see ``job_sent``) when the
        printer reports a problem, or DeviceTimeout / DeviceUnavailable / ProtocolError when
        it stops answering: then the job was (partly) sent and may or may not have printed.
        """
        started = time.monotonic()
        write_timeout = self.timing.write_base + len(data) / 1024 * self.timing.write_per_kb
        # Each step below has its own limit; this one only guards the sum of them.
        budget = 3 * self.timing.health_budget + write_timeout
        if self._process_ids is not False:
            budget += self.timing.confirm
        if self._process_ids is not True:  # the status wait: print time, then as long for "offline"
            budget += 2 * self.timing.print_time(data) + self.timing.health_budget
        try:
            async with asyncio.timeout(budget):
                return await self._print_job(job_id, data, started, write_timeout)
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"job {job_id} did not finish within {budget:.0f}s, it may or may not have printed",
                self.info.device_id,
            ) from exc

    async def _print_job(self, job_id: str, data: bytes, started: float, write_timeout: float) -> PrintResult:
        async with self._conversation() as t:
            t, before = await self._query_status_reconnecting(t)
            problems = before.problems()
            if problems:
                raise PrinterNotReady(
                    f"printer refused job {job_id}: {', '.join(problems)}", self.info.device_id, before, False
                )
            token = self._next_token() if self._process_ids is not False else None
            self._confirmed.clear()  # echoes seen so far belong to earlier jobs
            try:
                await t.write(data + (confirm_request(token) if token else b""), timeout=write_timeout)
                sent_at = time.monotonic()
                if token is not None:
                    try:
                        await self._await_confirmation(t, token, job_id)
                    except _NotConfirmed:
                        if self._process_ids is not None:
                            raise  # "process-id", or a printer that has answered GS ( H before
                        await self._learn_no_process_ids(t, job_id)
                    else:
                        self._process_ids = True
                confirmed_by: Literal["process-id", "status"]
                if self._process_ids:
                    after, confirmed_by = await self._query_status(t), "process-id"
                else:
                    print_time = self.timing.print_time(data)
                    after, confirmed_by = await self._await_printed_by_status(t, job_id, sent_at, print_time), "status"
            except PrinterNotReady:
                raise
            except DeviceError as exc:
                detail = str(exc).removeprefix(f"{self.info.device_id}: ")  # named once is enough
                raise (DeviceTimeout if isinstance(exc, _NotConfirmed) else type(exc))(
                    f"job {job_id} was sent but not confirmed, it may or may not have printed: {detail}",
                    self.info.device_id,
                ) from exc
            problems = after.problems()
            if problems:
                raise PrinterNotReady(
                    f"job {job_id} not counted as printed: the printer reports {', '.join(problems)}",
                    self.info.device_id,
                    after,
                    True,
                )
        return PrintResult(job_id, len(data), after, time.monotonic() - started, confirmed_by)

    async def _await_confirmation(self, t: ByteTransport, token: bytes, job_id: str) -> None:
        deadline = time.monotonic() + self.timing.confirm
        next_poll = time.monotonic() + self.timing.poll_interval
        while token not in self._confirmed:
            now = time.monotonic()
            if now >= deadline:
                hint = (
                    ' (a printer that ignores GS ( H, as many clones do, needs confirm = "status" or "auto")'
                    if self.confirm == "process-id"
                    else ""
                )
                raise _NotConfirmed(
                    f"printer at {self.label} did not confirm job {job_id} (GS ( H process id) "
                    f"within {self.timing.confirm:.1f}s{hint}",
                    self.info.device_id,
                )
            if now >= next_poll:
                status = await self._query_status(t)
                problems = status.problems()
                if problems:
                    raise PrinterNotReady(
                        f"job {job_id} stopped: {', '.join(problems)}", self.info.device_id, status, True
                    )
                next_poll = time.monotonic() + self.timing.poll_interval
                continue
            try:
                kind, frame = await self._read_frame(t, min(deadline, next_poll) - now)
            except DeviceTimeout:
                continue
            if kind == "confirm":
                self._confirmed.add(frame)  # ours ends the loop; another job's echo is stale
            elif kind == "asb" and self.last_asb is not None and self.last_asb.problems():
                next_poll = time.monotonic()  # the printer says it stopped: confirm with DLE EOT now
        self._confirmed.discard(token)

    async def _learn_no_process_ids(self, t: ByteTransport, job_id: str) -> None:
        """``"auto"``: GS ( H went unanswered. If the printer says it is fine, it simply does not
        do process ids: confirm by status from now on. Anything else fails the job as it is."""
        status = await self._query_status(t)
        problems = status.problems()
        if problems:
            raise PrinterNotReady(
                f"job {job_id} not counted as printed: the printer reports {', '.join(problems)}",
                self.info.device_id,
                status,
                True,
            )
        self._process_ids = False
        log.warning(
            "printer %s (%s) left GS ( H (process id) unanswered for %gs while reporting no error: "
            "it does not confirm jobs by process id; its jobs are confirmed by status (DLE EOT after "
            'the print time) from now on. Set confirm = "status" in its [[device]] to skip this first wait.',
            self.info.device_id,
            self.label,
            self.timing.confirm,
        )

    async def _await_printed_by_status(
        self, t: ByteTransport, job_id: str, sent_at: float, print_time: float
    ) -> PrinterStatus:
        """The status confirmation: the printer answers DLE EOT at once even with the job still in
        its buffer, so only a reading taken once ``print_time`` has passed since sending says
        anything about the job. Polls all along so a problem fails the job at once; "offline" with
        no cause (e.g. while someone holds the feed button) is waited out for another ``print_time``."""
        done_at = sent_at + print_time
        give_up = done_at + print_time
        while True:
            asked_at = time.monotonic()
            status = await self._query_status(t)
            problems = status.problems()
            if problems and problems != ["offline"]:
                raise PrinterNotReady(
                    f"job {job_id} not counted as printed: the printer reports {', '.join(problems)}",
                    self.info.device_id,
                    status,
                    True,
                )
            if not problems and asked_at >= done_at:
                return status
            now = time.monotonic()
            if now >= give_up:
                raise PrinterNotReady(
                    f"job {job_id} not counted as printed: the printer was still offline "
                    f"{now - sent_at:.1f}s after it was sent",
                    self.info.device_id,
                    status,
                    True,
                )
            next_poll = now + self.timing.poll_interval
            if now < done_at:
                next_poll = min(next_poll, done_at)
            await asyncio.sleep(next_poll - now)


class _NotConfirmed(DeviceTimeout):
    """No ``GS ( H`` echo within the confirmation timeout (the printer itself kept answering)."""
