"""Mettler Toledo 8217 serial scale driver (9600 baud, 7 data bits, even parity, 1 stop bit).

The ECR sends one command letter: ``W`` asks for the weight, ``Z`` zeroes, ``T`` tares.
``W`` is answered with ``STX weight CR`` when the weight is valid, or with ``STX ? s CR`` where
the bits of the status byte ``s`` say why not (bit0 motion, bit1 over capacity, bit2 under
zero, bit3 outside zero range, bit4 centre of zero, bit5 net; bit6 always 1, bit7 parity: the
status byte table of the METTLER TOLEDO DIVA service manual, 6.1.4.3).
``E<text>CR`` is an echo: the scale answers ``STX E CR <text>``; discovery uses it as a harmless
active probe and only calls a port an 8217 scale when the echo *and* a weight reply parse.

The weight is the number the scale shows, in the unit it is set to, with no unit in the frame:
``01.234`` on a scale set to kg, ``02.72`` on one set to lb. Which unit is the device's profile
(``[[device]] unit``, kg unless told); the field check points at lb when the scale sends two
decimals. Real scales pad the number with blanks instead of zeros and some end it with ``N``
(``" 1.234"``, ``"01.234N"``); Odoo's 8217 driver reads both (``measureRegexp``
``\\x02\\s*([0-9.]+)N?\\r`` in ``iot_drivers/.../serial_scale_driver.py``) and so does this one.

This module also holds :class:`Weight`, the one result type of every scale driver.
"""

from __future__ import annotations

import asyncio
import re
import secrets
import termios
from dataclasses import dataclass, field
from typing import ClassVar, Literal

from drivers.base import DeviceInfo, Driver, FieldCheck, FieldStep, Health
from drivers.scale_units import WEIGHT_UNITS, WeightUnit, to_grams
from drivers.transport import StreamTransport
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError

__all__ = [
    "MT8217_UNITS",
    "MT8217Scale",
    "Weight",
    "WeightState",
    "decimals_shown",
    "describe_weight",
    "no_weight_detail",
    "parse_mt8217_frame",
    "weight_step",
]

WeightState = Literal["stable", "unstable", "overload", "negative", "zero"]

STX = 0x02
CR = 0x0D

# Status byte bits of a ``STX ? s CR`` reply.
MOTION = 0x01
OVER_CAPACITY = 0x02
UNDER_ZERO = 0x04
OUTSIDE_ZERO_RANGE = 0x08
CENTRE_OF_ZERO = 0x10
NET = 0x20

# Blanks may pad the number (where zeros would be), a trailing N may follow it.
_WEIGHT_RE = re.compile(rb"^ *(?P<sign>-?) *(?P<number>\d{1,6}(?:\.\d{1,4})?|\.\d{1,4})N?$")
_STATUS_RE = re.compile(rb"^ *\?(?P<status>.)$", re.DOTALL)
# A reply is STX, at most a dozen weight characters (blanks, sign, number, N) and CR; anything
# longer is not this protocol.
_MAX_FRAME = 16
# The 8217 units a profile may name: the frame has no unit of its own.
MT8217_UNITS: tuple[WeightUnit, ...] = ("kg", "lb")


@dataclass(frozen=True)
class Weight:
    """One weighing as a scale reported it.

    ``grams`` is ``None`` when the scale gave no number (it answered with status bits only);
    it is negative only for a scale that reports below-zero values (CAS). ``unit`` is the unit
    the scale weighs in and ``shown`` the number it sent, as text in that unit (``"2.20"``;
    empty without a number): a weight is the same weight whatever its digits, so ``shown``
    takes no part in comparisons.
    """

    state: WeightState
    grams: int | None
    net: bool = False
    centre_of_zero: bool = False
    outside_zero_range: bool = False
    unit: WeightUnit = "kg"
    shown: str = field(default="", compare=False)

    @property
    def sellable(self) -> bool:
        """True when the number may be used to sell by weight (legal-for-trade needs stability)."""
        return self.state in ("stable", "zero") and self.grams is not None


def parse_mt8217_frame(frame: bytes, unit: WeightUnit = "kg") -> Weight:
    """Parse one ``STX ... CR`` reply to ``W`` (STX and CR included); the number is in ``unit``."""
    if len(frame) < 3 or frame[0] != STX or frame[-1] != CR:
        raise ProtocolError(f"8217 reply {frame!r} is not framed as STX ... CR")
    body = frame[1:-1]
    if body.lstrip(b" ")[:1] == b"?":
        status_match = _STATUS_RE.match(body)
        if status_match is None:
            raise ProtocolError(f"8217 status reply {frame!r} must carry exactly one status byte")
        status = status_match.group("status")[0]
        # Bit 6 is always set so the byte stays printable; bit 7 does not exist on a 7-bit line.
        if status & 0xC0 != 0x40:
            raise ProtocolError(f"8217 status byte 0x{status:02x} has bit 6 clear or bit 7 set")
        flags = status & 0x3F
        state: WeightState
        if flags & OVER_CAPACITY:
            state = "overload"
        elif flags & UNDER_ZERO:
            state = "negative"
        elif flags & CENTRE_OF_ZERO and not flags & MOTION:
            state = "zero"
        else:
            # Motion, or a status with no number for another reason: nothing to sell by.
            state = "unstable"
        return Weight(
            state=state,
            grams=0 if state == "zero" else None,
            net=bool(flags & NET),
            centre_of_zero=bool(flags & CENTRE_OF_ZERO),
            outside_zero_range=bool(flags & OUTSIDE_ZERO_RANGE),
            unit=unit,
        )
    m = _WEIGHT_RE.match(body)
    if m is None:
        raise ProtocolError(f"8217 weight reply {frame!r} is neither a number nor ? status")
    shown = (m.group("sign") + m.group("number")).decode("ascii")
    grams = to_grams(shown.encode(), unit)
    if grams < 0:
        return Weight(state="negative", grams=grams, unit=unit, shown=shown)
    return Weight(state="zero" if grams == 0 else "stable", grams=grams, unit=unit, shown=shown)


def decimals_shown(weight: Weight) -> int | None:
    """How many decimals the scale sent (``"02.72"`` → 2); None without a number."""
    if not weight.shown:
        return None
    return len(weight.shown.partition(".")[2])


def _even_parity_bit(byte: int) -> int:
    return (bin(byte & 0x7F).count("1") & 1) << 7


class _SoftwareParity7E1:
    """7E1 carried over an 8N1 line: the parity bit travels as bit 7 of each byte.

    Start + 7 data + parity + stop is, bit for bit, start + 8 data + stop, so this is exact on
    the wire. It is used when the line refuses CS7|PARENB (a pseudo-terminal, some cheap USB
    adapters), so the same driver talks to a real scale and to the simulator.
    """

    def __init__(self, inner: StreamTransport) -> None:
        self._inner = inner
        self.label = inner.label + " (7E1 in software)"

    async def write(self, data: bytes, timeout: float = 2.0) -> None:
        await self._inner.write(bytes(b & 0x7F | _even_parity_bit(b) for b in data), timeout)

    async def read_some(self, timeout: float, limit: int = 4096) -> bytes:
        return self._check(await self._inner.read_some(timeout, limit))

    def drain_input(self) -> bytes:
        return bytes(b & 0x7F for b in self._inner.drain_input())

    async def close(self) -> None:
        await self._inner.close()

    def _check(self, data: bytes) -> bytes:
        for b in data:
            if b & 0x80 != _even_parity_bit(b):
                raise ProtocolError(
                    f"{self.label}: parity error on byte 0x{b:02x}; the device is not sending 7E1 "
                    "(wrong protocol or baud rate) or the cable is noisy"
                )
        return bytes(b & 0x7F for b in data)


class _NativeSevenBit:
    """A line the UART itself runs at 7E1: only bit 7 noise is masked off."""

    def __init__(self, inner: StreamTransport) -> None:
        self._inner = inner
        self.label = inner.label

    async def write(self, data: bytes, timeout: float = 2.0) -> None:
        await self._inner.write(data, timeout)

    async def read_some(self, timeout: float, limit: int = 4096) -> bytes:
        return bytes(b & 0x7F for b in await self._inner.read_some(timeout, limit))

    def drain_input(self) -> bytes:
        return self._inner.drain_input()

    async def close(self) -> None:
        await self._inner.close()


_SevenBitLine = _SoftwareParity7E1 | _NativeSevenBit


def _line_holds_7e1(port: str) -> bool:
    """Whether the tty keeps CS7|PARENB once set. A pty silently falls back to CS8 without
    parity, and (Linux 6.x) refuses the change outright with EINVAL once its settings were
    changed before; either way the line cannot do 7E1 natively and software parity is used.
    Any other error (no such port, no permission) is the caller's to report."""
    import errno

    import serial

    try:
        with serial.Serial(port, 9600, bytesize=7, parity="E", stopbits=1, timeout=0, exclusive=True) as ser:
            cflag = termios.tcgetattr(ser.fd)[2]
    except (termios.error, serial.SerialException) as exc:
        code = exc.args[0] if exc.args and isinstance(exc.args[0], int) else getattr(exc, "errno", None)
        if code == errno.EINVAL:
            return False
        raise
    return cflag & termios.CSIZE == termios.CS7 and bool(cflag & termios.PARENB)


async def open_7e1(port: str, baudrate: int = 9600, timeout: float = 2.0) -> _SevenBitLine:
    """Open ``port`` at 7E1, natively when the line supports it, else with software parity."""
    import serial

    try:
        async with asyncio.timeout(timeout):
            native = await asyncio.to_thread(_line_holds_7e1, port)
    except TimeoutError as exc:
        raise DeviceTimeout(f"cannot open {port} within {timeout:.1f}s") from exc
    except (OSError, termios.error, serial.SerialException, ValueError) as exc:
        raise DeviceUnavailable(f"cannot open {port} at {baudrate} 7E1: {exc}") from exc
    if native:
        return _NativeSevenBit(await StreamTransport.serial(port, baudrate, 7, "E", 1, timeout))
    return _SoftwareParity7E1(await StreamTransport.serial(port, baudrate, 8, "N", 1, timeout))


async def read_cr_frame(line: _SevenBitLine, timeout: float, what: str) -> bytes:
    """Read one ``STX ... CR`` frame; silence is DeviceTimeout, half a frame is ProtocolError."""
    buf = bytearray()
    try:
        async with asyncio.timeout(timeout):
            while True:
                if buf and buf[0] != STX:
                    raise ProtocolError(f"{line.label}: {what} starts with 0x{buf[0]:02x}, not STX")
                end = buf.find(CR)
                if end >= 0:
                    if end + 1 != len(buf):
                        raise ProtocolError(
                            f"{line.label}: {what} {bytes(buf)!r} has bytes after the final CR"
                        )
                    return bytes(buf)
                if len(buf) > _MAX_FRAME:
                    raise ProtocolError(f"{line.label}: {what} runs past {_MAX_FRAME} bytes without CR")
                buf += await line.read_some(timeout)
    except TimeoutError as exc:
        if buf:
            raise ProtocolError(f"{line.label}: {what} truncated after {bytes(buf)!r}") from exc
        raise DeviceTimeout(f"{line.label}: no answer to the {what} request within {timeout:.2f}s") from exc


def health_of_weight(weight: Weight) -> Health:
    """What a weighing says about a scale's health (shared by every scale driver)."""
    if weight.state == "overload":
        return Health("degraded", "overload: take the weight off the platter")
    if weight.state == "negative":
        return Health("degraded", "under zero: empty the platter and zero the scale")
    return Health("ready")


def describe_weight(weight: Weight) -> str:
    """A weighing in words for the installer: number and unit as shown, grams, state."""
    state = {"stable": "stable", "zero": "stable at zero", "unstable": "in motion (not stable)",
             "overload": "over capacity", "negative": "under zero"}[weight.state]
    flags = "".join(f", {name}" for name, on in (("net", weight.net), ("outside the zero range",
                                                 weight.outside_zero_range)) if on)
    if weight.grams is None:
        return f"no number, status only: {state}{flags}"
    return f"{weight.shown or weight.grams} {weight.unit} = {weight.grams} g, {state}{flags}"


def weight_step(weight: Weight, raw: bytes) -> FieldStep:
    """The field check's weighing step: passes when the scale answered with a usable state."""
    detail = describe_weight(weight)
    if weight.state == "overload":
        return FieldStep("weight", False, f"{detail}: take the weight off the platter and run the check again", raw)
    if weight.state == "negative":
        return FieldStep("weight", False, f"{detail}: empty the platter, zero the scale, run the check again", raw)
    return FieldStep("weight", True, detail, raw)


def no_weight_detail(exc: DeviceError) -> str:
    """Why a field check got no weight, with what to look at."""
    if isinstance(exc, DeviceTimeout):
        return (f"no answer to the weight request ({exc}): check the cable, that the scale is on, and "
                "that it is set to this protocol and 9600 baud")
    if isinstance(exc, ProtocolError):
        return f"the reply is garbled ({exc}): wrong protocol, baud rate or parity on the scale?"
    return str(exc)


def health_of_error(exc: DeviceError) -> Health:
    if isinstance(exc, DeviceTimeout):
        return Health("failed", "no answer")
    if isinstance(exc, ProtocolError):
        return Health("failed", f"garbled reply: {exc}")
    return Health("failed", str(exc))


class MT8217Scale(Driver):
    """A scale speaking the Mettler Toledo 8217 protocol on a serial port (``info.address``).

    ``unit`` is what the scale is set to (``info.extra["unit"]``, the ``[[device]]`` key; kg
    unless told): the frame does not say.
    """

    name: ClassVar[str] = "mt8217"
    kind = "scale"

    def __init__(self, info: DeviceInfo, *, reply_timeout: float = 0.5, unit: WeightUnit | None = None) -> None:
        super().__init__(info)
        chosen = unit or info.extra.get("unit", "kg")
        if chosen not in MT8217_UNITS:
            raise ValueError(f"an 8217 scale weighs in {' or '.join(MT8217_UNITS)}, not {chosen!r}")
        self.unit: WeightUnit = next(u for u in WEIGHT_UNITS if u == chosen)
        self.reply_timeout = reply_timeout
        self._line: _SevenBitLine | None = None
        # One request at a time: the watchdog's health() must not take the sale's reply.
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._line is None:
            self._line = await open_7e1(self.info.address)

    async def close(self) -> None:
        line, self._line = self._line, None
        if line is not None:
            await line.close()

    async def _exchange(self, command: bytes) -> bytes:
        """Send ``command`` and return the ``STX ... CR`` frame that answers it."""
        if self._line is None:
            raise DeviceUnavailable("scale is not open", self.info.device_id)
        async with self._lock:
            line = self._line
            line.drain_input()  # a late reply to an earlier, timed-out request is not ours
            await line.write(command)
            return await read_cr_frame(line, self.reply_timeout, f"{command.decode()} reply")

    async def read_weight(self) -> Weight:
        """Ask for the weight once (``W``)."""
        return parse_mt8217_frame(await self._exchange(b"W"), self.unit)

    async def zero(self) -> Weight:
        """Zero the scale (``Z``), then read back. Raises DeviceError when the scale refuses."""
        await self._send_only(b"Z")
        weight = await self.read_weight()
        if weight.outside_zero_range:
            raise DeviceError(
                "scale refused to zero: the load is outside the zero range; empty the platter",
                self.info.device_id,
            )
        return weight

    async def tare(self) -> Weight:
        """Tare the current load (``T``), then read back the net weight."""
        await self._send_only(b"T")
        return await self.read_weight()

    async def _send_only(self, command: bytes) -> None:
        if self._line is None:
            raise DeviceUnavailable("scale is not open", self.info.device_id)
        async with self._lock:
            await self._line.write(command)
            # The 8217 gives no reply to Z/T; give it a moment before the next W.
            await asyncio.sleep(0.05)

    async def field_check(self, wait_s: float) -> FieldCheck:
        """Read the weight once (``W``) and show the frame; then say whether the unit the device
        is read in fits the decimals the scale sends (kg: three, lb: two, as 8217 scales send
        them), since the frame itself names no unit."""
        try:
            frame = await self._exchange(b"W")
        except DeviceError as exc:
            return FieldCheck((FieldStep("weight", False, no_weight_detail(exc)),), {"unit": self.unit})
        try:
            weight = parse_mt8217_frame(frame, self.unit)
        except ProtocolError as exc:
            step = FieldStep("weight", False, f"the reply is not an 8217 weight: {exc}", frame)
            return FieldCheck((step,), {"unit": self.unit})
        steps = [weight_step(weight, frame)]
        profile: dict[str, str] = {"unit": self.unit}
        decimals = decimals_shown(weight)
        if decimals is not None:
            fits = {"kg": 3, "lb": 2}[self.unit]
            if decimals == fits:
                steps.append(FieldStep("unit", True, f"read as {self.unit}: the scale sends {decimals} decimals, "
                                                     f"as an 8217 scale set to {self.unit} does"))
            else:
                other = "lb" if self.unit == "kg" else "kg"
                profile["unit"] = other
                steps.append(FieldStep(
                    "unit", False,
                    f"the scale sent {decimals} decimals ({weight.shown!r}), as an 8217 scale set to {other} "
                    f"does, but this device is read as {self.unit}: if the scale's display shows {other}, "
                    f'set unit = "{other}" in its [[device]] entry'))
        return FieldCheck(tuple(steps), profile)

    async def health(self) -> Health:
        if self._line is None:
            return Health("failed", "not open")
        try:
            weight = await self.read_weight()
        except DeviceError as exc:
            return health_of_error(exc)
        return health_of_weight(weight)

    @classmethod
    async def probe_serial(cls, port: str, timeout: float = 0.5) -> DeviceInfo | None:
        """Whether ``port`` has an 8217 scale: echo probe, then one parsed weight reply."""
        try:
            line = await open_7e1(port)
        except DeviceError:
            return None
        try:
            token = secrets.token_hex(3).encode()
            line.drain_input()
            await line.write(b"E" + token + b"\r")
            expected = b"\x02E\r" + token
            reply = bytearray()
            async with asyncio.timeout(timeout):
                while len(reply) < len(expected):
                    reply += await line.read_some(timeout)
                    if not expected.startswith(bytes(reply[: len(expected)])):
                        return None  # an echo of our own bytes, or another protocol
            if bytes(reply) != expected:
                return None
            await line.write(b"W")
            parse_mt8217_frame(await read_cr_frame(line, timeout, "W"), "kg")
        except (DeviceError, TimeoutError):
            return None
        finally:
            await line.close()
        return DeviceInfo(
            device_id=f"scale:mt8217:{port}",
            kind="scale",
            transport="serial",
            address=port,
            driver=cls.name,
            model="8217 protocol",
            extra={
                "framing": "9600 7E1",
                "parity": "software" if isinstance(line, _SoftwareParity7E1) else "uart",
            },
        )
