"""The ESC/POS receipt and kitchen printer driver (Epson and the many printers that copy it).

What it matches: USB printer-class interfaces (and vendor-class ones of printer makers), the LAN printer
DNS-SD types and raw port 9100. How it talks: any ``ByteTransport`` (TCP, serial with its flow
control, USB).

How it reports health depends on the printer's status mode (``[[device]] status``, see
drivers/escpos_profile.py): ``full`` asks ``DLE EOT 1..4``, ``basic`` ``DLE EOT 1..3`` (models
without n=4), ``asb`` re-arms automatic status back (``GS a``) and reads the 4-byte frame,
``none`` reads nothing (the connection is all it knows), and ``auto`` (the default) learns which
of these the printer does at first contact: a reply to ``DLE EOT 1`` then 2-4, else an ASB
frame, else (a USB interface without a bulk-IN endpoint) none. Each reply is validated
(``byte & 0x93 == 0x12``). Silence is *unknown*, never "offline": ``health()`` reports a probe
without an answer as ``unknown`` (a *missed* probe) and the watchdog fails the printer only
after several in a row (edgehub/devices/watchdog.py). A printer busy with our data is not probed
as dead: while a job holds the connection ``health()`` reports what the job last saw, and a
request that goes unanswered while the printer may still be working through data we sent
(``busy_until``) is no miss.

The status read is not a precondition for printing: printers are asked only what their mode
says they answer, and before a job the printer is asked until it answers or misses
``PrinterTiming.missed_limit`` requests in a row (counting the watchdog's), in which case
nothing is sent (``PrinterNoAnswer.job_sent`` False) and the job goes to a spare as it is.

How it knows a job printed depends on ``confirm`` (``[[device]] confirm = ...``):

- ``"process-id"``: after the job it sends Epson's ``GS ( H`` fn48 with a 4-byte token that is
  new for every job; the printer echoes ``37 22 token 00`` once everything before it has printed.
  A job counts as printed only when that echo came and no status read while waiting showed an error.
- ``"status"``, for the many clones (Xprinter/Zjiang, some Citizen/Bixolon) that do not know
  ``GS ( H`` (and print its bytes as text): DLE EOT is a *real-time* command, answered at once
  even while the printer still works through its buffer, so "no error" right after sending proves
  nothing. The driver waits for as long as the job takes at a conservative line rate
  (``PrinterTiming.print_time``), and the job counts as printed only when a status read asked
  after that reports online, no error, paper in, cover closed. Error, paper end or cover open
  at any point fails it; "offline" with no cause is waited out for at most another ``print_time``.
- ``"auto"`` (the default): ``GS ( H`` only for a printer that says it is an Epson (its
  ``vendor``, or its answer to ``GS I 66``, the maker name); every other printer is confirmed by
  status, so a clone never gets a ``GS ( H`` to print as text nor holds a job for ``confirm``.

A printer in status mode ``none`` cannot confirm anything: a job is done once all its bytes
went out (``PrintResult.confirmed_by == "none"``: sent, unconfirmed).

While waiting it polls status without ever piling requests up: a reply that comes late (a LAN
printer that answers only once the print data before the request is processed) is taken when
it comes; only a printer that says nothing at all for longer than the job could take, plus
``missed_limit`` status requests, has stopped answering.

The bytes coming back are a stream of frames, and not all of them answer us: automatic status
back (4 bytes, first matches ``0xx1xx00``), late answers to a request that timed out (counted,
so they are never taken for the answer to a later one), echoes of earlier jobs' tokens, ``GS I``
text (``_ … NUL``), and XON/XOFF (``11``/``13``), which are flow control and never status. Every
read goes through one frame parser so none of them is misread as the reply we wait for.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import ClassVar, Literal, get_args

from drivers.base import DeviceInfo, Driver, FieldCheck, FieldStep, Health, UsbMatch
from drivers.escpos_profile import STATUS_MODES, PrinterProfile, StatusMode, profile_from_settings
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
    "PrinterNoAnswer",
    "PrinterNotReady",
    "PrinterStatus",
    "PrinterTiming",
    "PrinterUnreachable",
    "confirm_request",
    "host_port",
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
_INFO_HEADER = 0x5F  # GS I 65-69 reply: "_" text NUL
_XON, _XOFF = 0x11, 0x13  # software flow control; never a status (bit 4 set where it must be 0)
_ASB_REQUEST = b"\x1da\x0f"  # GS a: drawer, online, error and paper items; sends the status once
_MAKER_REQUEST = b"\x1dIB"  # GS I 66: the maker's name
#: Printer makers whose ESC/POS implements GS ( H fn48 (process id response).
PROCESS_ID_MAKERS = ("EPSON",)
_QUERIES: dict[str, tuple[int, ...]] = {"full": (1, 2, 3, 4), "basic": (1, 2, 3)}


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
    def from_dle_eot(
        cls, printer: int, offline_cause: int, error_cause: int, paper: int | None = None
    ) -> PrinterStatus:
        """From the replies to DLE EOT 1, 2, 3 and 4 (each already validated; ``paper`` None
        for a printer without DLE EOT 4: paper end still shows in DLE EOT 2, near end is unknown)."""
        return cls(
            offline=bool(printer & 0x08),
            drawer_pin3_high=bool(printer & 0x04),
            cover_open=bool(offline_cause & 0x04),
            feed_button=bool(offline_cause & 0x08),
            paper_end=bool(offline_cause & 0x20 or (paper or 0) & 0x60),
            error=bool(offline_cause & 0x40),
            mechanical_error=bool(error_cause & 0x04),
            autocutter_error=bool(error_cause & 0x08),
            unrecoverable_error=bool(error_cause & 0x20),
            recoverable_error=bool(error_cause & 0x40),
            paper_near_end=bool((paper or 0) & 0x0C),
            raw=bytes((printer, offline_cause, error_cause) + (() if paper is None else (paper,))),
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

    ``confirmed_by`` is ``"process-id"`` (the ``GS ( H`` echo came), ``"status"`` (a clean
    status read asked after the job's print time) or ``"none"`` (a printer that reports nothing:
    every byte was sent, nothing more is known).
    """

    job_id: str
    bytes_sent: int
    status: PrinterStatus  # read after the confirmation (empty for "none")
    seconds: float
    confirmed_by: Literal["process-id", "status", "none"] = "process-id"

    @property
    def confirmed(self) -> bool:
        return self.confirmed_by != "none"

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


class PrinterNoAnswer(DeviceTimeout):
    """The printer answered none of ``missed_limit`` status requests in a row before a job:
    nothing was sent (``job_sent`` False), the job can go to a spare as it is."""

    job_sent = False


class PrinterUnreachable(DeviceUnavailable):
    """The printer could not be reached before a job: nothing was sent (``job_sent`` False)."""

    job_sent = False


@dataclass(frozen=True)
class PrinterTiming:
    """Every time limit the driver uses, in seconds (tests pass short ones)."""

    connect: float = 3.0
    status_reply: float = 0.5  # one DLE EOT answer; real printers answer within a few ms
    frame_rest: float = 0.3  # the rest of a frame once its first byte came
    settle: float = 0.05  # slack in the health budget for replies that arrive in pieces
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
    # Status requests in a row a printer may leave unanswered before it counts as not answering
    # (the watchdog's printer_missed_probes; see docs/devices.md for the default).
    missed_limit: int = 2

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


def host_port(address: str) -> tuple[str, int]:
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
    ``baudrate``, ``bytesize``, ``parity``, ``stopbits``, ``flow_control``), ``usb`` by
    ``info.serial_number`` or address ``bus:address`` through pyusb (``usb_backend`` is handed
    to ``usb.core.find``).

    ``profile`` is the printer's profile (drivers/escpos_profile.py); by default it is made from
    ``info.extra`` and ``info.model``. ``confirm`` is how jobs are confirmed (``"auto"``,
    ``"process-id"``, ``"status"``, see the module doc); by default ``info.extra["confirm"]``.
    What ``"auto"`` learned (status mode, process ids) lasts as long as this driver object: the
    registry keeps one per device across reconnects, and a new one learns again.
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
        profile: PrinterProfile | None = None,
    ) -> None:
        super().__init__(info)
        mode = confirm or info.extra.get("confirm", "auto")
        if mode not in CONFIRM_MODES:
            raise ValueError(f"confirm must be one of {', '.join(CONFIRM_MODES)}, got {mode!r}")
        self.confirm: ConfirmMode = mode
        self.profile = profile or profile_from_settings(info.extra, info.model)
        if self.profile.status not in STATUS_MODES:  # pragma: no cover - the profile checks it
            raise ValueError(f"status must be one of {', '.join(STATUS_MODES)}")
        # The status mode in use: the profile's, or (auto) what the printer showed; None until learned.
        self._status: StatusMode | None = None if self.profile.status == "auto" else self.profile.status
        # Whether the printer answers GS ( H: None until "auto" has asked the maker.
        self._process_ids: bool | None = {"process-id": True, "status": False}.get(mode)
        self._connect = connect
        self.timing = timing or PrinterTiming()
        self._usb_backend = usb_backend
        self._transport: ByteTransport | None = None
        self._lock = asyncio.Lock()
        self._rx = bytearray()  # bytes read but not yet parsed into frames
        # The status request whose replies are still due: a late reply completes it rather
        # than answer a newer request, and no new request goes out while one is due.
        self._pending: _Pending | None = None
        self._confirmed: set[bytes] = set()  # tokens echoed outside a wait (stale or early)
        self._info: list[bytes] = []  # GS I text replies not yet taken
        # Tokens start at a random point so a new process never takes an old job's late echo.
        self._token_seq = random.randrange(95**4)
        self.missed = 0  # status requests in a row without an answer (by a job or the watchdog)
        self.busy_until = 0.0  # the printer may still work through data we sent until then
        self.last_status: PrinterStatus | None = None
        self.last_status_at = 0.0
        self.last_asb: PrinterStatus | None = None
        self.last_heard = 0.0  # when the printer last sent anything
        self._writing = False  # the job being printed has started to go out
        self._last_health: Health | None = None

    @property
    def status_mode(self) -> StatusMode | None:
        """The status mode in use; None while ``auto`` has not seen the printer answer yet."""
        return self._status

    @property
    def confirmed_by(self) -> Literal["process-id", "status", "none"] | None:
        """How jobs are confirmed now; None while ``"auto"`` has not asked the printer yet."""
        if self._status == "none":
            return "none"
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
        self._pending = None  # a new connection owes us nothing
        if self.profile.status == "auto" and not getattr(transport, "can_read", True):
            self._learned("none", "its USB interface has no IN endpoint: it can never answer")

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            with contextlib.suppress(Exception):
                await transport.close()

    async def _default_connect(self) -> ByteTransport:
        info = self.info
        if info.transport == "tcp":
            host, port = host_port(info.address)
            return await StreamTransport.tcp(host, port, timeout=self.timing.connect)
        if info.transport == "serial":
            extra = info.extra
            flow = self.profile.flow_control
            return await StreamTransport.serial(
                info.address,
                baudrate=int(extra.get("baudrate", 9600)),
                bytesize=int(extra.get("bytesize", 8)),
                parity=extra.get("parity", "N"),
                stopbits=float(extra.get("stopbits", 1)),
                timeout=self.timing.connect,
                rtscts=flow == "rtscts",
                dsrdtr=flow == "dsrdtr",
                xonxoff=flow == "xonxoff",
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
            except ProtocolError:
                self._rx.clear()  # garbage: whatever is buffered is not a frame start
                raise

    # -- frames ------------------------------------------------------------------------------
    def _frame_size(self) -> tuple[str, int] | None:
        """The kind and size of the frame starting ``_rx`` (after flow-control bytes are
        dropped); None when ``_rx`` is empty."""
        while self._rx and self._rx[0] in (_XON, _XOFF):
            del self._rx[:1]
        if not self._rx:
            return None
        first = self._rx[0]
        if first & _STATUS_MASK == _STATUS_BITS:
            return "status", 1
        if first & _STATUS_MASK == _ASB_BITS:
            return "asb", 4
        if first == _CONFIRM_HEADER:
            return "confirm", 7
        if first == _INFO_HEADER:
            end = self._rx.find(0)
            return "info", (end + 1 if end >= 0 else 0)
        return "garbage", 1

    async def _read_frame(self, t: ByteTransport, timeout: float) -> tuple[str, bytes]:
        """The next frame: ("status", 1 byte), ("asb", 4 bytes), ("confirm", token) or
        ("info", GS I text). Raises DeviceTimeout when nothing comes within ``timeout``."""
        deadline = time.monotonic() + max(0.001, timeout)
        while (found := self._frame_size()) is None:
            self._rx += await t.read_some(max(0.001, deadline - time.monotonic()))
            self.last_heard = time.monotonic()
        kind, size = found
        if kind == "garbage":
            first = self._rx[0]
            self._rx.clear()
            raise ProtocolError(
                f"printer at {self.label} sent byte 0x{first:02x}, which is no status reply or known frame",
                self.info.device_id,
            )
        while True:
            data = bytes(b for b in self._rx if b not in (_XON, _XOFF))  # XOFF may sit inside a frame
            if kind == "info":
                end = data.find(0)
                if end >= 0 or len(data) > 81:
                    size = end + 1 if end >= 0 else 81
                    break
            elif len(data) >= size:
                break
            try:
                self._rx += await t.read_some(self.timing.frame_rest)
                self.last_heard = time.monotonic()
            except DeviceTimeout as exc:
                got = bytes(self._rx)
                self._rx.clear()
                raise ProtocolError(
                    f"printer at {self.label} sent a truncated {kind} frame ({got.hex(' ')})",
                    self.info.device_id,
                ) from exc
        frame = data[:size]
        self._rx[:] = data[size:]
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

    def _dispatch(self, kind: str, frame: bytes) -> None:
        """Route one frame: status replies and ASB frames to the request that is due, echoes to
        ``_confirmed``, GS I text to ``_info``; a status byte nobody asked for is dropped."""
        p = self._pending
        if kind == "status":
            if p is not None and len(p.replies) < p.want_status:
                p.replies.append(frame[0])
            else:
                log.debug("%s: dropping unrequested status byte 0x%02x", self.label, frame[0])
        elif kind == "asb":
            if p is not None and p.want_asb:
                p.asb += 1
        elif kind == "confirm":
            self._confirmed.add(frame)
        elif kind == "info":
            self._info.append(frame)

    def _take_buffered(self, t: ByteTransport) -> None:
        """Take the frames already received (late replies, echoes, ASB frames)."""
        self._rx += t.drain_input()
        while (found := self._frame_size()) is not None:
            kind, size = found
            if kind == "garbage":
                log.debug("%s: dropping stray byte 0x%02x", self.label, self._rx[0])
                del self._rx[:1]
                continue
            if size == 0 or len(self._rx) < size:
                return  # a frame still arriving: the next read completes it
            frame = bytes(self._rx[:size])
            del self._rx[:size]
            if kind == "asb":
                self.last_asb = PrinterStatus.from_asb(frame)
            elif kind == "confirm":
                if frame[1] != _CONFIRM_ID or frame[6] != 0:
                    continue
                frame = frame[2:6]
            self._dispatch(kind, frame)

    def _expired(self, p: _Pending) -> bool:
        """A request whose replies are so late they are not coming (lost with a dead spell)."""
        grace = 2 * self.timing.status_reply + 0.5
        return time.monotonic() > max(p.asked_at + grace, self.busy_until + grace)

    async def _ask(self, t: ByteTransport, mode: str, discard: bool = False) -> _Pending:
        """The request that is due, or a new one in ``mode`` when none is (or it expired)."""
        p = self._pending
        if p is not None and not p.complete and not self._expired(p):
            return p
        if mode == "asb":
            await t.write(_ASB_REQUEST, timeout=self.timing.status_reply + 1.0)
            p = _Pending(time.monotonic(), mode, 0, 1, discard=discard)
        else:
            queries = _QUERIES.get(mode, (1,))
            await t.write(b"".join(bytes((0x10, 0x04, n)) for n in queries), timeout=self.timing.status_reply + 1.0)
            p = _Pending(time.monotonic(), mode, len(queries), 0, discard=discard)
        self._pending = p
        return p

    async def _wait_for(self, t: ByteTransport, p: _Pending, until: float) -> bool:
        """Read frames until ``p`` is complete (True) or ``until`` (False: it stays due)."""
        for _ in range(64):  # frames in between (ASB, echoes) are fine, an endless stream is not
            if p.complete:
                break
            left = until - time.monotonic()
            if left <= 0:
                return False
            try:
                kind, frame = await self._read_frame(t, left)
            except DeviceTimeout:
                return False
            self._dispatch(kind, frame)
        if not p.complete:
            return False
        if self._pending is p:
            self._pending = None
        return True

    def _reading(self, p: _Pending) -> PrinterStatus:
        if p.mode == "asb":
            assert self.last_asb is not None
            return self._got_status(self.last_asb)
        return self._got_status(PrinterStatus.from_dle_eot(*p.replies[:4]))

    def _got_status(self, status: PrinterStatus) -> PrinterStatus:
        self.missed = 0
        self.last_status, self.last_status_at = status, time.monotonic()
        return status

    # -- status ------------------------------------------------------------------------------
    def _learned(self, mode: StatusMode, why: str) -> None:
        self._status = mode
        log.log(
            logging.INFO if mode == "full" else logging.WARNING,
            "printer %s (%s) reports status as %r (%s); set status = %r in its [[device]] to skip this check",
            self.info.device_id, self.label, mode, why, mode,
        )

    async def _read_status(self, t: ByteTransport) -> PrinterStatus:
        """One status reading in the printer's mode (learning it first under ``auto``); the
        replies to a request still due count as the reading. Raises DeviceTimeout when the
        printer does not answer (a *missed* request)."""
        self._take_buffered(t)
        mode = self._status or await self._learn_status(t)
        if mode == "none":
            raise DeviceUnavailable("printer does not report status (status = none)", self.info.device_id)
        while True:
            p = await self._ask(t, mode)
            if not await self._wait_for(t, p, time.monotonic() + self.timing.status_reply):
                what = ("automatic status back (GS a)" if p.mode == "asb"
                        else f"status request DLE EOT {len(p.replies) + 1}")
                raise DeviceTimeout(
                    f"printer at {self.label} gave no answer to {what} within "
                    f"{self.timing.status_reply:.2f}s (status unknown)",
                    self.info.device_id,
                )
            if not p.discard and p.mode == mode:
                return self._reading(p)

    async def _learn_status(self, t: ByteTransport) -> StatusMode:
        """``auto``: which status the printer gives. DLE EOT 1 answered: 2 and 3 then 4 decide
        full or basic; unanswered: an ASB frame after GS a means asb. Nothing: DeviceTimeout
        (a miss; a dead printer and a mute one look alike, so ``none`` is never guessed here)."""
        reply = self.timing.status_reply
        p = await self._ask(t, "learn", discard=True)  # DLE EOT 1 (or what an earlier try left due)
        answered = await self._wait_for(t, p, time.monotonic() + reply)
        if answered and p.mode == "asb":
            self._learned("asb", "it answers no DLE EOT but sends automatic status back")
            return "asb"
        if answered:
            rest = await self._ask(t, "basic", discard=True)
            if not await self._wait_for(t, rest, time.monotonic() + reply):
                raise DeviceTimeout(
                    f"printer at {self.label} answered DLE EOT 1 but not 2 and 3 within {reply:.2f}s "
                    "(status unknown)", self.info.device_id,
                )
            self._pending = fourth = _Pending(time.monotonic(), "learn", 1, 0, discard=True)
            await t.write(b"\x10\x04\x04", timeout=reply + 1.0)
            if await self._wait_for(t, fourth, time.monotonic() + reply):
                self._learned("full", "it answers DLE EOT 1-4")
                first, second, third = rest.replies[:3]
                self._got_status(PrinterStatus.from_dle_eot(first, second, third, fourth.replies[0]))
            else:
                self._pending = None  # n=4 is not a request it knows: no reply is coming
                self._learned("basic", "it answers DLE EOT 1-3 but not 4")
                self._got_status(PrinterStatus.from_dle_eot(*rest.replies[:3]))
            return self._status or "full"
        if p.mode == "learn":
            self._pending = None  # DLE EOT 1 went unanswered: ask for automatic status back
            asb = await self._ask(t, "asb", discard=True)
            if await self._wait_for(t, asb, time.monotonic() + reply):
                self._learned("asb", "it answers no DLE EOT but sends automatic status back")
                if self.last_asb is not None:
                    self._got_status(self.last_asb)
                return "asb"
        raise DeviceTimeout(
            f"printer at {self.label} answered neither DLE EOT 1 nor GS a within {reply:.2f}s "
            '(status unknown; a printer that never answers needs status = "none" in its [[device]])',
            self.info.device_id,
        )

    async def status(self) -> PrinterStatus:
        """Ask the printer. Raises DeviceTimeout (no answer: unknown), ProtocolError (garbled
        answer) or DeviceUnavailable (connection gone, or a printer in status mode none)."""
        if self._lock.locked() and self.last_status is not None:
            # A job holds the connection: it polls status while it waits and fails itself on a
            # problem, so its latest reading is the answer (asking again would queue behind it).
            return self.last_status
        async with asyncio.timeout(self.timing.health_budget + self.timing.confirm):
            async with self._conversation() as t:
                _, status = await self._status_reconnecting(t)
                return status

    async def _status_reconnecting(self, t: ByteTransport) -> tuple[ByteTransport, PrinterStatus]:
        """Status on the open connection; if that connection died since last use (the printer
        rebooted, a NAT forgot us), once more on a new one. Nothing has been sent for a job yet."""
        try:
            return t, await self._read_status(t)
        except DeviceUnavailable:
            if self._status == "none":
                raise
            await self.close()
            await self.open()
            assert self._transport is not None
            return self._transport, await self._read_status(self._transport)

    async def health(self) -> Health:
        """One bounded probe mapped to ready / degraded / failed, or ``unknown`` when the printer
        did not answer (a missed probe: the watchdog decides when misses mean failed). Never raises."""
        try:
            async with asyncio.timeout(self.timing.health_budget):
                health = await self._probe()
        except (DeviceTimeout, TimeoutError) as exc:
            if time.monotonic() < self.busy_until:
                # Still working through data we sent: replies wait behind it on many LAN models.
                health = self.last_status.health() if self.last_status else Health("ready")
            else:
                self.missed += 1
                log.debug("%s: missed probe %d: %s", self.label, self.missed, exc)
                health = Health("unknown", "no answer")
        except ProtocolError:
            health = Health("failed", "garbled status reply")
        except DeviceUnavailable as exc:
            health = Health("failed", "not reachable" if self._status != "none" else str(exc))
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

    async def _probe(self) -> Health:
        if self._lock.locked():
            # A job holds the connection: a busy printer is not probed (the job watches it).
            return self.last_status.health() if self.last_status else Health("ready")
        async with self._conversation() as t:
            if self._status == "none":
                if getattr(t, "dead", False):
                    raise DeviceUnavailable("connection closed by the printer", self.info.device_id)
                return Health("ready")
            _, status = await self._status_reconnecting(t)
            return status.health()

    # -- the installer's field check -------------------------------------------------------
    async def _raw_reply(self, t: ByteTransport, request: bytes, want: int, timeout: float) -> bytes:
        """Send ``request`` and return every byte that came back within ``timeout`` (at most
        ``want``, flow-control bytes dropped), for the field check's report."""
        self._take_buffered(t)
        self._rx.clear()
        self._pending = None
        await t.write(request, timeout=timeout + 1.0)
        got = bytearray()
        deadline = time.monotonic() + timeout
        while len(got) < want:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                chunk = await t.read_some(left)
            except DeviceTimeout:
                break
            self.last_heard = time.monotonic()
            got += bytes(b for b in chunk if b not in (_XON, _XOFF))
            if request.startswith(b"\x1dI") and request[2] >= 65 and 0 in got:
                break  # GS I text ends with NUL
        return bytes(got)

    async def field_check(self, wait_s: float) -> FieldCheck:
        """Ask the printer everything its profile depends on, one request at a time, and show
        the raw bytes of every answer: DLE EOT 1-4, automatic status back (GS a), the printer id
        (GS I 1-3) and its maker, model and font language (GS I 66, 67, 69); print a test page in
        the configured code page with Chinese and an emoji; infer the status mode and how it
        prints Chinese from what came back (``FieldCheck.profile``)."""
        steps: list[FieldStep] = []
        profile: dict[str, str] = {}
        reply = max(self.timing.status_reply, 0.5)
        try:
            async with asyncio.timeout(max(wait_s, 5.0) + 30 * reply + self.timing.confirm):
                async with self._conversation() as t:
                    steps.append(FieldStep("connection", True, f"open: {self.label}"))
                    answered = await self._check_status(t, steps, reply)
                    ids = await self._check_ids(t, steps, reply)
                profile["status"] = ("full" if {1, 2, 3, 4} <= answered else "basic" if {1, 2, 3} <= answered
                                     else "asb" if -1 in answered else "none")
                profile["cjk"] = _infer_cjk(ids)
                steps.append(await self._test_page(profile["status"], wait_s))
        except DeviceUnavailable as exc:
            steps.append(FieldStep("connection", False, f"cannot reach the printer: {exc}"))
        except (DeviceError, TimeoutError) as exc:
            steps.append(FieldStep("field check", False, f"stopped: {exc or 'took too long'}"))
        return FieldCheck(tuple(steps), profile)

    async def _check_status(self, t: ByteTransport, steps: list[FieldStep], reply: float) -> set[int]:
        answered: dict[int, int] = {}
        meaning = {1: "printer (bit 2 drawer pin 3, bit 3 offline)",
                   2: "offline cause (bit 2 cover, bit 3 feed button, bit 5 paper end, bit 6 error)",
                   3: "error cause (bit 2 mechanical, bit 3 cutter, bit 5 unrecoverable, bit 6 auto-recoverable)",
                   4: "paper sensor (bits 2-3 near end, bits 5-6 paper end)"}
        for n in (1, 2, 3, 4):
            raw = await self._raw_reply(t, bytes((0x10, 0x04, n)), 1, reply)
            valid = len(raw) == 1 and raw[0] & _STATUS_MASK == _STATUS_BITS
            if valid:
                answered[n] = raw[0]
            # No answer is a fact about the model (status basic / asb / none), not a failure;
            # bytes that are no status reply are.
            detail = (f"0x{raw[0]:02x}: {meaning[n]}" if valid else
                      f"not a status byte: {raw.hex(' ')}" if raw else f"no answer within {reply:g}s")
            steps.append(FieldStep(f"DLE EOT {n}", valid or not raw, detail, raw))
        raw = await self._raw_reply(t, _ASB_REQUEST, 4, reply)
        asb = len(raw) == 4 and raw[0] & _STATUS_MASK == _ASB_BITS
        now: PrinterStatus | None = None
        if asb:
            now = self.last_asb = PrinterStatus.from_asb(raw)
        steps.append(FieldStep(
            "automatic status back (GS a)", asb or not raw,
            f"frame {raw.hex(' ')}" if asb else f"not a status frame: {raw.hex(' ')}" if raw else
            "not sent (fine: DLE EOT answers)" if answered else
            'no answer: the printer reports no status (status = "none"; jobs will be sent, unconfirmed)',
            raw,
        ))
        if all(n in answered for n in (1, 2, 3)):
            now = PrinterStatus.from_dle_eot(answered[1], answered[2], answered[3], answered.get(4))
        if now is not None:
            steps.append(FieldStep("status now", now.health().usable, now.health().reason or "ready"))
        return set(answered) | ({-1} if asb else set())

    async def _check_ids(self, t: ByteTransport, steps: list[FieldStep], reply: float) -> dict[str, bytes]:
        ids: dict[str, bytes] = {}
        for n, name in ((1, "model id"), (2, "type id"), (3, "version id")):
            raw = await self._raw_reply(t, b"\x1dI" + bytes((n,)), 1, reply)
            ids[name] = raw
            detail = f"0x{raw[0]:02x}" if raw else "no answer"
            if n == 2 and raw:
                detail += f": multi-byte (Chinese) font {'yes' if raw[0] & 0x01 else 'no'}"
            steps.append(FieldStep(f"GS I {n} ({name})", True, detail, raw))  # optional: clones may not answer
        for n, name in ((66, "maker"), (67, "model"), (69, "font language")):
            raw = await self._raw_reply(t, b"\x1dI" + bytes((n,)), 82, reply)
            ids[name] = raw
            text = raw[1:].split(b"\0", 1)[0].decode("ascii", "replace") if raw[:1] == b"_" else ""
            steps.append(FieldStep(f"GS I {n} ({name})", True, repr(text) if raw else "no answer (optional)", raw))
        return ids

    async def _test_page(self, status: str, wait_s: float) -> FieldStep:
        from drivers.escpos_render import Ticket, render

        p = self.profile
        page = (Ticket().title("edgehub test page")
                .text(f"{p.columns} columns, {p.dots} dots, {p.codepage}, cjk {p.cjk}")
                .text("中文测试: 宫保鸡丁 麻婆豆腐")
                .text("Emoji: 🌶️ ☕ 🍜")
                .text("Crème brûlée 5.50")
                .rule()
                .text("<" + "-" * (p.columns - 2) + ">")
                .cut())
        data = render(page, p)
        try:
            if status == "none" or self._status == "none":
                async with self._conversation() as t:
                    await t.write(data, timeout=self.timing.write_base + len(data) / 1024 * self.timing.write_per_kb)
                return FieldStep("test page", True, "sent (the printer cannot confirm it): check the paper: Chinese, "
                                 "the emoji and the arrow line across the full width")
            if self._status is None:
                self._status = status  # type: ignore[assignment]  # one of the modes, inferred above
            result = await self.print_job("field-check", data)
        except DeviceError as exc:
            return FieldStep("test page", False, f"not printed: {exc}")
        return FieldStep("test page", True, f"printed ({result.confirmed_by}): check the paper: Chinese, the emoji "
                         "and the arrow line across the full width (else fix columns/paper_mm)")

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

        Returns only when the job printed (or, for a printer in status mode none, was sent in
        full). Raises ``PrinterNotReady`` (see ``job_sent``) when the printer reports a problem,
        ``PrinterNoAnswer`` when it answered nothing before the job (nothing sent), or
        DeviceTimeout / DeviceUnavailable / ProtocolError when it stops answering: then the job
        was (partly) sent and may or may not have printed.
        """
        started = time.monotonic()
        write_timeout = self.timing.write_base + len(data) / 1024 * self.timing.write_per_kb
        # Each step below has its own limit; this one only guards the sum of them.
        budget = (self.timing.missed_limit + 3) * self.timing.health_budget + write_timeout
        budget += self.timing.confirm + 2 * self.timing.print_time(data) + self.timing.health_budget
        try:
            async with asyncio.timeout(budget):
                return await self._print_job(job_id, data, started, write_timeout)
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"job {job_id} did not finish within {budget:.0f}s, it may or may not have printed",
                self.info.device_id,
            ) from exc

    async def _ready_before_job(self, t: ByteTransport, job_id: str) -> tuple[ByteTransport, PrinterStatus | None]:
        """Status before sending: a problem refuses the job (nothing sent); no answer is asked
        again until ``missed_limit`` requests in a row went unanswered (then nothing is sent)."""
        if self._status == "none":
            if getattr(t, "dead", False):
                await self.close()
                await self.open()
                assert self._transport is not None
                t = self._transport
            return t, None
        while True:
            try:
                t, before = await self._status_reconnecting(t)
            except DeviceTimeout as exc:
                self.missed += 1
                if self.missed >= self.timing.missed_limit:
                    raise PrinterNoAnswer(
                        f"printer did not answer {self.missed} status requests in a row before job {job_id}; "
                        f"nothing was sent ({str(exc).removeprefix(f'{self.info.device_id}: ')})",
                        self.info.device_id,
                    ) from exc
                continue  # the request stays due: the next read waits for its late reply first
            problems = before.problems()
            if problems:
                raise PrinterNotReady(
                    f"printer refused job {job_id}: {', '.join(problems)}", self.info.device_id, before, False
                )
            return t, before

    async def _print_job(self, job_id: str, data: bytes, started: float, write_timeout: float) -> PrintResult:
        self._writing = False
        try:
            return await self._print_job_on(job_id, data, started, write_timeout)
        except DeviceUnavailable as exc:
            if self._writing or isinstance(exc, PrinterUnreachable):
                raise
            raise PrinterUnreachable(
                f"job {job_id} not sent: {str(exc).removeprefix(f'{self.info.device_id}: ')}", self.info.device_id
            ) from exc

    async def _print_job_on(self, job_id: str, data: bytes, started: float, write_timeout: float) -> PrintResult:
        async with self._conversation() as t:
            t, before = await self._ready_before_job(t, job_id)
            self._writing = True  # from here on, some of the job may reach the printer
            if self._status == "none":
                await t.write(data, timeout=write_timeout)
                self.busy_until = time.monotonic() + self.timing.print_time(data)
                return PrintResult(job_id, len(data), PrinterStatus(), time.monotonic() - started, "none")
            if self._process_ids is None:
                await self._decide_process_ids(t)
            token = self._next_token() if self._process_ids else None
            self._confirmed.clear()  # echoes seen so far belong to earlier jobs
            print_time = self.timing.print_time(data)
            try:
                await t.write(data + (confirm_request(token) if token else b""), timeout=write_timeout)
                sent_at = time.monotonic()
                self.busy_until = sent_at + print_time
                after = await self._await_job(t, job_id, token, sent_at, print_time)
            except PrinterNotReady:
                raise
            except DeviceError as exc:
                detail = str(exc).removeprefix(f"{self.info.device_id}: ")  # named once is enough
                raise (DeviceTimeout if isinstance(exc, _NotConfirmed) else type(exc))(
                    f"job {job_id} was sent but not confirmed, it may or may not have printed: {detail}",
                    self.info.device_id,
                ) from exc
            self.busy_until = time.monotonic() if token else self.busy_until
        confirmed_by: Literal["process-id", "status"] = "process-id" if token else "status"
        return PrintResult(job_id, len(data), after or before or PrinterStatus(), time.monotonic() - started,
                           confirmed_by)

    async def _decide_process_ids(self, t: ByteTransport) -> None:
        """``"auto"``: GS ( H only for a maker known to answer it (module doc)."""
        maker = self.info.vendor
        how = "its vendor"
        if not maker:
            self._take_buffered(t)
            self._info.clear()
            await t.write(_MAKER_REQUEST, timeout=self.timing.status_reply + 1.0)
            deadline = time.monotonic() + self.timing.status_reply
            while not self._info and time.monotonic() < deadline:
                try:
                    kind, frame = await self._read_frame(t, deadline - time.monotonic())
                except DeviceTimeout:
                    break
                self._dispatch(kind, frame)
            maker = self._info.pop(0)[1:-1].decode("ascii", "replace") if self._info else ""
            how = f"GS I 66 answered {maker!r}" if maker else "no answer to GS I 66 (maker name)"
        self._process_ids = any(m in maker.upper() for m in PROCESS_ID_MAKERS)
        log.log(
            logging.INFO if self._process_ids else logging.WARNING,
            "printer %s (%s): %s: jobs are confirmed by %s%s",
            self.info.device_id, self.label, how,
            "process id (GS ( H)" if self._process_ids else "status after their print time",
            "" if self._process_ids else ' (set confirm = "status" in its [[device]] to skip this check)',
        )

    async def _await_job(
        self, t: ByteTransport, job_id: str, token: bytes | None, sent_at: float, print_time: float
    ) -> PrinterStatus | None:
        """Wait until the job is confirmed: its ``GS ( H`` echo (``token``), or a clean status
        reading asked once ``print_time`` has passed. Polls all along without piling requests
        up: a problem fails the job at once; a late reply is taken when it comes; only a printer
        that says nothing for longer than the job can take plus ``missed_limit`` requests has
        stopped answering. Returns the last reading (None if none came)."""
        mode = self._status or "full"
        timing = self.timing
        done_at = sent_at + print_time
        deadline = sent_at + timing.confirm if token else done_at + print_time  # "offline" waited out
        silence = print_time + timing.missed_limit * (timing.status_reply + timing.poll_interval)
        next_poll = time.monotonic() + timing.poll_interval
        echoed_at: float | None = None
        latest: PrinterStatus | None = None
        while True:
            now = time.monotonic()
            if token is not None and echoed_at is None and token in self._confirmed:
                self._confirmed.discard(token)
                echoed_at = next_poll = now  # one reading after the echo: paper may have run out at the end
            if echoed_at is not None and now - echoed_at > timing.status_reply:
                return latest  # printed for sure (echo); a final reading that is late changes nothing
            if now >= deadline:
                if token is not None and echoed_at is None:
                    hint = (' (a printer that does not answer GS ( H, as clones do, needs confirm = "status" '
                            'or "auto")' if self.confirm == "process-id" else "")
                    raise _NotConfirmed(
                        f"printer at {self.label} did not confirm job {job_id} (GS ( H process id) "
                        f"within {timing.confirm:.1f}s{hint}",
                        self.info.device_id,
                    )
                if latest is not None and latest.problems() == ["offline"]:
                    raise PrinterNotReady(
                        f"job {job_id} not counted as printed: the printer was still offline "
                        f"{now - sent_at:.1f}s after it was sent", self.info.device_id, latest, True,
                    )
                # No reading since the job's print time yet: a reply late behind the print data is
                # not an offline printer; the silence rule below decides.
            quiet = now - max(self.last_heard, sent_at)
            if quiet > silence:
                raise DeviceTimeout(
                    f"printer at {self.label} said nothing for {quiet:.1f}s while printing job {job_id}",
                    self.info.device_id,
                )
            p = self._pending
            if (p is None or p.complete or self._expired(p)) and now >= next_poll:
                p = await self._ask(t, mode)
            wait_until = next_poll if p is None else now + timing.poll_interval
            if now < deadline:
                wait_until = min(deadline, wait_until)
            try:
                kind, frame = await self._read_frame(t, max(0.001, wait_until - now))
            except DeviceTimeout:
                continue
            self._dispatch(kind, frame)
            if kind == "asb" and mode != "asb" and self.last_asb is not None and self.last_asb.problems():
                next_poll = time.monotonic()  # the printer says it stopped: confirm with DLE EOT now
            if p is None or not p.complete or self._pending is not p:
                continue
            self._pending = None
            if p.discard or p.mode != mode:
                continue
            latest = self._reading(p)
            next_poll = time.monotonic() + timing.poll_interval
            problems = latest.problems()
            if problems and (problems != ["offline"] or echoed_at is not None):
                raise PrinterNotReady(
                    f"job {job_id} not counted as printed: the printer reports {', '.join(problems)}",
                    self.info.device_id, latest, True,
                )
            if problems:
                continue  # "offline" with no cause (feed button held, cover just shut): wait it out
            if echoed_at is not None and p.asked_at >= echoed_at:
                return latest
            if token is None and p.asked_at >= done_at:
                return latest
            if token is None:
                next_poll = min(next_poll, max(done_at, time.monotonic()))


def _infer_cjk(ids: dict[str, bytes]) -> str:
    """How the printer prints Chinese, from GS I 69 (font language) and GS I 2 (type id bit 0:
    a multi-byte font). A multi-byte font that does not say which is taken for GB18030, the
    mainland default; the test page shows whether that is right (``gbk`` when emoji lines print
    garbage)."""
    language = ids.get("font language", b"").upper()
    if b"BIG5" in language or b"TRADITIONAL" in language:
        return "big5"
    if b"GB18030" in language:
        return "gb18030"
    if b"GBK" in language or b"GB2312" in language:
        return "gbk"
    type_id = ids.get("type id", b"")
    if type_id and type_id[0] & 0x01:
        return "gb18030"
    return "raster"


@dataclass
class _Pending:
    """A status request sent, and the replies to it so far."""

    asked_at: float
    mode: str  # full / basic / asb / learn
    want_status: int
    want_asb: int
    replies: list[int] = field(default_factory=list)
    asb: int = 0
    discard: bool = False  # a learning request: its replies are not a reading

    @property
    def complete(self) -> bool:
        return len(self.replies) >= self.want_status and self.asb >= self.want_asb


class _NotConfirmed(DeviceTimeout):
    """No ``GS ( H`` echo within the confirmation timeout (the printer itself kept answering)."""
