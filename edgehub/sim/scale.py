"""Serial scale simulators on pseudo-terminals: Mettler Toledo 8217 and CAS (ECR and continuous).

A test (or ``make run`` on a machine without hardware) opens ``sim.port`` exactly as it would
open ``/dev/ttyUSB0``; the simulator answers on the pty's master end from the asyncio loop.
Knobs change what the scale would report (``weight_g``, ``motion``, ``overload``,
``under_zero``, ``silent``), ``reply_override`` makes it send chosen bytes instead of its replies
(malformed or truncated frames), and ``unplug()`` closes the master end, which the driver sees
as a real disconnect.

A pty carries neither parity nor a 7-bit character size, so the 8217 simulator works on the
wire image of 7E1: even parity travels as bit 7 of each byte, and commands that arrive with
wrong parity (an ECR talking 8N1 to it) are dropped as line noise, as a real scale does.

Profiles (``SCALE_PROFILES``, ``ScaleSim.from_profile``) are the real units' habits, taken from
their manuals and from what other drivers accept, not from our driver: an 8217 that pads its
number with blanks and ends it with ``N`` (Odoo's 8217 pattern ``\\x02\\s*([0-9.]+)N?\\r``), an
8217 set to pounds (two decimals, ``30 lb x 0.01 lb``, and no unit in the frame, as the DIVA
service manual's capacities show), and CAS-type ECR scales weighing in g, lb or 斤 (the unit field
``G``, ``LB``, ``SJ`` of the Gram ZFOC manual's weight package).

Also here: :class:`PtyPort`, the base of every pty simulator, and :class:`EchoPortSim`, a port
that echoes whatever it is sent (a loopback plug, a modem in echo mode) for probe tests.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pty
import tty
from decimal import ROUND_HALF_UP, Decimal
from typing import Any, Literal

from edgehub.tasks import cancel_and_wait

__all__ = ["SCALE_PROFILES", "EchoPortSim", "PtyPort", "ScaleProtocol", "ScaleSim", "SimUnit"]

ScaleProtocol = Literal["mt8217", "cas", "cas-continuous"]
SimUnit = Literal["kg", "g", "lb", "jin"]

# What one unit is in grams, and how many decimals the display shows in it.
_UNIT_GRAMS: dict[str, Decimal] = {"kg": Decimal(1000), "g": Decimal(1), "lb": Decimal("453.59237"),
                                   "jin": Decimal(500)}
_UNIT_DECIMALS = {"kg": 3, "g": 0, "lb": 2, "jin": 3}
# The unit field of a CAS-type ECR frame (2 bytes, left-aligned as the Gram manual lists them).
_CAS_UNIT = {"kg": b"kg", "g": b"G ", "lb": b"LB", "jin": b"SJ"}
_CAS_CONT_UNIT = {"kg": b" kg", "g": b"  g", "lb": b" lb", "jin": b" SJ"}

#: Each simulated scale a store may meet: name -> ``ScaleSim`` arguments.
SCALE_PROFILES: dict[str, dict[str, Any]] = {
    "mt8217": {"protocol": "mt8217"},
    "mt8217-padded-n": {"protocol": "mt8217", "pad": " ", "suffix": b"N"},
    "mt8217-lb": {"protocol": "mt8217", "unit": "lb"},
    "cas": {"protocol": "cas"},
    "cas-g": {"protocol": "cas", "unit": "g"},
    "cas-lb": {"protocol": "cas", "unit": "lb"},
    "cas-jin": {"protocol": "cas", "unit": "jin"},
    "cas-continuous": {"protocol": "cas-continuous"},
    "cas-continuous-jin": {"protocol": "cas-continuous", "unit": "jin"},
}

SOH, STX, ETX, EOT, ENQ, ACK, DC1, CR, LF = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x11, 0x0D, 0x0A


class PtyPort:
    """A pseudo-terminal whose master end is served from the running asyncio loop.

    The simulator keeps its own slave fd open so the pty survives the driver closing and
    reopening the port; ``unplug()`` closes the master, which is what a pulled USB cable does.
    """

    def __init__(self) -> None:
        self.port = ""
        self._master = -1
        self._slave = -1
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def plugged(self) -> bool:
        return self._master >= 0

    async def __aenter__(self) -> PtyPort:
        self._loop = asyncio.get_running_loop()
        self._master, self._slave = pty.openpty()
        # Raw before anyone opens the port: in cooked mode the line discipline would echo our
        # replies back to us and turn CR into LF.
        tty.setraw(self._slave)
        os.set_blocking(self._master, False)
        self.port = os.ttyname(self._slave)
        self._loop.add_reader(self._master, self._readable)
        await self._started()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stopping()
        self.unplug()
        if self._slave >= 0:
            os.close(self._slave)
            self._slave = -1

    async def _started(self) -> None:
        """Hook for subclasses that run a task (continuous output)."""

    async def _stopping(self) -> None:
        """Hook for subclasses to stop their task."""

    def unplug(self) -> None:
        """Close the master end: the driver's next read or write fails like a pulled cable."""
        if self._master < 0:
            return
        if self._loop is not None:
            self._loop.remove_reader(self._master)
        os.close(self._master)
        self._master = -1

    def _readable(self) -> None:
        try:
            data = os.read(self._master, 4096)
        except BlockingIOError:
            return
        except OSError:
            # EIO: nobody holds the slave open; nothing to answer.
            return
        if data:
            self._received(data)

    def _received(self, data: bytes) -> None:
        """Override: the bytes the ECR sent."""

    def send_raw(self, data: bytes) -> None:
        """Write bytes to the ECR as they appear on the wire; dropped when unplugged or full."""
        if self._master < 0 or not data:
            return
        with contextlib.suppress(BlockingIOError, OSError):
            os.write(self._master, data)


class EchoPortSim(PtyPort):
    """A port that sends back every byte it gets: no protocol must mistake it for a device."""

    def _received(self, data: bytes) -> None:
        self.send_raw(data)


def _with_even_parity(data: bytes) -> bytes:
    return bytes(b & 0x7F | (bin(b & 0x7F).count("1") & 1) << 7 for b in data)


class ScaleSim(PtyPort):
    """A serial scale on a pty speaking ``protocol`` (``mt8217``, ``cas`` or ``cas-continuous``)."""

    def __init__(
        self,
        protocol: ScaleProtocol = "mt8217",
        *,
        weight_g: int = 0,
        capacity_g: int = 15_000,
        interval: float = 0.05,
        unit: SimUnit = "kg",
        pad: str = "0",
        suffix: bytes = b"",
    ) -> None:
        super().__init__()
        self.protocol: ScaleProtocol = protocol
        #: The unit the scale is set to: its display and its frames show weights in it.
        self.unit: SimUnit = unit
        #: 8217: what fills the number's leading places ("0", or " " on scales that blank them),
        #: and what follows the number ("N" on some units).
        self.pad = pad
        self.suffix = suffix
        self.weight_g = weight_g
        self.capacity_g = capacity_g
        self.interval = interval
        self.motion = False
        self.overload = False
        self.under_zero = False
        self.silent = False
        #: When set, sent instead of every reply (through the line's framing), for bad-byte tests.
        self.reply_override: bytes | None = None
        #: Every command the scale understood, in order (b"W", b"Z", b"T", b"E...", b"ENQ", b"DC1").
        self.commands: list[bytes] = []
        #: Bytes that arrived with the wrong parity (8217 only): someone talks the wrong framing.
        self.parity_errors = 0
        self.zero_offset_g = 0
        self.tare_g = 0
        self.outside_zero_range = False
        self._rx = bytearray()
        self._task: asyncio.Task[None] | None = None

    @classmethod
    def from_profile(cls, name: str, **overrides: Any) -> ScaleSim:
        """The scale of profile ``name`` (``SCALE_PROFILES``); ValueError for an unknown one."""
        if name not in SCALE_PROFILES:
            raise ValueError(f"no scale profile {name!r} (known: {', '.join(SCALE_PROFILES)})")
        return cls(**{**SCALE_PROFILES[name], **overrides})

    async def __aenter__(self) -> ScaleSim:
        await super().__aenter__()
        return self

    def shown(self, grams: int) -> str:
        """``grams`` as the display shows it in the scale's unit (rounded to its resolution)."""
        value = (Decimal(abs(grams)) / _UNIT_GRAMS[self.unit]).quantize(
            Decimal(1).scaleb(-_UNIT_DECIMALS[self.unit]), rounding=ROUND_HALF_UP)
        return f"{value:f}"

    async def _started(self) -> None:
        if self.protocol == "cas-continuous":
            self._task = asyncio.create_task(self._stream(), name=f"scale-sim-{self.port}")

    async def _stopping(self) -> None:
        await cancel_and_wait(self._task)
        self._task = None

    # -- what the scale measures --------------------------------------------------------------

    @property
    def gross_g(self) -> int:
        return self.weight_g - self.zero_offset_g

    @property
    def net_g(self) -> int:
        return self.gross_g - self.tare_g

    def _over(self) -> bool:
        return self.overload or self.gross_g > self.capacity_g

    def _under(self) -> bool:
        return self.under_zero or self.gross_g < 0

    # -- the wire -----------------------------------------------------------------------------

    def _reply(self, payload: bytes) -> None:
        if self.silent:
            return
        if self.reply_override is not None:
            payload = self.reply_override
        if self.protocol == "mt8217":
            payload = _with_even_parity(payload)
        self.send_raw(payload)

    def _received(self, data: bytes) -> None:
        if self.protocol == "mt8217":
            for b in data:
                if b & 0x80 != (bin(b & 0x7F).count("1") & 1) << 7:
                    self.parity_errors += 1
                    continue
                self._rx.append(b & 0x7F)
            self._serve_mt8217()
        elif self.protocol == "cas":
            for b in data:
                if b == ENQ:
                    self.commands.append(b"ENQ")
                    self._reply(bytes([ACK]))
                elif b == DC1:
                    self.commands.append(b"DC1")
                    self._reply(self.cas_ecr_frame())
        # The continuous CAS scale talks without being asked and ignores what it is sent.

    # -- Mettler Toledo 8217 ------------------------------------------------------------------

    def _serve_mt8217(self) -> None:
        rx = self._rx
        while rx:
            cmd = rx[0]
            if cmd == ord("E"):
                end = rx.find(CR)
                if end < 0:
                    if len(rx) > 64:
                        rx.clear()
                    return  # wait for the rest of the echo text
                text = bytes(rx[1:end])
                del rx[: end + 1]
                self.commands.append(b"E" + text)
                self._reply(b"\x02E\r" + text)
                continue
            del rx[0]
            if cmd == ord("W"):
                self.commands.append(b"W")
                self._reply(self.mt8217_reply())
            elif cmd == ord("Z"):
                self.commands.append(b"Z")
                self._zero()
            elif cmd == ord("T"):
                self.commands.append(b"T")
                if not self.motion and self.gross_g > 0:
                    self.tare_g = self.gross_g
            # anything else is not a command of this protocol: a real 8217 ignores it

    def _zero(self) -> None:
        # Zeroing is allowed within 2 % of capacity of the zero the scale was calibrated at.
        if self.motion or abs(self.weight_g) > self.capacity_g * 2 // 100:
            self.outside_zero_range = True
            return
        self.outside_zero_range = False
        self.zero_offset_g = self.weight_g
        self.tare_g = 0

    def mt8217_status(self) -> int:
        flags = 0
        if self.motion:
            flags |= 0x01
        if self._over():
            flags |= 0x02
        if self._under():
            flags |= 0x04
        if self.outside_zero_range:
            flags |= 0x08
        if self.net_g == 0:
            flags |= 0x10
        if self.tare_g:
            flags |= 0x20
        return flags

    def mt8217_reply(self) -> bytes:
        flags = self.mt8217_status()
        if flags & 0x0F:
            return b"\x02?" + bytes([0x40 | flags]) + b"\r"
        # Two places before the point, leading ones zero- or blank-filled: "01.234", " 1.234",
        # "02.72" in lb.
        whole, _, decimals = self.shown(self.net_g).partition(".")
        number = whole.rjust(2, "0")
        if self.pad != "0":
            digits = number.lstrip("0") or "0"
            number = digits.rjust(len(number), self.pad)
        return b"\x02" + f"{number}.{decimals}".encode() + self.suffix + b"\r"

    # -- CAS ----------------------------------------------------------------------------------

    def cas_ecr_frame(self) -> bytes:
        value = self.net_g
        if self._under() and value >= 0:
            value = -max(value, 5)
        body = b"U" if self.motion else b"S"
        if self._over():
            body += b"   OL  "  # sign + 6-character field
        else:
            body += (b"-" if value < 0 else b" ") + self.shown(value).rjust(6).encode()[-6:]
        body += _CAS_UNIT[self.unit].rstrip()
        bcc = 0
        for b in body:
            bcc ^= b
        return bytes([SOH, STX]) + body + bytes([bcc, ETX, EOT])

    def cas_continuous_frame(self) -> bytes:
        value = self.net_g
        if self._under() and value >= 0:
            value = -max(value, 5)
        head = b"OL" if self._over() else b"US" if self.motion else b"ST"
        kind = b"NT" if self.tare_g else b"GS"
        sign = b"-" if value < 0 else b"+"
        weight = sign + self.shown(value).rjust(7, "0").encode()[-7:]
        return head + b"," + kind + b"," + b"1" + b"0" + b"," + weight + _CAS_CONT_UNIT[self.unit] + b"\r\n"

    async def _stream(self) -> None:
        while True:
            if self.plugged and not self.silent:
                if self.reply_override is not None:
                    self.send_raw(self.reply_override)
                else:
                    self.send_raw(self.cas_continuous_frame())
            await asyncio.sleep(self.interval)
