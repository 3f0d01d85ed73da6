"""A ZVT payment terminal on a loopback TCP port, with a journal of what it really charged.

``charges`` is the effect a payment test checks ("the customer was charged exactly once"),
whatever the ECR believes. Fault knobs make the terminal die at each step of a payment, once
(a crash, then a reboot that keeps its journal): see ``FaultStep``; e.g. ``after_charge``
(charged, but the result never reaches the ECR) and ``hang`` (stops talking on that
connection). ``06 20`` (repeat receipt) answers from the last transaction record, which is
how an ECR settles an outcome it did not see.

The simulator encodes and decodes its own bytes (it shares no code with drivers/zvt.py), so a
bug in the driver's codec is not mirrored here.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["PAYMENT_STEPS", "FaultStep", "SimTransaction", "ZvtPinpadSim"]

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

_ACK = b"\x80\x00\x00"


def _bcd(value: int, nbytes: int) -> bytes:
    return bytes.fromhex(f"{value:0{nbytes * 2}d}")


def _apdu(cls: int, instr: int, data: bytes = b"") -> bytes:
    if len(data) < 0xFF:
        return bytes([cls, instr, len(data)]) + data
    return bytes([cls, instr, 0xFF]) + len(data).to_bytes(2, "little") + data


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


class ZvtPinpadSim:
    """A ZVT terminal listening on ``127.0.0.1:{port}``; an async context manager."""

    def __init__(
        self,
        *,
        terminal_id: str = "52500001",
        serial_number: str = "SIMZVT-000001",
        password: str = "000000",
        currency_code: int = 978,
        card_pan: str = "4761739001010119",
        send_full_pan: bool = False,
        decline_over_cents: int | None = None,
        card_delay: float = 0.0,
    ) -> None:
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
        #: Die on this many of the next "repeat last receipt" (06 20) questions: the ECR's
        #: settle query meets a terminal that crashes again.
        self.die_on_repeat = 0
        #: Terminal status code answered to a status enquiry (0 = ready).
        self.terminal_status = 0
        #: Every approved payment, in order: what the customer was really charged.
        self.charges: list[SimTransaction] = []
        self.refunds: list[SimTransaction] = []
        self.journal: list[SimTransaction] = []
        #: (class, instruction) of every command received, in order.
        self.commands: list[tuple[int, int]] = []
        self.port = 0
        self._trace = 0
        self._receipt = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def last(self) -> SimTransaction | None:
        return self.journal[-1] if self.journal else None

    async def __aenter__(self) -> ZvtPinpadSim:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def __aexit__(self, *exc: object) -> None:
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

    # -- wire -------------------------------------------------------------------------------

    @staticmethod
    async def _read(reader: asyncio.StreamReader) -> tuple[int, int, bytes]:
        head = await reader.readexactly(3)
        n = head[2]
        if n == 0xFF:
            n = int.from_bytes(await reader.readexactly(2), "little")
        return head[0], head[1], await reader.readexactly(n)

    async def _send_wait_ack(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, apdu: bytes
    ) -> None:
        writer.write(apdu)
        await writer.drain()
        async with asyncio.timeout(5):
            while True:
                cls, instr, _ = await self._read(reader)
                if (cls, instr) == (0x80, 0x00):
                    return

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        try:
            while True:
                cls, instr, data = await self._read(reader)
                self.commands.append((cls, instr))
                await self._dispatch(reader, writer, cls, instr, data)
        except (asyncio.IncompleteReadError, ConnectionError, TimeoutError, _Died):
            pass
        finally:
            self._writers.discard(writer)
            writer.transport.abort()

    def _die(self, writer: asyncio.StreamWriter) -> None:
        self.fault = None
        writer.transport.abort()
        raise _Died

    async def _hang(self, reader: asyncio.StreamReader) -> None:
        self.fault = None
        # Swallow whatever the ECR sends until it gives up and closes.
        while await reader.read(4096):
            pass
        raise _Died

    async def _dispatch(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, cls: int, instr: int, data: bytes
    ) -> None:
        code = (cls, instr)
        if code in ((0x06, 0x01), (0x06, 0x31)) and self.fault == "before_ack":
            self._die(writer)
        if code == (0x06, 0x20) and self.die_on_repeat > 0:
            self.die_on_repeat -= 1
            writer.transport.abort()
            raise _Died
        if (
            code != (0x06, 0xB0)
            and code[0] in (0x05, 0x06)
            and data[:3] != self.password
            and code != (0x06, 0x01)
        ):
            writer.write(b"\x84\x6b\x00" if len(data) >= 3 else b"\x84\x83\x00")
            await writer.drain()
            return
        if code not in ((0x06, 0x00), (0x06, 0x01), (0x06, 0x31), (0x06, 0x30), (0x06, 0x20), (0x05, 0x01)):
            writer.write(b"\x84\x83\x00")
            await writer.drain()
            return
        writer.write(_ACK)
        await writer.drain()
        if code in ((0x06, 0x01), (0x06, 0x31)) and self.fault == "after_ack":
            self._die(writer)
        if code == (0x06, 0x00):
            done = b"\x19\x00\x29" + bytes.fromhex(self.terminal_id) + b"\x49" + _bcd(self.currency_code, 2)
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x0F, done))
        elif code == (0x05, 0x01):
            version = b"SIM-ZVT 1.0"
            lll = bytes(0xF0 | int(d) for d in f"{len(version):03d}")
            done = lll + version + bytes([self.terminal_status]) + b"\x29" + bytes.fromhex(self.terminal_id)
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x0F, done))
        elif code == (0x06, 0x20):
            if self.last is None:
                await self._send_wait_ack(reader, writer, _apdu(0x06, 0x1E, b"\x83"))
            else:
                await self._send_wait_ack(reader, writer, _apdu(0x04, 0x0F, self._status_info(self.last)))
                await self._send_wait_ack(
                    reader, writer, _apdu(0x06, 0x0F, b"\x29" + bytes.fromhex(self.terminal_id))
                )
        elif code == (0x06, 0x30):
            await self._reversal(reader, writer, data)
        else:
            await self._authorise(reader, writer, "payment" if instr == 0x01 else "refund", data)

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
        raw = bytes.fromhex(pan)
        return bytes(0xF0 | int(d) for d in f"{len(raw):02d}") + raw

    def _status_info(self, tx: SimTransaction) -> bytes:
        now = time.localtime()
        return (
            b"\x27" + bytes([tx.result_code])
            + b"\x04" + _bcd(tx.amount_cents, 6)
            + b"\x0b" + _bcd(tx.trace_no, 3)
            + b"\x0c" + _bcd(now.tm_hour * 10000 + now.tm_min * 100 + now.tm_sec, 3)
            + b"\x0d" + _bcd(now.tm_mon * 100 + now.tm_mday, 2)
            + b"\x87" + _bcd(tx.receipt_no, 2)
            + b"\x29" + bytes.fromhex(self.terminal_id)
            + b"\x49" + _bcd(self.currency_code, 2)
            + b"\x22" + self._pan_bcd()
            + b"\x8a\x05"
        )  # fmt: skip

    async def _wait_for_card(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Wait ``card_delay``; True when the ECR aborted (06 B0) meanwhile."""
        if self.card_delay <= 0:
            return False
        try:
            async with asyncio.timeout(self.card_delay):
                while True:
                    cls, instr, _ = await self._read(reader)
                    self.commands.append((cls, instr))
                    if (cls, instr) == (0x06, 0xB0):
                        writer.write(_ACK)
                        await writer.drain()
                        return True
        except TimeoutError:
            return False

    async def _authorise(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        kind: Literal["payment", "refund"],
        data: bytes,
    ) -> None:
        fields = self._fields(data if kind == "payment" else data[3:])
        amount = int(fields.get(0x04, b"\x00").hex() or "0")
        await self._send_wait_ack(reader, writer, _apdu(0x04, 0xFF, b"\x0a"))  # "insert card"
        if self.fault == "after_intermediate":
            self._die(writer)
        if self.fault == "hang":
            await self._hang(reader)
        if await self._wait_for_card(reader, writer):
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x1E, b"\x6c"))
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
            self._die(writer)
        if self.fault == "hang_after_charge":
            await self._hang(reader)
        await self._send_wait_ack(reader, writer, _apdu(0x04, 0x0F, self._status_info(tx)))
        if self.fault == "after_status":
            self._die(writer)
        if tx.approved:
            done = b"\x27\x00\x29" + bytes.fromhex(self.terminal_id)
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x0F, done))
        else:
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x1E, bytes([code])))

    async def _reversal(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, data: bytes
    ) -> None:
        fields = self._fields(data[3:])
        receipt = int(fields[0x87].hex()) if 0x87 in fields else -1
        original = next((c for c in self.charges if c.receipt_no == receipt), None)
        if original is None or original.reversed:
            code = 0xB4 if original is not None else 0xB5
            await self._send_wait_ack(reader, writer, _apdu(0x06, 0x1E, bytes([code])))
            return
        original.reversed = True
        self._trace += 1
        tx = SimTransaction("reversal", original.amount_cents, self._trace, original.receipt_no, 0)
        self.journal.append(tx)
        await self._send_wait_ack(reader, writer, _apdu(0x04, 0x0F, self._status_info(tx)))
        await self._send_wait_ack(reader, writer, _apdu(0x06, 0x0F, b"\x27\x00"))

    @property
    def net_charged_cents(self) -> int:
        """What the customers' cards are down overall: charges less reversals and refunds."""
        return sum(c.amount_cents for c in self.charges if not c.reversed) - sum(
            r.amount_cents for r in self.refunds
        )
