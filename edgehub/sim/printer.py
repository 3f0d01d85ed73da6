"""A simulated ESC/POS receipt/kitchen printer that speaks the real bytes.

``PrinterCore`` is the printer itself, independent of how bytes reach it: it parses the ESC/POS
stream into printed tickets (text, bold/size/alignment flags, barcodes, QR codes, raster images,
cuts, drawer kicks), answers the real-time status requests ``DLE EOT 1..4`` from its state, sends
automatic status back (``GS a``) frames on every change, and answers Epson's ``GS ( H`` fn48
"everything before this has printed" request once the ticket before it is out.

The same core sits behind three front ends: ``PrinterSim`` (raw TCP, like port 9100 on a LAN
printer), ``PtyPrinterSim`` (a serial printer on a pseudo-terminal) and the USB printer of
``edgehub.sim.usb``. Knobs (``paper_out``, ``cover_open``, ``silent``, ``slow``, ...) change the
state at runtime so tests and ``make run`` can break the printer the way real ones break.
``profile`` makes it one of the kinds of unit found in stores (``SIM_PROFILES``), each written
from the manufacturers' references and from how real units are known to misbehave, never from
our driver: a genuine Epson, one that answers only ``DLE EOT 1``-``3``, one that reports only
through automatic status back, one that never answers at all, one whose status replies wait
behind its print buffer, a 58 mm GBK-only clone, a clone that prints ``GS ( H`` as text, and a
Western printer without a Chinese font.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import heapq
import itertools
import os
import pty
import threading
import time
import tty
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Generic, Literal, Protocol, TypeVar

__all__ = [
    "SIM_DEVICE_KEYS",
    "SIM_PROFILES",
    "PrintedImage",
    "PrintedLine",
    "PrintedTicket",
    "PrinterCore",
    "PrinterSession",
    "PrinterSim",
    "PtyPrinterSim",
    "SimProfile",
]

T = TypeVar("T")
PAPER_KEPT = 1000  # printed tickets a simulated printer remembers (``PrinterCore.printed``)
Align = Literal["left", "center", "right"]

ESC, GS, FS, DLE = 0x1B, 0x1D, 0x1C, 0x10

@dataclass(frozen=True)
class SimProfile:
    """How one kind of real unit behaves (sources: docs/devices.md, "Printer simulator profiles").

    ``status_queries``: the ``DLE EOT n`` it answers (Epson: 1-4; Citizen CBM-820 lists 1-3);
    ``asb``: it sends automatic status back after ``GS a``; ``status_behind_buffer``: real-time
    replies wait until the print data received before them is processed (Epson guarantees the
    real-time answer with a full buffer only on serial models); ``process_id``: it answers
    ``GS ( H`` fn48; ``prints_unknown``: a command it does not know is skipped by its first two
    bytes and the rest printed as text (clones); ``kanji``: the multi-byte set its Chinese font
    reads in ``FS &`` mode (None: no Chinese font, ``FS &`` ignored); ``columns``/``dots``: font A
    characters and dots per line (80 mm: 48 / 576, 58 mm: 32 / 384); ``seconds_per_line`` and
    ``seconds_per_ticket``: how long printing takes (feed, cut), which only matters where replies
    wait behind the buffer.
    """

    name: str
    maker: str = "EPSON"
    model: str = "TM-T88VI"
    status_queries: frozenset[int] = frozenset((1, 2, 3, 4))
    asb: bool = True
    status_behind_buffer: bool = False
    process_id: bool = True
    prints_unknown: bool = False
    kanji: Literal["gb18030", "gbk", "big5"] | None = "gb18030"
    columns: int = 48
    dots: int = 576
    gs_i: bool = True  # answers GS I (printer id / maker / model)
    seconds_per_line: float = 0.0
    seconds_per_ticket: float = 0.0


#: The simulator's profiles by name (``PrinterCore(profile=...)``; ``make run SIM="kitchen-1=gbk-58"``).
SIM_PROFILES: dict[str, SimProfile] = {
    p.name: p
    for p in (
        # A genuine Epson with a Chinese (GB18030) font: everything works as the reference says.
        SimProfile("epson"),
        # Citizen CBM-820 class: DLE EOT n = 1-3 only; no GS ( H.
        SimProfile("basic", maker="CITIZEN", model="CBM-820", status_queries=frozenset((1, 2, 3)),
                   process_id=False),
        # Reports only through automatic status back (GS a): no DLE EOT reply at all.
        SimProfile("asb-only", maker="BIXOLON", model="SRP-350", status_queries=frozenset(), process_id=False),
        # A USB printer without a bulk-IN endpoint, or a LAN board that never answers: takes
        # bytes and prints, says nothing, not even to GS I.
        SimProfile("silent", maker="", model="POS-80", status_queries=frozenset(), asb=False, process_id=False,
                   gs_i=False),
        # An Epson on the LAN whose replies wait behind the print data before them: 1.3-3.3 s
        # behind a ticket of 4-20 lines.
        SimProfile("slow-status", status_behind_buffer=True, seconds_per_line=0.125, seconds_per_ticket=0.8),
        # A 58 mm clone with a GBK-only font (4-byte GB18030 sequences print as garbage).
        SimProfile("gbk-58", maker="Xprinter", model="XP-58IIH", process_id=False, prints_unknown=True,
                   kanji="gbk", columns=32, dots=384),
        # An 80 mm clone that does not know GS ( H: it prints the command's bytes as text.
        SimProfile("clone", maker="Xprinter", model="XP-80C", process_id=False, prints_unknown=True),
        # A Western printer without a Chinese font: FS & is ignored, bytes print in its code page.
        SimProfile("no-cjk", model="TM-T20III", kanji=None),
    )
}

#: The [[device]] profile keys an installer gives each kind of unit (what its field check infers).
SIM_DEVICE_KEYS: dict[str, dict[str, str]] = {
    "silent": {"status": "none"},
    "gbk-58": {"paper_mm": "58", "cjk": "gbk"},
    "no-cjk": {"cjk": "raster"},
}

# ESC t n -> Python codec. Printers know many more; these are the ones our renderer uses and
# the common Western defaults.
_CODEPAGES: dict[int, str] = {0: "cp437", 2: "cp850", 16: "cp1252", 17: "cp866", 19: "cp858"}

_BARCODE_A = {0: "UPC-A", 1: "UPC-E", 2: "EAN13", 3: "EAN8", 4: "CODE39", 5: "ITF", 6: "CODABAR"}
_BARCODE_B = {
    65: "UPC-A",
    66: "UPC-E",
    67: "EAN13",
    68: "EAN8",
    69: "CODE39",
    70: "ITF",
    71: "CODABAR",
    72: "CODE93",
    73: "CODE128",
}

_ALIGN: dict[int, Align] = {0: "left", 48: "left", 1: "center", 49: "center", 2: "right", 50: "right"}

# Commands whose only arguments are a fixed number of bytes: (prefix, command byte) -> arg count.
_FIXED_ARGS: dict[tuple[int, int], int] = {
    **{(ESC, c): 1 for c in b"-!atEeMGV{RU3dJr %T=l"},
    **{(ESC, c): 0 for c in b"2L<S"},
    (ESC, ord("p")): 3,
    (ESC, ord("$")): 2,
    (ESC, ord("\\")): 2,
    (ESC, ord("c")): 2,
    (ESC, 0x06): 1,  # Star "ESC ACK SOH" ASB request: an Epson-mode printer ignores it
    **{(GS, c): 1 for c in b"BbHhwfIr/!Ea"},
    (GS, ord("L")): 2,
    (GS, ord("W")): 2,
    (GS, ord("P")): 2,
    (GS, ord("^")): 3,
    (GS, ord(":")): 0,
    **{(FS, c): 1 for c in b"!-CW"},
    (FS, ord("&")): 0,
    (FS, ord(".")): 0,
    (FS, ord("S")): 2,
    (FS, ord("p")): 2,
    (FS, ord("2")): 74,
}


@dataclass
class PrintedLine:
    """One printed text line; a style flag is set when any character of the line had it."""

    text: str
    bold: bool = False
    underline: bool = False
    width: int = 1
    height: int = 1
    align: Align = "left"

    @property
    def double_height(self) -> bool:
        return self.height >= 2

    @property
    def double_width(self) -> bool:
        return self.width >= 2


@dataclass
class PrintedImage:
    """A raster image (``GS v 0``); ``rows`` holds one bytes object per dot row, MSB = left dot."""

    width: int
    height: int
    rows: list[bytes]

    def ink(self) -> int:
        """Number of black dots, so a test can tell a blank image from a drawn one."""
        return sum(bin(b).count("1") for row in self.rows for b in row)


@dataclass
class PrintedTicket:
    """What came out of the printer between two cuts (or a cut and a confirmation/close)."""

    lines: list[PrintedLine] = field(default_factory=list)
    barcodes: list[tuple[str, str]] = field(default_factory=list)
    qr_codes: list[str] = field(default_factory=list)
    images: list[PrintedImage] = field(default_factory=list)
    drawer_kicks: int = 0
    cut: bool = False
    job_token: bytes = b""
    # What came out, top to bottom: ("line" | "image" | "qr" | "barcode", index in its list).
    order: list[tuple[str, int]] = field(default_factory=list)
    qr_module_sizes: list[int] = field(default_factory=list)  # dots per QR module, per QR code

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines).strip("\n")

    def has_content(self) -> bool:
        return bool(
            any(line.text.strip() for line in self.lines)
            or self.barcodes
            or self.qr_codes
            or self.images
            or self.drawer_kicks
        )


class _Flag:
    """A boolean knob of ``PrinterCore``; setting it counts as a printer state change."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: PrinterCore, objtype: type | None = None) -> bool:
        return obj._flags[self.name]  # noqa: SLF001

    def __set__(self, obj: PrinterCore, value: bool) -> None:
        obj._set(self.name, bool(value))  # noqa: SLF001


class _Knob(Generic[T]):
    """A knob of a front end (TCP, pty) forwarded to the shared ``PrinterCore``."""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: _HasCore, objtype: type | None = None) -> T:
        value: T = getattr(obj.core, self.name)
        return value

    def __set__(self, obj: _HasCore, value: T) -> None:
        setattr(obj.core, self.name, value)


class _HasCore(Protocol):
    core: PrinterCore


class _KnobsMixin:
    """The printer's knobs on a front end, so tests write ``sim.paper_out = True``."""

    core: PrinterCore
    paper_near_end = _Knob[bool]()
    paper_out = _Knob[bool]()
    cover_open = _Knob[bool]()
    offline = _Knob[bool]()
    feed_button = _Knob[bool]()
    mechanical_error = _Knob[bool]()
    autocutter_error = _Knob[bool]()
    unrecoverable_error = _Knob[bool]()
    recoverable_error = _Knob[bool]()
    silent = _Knob[bool]()
    slow = _Knob[float]()
    lag = _Knob[float]()
    clone = _Knob[bool]()

    @property
    def printed(self) -> list[PrintedTicket]:
        """Tickets that have come out of the printer so far, oldest first."""
        return self.core.printed


@dataclass
class _Confirm:
    token: bytes


class PrinterCore:
    """The simulated printer: state, knobs and printed output, shared by all its connections.

    Thread-safe: the USB front end calls it from libusb worker threads while tests turn knobs on
    the event loop. ``clock`` is injectable so a test can freeze time.
    """

    def __init__(
        self,
        *,
        manufacturer: str = "EPSON",
        model: str = "TM-T20III",
        serial_number: str = "SIM-PRN-0001",
        clock: Callable[[], float] = time.monotonic,
        clone: bool = False,
        profile: str | SimProfile = "epson",
    ) -> None:
        """``profile``: which kind of unit this is (``SIM_PROFILES``); ``clone``: besides, never
        answer ``GS ( H`` (no job confirmation, ever). Both are what the printer *is*, so
        ``reset()`` keeps them. ``manufacturer``/``model`` default to the profile's."""
        if isinstance(profile, str):
            if profile not in SIM_PROFILES:
                raise ValueError(f"no simulated printer profile {profile!r} (known: {', '.join(SIM_PROFILES)})")
            profile = SIM_PROFILES[profile]
        self.profile = profile
        self.manufacturer = manufacturer if manufacturer != "EPSON" or profile.name == "epson" else profile.maker
        self.model = model if model != "TM-T20III" or profile.name == "epson" else profile.model
        self.serial_number = serial_number
        self._clock = clock
        self._lock = threading.RLock()
        self._sessions: list[PrinterSession] = []
        # What came out, the newest PAPER_KEPT tickets: `make run` and the store simulator run for
        # days, and a list of every slip printed grew with them (in the hub's process, --simulate).
        self._finished: collections.deque[tuple[float, PrintedTicket]] = collections.deque(maxlen=PAPER_KEPT)
        self._held: list[tuple[PrinterSession, PrintedTicket | _Confirm]] = []
        self._busy_until = 0.0
        self._flags: dict[str, bool] = dict.fromkeys(_FLAG_NAMES, False)
        self.silent = False
        self.slow = 0.0
        self.lag = 0.0  # seconds every reply is late by (a Wi-Fi latency spike); nothing is lost
        self.clone = clone or not profile.process_id
        self.process_id_requests = 0  # GS ( H fn48 received, answered or (clone) not
        # A cash drawer on the kick connector: a kick (ESC p, DLE DC4 1) opens it, staff push it
        # shut (a test sets drawer_open = False). Its switch pulls pin 3 to drawer_open_level
        # while open; drawers are wired either way.
        self.drawer_open = False
        self.drawer_open_level = "high"

    # -- knobs (each change is a state change: ASB frames go out, held tickets may print) -----
    paper_near_end = _Flag()
    paper_out = _Flag()
    cover_open = _Flag()
    offline = _Flag()
    feed_button = _Flag()
    mechanical_error = _Flag()
    autocutter_error = _Flag()
    unrecoverable_error = _Flag()
    recoverable_error = _Flag()

    def _set(self, name: str, value: bool) -> None:
        with self._lock:
            if self._flags[name] == value:
                return
            self._flags[name] = value
            self._state_changed()

    @property
    def has_error(self) -> bool:
        f = self._flags
        return (
            f["mechanical_error"]
            or f["autocutter_error"]
            or f["unrecoverable_error"]
            or f["recoverable_error"]
        )

    @property
    def stopped(self) -> bool:
        """A stopped printer keeps taking bytes and answering DLE EOT, but prints nothing."""
        f = self._flags
        return f["paper_out"] or f["cover_open"] or f["offline"] or self.has_error

    def reset(self) -> None:
        """Back to a healthy, empty printer (paper loaded, cover shut, nothing printed)."""
        with self._lock:
            for name in self._flags:
                self._flags[name] = False
            self.silent = False
            self.slow = 0.0
            self.lag = 0.0
            self.process_id_requests = 0
            self._finished.clear()
            self._held.clear()
            self._busy_until = 0.0
            for session in self._sessions:
                session._reset()  # noqa: SLF001

    # -- output ------------------------------------------------------------------------------
    @property
    def printed(self) -> list[PrintedTicket]:
        """Tickets that have come out of the printer so far, oldest first."""
        now = self._clock()
        with self._lock:
            return [ticket for done_at, ticket in self._finished if done_at <= now]

    @property
    def taken(self) -> int:
        """Tickets received in full and printing or printed (not held by a stopped printer)."""
        with self._lock:
            return len(self._finished)

    @property
    def held(self) -> list[PrintedTicket]:
        """Tickets received while the printer was stopped; they print when it recovers."""
        with self._lock:
            return [entry for _, entry in self._held if isinstance(entry, PrintedTicket)]

    @property
    def device_id(self) -> str:
        """The IEEE-1284 device id a USB printer returns to GET_DEVICE_ID."""
        return (
            f"MFG:{self.manufacturer};CMD:ESC/POS;MDL:{self.model};CLS:PRINTER;"
            f"DES:{self.manufacturer} {self.model};SN:{self.serial_number};"
        )

    def status_byte(self, n: int) -> int:
        """The reply to ``DLE EOT n``: fixed bits 0x12 plus the state bits of that group."""
        f = self._flags
        b = 0x12
        if n == 1:
            b |= 0x08 if self.stopped else 0
            b |= 0x04 if self.drawer_open == (self.drawer_open_level == "high") else 0
        elif n == 2:
            b |= 0x04 if f["cover_open"] else 0
            b |= 0x08 if f["feed_button"] else 0
            b |= 0x20 if f["paper_out"] else 0
            b |= 0x40 if self.has_error else 0
        elif n == 3:
            b |= 0x04 if f["mechanical_error"] else 0
            b |= 0x08 if f["autocutter_error"] else 0
            b |= 0x20 if f["unrecoverable_error"] else 0
            b |= 0x40 if f["recoverable_error"] else 0
        elif n == 4:
            b |= 0x0C if f["paper_near_end"] else 0
            b |= 0x60 if f["paper_out"] else 0
        return b

    def asb_frame(self) -> bytes:
        """The 4-byte automatic status back frame (first byte matches ``0xx1xx00``)."""
        f = self._flags
        b1 = 0x10 | (0x08 if self.stopped else 0) | (0x20 if f["cover_open"] else 0)
        b1 |= 0x04 if self.drawer_open == (self.drawer_open_level == "high") else 0
        b1 |= 0x40 if f["feed_button"] else 0
        b2 = (
            (0x04 if f["mechanical_error"] else 0)
            | (0x08 if f["autocutter_error"] else 0)
            | (0x20 if f["unrecoverable_error"] else 0)
            | (0x40 if f["recoverable_error"] else 0)
        )
        b3 = (0x03 if f["paper_near_end"] else 0) | (0x0C if f["paper_out"] else 0)
        return bytes((b1, b2, b3, 0x00))

    def printer_id(self, n: int) -> bytes:
        """The reply to ``GS I n`` (Epson ESC/POS reference, GS I; Bixolon SRP-350 manual): one
        byte for n = 1-3 / 49-51 (bits 4 and 7 off), ``_ text NUL`` for 65-69; b"" when unknown."""
        p = self.profile
        if not p.gs_i:
            return b""
        if n in (1, 49):
            return b"\x20"  # model id
        if n in (2, 50):
            return bytes((0x02 | (0x01 if p.kanji else 0),))  # bit0 multi-byte font, bit1 autocutter
        if n in (3, 51):
            return b"\x40"  # version id
        text = {65: "1.00", 66: self.manufacturer, 67: self.model, 68: self.serial_number,
                69: {"gb18030": "SIMPLIFIED CHINESE GB18030", "gbk": "SIMPLIFIED CHINESE GBK",
                     "big5": "TRADITIONAL CHINESE BIG5", None: ""}[p.kanji]}.get(n)
        if text is None:
            return b""
        return b"_" + text.encode("ascii", "replace")[:80] + b"\x00"

    def reply_at(self) -> float:
        """When a reply to a request received now leaves: at once, or (``status_behind_buffer``)
        once the print data received before it is processed."""
        now = self._clock() + self.lag
        if self.profile.status_behind_buffer and not self.stopped:
            return max(now, self._busy_until)
        return now

    def session(self, wakeup: Callable[[], None] | None = None) -> PrinterSession:
        """A new connection to the printer. ``wakeup`` is called (from any thread) on output."""
        session = PrinterSession(self, wakeup)
        with self._lock:
            self._sessions.append(session)
        return session

    def inject(self, data: bytes) -> None:
        """Send unsolicited bytes to every connection now (a stale reply, a garbled frame)."""
        with self._lock:
            for session in self._sessions:
                session._queue(data, self._clock(), force=True)  # noqa: SLF001

    # -- internals ---------------------------------------------------------------------------
    def _state_changed(self) -> None:
        with self._lock:
            now = self._clock()
            for session in self._sessions:
                if session.asb_enabled:
                    session._queue(self.asb_frame(), now)  # noqa: SLF001
            if not self.stopped and self._held:
                held, self._held = self._held, []
                for session, entry in held:
                    self._schedule(session, entry)

    def _submit(self, session: PrinterSession, entry: PrintedTicket | _Confirm) -> None:
        with self._lock:
            if self.stopped or self._held:
                self._held.append((session, entry))
            else:
                self._schedule(session, entry)

    def _schedule(self, session: PrinterSession, entry: PrintedTicket | _Confirm) -> None:
        now = self._clock()
        if isinstance(entry, PrintedTicket):
            p = self.profile
            took = self.slow + p.seconds_per_ticket + p.seconds_per_line * len(entry.lines)
            self._busy_until = max(now, self._busy_until) + took
            self._finished.append((self._busy_until, entry))
        else:
            # The confirmation leaves only when everything received before it has printed.
            session._queue(b"\x37\x22" + entry.token + b"\x00", max(now, self._busy_until))  # noqa: SLF001

    def _drop(self, session: PrinterSession) -> None:
        with self._lock:
            if session in self._sessions:
                self._sessions.remove(session)


_FLAG_NAMES = (
    "paper_near_end",
    "paper_out",
    "cover_open",
    "offline",
    "feed_button",
    "mechanical_error",
    "autocutter_error",
    "unrecoverable_error",
    "recoverable_error",
)


class PrinterSession:
    """One connection's view of the printer: its byte parser, current ticket and reply queue."""

    def __init__(self, core: PrinterCore, wakeup: Callable[[], None] | None) -> None:
        self._core = core
        self._wakeup = wakeup
        self._out: list[tuple[float, int, bytes]] = []
        self._seq = itertools.count()
        self._buf = bytearray()
        self.asb_enabled = False
        self.closed = False
        self._reset()

    def _reset(self) -> None:
        self._out.clear()
        self._buf.clear()
        self._reset_style()
        self._ticket = PrintedTicket()
        self._last_ticket: PrintedTicket | None = None

    def _reset_style(self) -> None:
        self._bold = False
        self._underline = False
        self._width = 1
        self._height = 1
        self._align: Align = "left"
        self._codepage = "cp437"
        self._kanji = False
        self._raw = bytearray()  # undecoded text bytes in the current encoding
        self._segments: list[str] = []
        self._line: PrintedLine | None = None
        self._qr_data = ""
        self._qr_module = 3  # Epson's default module size

    # -- byte interface ----------------------------------------------------------------------
    def feed(self, data: bytes) -> None:
        """Take bytes from the host (parsing stops at an incomplete command until more come)."""
        with self._core._lock:  # noqa: SLF001
            if self.closed:
                return
            self._buf += data
            pos = 0
            while pos < len(self._buf):
                used = self._step(pos)
                if used == 0:
                    break
                pos += used
            del self._buf[:pos]

    def take_output(self) -> bytes:
        """Bytes the printer has sent by now (replies whose time has come), oldest first."""
        now = self._core._clock()  # noqa: SLF001
        out = bytearray()
        with self._core._lock:  # noqa: SLF001
            while self._out and self._out[0][0] <= now:
                out += heapq.heappop(self._out)[2]
        return bytes(out)

    def next_output_at(self) -> float | None:
        with self._core._lock:  # noqa: SLF001
            return self._out[0][0] if self._out else None

    def close(self) -> None:
        """The host hung up: whatever was received prints, as a real printer would."""
        with self._core._lock:  # noqa: SLF001
            if self.closed:
                return
            self._end_line(force=False)
            self._finish_ticket()
            self.closed = True
            self._core._drop(self)  # noqa: SLF001

    def _queue(self, data: bytes, at: float, *, force: bool = False) -> None:
        if self._core.silent and not force:
            return
        heapq.heappush(self._out, (at, next(self._seq), data))
        if self._wakeup is not None:
            self._wakeup()

    # -- parser ------------------------------------------------------------------------------
    def _step(self, pos: int) -> int:
        """Handle the command at ``pos``; return bytes used, or 0 when it is still incomplete."""
        buf = self._buf
        b = buf[pos]
        if b == 0x0A:
            self._end_line(force=True)
            return 1
        if b == 0x0D or b == 0x00 or b == 0x18:
            return 1
        if b == 0x09:
            self._text(b"\t")
            return 1
        if b == 0x0C:
            self._end_line(force=False)
            return 1
        if b in (ESC, GS, FS, DLE):
            if pos + 1 >= len(buf):
                return 0
            return self._command(pos, b, buf[pos + 1])
        if b < 0x20:
            return 1
        # Text: take the whole run up to the next control byte at once.
        end = pos
        while end < len(buf) and buf[end] >= 0x20:
            end += 1
        self._text(bytes(buf[pos:end]))
        return end - pos

    def _command(self, pos: int, prefix: int, cmd: int) -> int:
        buf = self._buf
        avail = len(buf) - pos

        def arg(i: int) -> int:
            return buf[pos + 2 + i]

        def length16(i: int) -> int:
            return buf[pos + 2 + i] | (buf[pos + 3 + i] << 8)

        if prefix == DLE:
            return self._realtime(pos, cmd, avail)
        if prefix == GS and cmd == ord("("):
            if avail < 5:
                return 0
            size = 5 + length16(1)
            if avail < size:
                return 0
            fn = chr(arg(0))
            if fn == "H" and self._core.profile.prints_unknown and not self._core.profile.process_id:
                # A clone that does not know GS ( H skips GS ( and prints the rest ("H", the
                # length, "00" and the token) as text: what the issue saw on paper.
                self._core.process_id_requests += 1
                return 2
            self._gs_paren(fn, bytes(buf[pos + 5 : pos + size]))
            return size
        if prefix in (FS, ESC) and cmd == ord("("):
            if avail < 5:
                return 0
            size = 5 + length16(1)
            return size if avail >= size else 0
        if prefix == GS and cmd == ord("8"):  # GS 8 L p1..p4: large graphics data
            if avail < 7:
                return 0
            size = 7 + (arg(1) | arg(2) << 8 | arg(3) << 16 | arg(4) << 24)
            return size if avail >= size else 0
        if prefix == GS and cmd == ord("V"):
            if avail < 3:
                return 0
            size = 4 if arg(0) in (65, 66, 97, 98, 103, 104) else 3
            if avail < size:
                return 0
            self._cut()
            return size
        if prefix == GS and cmd == ord("k"):
            return self._barcode(pos, avail)
        if prefix == GS and cmd == ord("v"):
            if avail < 8:
                return 0
            width_bytes, height = length16(2), length16(4)
            size = 8 + width_bytes * height
            if avail < size:
                return 0
            data = bytes(buf[pos + 8 : pos + size])
            rows = [data[r * width_bytes : (r + 1) * width_bytes] for r in range(height)]
            self._end_line(force=False)
            self._ticket.order.append(("image", len(self._ticket.images)))
            self._ticket.images.append(PrintedImage(width_bytes * 8, height, rows))
            return size
        if prefix == GS and cmd == ord("*"):
            if avail < 4:
                return 0
            size = 4 + arg(0) * arg(1) * 8
            return size if avail >= size else 0
        if prefix == ESC and cmd == ord("*"):
            if avail < 5:
                return 0
            dots = length16(1)
            size = 5 + dots * (1 if arg(0) in (0, 1) else 3)
            return size if avail >= size else 0
        if prefix == ESC and cmd == ord("D"):  # tab stops, NUL-terminated
            end = buf.find(0, pos + 2)
            return end - pos + 1 if end >= 0 else 0
        if prefix == ESC and cmd == ord("@"):
            self._raw.clear()
            self._segments.clear()
            self._line = None
            self._reset_style()
            return 2
        if prefix == ESC and cmd in (ord("i"), ord("m")):
            self._cut()
            return 2
        nargs = _FIXED_ARGS.get((prefix, cmd))
        if nargs is None:
            return 2  # unknown command: skip it rather than print its bytes
        if avail < 2 + nargs:
            return 0
        self._apply(prefix, cmd, bytes(buf[pos + 2 : pos + 2 + nargs]))
        return 2 + nargs

    def _realtime(self, pos: int, cmd: int, avail: int) -> int:
        buf = self._buf
        if cmd == 0x04:  # DLE EOT n: real-time status
            if avail < 3:
                return 0
            n = buf[pos + 2]
            if n in self._core.profile.status_queries:
                self._queue(bytes((self._core.status_byte(n),)), self._core.reply_at())
            return 3
        if cmd == 0x05:  # DLE ENQ n
            return 3 if avail >= 3 else 0
        if cmd == 0x14:  # DLE DC4 fn ...
            if avail < 3:
                return 0
            size = {1: 5, 2: 5, 3: 5, 7: 4, 8: 9}.get(buf[pos + 2], 3)
            if avail < size:
                return 0
            if buf[pos + 2] == 1:
                self._ticket.drawer_kicks += 1
                self._core.drawer_open = True
            return size
        return 1  # a lone DLE is just a byte

    def _apply(self, prefix: int, cmd: int, args: bytes) -> None:
        c = chr(cmd)
        n = args[0] if args else 0
        if prefix == ESC:
            if c == "E":
                self._bold = bool(n & 1)
            elif c == "-":
                self._underline = n in (1, 2, 49, 50)
            elif c == "!":
                self._bold = bool(n & 0x08)
                self._height = 2 if n & 0x10 else 1
                self._width = 2 if n & 0x20 else 1
                self._underline = bool(n & 0x80)
            elif c == "a":
                self._align = _ALIGN.get(n, "left")
            elif c == "t":
                self._flush_raw()
                self._codepage = _CODEPAGES.get(n, "cp437")
            elif c == "d":
                for _ in range(n):
                    self._end_line(force=True)
            elif c == "p":
                self._ticket.drawer_kicks += 1
                self._core.drawer_open = True
        elif prefix == GS:
            if c == "!":
                self._width = (n >> 4) + 1
                self._height = (n & 0x0F) + 1
            elif c == "a" and self._core.profile.asb:
                # Sent when the command is executed, i.e. after the data before it (Citizen, Epson).
                self.asb_enabled = n != 0
                if self.asb_enabled:
                    self._queue(self._core.asb_frame(), max(self._core._clock(), self._core._busy_until))  # noqa: SLF001
            elif c == "I":
                reply = self._core.printer_id(n)
                if reply:
                    self._queue(reply, max(self._core._clock(), self._core._busy_until))  # noqa: SLF001
        elif prefix == FS:
            if c == "&":
                self._flush_raw()
                self._kanji = True
            elif c == ".":
                self._flush_raw()
                self._kanji = False

    def _gs_paren(self, fn: str, payload: bytes) -> None:
        if fn == "H" and len(payload) >= 6 and payload[0] == 0x30 and payload[1] == 0x30:
            self._core.process_id_requests += 1
            if self._core.clone:
                return  # unknown to it: skipped like any command it does not know
            token = payload[2:6]
            self._end_line(force=False)
            if self._ticket.has_content():
                self._ticket.job_token = token
                self._finish_ticket()
            elif self._last_ticket is not None and not self._last_ticket.job_token:
                self._last_ticket.job_token = token
            self._core._submit(self, _Confirm(token))  # noqa: SLF001
        elif fn == "k" and len(payload) >= 2 and payload[0] == 49:  # QR code (cn 49)
            if payload[1] == 67 and len(payload) >= 3:  # module size in dots
                self._qr_module = payload[2]
            elif payload[1] == 80 and len(payload) >= 3:  # store the data
                self._qr_data = payload[3:].decode("utf-8", "replace")
            elif payload[1] == 81:  # print the stored symbol
                self._end_line(force=False)
                self._ticket.order.append(("qr", len(self._ticket.qr_codes)))
                self._ticket.qr_codes.append(self._qr_data)
                self._ticket.qr_module_sizes.append(self._qr_module)

    def _barcode(self, pos: int, avail: int) -> int:
        buf = self._buf
        if avail < 3:
            return 0
        m = buf[pos + 2]
        if m in _BARCODE_A:
            end = buf.find(0, pos + 3)
            if end < 0:
                return 0
            kind, data, size = _BARCODE_A[m], bytes(buf[pos + 3 : end]), end - pos + 1
        elif m in _BARCODE_B:
            if avail < 4:
                return 0
            size = 4 + buf[pos + 3]
            if avail < size:
                return 0
            kind, data = _BARCODE_B[m], bytes(buf[pos + 4 : pos + size])
        else:
            return 3
        self._end_line(force=False)
        self._ticket.order.append(("barcode", len(self._ticket.barcodes)))
        self._ticket.barcodes.append((kind, _barcode_text(kind, data)))
        return size

    # -- text and tickets --------------------------------------------------------------------
    def _text(self, data: bytes) -> None:
        if self._line is None:
            self._line = PrintedLine("", align=self._align)
        line = self._line
        line.bold |= self._bold
        line.underline |= self._underline
        line.width = max(line.width, self._width)
        line.height = max(line.height, self._height)
        self._raw += data

    def _flush_raw(self) -> None:
        if self._raw:
            kanji = self._core.profile.kanji if self._kanji else None
            raw = bytes(self._raw)
            self._segments.append(_decode_kanji(raw, kanji) if kanji else raw.decode(self._codepage, "replace"))
            self._raw.clear()

    def _end_line(self, *, force: bool) -> None:
        """Close the current line; ``force`` (LF) also records an empty line as paper feed."""
        self._flush_raw()
        if self._line is None and not force:
            return
        line = self._line or PrintedLine("", align=self._align)
        line.text = "".join(self._segments)
        self._segments.clear()
        self._line = None
        self._ticket.order.append(("line", len(self._ticket.lines)))
        self._ticket.lines.append(line)

    def _cut(self) -> None:
        self._end_line(force=False)
        self._ticket.cut = True
        self._finish_ticket()

    def _finish_ticket(self) -> None:
        ticket, self._ticket = self._ticket, PrintedTicket()
        if ticket.has_content():
            self._last_ticket = ticket
            self._core._submit(self, ticket)  # noqa: SLF001


def _decode_kanji(raw: bytes, kanji: str) -> str:
    """Text in ``FS &`` mode as the printer's font reads it. A GBK-only font reads two bytes at a
    time, so a 4-byte GB18030 sequence (emoji: ``94 39 b5 32``) comes out as two wrong
    characters; a GB18030 font reads it, but has no glyph outside the Basic Multilingual Plane
    (printed as a box)."""
    if kanji == "gb18030":
        text = raw.decode("gb18030", "replace")
        return "".join("\u25a1" if ord(ch) > 0xFFFF else ch for ch in text)
    out: list[str] = []
    i = 0
    while i < len(raw):
        if raw[i] < 0x80:
            out.append(chr(raw[i]))
            i += 1
            continue
        pair = raw[i : i + 2]
        out.append(pair.decode(kanji, "replace")[:1] or "\ufffd")
        i += 2
    return "".join(out)


def _barcode_text(kind: str, data: bytes) -> str:
    if kind == "CODE128" and len(data) >= 2 and data[0] == ord("{"):
        out: list[str] = []
        mode = chr(data[1])
        i = 2
        while i < len(data):
            if data[i] == ord("{") and i + 1 < len(data):
                mode = chr(data[i + 1])
                i += 2
                continue
            out.append(f"{data[i]:02d}" if mode == "C" else chr(data[i]))
            i += 1
        return "".join(out)
    return data.decode("ascii", "replace")


class _Pump:
    """Moves a session's replies to a byte sink on the event loop, honouring their send times."""

    def __init__(self, session_factory: Callable[[Callable[[], None]], PrinterSession]) -> None:
        self._loop = asyncio.get_running_loop()
        self._event = asyncio.Event()
        self.session = session_factory(self._wake)

    def _wake(self) -> None:
        # On the loop's own thread (a TCP session answering a status query, several times a
        # second per printer) the event is set at once; only other threads (the USB front end's
        # libusb workers, knobs turned from a test's thread) go through the loop's self-pipe.
        try:
            on_loop = asyncio.get_running_loop() is self._loop
        except RuntimeError:
            on_loop = False
        if on_loop:
            self._event.set()
            return
        with contextlib.suppress(RuntimeError):  # loop already closed at interpreter exit
            self._loop.call_soon_threadsafe(self._event.set)

    async def run(self, write: Callable[[bytes], Awaitable[None]]) -> None:
        while True:
            self._event.clear()
            out = self.session.take_output()
            if out:
                await write(out)
                continue
            next_at = self.session.next_output_at()
            wait = None if next_at is None else max(0.0, next_at - time.monotonic())
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._event.wait()


class PrinterSim(_KnobsMixin):
    """A LAN printer on raw TCP (like port 9100) at ``127.0.0.1:{port}``; an async context manager.

    Knobs: ``paper_near_end``, ``paper_out``, ``cover_open``, ``offline``, the four error flags,
    ``silent`` (takes bytes, never answers), ``slow`` (seconds each ticket takes to print),
    ``clone`` (ignores ``GS ( H``, like Xprinter/Zjiang and other copies). Use
    ``await kill()`` / ``await revive()`` for a dead printer (connections closed, new ones refused)
    and ``await reset()`` for a healthy empty one. ``printed`` lists the tickets that came out.
    """

    def __init__(
        self, core: PrinterCore | None = None, *, host: str = "127.0.0.1", port: int = 0, profile: str = "epson"
    ) -> None:
        self.core = core or PrinterCore(profile=profile)
        self.host = host
        self.port = port
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._handlers: set[asyncio.Task[None]] = set()
        self.connections = 0  # how many connections were accepted, for tests of reconnect logic

    async def __aenter__(self) -> PrinterSim:
        await self._listen()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.kill()

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def dead(self) -> bool:
        return self._server is None

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._serve, self.host, self.port)
        self.port = self._server.sockets[0].getsockname()[1]

    async def kill(self) -> None:
        """Die: drop every connection (RST) and refuse new ones until ``revive()``."""
        if self._server is not None:
            self._server.close()
            self._server = None
        for writer in list(self._writers):
            writer.transport.abort()
        handlers = list(self._handlers)
        if handlers:
            await asyncio.wait(handlers, timeout=2.0)

    async def revive(self) -> None:
        """Come back on the same port (a power-cycled printer), keeping what was printed."""
        if self._server is None:
            await self._listen()

    async def reset(self) -> None:
        self.core.reset()
        await self.revive()

    def inject(self, data: bytes) -> None:
        """Push unsolicited bytes to every open connection (stale replies, garbage)."""
        self.core.inject(data)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._handlers.add(task)
        self._writers.add(writer)
        self.connections += 1
        pump = _Pump(self.core.session)

        async def send(data: bytes) -> None:
            writer.write(data)
            await writer.drain()

        pump_task = asyncio.create_task(pump.run(send))
        try:
            while True:
                data = await reader.read(65536)
                if not data:
                    break
                pump.session.feed(data)
        except (ConnectionError, OSError):
            pass
        finally:
            pump_task.cancel()
            with contextlib.suppress(BaseException):
                await pump_task
            pump.session.close()
            self._writers.discard(writer)
            writer.close()
            self._handlers.discard(task)


class PtyPrinterSim(_KnobsMixin):
    """A serial printer on a pseudo-terminal: open ``path`` with pyserial like a /dev/ttyUSB0.

    ``unplug()`` closes the master end, which the host sees as the cable being pulled.

    ``xoff()`` / ``xon()`` send the printer's flow-control bytes (``13`` / ``11``, as Epson and
    Citizen serial printers do when their receive buffer is nearly full / has room again). A pty
    moves bytes at no line speed, so a buffer filling up cannot happen here by itself: a test
    sends XOFF when the printer would. ``received`` counts the bytes taken from the host.
    """

    def __init__(self, core: PrinterCore | None = None) -> None:
        self.core = core or PrinterCore()
        self.path = ""
        self._master = -1
        self._slave = -1
        self._pump: _Pump | None = None
        self._pump_task: asyncio.Task[None] | None = None
        self.received = 0

    def xoff(self) -> None:
        """Buffer nearly full: the host must stop sending."""
        self._send_control(b"\x13")

    def xon(self) -> None:
        """Room again: the host may send."""
        self._send_control(b"\x11")

    def _send_control(self, byte: bytes) -> None:
        with contextlib.suppress(OSError):
            os.write(self._master, byte)

    async def __aenter__(self) -> PtyPrinterSim:
        self._master, self._slave = pty.openpty()
        # Raw mode before the host opens it: no echo, no CR/LF mangling, no XON/XOFF eating.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.path = os.ttyname(self._slave)
        self._pump = _Pump(self.core.session)
        asyncio.get_running_loop().add_reader(self._master, self._on_readable)
        self._pump_task = asyncio.create_task(self._pump.run(self._write))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.unplug()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    def _on_readable(self) -> None:
        try:
            data = os.read(self._master, 65536)
        except BlockingIOError:
            return
        except OSError:
            asyncio.get_running_loop().remove_reader(self._master)
            return
        self.received += len(data)
        if self._pump is not None:
            self._pump.session.feed(data)

    async def _write(self, data: bytes) -> None:
        view = memoryview(data)
        while view:
            try:
                sent = os.write(self._master, view)
            except BlockingIOError:
                await asyncio.sleep(0.001)
                continue
            view = view[sent:]

    async def unplug(self) -> None:
        if self._pump_task is not None:
            self._pump_task.cancel()
            with contextlib.suppress(BaseException):
                await self._pump_task
            self._pump_task = None
        if self._pump is not None:
            self._pump.session.close()
            self._pump = None
        if self._master >= 0:
            asyncio.get_running_loop().remove_reader(self._master)
            os.close(self._master)
            self._master = -1
