"""ZVT (PA00P015) payment terminal driver: the ECR side, over TCP port 20007 or RS-232.

A ZVT command is an APDU ``CLASS INSTR LEN DATA`` (``LEN`` 0xFF means two little-endian length
bytes follow). The ECR sends a command; the terminal (PT) accepts it with ``80 00 00`` (or the
positive ``84 00 00`` / ``84 9C 00`` "please wait" some terminals send) or refuses it with
``84 xx``; for a transaction it then sends intermediate status (``04 FF``), status information
with the result (``04 0F``), maybe print lines (``06 D1``), and finally completion (``06 0F``) or
abort (``06 1E``). The ECR acknowledges every one of those with ``80 00 00``, before it reads
anything out of them: a field it cannot read is logged, never a reason to leave the terminal
waiting (PA00P015 ch. 2.2 Authorisation, ch. 3 "Commands from PT to ECR").

Money rule: once the command may have reached the terminal, a payment call never raises; it
returns ``outcome="unknown"`` and the caller settles it with :meth:`ZvtPinpad.settle`, which
asks the terminal for its last transaction (``06 20``; real terminals may print a copy of the
receipt, so it is asked only then). Paying again on a spare is only safe after ``settle`` says
``not_found``. A refusal (``84 xx``) counts only when the terminal then stays silent: one that
goes on after it is waited for like an accepted command. Only the last four PAN digits ever
leave this module.

Serial ZVT wraps each APDU as ``DLE STX data DLE ETX CRC`` (DLE doubled inside, CRC-16/KERMIT
over data+ETX, low byte first) and each frame is answered ``ACK`` (06) or ``NAK`` (15); see
:class:`SerialApduLink`, whose one reader sorts the terminal's bytes into line answers and frames.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar, Literal, Protocol

from drivers.base import DeviceInfo, Driver, FieldCheck, FieldStep, Health
from drivers.transport import StreamTransport
from edgehub.errors import (
    DeviceError,
    DeviceTimeout,
    DeviceUnavailable,
    PaymentError,
    ProtocolError,
)

__all__ = [
    "PROBE_METHODS",
    "Apdu",
    "ApduLink",
    "BmpRead",
    "Outcome",
    "PaymentResult",
    "RegistrationRefused",
    "SerialApduLink",
    "TcpApduLink",
    "TerminalBusy",
    "TransactionKind",
    "ZvtPinpad",
    "crc_kermit",
    "currency_of",
    "decode_serial_frame",
    "encode_serial_frame",
    "parse_bmps",
    "read_apdu",
    "read_bmps",
]

log = logging.getLogger(__name__)

Outcome = Literal["approved", "declined", "aborted", "unknown", "not_found"]
TransactionKind = Literal["payment", "refund", "reversal"]

ZVT_TCP_PORT = 20007
ACK_APDU = b"\x80\x00\x00"
# "function not possible": what an ECR answers to a terminal message it does not implement.
NAK_NOT_POSSIBLE = b"\x84\x83\x00"
ABORT_BY_USER_OR_TIMEOUT = 0x6C
# Codes a terminal answers 06 20 with when it has no transaction to repeat. Anything else
# (busy, printer not ready, system error) proves nothing, so it never lets a caller pay again.
NO_RECORD_CODES = frozenset({0x83})
# Answers that accept a command. 84 00 is the spec's alternative positive acknowledgement; 84 9C
# ("please wait") is what real terminals send to 06 01 before they go on and approve
# (Portalum.Zvt ZvtCommunication.cs treats both as positive completions).
POSITIVE_ACKS = {(0x80, 0x00): "", (0x84, 0x00): "", (0x84, 0x9C): "please wait"}
# What a terminal sends while it holds the master rights (PA00P015 ch. 3): each is acknowledged.
PT_MESSAGES = frozenset({(0x04, 0x0F), (0x04, 0xFF), (0x06, 0x0F), (0x06, 0x1E), (0x06, 0xD1), (0x06, 0xD3)})
ENDINGS = frozenset({(0x06, 0x0F), (0x06, 0x1E)})
#: How the watchdog probes a terminal. ``link``: no ZVT command; the connection is kept open
#: (TCP keepalive notices a silent terminal) and re-opened with a registration when it drops.
#: ``status``: a status enquiry (05 01), which on some terminals starts due time-controlled tasks
#: (end-of-day, updates): only for terminals whose maker asks for cyclic status enquiries.
PROBE_METHODS = ("link", "status")
STATUS_PROBE_INTERVAL_S = 30.0
# TCP keepalive: a terminal switched off without closing the connection is noticed within
# about idle + interval x count seconds.
KEEPALIVE = (2, 1, 2)

RESULT_TEXT = {
    0x00: "approved",
    0x05: "declined by card issuer",
    0x64: "card not readable",
    0x65: "card data not present",
    0x66: "processing error",
    0x6A: "turnover file full",
    0x6B: "function deactivated (terminal not registered)",
    0x6C: "aborted by time-out or abort key",
    0x6F: "wrong currency",
    0x71: "credit not sufficient",
    0x78: "card expired",
    0x7A: "card unknown",
    0x83: "function not possible",
    0x9C: "please wait",
    0xA0: "receiver not ready",
    0xB4: "already reversed",
    0xB5: "reversal not possible",
    0xC3: "maximum amount exceeded",
    0xCC: "printer not ready",
    0xDF: "out of order",
    0xFF: "system error",
}


def result_text(code: int) -> str:
    if 0x01 <= code <= 0x63:
        return f"declined by the card network (code {code})"
    return RESULT_TEXT.get(code, f"result code 0x{code:02x}")


class TerminalBusy(DeviceUnavailable):
    """The terminal is in the middle of a command the box did not send: nothing was sent."""


class RegistrationRefused(PaymentError):
    """The terminal refused the box's registration (06 00): wrong password or currency."""


def currency_of(value: str | int) -> tuple[str, int]:
    """(ISO 4217 alpha code, numeric code) of ``value``, given as ``"CNY"`` or ``156``.

    Raises ValueError for an unknown code, and for a currency whose minor unit is not a
    hundredth: amounts travel as ``amount_cents`` and ZVT's BMP 04 holds minor units.
    """
    import iso4217  # parses its XML table at import: first needed when a ZVT pinpad or its config is read

    text = str(value).strip().upper()
    found = None
    if text.isdigit():
        found = next((c for c in iso4217.Currency if c.number == int(text)), None)
    else:
        with contextlib.suppress(ValueError):
            found = iso4217.Currency(text)
    if found is None:
        raise ValueError(f"{value!r} is not an ISO 4217 currency (a code like \"CNY\" or its number, 156)")
    if found.exponent != 2:
        raise ValueError(
            f"{found.code} has {found.exponent if found.exponent is not None else 'no'} minor-unit digits; "
            "amounts are in hundredths (amount_cents)"
        )
    return found.code, found.number


# -- BCD and APDU ---------------------------------------------------------------------------


def bcd(value: int, nbytes: int) -> bytes:
    digits = f"{value:0{nbytes * 2}d}"
    if len(digits) > nbytes * 2 or value < 0:
        raise ValueError(f"{value} does not fit {nbytes} BCD bytes")
    return bytes.fromhex(digits)


def from_bcd(data: bytes, what: str) -> int:
    text = data.hex()
    if not text.isdigit():
        raise ProtocolError(f"ZVT {what} is not BCD")
    return int(text)


@dataclass(frozen=True)
class Apdu:
    """One ZVT application message: class byte, instruction byte, data."""

    cls: int
    instr: int
    data: bytes = b""

    def encode(self) -> bytes:
        n = len(self.data)
        if n > 0xFFFF:
            raise ValueError("ZVT APDU data longer than 65535 bytes")
        head = bytes([self.cls, self.instr])
        if n < 0xFF:
            return head + bytes([n]) + self.data
        return head + b"\xff" + n.to_bytes(2, "little") + self.data

    @property
    def code(self) -> tuple[int, int]:
        return (self.cls, self.instr)

    def __repr__(self) -> str:
        # Never the data: a status information APDU carries card data.
        return f"Apdu({self.cls:02X} {self.instr:02X}, {len(self.data)} bytes)"


def _name(code: tuple[int, int]) -> str:
    return f"{code[0]:02X} {code[1]:02X}"


def decode_apdu(buf: bytes | bytearray) -> tuple[Apdu, int] | None:
    """One APDU from the start of ``buf`` and how many bytes it used; None when incomplete."""
    if len(buf) < 3:
        return None
    n = buf[2]
    start = 3
    if n == 0xFF:
        if len(buf) < 5:
            return None
        n = int.from_bytes(buf[3:5], "little")
        start = 5
    if len(buf) < start + n:
        return None
    return Apdu(buf[0], buf[1], bytes(buf[start : start + n])), start + n


# Every BMP PA00P015 defines ("Summary of utilised BMPs"), by how its length is known: fixed
# length, LLVAR (two Fx length digits), LLLVAR (three), or BMP 06, a TLV container whose length
# is BER-TLV encoded. 70-75 (display image) and FD (display device) are what real terminals send
# that older tables lack (Portalum.Zvt BmpParser.cs lists them with these lengths).
_BMP_FIXED = {
    0x01: 1, 0x02: 1, 0x03: 1, 0x04: 6, 0x05: 1, 0x0B: 3, 0x0C: 3, 0x0D: 2, 0x0E: 2,
    0x17: 2, 0x19: 1, 0x27: 1, 0x29: 4, 0x2A: 15, 0x37: 3, 0x3A: 2, 0x3B: 8, 0x3D: 3,
    0x49: 2, 0x70: 4, 0x71: 4, 0x72: 1, 0x73: 1, 0x74: 1, 0x75: 1, 0x87: 2, 0x88: 3,
    0x8A: 1, 0x8C: 1, 0xA0: 1, 0xAA: 3, 0xBA: 5, 0xD0: 1, 0xD2: 1, 0xD3: 1, 0xE0: 1,
    0xE9: 1, 0xEA: 1, 0xEB: 8, 0xF0: 1, 0xF9: 1, 0xFA: 1, 0xFB: 1, 0xFC: 1, 0xFD: 1,
}  # fmt: skip
_BMP_LLVAR = frozenset({0x22, 0x23, 0x2D, 0x8B, 0xA7, 0xD1, *range(0xE1, 0xE9), *range(0xF1, 0xF9)})
_BMP_LLLVAR = frozenset({0x24, 0x2E, 0x3C, 0x60, 0x92, 0x9A, 0xAF})
BMP_TLV = 0x06
# The BMPs this driver reads; the others are skipped by their length.
_BMP_USED = frozenset({0x04, 0x0B, 0x22, 0x27, 0x29, 0x49, 0x87})


def _var_length(data: bytes, pos: int, digits: int, bmp: int) -> int:
    field = data[pos : pos + digits]
    if len(field) < digits:
        raise ProtocolError(f"ZVT BMP {bmp:02X} length is truncated")
    n = 0
    for b in field:
        if b & 0xF0 != 0xF0 or b & 0x0F > 9:
            raise ProtocolError(f"ZVT BMP {bmp:02X} length byte 0x{b:02x} is not Fx")
        n = n * 10 + (b & 0x0F)
    return n


def _tlv_length(data: bytes, pos: int) -> tuple[int, int]:
    if pos >= len(data):
        raise ProtocolError("ZVT TLV container length is truncated")
    first = data[pos]
    if first < 0x80:
        return first, pos + 1
    count = first & 0x7F
    if count not in (1, 2) or pos + 1 + count > len(data):
        raise ProtocolError("ZVT TLV container length is malformed")
    return int.from_bytes(data[pos + 1 : pos + 1 + count], "big"), pos + 1 + count


@dataclass
class BmpRead:
    """What :func:`read_bmps` got out of a run of BMPs.

    ``skipped``: BMPs read past by their length, unused here; ``problem``: why reading stopped
    before the end (a BMP the spec does not define, or one cut short), empty when it did not.
    """

    fields: dict[int, bytes] = field(default_factory=dict)
    skipped: list[int] = field(default_factory=list)
    problem: str = ""


def read_bmps(data: bytes) -> BmpRead:
    """Split a run of BMP fields by the spec's length rules. Never raises: the fields read before
    a problem are kept, and the problem is described (by BMP number and offset, never content)."""
    got = BmpRead()
    pos = 0
    while pos < len(data):
        bmp = data[pos]
        pos += 1
        try:
            if bmp in _BMP_FIXED:
                n = _BMP_FIXED[bmp]
            elif bmp in _BMP_LLVAR:
                n = _var_length(data, pos, 2, bmp)
                pos += 2
            elif bmp in _BMP_LLLVAR:
                n = _var_length(data, pos, 3, bmp)
                pos += 3
            elif bmp == BMP_TLV:
                n, pos = _tlv_length(data, pos)
            else:
                got.problem = (
                    f"BMP {bmp:02X} at offset {pos - 1} is not defined by PA00P015; "
                    f"the {len(data) - pos + 1} bytes from there were not read"
                )
                return got
        except ProtocolError as exc:
            got.problem = f"{exc} (offset {pos - 1})"
            return got
        if pos + n > len(data):
            got.problem = f"BMP {bmp:02X} is truncated: needs {n} bytes, has {len(data) - pos}"
            return got
        got.fields[bmp] = data[pos : pos + n]
        if bmp not in _BMP_USED:
            got.skipped.append(bmp)
        pos += n
    return got


def parse_bmps(data: bytes) -> dict[int, bytes]:
    """Split a run of BMP fields into {bmp: value}; ProtocolError when it cannot be read to the end."""
    got = read_bmps(data)
    if got.problem:
        raise ProtocolError(f"ZVT {got.problem}")
    return got.fields


def llvar(value: bytes, digits: int = 2) -> bytes:
    n = f"{len(value):0{digits}d}"
    return bytes(0xF0 | int(d) for d in n) + value


def last_four(pan_bcd: bytes) -> str:
    """``****1234`` from a BCD PAN whose masked digits are E and padding F; never more."""
    nibbles = pan_bcd.hex().upper().rstrip("F")
    tail = nibbles[-4:]
    if len(tail) == 4 and tail.isdigit():
        return "****" + tail
    return "****"


# -- links: how APDUs travel ----------------------------------------------------------------


class ApduLink(Protocol):
    label: str

    async def send(self, apdu: Apdu) -> None: ...
    async def recv(self, timeout: float) -> Apdu: ...
    def pending(self) -> tuple[list[Apdu], bool]: ...
    async def close(self) -> None: ...


async def read_apdu(transport: StreamTransport, timeout: float, buf: bytearray) -> Apdu:
    """Read one APDU from a byte stream; silence is DeviceTimeout, a partial APDU ProtocolError."""
    try:
        async with asyncio.timeout(timeout):
            while True:
                got = decode_apdu(buf)
                if got is not None:
                    apdu, used = got
                    del buf[:used]
                    return apdu
                buf += await transport.read_some(timeout)
    except TimeoutError as exc:
        if buf:
            raise ProtocolError(
                f"{transport.label}: truncated ZVT APDU ({len(buf)} bytes, then silence)"
            ) from exc
        raise DeviceTimeout(f"{transport.label}: terminal sent nothing within {timeout:.1f}s") from exc


class TcpApduLink:
    """ZVT over TCP: APDUs back to back on the stream, no extra framing."""

    def __init__(self, transport: StreamTransport) -> None:
        self._transport = transport
        self._buf = bytearray()
        self.label = transport.label

    @classmethod
    async def connect(cls, host: str, port: int = ZVT_TCP_PORT, timeout: float = 2.0) -> TcpApduLink:
        transport = await StreamTransport.tcp(host, port, timeout)
        transport.keepalive(*KEEPALIVE)
        return cls(transport)

    @property
    def dead(self) -> bool:
        return self._transport.dead and not self._buf

    async def send(self, apdu: Apdu) -> None:
        await self._transport.write(apdu.encode())

    async def recv(self, timeout: float) -> Apdu:
        return await read_apdu(self._transport, timeout, self._buf)

    def pending(self) -> tuple[list[Apdu], bool]:
        """The APDUs already received and not read, and whether a partial one follows them."""
        self._buf += self._transport.drain_input()
        out = []
        while (got := decode_apdu(self._buf)) is not None:
            out.append(got[0])
            del self._buf[: got[1]]
        return out, bool(self._buf)

    async def close(self) -> None:
        await self._transport.close()


DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15


def crc_kermit(data: bytes) -> int:
    """CRC-16/KERMIT (CCITT polynomial, reflected, init 0): the ZVT serial frame check."""
    crc = 0
    for b in data:
        crc ^= b
        for _ in range(8):
            crc = (crc >> 1) ^ 0x8408 if crc & 1 else crc >> 1
    return crc


def encode_serial_frame(apdu_bytes: bytes) -> bytes:
    crc = crc_kermit(apdu_bytes + bytes([ETX]))
    stuffed = apdu_bytes.replace(bytes([DLE]), bytes([DLE, DLE]))
    return bytes([DLE, STX]) + stuffed + bytes([DLE, ETX]) + crc.to_bytes(2, "little")


def decode_serial_frame(buf: bytes | bytearray) -> tuple[bytes, int] | None:
    """(APDU bytes, bytes used) of one frame at the start of ``buf``; None when incomplete.

    Raises ProtocolError for a frame that does not start with DLE STX, has a lone DLE, or fails
    its CRC.
    """
    if len(buf) < 2:
        if buf and buf[0] != DLE:
            raise ProtocolError(f"ZVT serial frame starts with 0x{buf[0]:02x}, not DLE STX")
        return None
    if buf[0] != DLE or buf[1] != STX:
        raise ProtocolError("ZVT serial frame does not start with DLE STX")
    out = bytearray()
    i = 2
    while i < len(buf):
        b = buf[i]
        if b != DLE:
            out.append(b)
            i += 1
            continue
        if i + 1 >= len(buf):
            return None
        nxt = buf[i + 1]
        if nxt == DLE:
            out.append(DLE)
            i += 2
        elif nxt == ETX:
            if i + 4 > len(buf):
                return None
            crc = int.from_bytes(buf[i + 2 : i + 4], "little")
            if crc != crc_kermit(bytes(out) + bytes([ETX])):
                raise ProtocolError("ZVT serial frame failed its CRC check")
            return bytes(out), i + 4
        else:
            raise ProtocolError(f"ZVT serial frame has DLE followed by 0x{nxt:02x}")
    return None


class SerialApduLink:
    """ZVT over RS-232 (9600 8N2): DLE STX framing with CRC, each frame answered ACK or NAK.

    One reader task owns the port's input. Between frames it takes the terminal's ACK/NAK line
    answers (to what :meth:`send` wrote), and it answers each frame the terminal sends (ACK, or
    NAK for a bad CRC) before handing its APDU to :meth:`recv`. So an abort (06 B0) sent while a
    payment waits in :meth:`recv` gets its own ACK and never steals a byte of the payment's frames.
    """

    RETRIES = 3

    def __init__(self, transport: StreamTransport, frame_timeout: float = 1.0) -> None:
        self._transport = transport
        self._frame_timeout = frame_timeout
        self.label = transport.label
        self._frames: collections.deque[Apdu] = collections.deque()
        self._line: collections.deque[int] = collections.deque()
        self._partial = bytearray()
        self._arrived = asyncio.Event()
        self._failure: DeviceError | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()

    @classmethod
    async def open(cls, port: str, baudrate: int = 9600) -> SerialApduLink:
        return cls(await StreamTransport.serial(port, baudrate, 8, "N", 2))

    @property
    def dead(self) -> bool:
        return self._transport.dead or self._failure is not None

    def _start(self) -> None:
        if self._reader is None:
            self._reader = asyncio.create_task(self._read_loop(), name=f"zvt-serial-{self.label}")

    async def _read_loop(self) -> None:
        buf = self._partial
        bad_frames = 0
        try:
            while True:
                try:
                    buf += await self._transport.read_some(3600.0)
                except DeviceTimeout:
                    continue
                while buf:
                    if buf[0] in (ACK, NAK):
                        self._line.append(buf[0])
                        del buf[0]
                        continue
                    if buf[0] != DLE:
                        log.debug("%s: line noise 0x%02x between frames dropped", self.label, buf[0])
                        del buf[0]
                        continue
                    try:
                        got = decode_serial_frame(buf)
                    except ProtocolError as exc:
                        bad_frames += 1
                        buf.clear()
                        await self._transport.write(bytes([NAK]))
                        if bad_frames >= self.RETRIES:
                            raise ProtocolError(f"{self.label}: {exc} ({bad_frames} times)") from exc
                        continue
                    if got is None:
                        break
                    data, used = got
                    del buf[:used]
                    bad_frames = 0
                    await self._transport.write(bytes([ACK]))
                    decoded = decode_apdu(data)
                    if decoded is None or decoded[1] != len(data):
                        raise ProtocolError(f"{self.label}: serial frame does not hold exactly one APDU")
                    self._frames.append(decoded[0])
                self._arrived.set()
        except DeviceError as exc:
            self._failure = exc
            self._arrived.set()

    async def _wait(self, ready: Callable[[], bool], timeout: float) -> None:
        self._start()
        async with asyncio.timeout(timeout):
            while not ready():
                if self._failure is not None:
                    raise self._failure
                self._arrived.clear()
                await self._arrived.wait()

    async def send(self, apdu: Apdu) -> None:
        frame = encode_serial_frame(apdu.encode())
        async with self._sending:
            self._start()
            self._line.clear()
            for _ in range(self.RETRIES):
                await self._transport.write(frame)
                try:
                    await self._wait(lambda: bool(self._line), self._frame_timeout)
                except TimeoutError as exc:
                    raise DeviceTimeout(
                        f"{self.label}: terminal did not answer a frame within {self._frame_timeout:g}s"
                    ) from exc
                if self._line.popleft() == ACK:
                    return
        raise ProtocolError(f"{self.label}: terminal refused the frame {self.RETRIES} times (NAK)")

    async def recv(self, timeout: float) -> Apdu:
        try:
            await self._wait(lambda: bool(self._frames), timeout)
        except TimeoutError as exc:
            if self._partial:
                raise ProtocolError(f"{self.label}: truncated ZVT serial frame") from exc
            raise DeviceTimeout(f"{self.label}: terminal sent nothing within {timeout:.1f}s") from exc
        return self._frames.popleft()

    def pending(self) -> tuple[list[Apdu], bool]:
        out = list(self._frames)
        self._frames.clear()
        return out, bool(self._partial)

    async def close(self) -> None:
        reader, self._reader = self._reader, None
        if reader is not None:
            reader.cancel()
            with contextlib.suppress(BaseException):
                await reader
        await self._transport.close()


# -- results ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class PaymentResult:
    """What happened to one payment, refund or reversal, as far as the ECR knows.

    ``outcome`` ``unknown`` means the terminal may have charged: settle it, never pay again.
    ``not_found`` (only from :meth:`ZvtPinpad.settle`) means the terminal has no record of it.
    ``after_trace_no`` is the terminal's newest trace number the ECR knew before sending; journal
    it with the payment intent so :meth:`ZvtPinpad.settle` can tell this payment from older ones.
    """

    outcome: Outcome
    kind: TransactionKind
    amount_cents: int
    currency: str
    receipt_no: int | None = None
    trace_no: int | None = None
    masked_pan: str = ""
    terminal_id: str = ""
    result_code: int | None = None
    reason: str = ""
    after_trace_no: int | None = None

    @property
    def charged(self) -> bool:
        return self.outcome == "approved"


@dataclass
class _Collected:
    """What the terminal told during one command (private, mutable while it runs)."""

    result_code: int | None = None
    amount_cents: int | None = None
    trace_no: int | None = None
    receipt_no: int | None = None
    terminal_id: str = ""
    currency: str = ""
    masked_pan: str = ""
    status_seen: bool = False
    intermediate: int | None = None
    problems: list[str] = field(default_factory=list)  # fields that could not be read


def _absorb(fields: dict[int, bytes], got: _Collected) -> None:
    def number(bmp: int, what: str) -> int | None:
        try:
            return from_bcd(fields[bmp], what)
        except ProtocolError as exc:
            got.problems.append(str(exc))
            return None

    if 0x27 in fields:
        got.result_code = fields[0x27][0]
    if 0x04 in fields:
        got.amount_cents = number(0x04, "amount")
    if 0x0B in fields:
        got.trace_no = number(0x0B, "trace number")
    if 0x87 in fields:
        got.receipt_no = number(0x87, "receipt number")
    if 0x29 in fields:
        got.terminal_id = fields[0x29].hex()
    if 0x49 in fields and (code := number(0x49, "currency code")) is not None:
        import iso4217  # loaded already: the driver read its currency with it

        known = next((c.code for c in iso4217.Currency if c.number == code), None)
        got.currency = known or str(code)
    if 0x22 in fields:
        got.masked_pan = last_four(fields[0x22])


@dataclass
class _Finished:
    """How a command ended: the closing APDU code, what was collected, the result code."""

    code: tuple[int, int]
    collected: _Collected
    result_code: int | None


def _split_status_completion(data: bytes) -> tuple[int | None, bytes]:
    """Completion of a status enquiry: ``[LLL software version]`` status byte, then BMPs.

    The version comes first unless the terminal leaves it out (a service-byte choice the ECR did
    not make, but some terminals do): its length digits are ``Fx`` bytes, a status byte is not.
    """
    pos = 0
    if len(data) >= 3 and all(b & 0xF0 == 0xF0 and b & 0x0F <= 9 for b in data[:3]):
        pos = 3 + _var_length(data, 0, 3, 0x0F)
    if pos >= len(data):
        return None, b""
    return data[pos], data[pos + 1 :]


# -- the driver -------------------------------------------------------------------------------


class ZvtPinpad(Driver):
    """A ZVT payment terminal. ``info.address`` is ``host[:port]`` (tcp) or a tty path (serial).

    Per terminal (the ``[[device]]`` keys, in ``info.extra`` unless given here): ``password``
    (six digits), ``currency`` (ISO 4217, e.g. ``CNY`` or ``156``), ``probe`` (one of
    :data:`PROBE_METHODS`) and ``probe_interval_s`` (how often the watchdog probes it; None
    leaves the watchdog's default for pinpads).
    """

    name: ClassVar[str] = "zvt"
    kind = "pinpad"
    tcp_ports: ClassVar[tuple[int, ...]] = (ZVT_TCP_PORT,)

    def __init__(
        self,
        info: DeviceInfo,
        *,
        password: str | None = None,
        currency: str | int | None = None,
        config_byte: int = 0x08,
        ack_timeout: float = 5.0,
        transaction_timeout: float = 180.0,
        connect_timeout: float = 2.0,
        refusal_grace: float = 1.0,
        probe: str | None = None,
        probe_interval_s: float | None = None,
        link_factory: Callable[[], ApduLink] | None = None,
    ) -> None:
        super().__init__(info)
        password = password if password is not None else info.extra.get("password", "000000")
        if len(password) != 6 or not password.isdigit():
            raise ValueError("ZVT password must be 6 digits")
        self._password = bytes.fromhex(password)
        self.currency, self.currency_number = currency_of(currency or info.extra.get("currency", "EUR"))
        self.probe = probe or info.extra.get("probe", "link")
        if self.probe not in PROBE_METHODS:
            raise ValueError(f"ZVT probe must be one of {', '.join(PROBE_METHODS)}, got {self.probe!r}")
        interval = probe_interval_s if probe_interval_s is not None else info.extra.get("probe_interval_s")
        self.probe_interval_s: float | None = float(interval) if interval is not None else (
            STATUS_PROBE_INTERVAL_S if self.probe == "status" else None
        )
        # 0x08: the terminal sends intermediate status. Receipts stay on the terminal's printer,
        # so no receipt text (with card data) ever comes to the ECR.
        self.config_byte = config_byte
        self.ack_timeout = ack_timeout
        self.transaction_timeout = transaction_timeout
        self.connect_timeout = connect_timeout
        self.refusal_grace = min(refusal_grace, ack_timeout)
        self._link_factory = link_factory
        self._link: ApduLink | None = None
        # False from a command's start until its completion or abort was read: a link left so
        # (an error, a cancelled call) may still carry the terminal's messages, and is replaced.
        self._synced = True
        self._lock = asyncio.Lock()
        self._abort_requested = False
        self._in_transaction = False
        self._went_on_after_refusal = False
        self._seen_bmps: set[int] = set()
        self.terminal_id = ""
        #: Newest terminal trace number this driver has seen; the default baseline for pay().
        self.last_trace_no: int | None = None
        self._last_health = Health("unknown", "not asked yet")

    # -- connection -------------------------------------------------------------------------

    async def _connect(self) -> ApduLink:
        if self._link_factory is not None:
            return self._link_factory()
        if self.info.transport == "serial":
            return await SerialApduLink.open(self.info.address)
        host, _, port = self.info.address.rpartition(":")
        if not host:
            host, port = self.info.address, str(ZVT_TCP_PORT)
        return await TcpApduLink.connect(host, int(port), self.connect_timeout)

    async def open(self) -> None:
        async with self._lock:
            await self._ensure_link()

    @property
    def connected(self) -> bool:
        """A link is open and the terminal has not closed it."""
        return self._link is not None and not getattr(self._link, "dead", False)

    async def _ensure_link(self) -> ApduLink:
        """Connect and register (06 00) unless connected. Nothing about money is sent here.

        A link the terminal already closed (it was switched off, or rebooted, since the last
        command) is replaced first: a payment sent into it could not reach the terminal, but
        the failure would show only after the send, when its outcome must count as unknown.
        Reconnecting fails cleanly instead (DeviceUnavailable: nothing asked, safe for a spare).
        So is a link whose last command did not end cleanly: messages of that command may still
        be on their way, and must never be read as the answer to the next one.
        """
        if self._link is not None and (getattr(self._link, "dead", False) or not self._synced):
            await self._drop_link()
        if self._link is not None:
            return self._link
        link = await self._connect()
        self._synced = True
        try:
            data = self._password + bytes([self.config_byte]) + bcd(self.currency_number, 2)
            try:
                got = await self._command(link, Apdu(0x06, 0x00, data), self.ack_timeout * 2)
            except PaymentError as exc:
                raise RegistrationRefused(
                    f"{str(exc).removeprefix(f'{self.info.device_id}: ')}; check the ZVT password and currency",
                    self.info.device_id,
                ) from exc
            if got.code != (0x06, 0x0F):
                raise RegistrationRefused(
                    f"terminal refused registration: {result_text(got.result_code or 0xFF)}; "
                    "check the ZVT password and currency",
                    self.info.device_id,
                )
            if got.collected.terminal_id:
                self.terminal_id = got.collected.terminal_id
        except BaseException:
            await link.close()
            raise
        self._link = link
        return link

    async def _drop_link(self) -> None:
        link, self._link = self._link, None
        self._synced = True
        if link is not None:
            await link.close()

    async def close(self) -> None:
        await self._drop_link()

    # -- one command and the terminal's messages up to completion ---------------------------

    async def _enquire(self, command: Apdu, timeout: float, too_late: str) -> _Finished:
        """An enquiry (status, last receipt) under the lock. A link that failed or stayed silent
        is dropped, so the next call reconnects; the terminal's own refusal leaves it open."""
        async with self._lock:
            link = await self._ensure_link()
            try:
                return await self._command(link, command, timeout)
            except PaymentError:
                raise
            except DeviceError:
                await self._drop_link()
                raise
            except TimeoutError as exc:
                await self._drop_link()
                raise DeviceTimeout(too_late, self.info.device_id) from exc

    async def _ack(self, link: ApduLink) -> None:
        await link.send(Apdu(0x80, 0x00))

    async def _clear_stale(self, link: ApduLink) -> None:
        """Before a command: what the terminal sent since the last one ended is not an answer
        to it. Each message is acknowledged (the terminal waits for that) and dropped; when they
        show the terminal busy with a command of its own, nothing is sent (TerminalBusy)."""
        stale, partial = link.pending()
        if not stale and not partial:
            return
        busy = partial
        for msg in stale:
            if msg.code in PT_MESSAGES:
                await self._ack(link)
                busy = msg.code not in ENDINGS
        codes = ", ".join(_name(m.code) for m in stale) + (" and a partial message" if partial else "")
        log.warning("%s: %s left over from an earlier command: acknowledged and dropped", link.label, codes)
        if busy:
            self._synced = False
            raise TerminalBusy(
                f"terminal is in the middle of a command the box did not send ({codes}); nothing was sent",
                self.info.device_id,
            )

    async def _accepted(self, link: ApduLink, command: Apdu) -> Apdu | None:
        """Wait for the terminal to accept ``command``. Returns a message of the command that
        came in place of the acknowledgement (handled by the caller), or None.

        A negative acknowledgement (84 xx) is a refusal only when the terminal then stays silent
        for ``refusal_grace``: a terminal that goes on after it is in the command all the same
        (its 84 was a "please wait" by another code), and is waited for. Messages of an earlier
        command are acknowledged and dropped.
        """
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.ack_timeout
        name = _name(command.code)
        while True:
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise DeviceTimeout(f"{link.label}: terminal did not acknowledge {name} within {self.ack_timeout:g}s")
            reply = await link.recv(remaining)
            if reply.code in POSITIVE_ACKS:
                if POSITIVE_ACKS[reply.code]:
                    log.info("%s: terminal answered %s (%s) to %s: waiting for it",
                             link.label, _name(reply.code), POSITIVE_ACKS[reply.code], name)
                return None
            if reply.cls == 0x84:
                try:
                    following = await link.recv(self.refusal_grace)
                except DeviceTimeout:
                    self._synced = True
                    raise PaymentError(
                        f"terminal refused {name}: {result_text(reply.instr)}", self.info.device_id
                    ) from None
                log.warning("%s: terminal answered %s (%s) to %s and then went on (%s): waiting for its result",
                            link.label, _name(reply.code), result_text(reply.instr), name, _name(following.code))
                self._went_on_after_refusal = True
                return following
            if reply.code in PT_MESSAGES:
                log.warning("%s: %s came before the acknowledgement of %s: left over from an earlier "
                            "command, acknowledged and dropped", link.label, _name(reply.code), name)
                await self._ack(link)
                continue
            raise ProtocolError(
                f"{link.label}: expected ACK 80 00 to {name}, got {_name(reply.code)}", self.info.device_id
            )

    def _read_fields(self, data: bytes, got: _Collected, where: str, label: str) -> None:
        """Take what this driver uses out of a message's BMPs (after it was acknowledged)."""
        bmps = read_bmps(data)
        _absorb(bmps.fields, got)
        new = [b for b in bmps.skipped if b not in self._seen_bmps]
        if new:
            self._seen_bmps.update(new)
            log.info("%s: %s carries BMPs %s, not used here: skipped by their length",
                     label, where, " ".join(f"{b:02X}" for b in new))
        if bmps.problem:
            got.problems.append(f"{where}: {bmps.problem}")
            log.warning("%s: %s could not be read to the end: %s", label, where, bmps.problem)

    async def _command(self, link: ApduLink, command: Apdu, timeout: float) -> _Finished:
        """Send ``command``; acknowledge every terminal message until completion or abort.

        Raises PaymentError when the terminal refuses the command outright (negative ACK, then
        silence): then it did nothing; TerminalBusy when it was busy and nothing was sent. Any
        other error may leave the terminal mid-command.
        """
        self._synced = False
        await self._clear_stale(link)
        await link.send(command)
        first = await self._accepted(link, command)
        got = _Collected()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if first is not None:
                msg, first = first, None
            else:
                remaining = deadline - loop.time()
                if remaining <= 0:
                    raise DeviceTimeout(self._too_late(link, timeout, got))
                try:
                    msg = await link.recv(remaining)
                except DeviceTimeout as exc:
                    raise DeviceTimeout(self._too_late(link, timeout, got)) from exc
            code = msg.code
            if code in POSITIVE_ACKS or msg.cls == 0x84:
                continue  # the terminal's answer to our abort (06 B0)
            if code == (0x04, 0xFF):
                await self._ack(link)
                got.intermediate = msg.data[0] if msg.data else None
            elif code == (0x04, 0x0F):
                await self._ack(link)
                got.status_seen = True
                self._read_fields(msg.data, got, "status information 04 0F", link.label)
            elif code == (0x06, 0x0F):
                await self._ack(link)
                self._synced = True
                if command.code == (0x05, 0x01):
                    try:
                        status, rest = _split_status_completion(msg.data)
                    except ProtocolError as exc:
                        got.problems.append(str(exc))
                        status, rest = None, b""
                    self._read_fields(rest, got, "completion 06 0F", link.label)
                    return _Finished(code, got, status)
                self._read_fields(msg.data, got, "completion 06 0F", link.label)
                return _Finished(code, got, got.result_code)
            elif code == (0x06, 0x1E):
                await self._ack(link)
                self._synced = True
                if not msg.data:
                    raise ProtocolError(f"{link.label}: abort 06 1E without a result code")
                got.result_code = msg.data[0]
                return _Finished(code, got, msg.data[0])
            elif code in ((0x06, 0xD1), (0x06, 0xD3)):
                await self._ack(link)  # receipt text: stays on the terminal side
            else:
                await link.send(Apdu(0x84, 0x83))

    @staticmethod
    def _too_late(link: ApduLink, timeout: float, got: _Collected) -> str:
        problems = f" (what it sent could not all be read: {'; '.join(got.problems)})" if got.problems else ""
        return f"{link.label}: terminal did not finish within {timeout:g}s{problems}"

    async def _transaction(
        self, kind: TransactionKind, command: Apdu, amount_cents: int, after_trace_no: int | None
    ) -> PaymentResult:
        base = PaymentResult(
            outcome="unknown",
            kind=kind,
            amount_cents=amount_cents,
            currency=self.currency,
            terminal_id=self.terminal_id,
            after_trace_no=after_trace_no if after_trace_no is not None else self.last_trace_no,
        )
        async with self._lock:
            # Connection or registration failing means nothing was asked: safe for a spare.
            link = await self._ensure_link()
            self._abort_requested = False
            self._went_on_after_refusal = False
            self._in_transaction = True
            try:
                done = await self._command(link, command, self.transaction_timeout)
            except (PaymentError, TerminalBusy):
                raise
            except (DeviceError, TimeoutError) as exc:
                await self._drop_link()
                reason = (
                    f"terminal did not finish within {self.transaction_timeout:g}s"
                    if isinstance(exc, TimeoutError)
                    else str(exc)
                )
                log.warning("%s: %s outcome unknown: %s", self.info.device_id, kind, reason)
                return replace(base, reason=f"outcome unknown: {reason}; settle before paying again")
            finally:
                self._in_transaction = False
        result = self._result(base, done, aborted_by_us=self._abort_requested)
        if self._went_on_after_refusal and result.charged and result.amount_cents != amount_cents:
            # After a refusal, an approval for another amount may be a transaction the box did
            # not start (begun on the terminal's keypad): not this payment's result.
            return replace(base, reason=(
                f"outcome unknown: the terminal refused {_name(command.code)} and then approved "
                f"{result.amount_cents} cents, not {amount_cents}; settle before paying again"))
        return result

    def _result(self, base: PaymentResult, done: _Finished, aborted_by_us: bool = False) -> PaymentResult:
        got = done.collected
        if got.trace_no is not None:
            self.last_trace_no = got.trace_no
        if done.code == (0x06, 0x0F) and (got.result_code in (None, 0x00)):
            outcome: Outcome = "approved"
            reason = ""
        elif aborted_by_us or done.result_code == ABORT_BY_USER_OR_TIMEOUT:
            outcome = "aborted"
            reason = result_text(done.result_code if done.result_code is not None else 0x6C)
        else:
            outcome = "declined"
            reason = result_text(done.result_code if done.result_code is not None else 0xFF)
        return replace(
            base,
            outcome=outcome,
            amount_cents=got.amount_cents if got.amount_cents is not None else base.amount_cents,
            currency=got.currency or base.currency,
            receipt_no=got.receipt_no,
            trace_no=got.trace_no,
            masked_pan=got.masked_pan,
            terminal_id=got.terminal_id or self.terminal_id,
            result_code=done.result_code,
            reason=reason,
        )

    # -- the payment flow's calls -----------------------------------------------------------

    def _amount_fields(self, amount_cents: int) -> bytes:
        if not 0 < amount_cents <= 999_999_999_999:
            raise ValueError(f"amount {amount_cents} cents is out of range")
        return b"\x04" + bcd(amount_cents, 6) + b"\x49" + bcd(self.currency_number, 2)

    async def pay(self, amount_cents: int, *, after_trace_no: int | None = None) -> PaymentResult:
        """Authorise a card payment (06 01). Journal the intent *before* calling this.

        Raises DeviceUnavailable/DeviceTimeout when the terminal could not be reached (or was
        busy: TerminalBusy) and PaymentError when it refused the command: in all these cases
        nothing was charged.
        """
        data = self._amount_fields(amount_cents)
        return await self._transaction("payment", Apdu(0x06, 0x01, data), amount_cents, after_trace_no)

    async def refund(self, amount_cents: int) -> PaymentResult:
        """Refund money to a card (06 31)."""
        data = self._password + self._amount_fields(amount_cents)
        return await self._transaction("refund", Apdu(0x06, 0x31, data), amount_cents, None)

    async def reverse(self, receipt_no: int, amount_cents: int = 0) -> PaymentResult:
        """Reverse (cancel) an approved payment of today by its receipt number (06 30)."""
        data = self._password + b"\x87" + bcd(receipt_no, 2)
        return await self._transaction("reversal", Apdu(0x06, 0x30, data), amount_cents, None)

    async def abort(self) -> bool:
        """Ask the terminal to abort the running transaction (06 B0). False if none runs.

        The running :meth:`pay` then returns ``aborted`` (or ``approved`` if the card was
        already through: aborting is a request, not a guarantee).
        """
        link = self._link
        if not self._in_transaction or link is None:
            return False
        self._abort_requested = True
        await link.send(Apdu(0x06, 0xB0))
        return True

    async def last_transaction(self) -> PaymentResult | None:
        """The terminal's last transaction, by repeat receipt (06 20); None if it has none.

        Real terminals may print a copy of the receipt for this: ask only when an outcome is
        unknown. Raises PaymentError when the terminal answers with anything but "no
        transaction" (0x83): busy or printer not ready proves nothing either way.
        """
        done = await self._enquire(Apdu(0x06, 0x20, self._password), self.ack_timeout * 4,
                                   "terminal did not repeat its last receipt in time")
        got = done.collected
        if done.code == (0x06, 0x1E):
            if done.result_code in NO_RECORD_CODES:
                return None
            raise PaymentError(
                f"terminal cannot repeat its last transaction: {result_text(done.result_code or 0xFF)}",
                self.info.device_id,
            )
        if not got.status_seen or got.amount_cents is None or got.result_code is None:
            missing = "status information" if not got.status_seen else "amount" if got.amount_cents is None \
                else "result code"
            problems = f" ({'; '.join(got.problems)})" if got.problems else ""
            raise PaymentError(
                f"terminal repeated its last receipt without its {missing}{problems}", self.info.device_id
            )
        # The completion ends the repeat, not the transaction: its result is BMP 27 alone.
        base = PaymentResult("unknown", "payment", got.amount_cents, self.currency)
        return self._result(base, _Finished((0x06, 0x0F) if got.result_code == 0 else (0x06, 0x1E), got,
                                            got.result_code))

    async def settle(self, pending: PaymentResult) -> PaymentResult:
        """Turn an ``unknown`` result into what really happened, from the terminal's memory.

        Returns ``approved``/``declined``/``aborted`` for the transaction the terminal recorded,
        ``not_found`` when the terminal's newest transaction is older than this one (nothing was
        charged: paying again is safe), or ``unknown`` again when the terminal's answer cannot
        be tied to this payment (an operator must decide). Raises DeviceError when the
        terminal cannot be asked; try again later, the sale stays locked to this pinpad.
        """
        if pending.outcome != "unknown":
            return pending
        last = await self.last_transaction()
        if last is None:
            return replace(pending, outcome="not_found", reason="terminal has no transaction on record")
        if pending.after_trace_no is not None and last.trace_no == pending.after_trace_no:
            return replace(
                pending,
                outcome="not_found",
                reason=f"terminal's newest transaction is trace {last.trace_no}, from before this one",
            )
        if last.amount_cents != pending.amount_cents:
            return replace(
                pending,
                reason=(
                    f"terminal's last transaction (trace {last.trace_no}) is for another amount; "
                    "check the terminal journal"
                ),
            )
        if pending.after_trace_no is None:
            return replace(
                pending,
                reason="terminal's last transaction has this amount but no baseline trace number "
                "tells whether it is this payment; check the terminal journal",
            )
        return replace(
            last,
            kind=pending.kind,
            after_trace_no=pending.after_trace_no,
            reason=last.reason or "settled from the terminal's last transaction",
        )

    async def status(self) -> int:
        """Status enquiry (05 01): the terminal status code, 0 when ready.

        On some terminals this starts time-controlled tasks that are due (end-of-day, updates);
        the watchdog sends it only to terminals configured with ``probe = "status"``.
        """
        done = await self._enquire(Apdu(0x05, 0x01, self._password), self.ack_timeout * 2,
                                   "terminal did not answer the status enquiry")
        if done.collected.terminal_id:
            self.terminal_id = done.collected.terminal_id
        if done.code == (0x06, 0x1E):
            return done.result_code if done.result_code is not None else 0xFF
        if done.result_code is None:
            raise ProtocolError("status enquiry completion without a terminal status", self.info.device_id)
        return done.result_code

    async def health(self) -> Health:
        if self._lock.locked():
            # A payment holds the terminal; asking now would disturb it. Report what we knew.
            return self._last_health
        try:
            if self.probe == "status":
                code = await self.status()
            else:
                async with self._lock:
                    await self._ensure_link()
                code = 0
        except TerminalBusy as exc:
            health = Health("degraded", str(exc).removeprefix(f"{self.info.device_id}: "))
        except RegistrationRefused as exc:
            health = Health("failed", str(exc).removeprefix(f"{self.info.device_id}: "))
        except PaymentError as exc:
            health = Health("degraded", str(exc).removeprefix(f"{self.info.device_id}: "))
        except DeviceTimeout:
            health = Health("failed", "no answer")
        except DeviceError as exc:
            health = Health("failed", str(exc).removeprefix(f"{self.info.device_id}: "))
        else:
            if code == 0:
                health = Health("ready")
            elif code in (0xDF, 0xE2, 0x89, 0xED):
                health = Health("failed", f"terminal reports: {result_text(code)}")
            else:
                health = Health("degraded", f"terminal reports: {result_text(code)}")
        self._last_health = health
        return health

    async def field_check(self, wait_s: float) -> FieldCheck:
        """The installer's check: connect and register (06 00: password and currency), then one
        status enquiry (05 01), asked knowingly here; no payment and no repeat receipt (06 20),
        which real terminals may print. The profile names what the box uses for this terminal."""
        steps: list[FieldStep] = []
        profile: dict[str, object] = {"currency": self.currency, "probe": self.probe}
        try:
            await self.open()
        except PaymentError as exc:
            steps.append(FieldStep("registration 06 00", False, f"{exc}: set the terminal's password and "
                                   f"currency ({self.currency}) in its [[device]]"))
            return FieldCheck(tuple(steps), profile)
        except DeviceError as exc:
            steps.append(FieldStep("registration 06 00", False, f"{exc}: check the address, cable and "
                                   "that the terminal's ECR interface is ZVT"))
            return FieldCheck(tuple(steps), profile)
        steps.append(FieldStep("registration 06 00", True,
                               f"terminal {self.terminal_id or '(id not sent)'} took password and {self.currency}"))
        try:
            code = await self.status()
        except DeviceError as exc:
            steps.append(FieldStep("status enquiry 05 01", False, str(exc)))
        else:
            steps.append(FieldStep("status enquiry 05 01", code == 0,
                                   "ready" if code == 0 else f"terminal reports: {result_text(code)}"))
        return FieldCheck(tuple(steps), profile)
