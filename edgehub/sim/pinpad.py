"""A ZVT payment terminal, on a loopback TCP port or a pseudo-terminal, with a journal of what it
really charged.

``charges`` is the effect a payment test checks ("the customer was charged exactly once"),
whatever the ECR believes. Fault knobs make the terminal die at each step of a payment, once
(a crash, then a reboot that keeps its journal): see ``FaultStep``; e.g. ``after_charge``
(charged, but the result never reaches the ECR) and ``hang`` (stops talking on that
connection). ``06 20`` (repeat receipt) answers from the last transaction record, which is
how an ECR settles an outcome it did not see.

How real terminals behave beyond the happy path of PA00P015 is in the knobs and in
``PROFILES`` (a test runs the store against each of them):

- ``please-wait`` / ``ack-84-00``: the authorisation (06 01) is accepted with ``84 9C 00`` ("please
  wait") or ``84 00 00`` instead of ``80 00 00``, and the approval follows (the spec's positive
  acknowledgements, and what terminals in the field send).
- ``chatty``: status information and completion carry the BMPs real terminals add: display
  image fields 70-75, display device FD, a TLV container (06), VU number, AID, card name, expiry,
  additional text.
- ``prints-on-repeat``: every answered ``06 20`` prints a receipt copy (``reprints``); any
  terminal here counts them, this one also refuses a repeat with ``CC`` (printer not ready) a few
  times first, as one with its paper out does.
- ``due-tasks``: a time-controlled task (end-of-day) is due; the next status enquiry (05 01)
  runs it, busy with intermediate status for a while (CCV OPM-C60 system manual 6.4.1.3: such
  actions are started by the status enquiry). ``due_tasks_run`` counts them.

The simulator encodes and decodes its own bytes (it shares no code with drivers/zvt.py), so a
bug in the driver's codec is not mirrored here. :class:`ZvtSerialPinpadSim` is the same terminal
on RS-232 framing (``DLE STX … DLE ETX CRC``, each frame answered ACK/NAK) over a pty.
"""

from __future__ import annotations

import asyncio
import binascii
import contextlib
import time
from dataclasses import dataclass
from typing import Any, Literal, Protocol, get_args

from edgehub.sim.scale import PtyPort
from edgehub.tasks import cancel_and_wait

__all__ = [
    "PAYMENT_STEPS",
    "PROFILES",
    "FaultStep",
    "SimTransaction",
    "ZvtPinpadSim",
    "ZvtSerialPinpadSim",
]

#: Where the terminal dies, in the order of a payment: before it acknowledges the command, after
#: the ACK, after the "insert card" intermediate status, hanging there, after charging (result not
#: sent), charging and then hanging, after the result (04 0F) but before the completion (06 0F),
#: ``die_on_repeat`` makes it die on the ECR's later "repeat last receipt" (06 20) questions.
FaultStep = Literal[
    "before_ack",
    "after_ack",
    "after_intermediate",
    "hang",
    "after_charge",
    "hang_after_charge",
    "after_status",
]
#: The steps of one payment, for tests that kill the terminal at each of them.
PAYMENT_STEPS: tuple[FaultStep, ...] = get_args(FaultStep)

#: Real terminals' ways, as knob settings (see the module doc). "spec" is the plain terminal.
PROFILES: dict[str, dict[str, Any]] = {
    "spec": {},
    "please-wait": {"auth_ack": b"\x84\x9c\x00", "please_wait_s": 0.3},
    "ack-84-00": {"auth_ack": b"\x84\x00\x00"},
    "chatty": {"chatty": True},
    "prints-on-repeat": {"repeat_refusal": 0xCC, "repeat_refusal_times": 2},
    "due-tasks": {"due_task": "end-of-day"},
}

_ACK = b"\x80\x00\x00"
DLE, STX, ETX, ACK, NAK = 0x10, 0x02, 0x03, 0x06, 0x15


def _bcd(value: int, nbytes: int) -> bytes:
    return bytes.fromhex(f"{value:0{nbytes * 2}d}")


def _apdu(cls: int, instr: int, data: bytes = b"") -> bytes:
    if len(data) < 0xFF:
        return bytes([cls, instr, len(data)]) + data
    return bytes([cls, instr, 0xFF]) + len(data).to_bytes(2, "little") + data


def _ll(value: bytes, digits: int = 2) -> bytes:
    return bytes(0xF0 | int(d) for d in f"{len(value):0{digits}d}") + value


def _reflect(value: int, bits: int) -> int:
    return int(f"{value:0{bits}b}"[::-1], 2)


def _crc(data: bytes) -> bytes:
    """The serial frame check (CRC-CCITT, reflected, init 0), low byte first: computed here as
    the plain CCITT CRC of the bit-reversed bytes, reversed."""
    plain = binascii.crc_hqx(bytes(_reflect(b, 8) for b in data), 0)
    return _reflect(plain, 16).to_bytes(2, "little")


@dataclass
class SimTransaction:
    """One transaction in the terminal's journal."""

    kind: Literal["payment", "refund", "reversal"]
    amount_cents: int
    trace_no: int
    receipt_no: int
    result_code: int
    reversed: bool = False

    @property
    def approved(self) -> bool:
        return self.result_code == 0


class _Died(Exception):
    """The simulated terminal crashed on this connection."""


class _Wire(Protocol):
    """How APDUs reach the ECR on one connection (TCP stream or serial frames)."""

    async def read(self) -> tuple[int, int, bytes]: ...
    async def write(self, apdu: bytes) -> None: ...
    def crash(self) -> None: ...
    async def hang(self) -> None: ...


class _TcpWire:
    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def read(self) -> tuple[int, int, bytes]:
        head = await self.reader.readexactly(3)
        n = head[2]
        if n == 0xFF:
            n = int.from_bytes(await self.reader.readexactly(2), "little")
        return head[0], head[1], await self.reader.readexactly(n)

    async def write(self, apdu: bytes) -> None:
        self.writer.write(apdu)
        await self.writer.drain()

    def crash(self) -> None:
        self.writer.transport.abort()

    async def hang(self) -> None:
        # Swallow whatever the ECR sends until it gives up and closes.
        while await self.reader.read(4096):
            pass


class ZvtPinpadSim:
    """A ZVT terminal listening on ``127.0.0.1:{port}``; an async context manager.

    ``profile`` presets knobs from :data:`PROFILES`; keyword knobs given here win over it.
    """

    def __init__(
        self,
        *,
        profile: str = "spec",
        terminal_id: str = "52500001",
        serial_number: str = "SIMZVT-000001",
        password: str = "000000",
        currency_code: int = 978,
        card_pan: str = "4761739001010119",
        send_full_pan: bool = False,
        decline_over_cents: int | None = None,
        card_delay: float = 0.0,
        **knobs: Any,
    ) -> None:
        if profile not in PROFILES:
            raise ValueError(f"unknown pinpad profile {profile!r} (known: {', '.join(PROFILES)})")
        self.profile = profile
        self.terminal_id = terminal_id
        self.serial_number = serial_number
        self.password = bytes.fromhex(password)
        self.currency_code = currency_code
        self.card_pan = card_pan
        #: Send the whole PAN (a badly configured terminal) to prove the ECR masks it anyway.
        self.send_full_pan = send_full_pan
        #: Amounts above this are declined with result code 05.
        self.decline_over_cents = decline_over_cents
        #: The next authorisation is declined with this result code (one-shot).
        self.next_result_code: int | None = None
        #: Seconds the "customer" takes with the card; an ECR abort (06 B0) is heard meanwhile.
        self.card_delay = card_delay
        #: Die at this step of the next payment or refund (one-shot: the terminal reboots).
        self.fault: FaultStep | None = None
        #: Seconds a reboot after dying takes: nothing answers on the port meanwhile (TCP).
        self.reboot_s = 0.0
        #: Die on this many of the next "repeat last receipt" (06 20) questions: the ECR's
        #: settle query meets a terminal that crashes again.
        self.die_on_repeat = 0
        #: Terminal status code answered to a status enquiry (0 = ready).
        self.terminal_status = 0
        #: How the terminal accepts an authorisation (06 01): 80 00 00, or 84 00 00 / 84 9C 00.
        self.auth_ack = _ACK
        #: Seconds between a "please wait" acceptance and the rest of the authorisation.
        self.please_wait_s = 0.0
        #: Refuse the next authorisation with ``84 <code> 00`` and do nothing (one-shot).
        self.auth_refusal: int | None = None
        #: Add the BMPs real terminals send beyond the ones an ECR needs (see the module doc).
        self.chatty = False
        #: End the status information with a BMP the spec does not define (a vendor's own).
        self.undefined_bmp = False
        #: Answer 06 20 with an abort carrying this result code, ``repeat_refusal_times`` times
        #: (-1: always), before answering it properly.
        self.repeat_refusal: int | None = None
        self.repeat_refusal_times = 0
        #: A time-controlled task due on the terminal, run by the next status enquiry.
        self.due_task: str | None = None
        self.due_task_s = 0.3
        for name, value in {**PROFILES[profile], **knobs}.items():
            if not hasattr(self, name):
                raise TypeError(f"ZvtPinpadSim has no knob {name!r}")
            setattr(self, name, value)
        #: Every approved payment, in order: what the customer was really charged.
        self.charges: list[SimTransaction] = []
        self.refunds: list[SimTransaction] = []
        self.journal: list[SimTransaction] = []
        #: (class, instruction) of every command received, in order.
        self.commands: list[tuple[int, int]] = []
        #: Receipt copies printed by 06 20 (a real terminal prints one per repeat).
        self.reprints = 0
        #: Due tasks the terminal ran (started by a status enquiry).
        self.due_tasks_run: list[str] = []
        #: ECR connections accepted (TCP) or sessions started (serial: registrations).
        self.connections = 0
        self.port = 0
        self._trace = 0
        self._receipt = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._rebooting: asyncio.Task[None] | None = None

    @property
    def last(self) -> SimTransaction | None:
        return self.journal[-1] if self.journal else None

    async def __aenter__(self) -> ZvtPinpadSim:
        self._server = await asyncio.start_server(self._serve_tcp, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._rebooting)
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()

    def drop_connections(self) -> None:
        """Reset every ECR connection (a reboot); the journal survives."""
        for writer in list(self._writers):
            writer.transport.abort()
        self._writers.clear()

    def power_off(self) -> None:
        """Switch the terminal off: connections reset, nothing listens on the port."""
        self.drop_connections()
        if self._server is not None:
            self._server.close()
            self._server = None

    async def power_on(self) -> None:
        """Switch it on again, on the same port; the journal survived."""
        if self._server is None:
            self._server = await asyncio.start_server(self._serve_tcp, "127.0.0.1", self.port)

    def _reboot(self) -> None:
        if self.reboot_s <= 0 or self._server is None:
            return

        async def boot() -> None:
            await asyncio.sleep(self.reboot_s)
            await self.power_on()

        self.power_off()
        self._rebooting = asyncio.create_task(boot(), name="zvt-sim-reboot")

    async def _serve_tcp(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self.connections += 1
        try:
            await self.run_session(_TcpWire(reader, writer))
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    # -- one ECR session, whatever the wire -----------------------------------------------------

    async def run_session(self, wire: _Wire) -> None:
        """Serve one ECR session on ``wire`` (a TCP connection, or the serial line) until it ends."""
        try:
            while True:
                cls, instr, data = await wire.read()
                self.commands.append((cls, instr))
                await self._dispatch(wire, cls, instr, data)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, _Died):
            pass

    async def _send_wait_ack(self, wire: _Wire, apdu: bytes) -> None:
        await wire.write(apdu)
        async with asyncio.timeout(5):
            while True:
                cls, instr, _ = await wire.read()
                if (cls, instr) == (0x80, 0x00):
                    return

    def _die(self, wire: _Wire) -> None:
        self.fault = None
        wire.crash()
        if isinstance(wire, _TcpWire):
            self._reboot()
        raise _Died

    async def _hang(self, wire: _Wire) -> None:
        self.fault = None
        await wire.hang()
        raise _Died

    async def _dispatch(self, wire: _Wire, cls: int, instr: int, data: bytes) -> None:
        code = (cls, instr)
        if code in ((0x06, 0x01), (0x06, 0x31)) and self.fault == "before_ack":
            self._die(wire)
        if code == (0x06, 0x20) and self.die_on_repeat > 0:
            self.die_on_repeat -= 1
            wire.crash()
            raise _Died
        if (
            code != (0x06, 0xB0)
            and code[0] in (0x05, 0x06)
            and data[:3] != self.password
            and code != (0x06, 0x01)
        ):
            await wire.write(b"\x84\x6b\x00" if len(data) >= 3 else b"\x84\x83\x00")
            return
        if code not in ((0x06, 0x00), (0x06, 0x01), (0x06, 0x31), (0x06, 0x30), (0x06, 0x20), (0x05, 0x01)):
            await wire.write(b"\x84\x83\x00")
            return
        if code == (0x06, 0x00) and len(data) >= 6 and int(data[4:6].hex()) != self.currency_code:
            await wire.write(b"\x84\x6f\x00")  # wrong currency
            return
        if code == (0x06, 0x01) and self.auth_refusal is not None:
            refusal, self.auth_refusal = self.auth_refusal, None
            await wire.write(bytes([0x84, refusal, 0x00]))
            return
        await wire.write(self.auth_ack if code == (0x06, 0x01) else _ACK)
        if code == (0x06, 0x01) and self.auth_ack != _ACK and self.please_wait_s:
            await asyncio.sleep(self.please_wait_s)
        if code in ((0x06, 0x01), (0x06, 0x31)) and self.fault == "after_ack":
            self._die(wire)
        if code == (0x06, 0x00):
            done = b"\x19\x00\x29" + bytes.fromhex(self.terminal_id) + b"\x49" + _bcd(self.currency_code, 2)
            if self.chatty:
                done += b"\x06\x06\x26\x04\x0a\x02\x06\xd3"  # TLV: list of commands the PT supports
            await self._send_wait_ack(wire, _apdu(0x06, 0x0F, done))
        elif code == (0x05, 0x01):
            await self._status_enquiry(wire)
        elif code == (0x06, 0x20):
            await self._repeat_receipt(wire)
        elif code == (0x06, 0x30):
            await self._reversal(wire, data)
        else:
            await self._authorise(wire, "payment" if instr == 0x01 else "refund", data)

    async def _status_enquiry(self, wire: _Wire) -> None:
        if self.due_task is not None:
            # The terminal takes the enquiry as its chance to run what is due.
            task, self.due_task = self.due_task, None
            self.due_tasks_run.append(task)
            await self._send_wait_ack(wire, _apdu(0x04, 0xFF, b"\x17"))  # "please wait"
            await asyncio.sleep(self.due_task_s)
        version = b"SIM-ZVT 1.0"
        done = _ll(version, 3) + bytes([self.terminal_status]) + b"\x29" + bytes.fromhex(self.terminal_id)
        await self._send_wait_ack(wire, _apdu(0x06, 0x0F, done))

    async def _repeat_receipt(self, wire: _Wire) -> None:
        if self.repeat_refusal is not None and self.repeat_refusal_times != 0:
            self.repeat_refusal_times -= 1
            await self._send_wait_ack(wire, _apdu(0x06, 0x1E, bytes([self.repeat_refusal])))
            return
        if self.last is None:
            await self._send_wait_ack(wire, _apdu(0x06, 0x1E, b"\x83"))
            return
        self.reprints += 1
        await self._send_wait_ack(wire, _apdu(0x04, 0x0F, self._status_info(self.last)))
        await self._send_wait_ack(wire, _apdu(0x06, 0x0F, b"\x29" + bytes.fromhex(self.terminal_id)))

    def _fields(self, data: bytes) -> dict[int, bytes]:
        sizes = {0x04: 6, 0x49: 2, 0x87: 2, 0x03: 1, 0x19: 1, 0x01: 1, 0x02: 1}
        fields: dict[int, bytes] = {}
        pos = 0
        while pos < len(data) and data[pos] in sizes:
            n = sizes[data[pos]]
            fields[data[pos]] = data[pos + 1 : pos + 1 + n]
            pos += 1 + n
        return fields

    def _pan_bcd(self) -> bytes:
        pan = (
            self.card_pan
            if self.send_full_pan
            else self.card_pan[:6] + "E" * (len(self.card_pan) - 10) + self.card_pan[-4:]
        )
        if len(pan) % 2:
            pan += "F"
        return _ll(bytes.fromhex(pan))

    def _status_info(self, tx: SimTransaction) -> bytes:
        now = time.localtime()
        head = b"\x27" + bytes([tx.result_code]) + b"\x04" + _bcd(tx.amount_cents, 6)
        chatter = b""
        if self.chatty:
            chatter = (
                b"\x70" + bytes.fromhex("00000001")  # display image request id
                + b"\x71" + (512).to_bytes(4, "big")  # image size
                + b"\x72\x01\x73\x00\x74\x01\x75\x00"  # mime, encoding, chunks, chunk index
                + b"\xfd\x01"  # display device
                + b"\x2a" + b"804011926      "  # VU number
                + b"\x3b" + b"750071\x00\x00"  # AID authorisation attribute
                + b"\x0e" + _bcd(2812, 2)  # expiry YYMM
                + b"\x17" + _bcd(1, 2)  # card sequence number
                + b"\x8b" + _ll(b"UnionPay")  # card name
                + b"\x8c\x01"
                + b"\x3c" + _ll(b"AS-Proc-Code= 00 076 06\rCapt.-Ref.= 0099", 3)  # additional text
                + b"\x06\x0a\x1f\x10\x01\x01\x1f\x11\x01\x01\x45\x00"  # TLV container
            )  # fmt: skip
        body = (
            b"\x0b" + _bcd(tx.trace_no, 3)
            + b"\x0c" + _bcd(now.tm_hour * 10000 + now.tm_min * 100 + now.tm_sec, 3)
            + b"\x0d" + _bcd(now.tm_mon * 100 + now.tm_mday, 2)
            + b"\x87" + _bcd(tx.receipt_no, 2)
            + b"\x29" + bytes.fromhex(self.terminal_id)
            + b"\x49" + _bcd(self.currency_code, 2)
            + b"\x22" + self._pan_bcd()
            + b"\x8a\x05"
        )  # fmt: skip
        tail = b"\x9f\x02\xab\xcd" if self.undefined_bmp else b""
        return head + chatter + body + tail

    async def _wait_for_card(self, wire: _Wire) -> bool:
        """Wait ``card_delay``; True when the ECR aborted (06 B0) meanwhile."""
        if self.card_delay <= 0:
            return False
        try:
            async with asyncio.timeout(self.card_delay):
                while True:
                    cls, instr, _ = await wire.read()
                    self.commands.append((cls, instr))
                    if (cls, instr) == (0x06, 0xB0):
                        await wire.write(_ACK)
                        return True
        except TimeoutError:
            return False

    async def _authorise(self, wire: _Wire, kind: Literal["payment", "refund"], data: bytes) -> None:
        fields = self._fields(data if kind == "payment" else data[3:])
        amount = int(fields.get(0x04, b"\x00").hex() or "0")
        await self._send_wait_ack(wire, _apdu(0x04, 0xFF, b"\x0a"))  # "insert card"
        if self.fault == "after_intermediate":
            self._die(wire)
        if self.fault == "hang":
            await self._hang(wire)
        if await self._wait_for_card(wire):
            await self._send_wait_ack(wire, _apdu(0x06, 0x1E, b"\x6c"))
            return
        code = 0
        if self.next_result_code is not None:
            code, self.next_result_code = self.next_result_code, None
        elif kind == "payment" and self.decline_over_cents is not None and amount > self.decline_over_cents:
            code = 0x05
        if 0x49 in fields and int(fields[0x49].hex()) != self.currency_code:
            code = 0x6F
        self._trace += 1
        self._receipt += 1
        tx = SimTransaction(kind, amount, self._trace, self._receipt, code)
        self.journal.append(tx)
        if tx.approved:
            (self.charges if kind == "payment" else self.refunds).append(tx)
        if self.fault == "after_charge":
            self._die(wire)
        if self.fault == "hang_after_charge":
            await self._hang(wire)
        await self._send_wait_ack(wire, _apdu(0x04, 0x0F, self._status_info(tx)))
        if self.fault == "after_status":
            self._die(wire)
        if tx.approved:
            done = b"\x27\x00\x29" + bytes.fromhex(self.terminal_id)
            if self.chatty:
                done += b"\xfd\x01\x06\x03\x1f\x10\x00"
            await self._send_wait_ack(wire, _apdu(0x06, 0x0F, done))
        else:
            await self._send_wait_ack(wire, _apdu(0x06, 0x1E, bytes([code])))

    async def _reversal(self, wire: _Wire, data: bytes) -> None:
        fields = self._fields(data[3:])
        receipt = int(fields[0x87].hex()) if 0x87 in fields else -1
        original = next((c for c in self.charges if c.receipt_no == receipt), None)
        if original is None or original.reversed:
            code = 0xB4 if original is not None else 0xB5
            await self._send_wait_ack(wire, _apdu(0x06, 0x1E, bytes([code])))
            return
        original.reversed = True
        self._trace += 1
        tx = SimTransaction("reversal", original.amount_cents, self._trace, original.receipt_no, 0)
        self.journal.append(tx)
        await self._send_wait_ack(wire, _apdu(0x04, 0x0F, self._status_info(tx)))
        await self._send_wait_ack(wire, _apdu(0x06, 0x0F, b"\x27\x00"))

    @property
    def net_charged_cents(self) -> int:
        """What the customers' cards are down overall: charges less reversals and refunds."""
        return sum(c.amount_cents for c in self.charges if not c.reversed) - sum(
            r.amount_cents for r in self.refunds
        )


class _SerialWire:
    """The terminal's side of ZVT serial framing on a pty: frames in and out, line ACK/NAK."""

    def __init__(self, port: ZvtSerialPinpadSim) -> None:
        self.port = port
        self.apdus: asyncio.Queue[tuple[int, int, bytes]] = asyncio.Queue()
        self.line: asyncio.Queue[int] = asyncio.Queue()
        self.buf = bytearray()
        self.hanging = False

    def received(self, data: bytes) -> None:
        self.buf += data
        while self.buf:
            if self.buf[0] in (ACK, NAK):
                self.line.put_nowait(self.buf[0])
                del self.buf[0]
                continue
            if self.buf[0] != DLE:
                del self.buf[0]
                continue
            frame = self._frame()
            if frame is None:
                return
            if frame is False:
                self.port.send_raw(bytes([NAK]))
                continue
            self.port.send_raw(bytes([ACK]))
            n = frame[2] if frame[2] != 0xFF else int.from_bytes(frame[3:5], "little")
            start = 3 if frame[2] != 0xFF else 5
            apdu = (frame[0], frame[1], bytes(frame[start : start + n]))
            if self.hanging and apdu[:2] != (0x06, 0x00):
                continue  # a hung terminal ignores everything until the ECR registers again
            self.hanging = False
            self.apdus.put_nowait(apdu)

    def _frame(self) -> bytes | Literal[False] | None:
        """One frame off the front of the buffer: its APDU, False for a bad one, None if partial."""
        if len(self.buf) < 2:
            return None
        if self.buf[1] != STX:
            del self.buf[:1]
            return False
        out = bytearray()
        i = 2
        while i + 1 < len(self.buf):
            if self.buf[i] == DLE and self.buf[i + 1] == DLE:
                out.append(DLE)
                i += 2
            elif self.buf[i] == DLE and self.buf[i + 1] == ETX:
                if i + 4 > len(self.buf):
                    return None
                crc = bytes(self.buf[i + 2 : i + 4])
                del self.buf[: i + 4]
                return bytes(out) if crc == _crc(bytes(out) + bytes([ETX])) and len(out) >= 3 else False
            else:
                out.append(self.buf[i])
                i += 1
        return None

    async def read(self) -> tuple[int, int, bytes]:
        return await self.apdus.get()

    async def write(self, apdu: bytes) -> None:
        frame = bytes([DLE, STX]) + apdu.replace(bytes([DLE]), bytes([DLE, DLE])) + bytes([DLE, ETX])
        frame += _crc(apdu + bytes([ETX]))
        while not self.line.empty():
            self.line.get_nowait()
        for _ in range(3):
            self.port.send_raw(frame)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    if await self.line.get() == ACK:
                        return
        raise TimeoutError("the ECR did not acknowledge a frame")

    def crash(self) -> None:
        # A serial terminal that crashes goes silent and forgets what it was doing.
        self.buf.clear()
        while not self.apdus.empty():
            self.apdus.get_nowait()

    async def hang(self) -> None:
        self.hanging = True
        while not self.apdus.empty():
            self.apdus.get_nowait()
        raise _Died


class ZvtSerialPinpadSim(PtyPort):
    """The same terminal on RS-232 (``sim.port`` is the tty the ECR opens, 9600 8N2).

    ``terminal`` is the :class:`ZvtPinpadSim` whose knobs and journal it uses; it listens on TCP
    too, so one terminal may be reached both ways.
    """

    def __init__(self, terminal: ZvtPinpadSim) -> None:
        super().__init__()
        self.terminal = terminal
        self._wire = _SerialWire(self)
        self._task: asyncio.Task[None] | None = None

    async def _started(self) -> None:
        self._task = asyncio.create_task(self._run(), name="zvt-serial-sim")

    async def _stopping(self) -> None:
        await cancel_and_wait(self._task)

    def _received(self, data: bytes) -> None:
        self._wire.received(data)

    async def _run(self) -> None:
        while True:
            self.terminal.connections += 1
            await self.terminal.run_session(self._wire)
