"""CAS serial scale driver (9600 8N1): the ECR request protocol and the continuous stream.

ECR mode: the ECR sends ``ENQ``, the scale answers ``ACK``; then ``DC1`` asks for the weight:
``SOH STX status sign weight unit BCC ETX EOT`` where status is ``S`` stable, ``U`` unstable
or ``F`` abnormal, sign is ``-`` or a space, weight is 5 or 6 characters (digits, a point,
blanks; ``OL`` when over capacity), unit is 1 or 2 letters (``KG``, ``G``, ``LB``, ``SJ`` for
斤, in either case) and BCC is the XOR of the bytes from the status letter through the unit.
That is the frame as the Gram ZFOC manual ("Read current weight") documents it for the scales
that copy CAS's ECR type; a frame is read up to its ``ETX EOT``, so its length follows the unit.

Continuous mode: the scale sends 22-byte lines without being asked:
``ST|US|OL , GS|NT , id lamp , sign weight(7) unit(3) CR LF`` (unit right-aligned: `` kg``,
``  g``, `` lb``, `` SJ``).

The active probe (ENQ must give exactly ACK, then DC1 a frame whose BCC checks) never takes a
port that merely accepts writes, echoes, or talks another protocol for a CAS scale. Frame
details come from public descriptions of CAS ECR types; verify them against a real unit.
"""

from __future__ import annotations

import asyncio
import re
from typing import ClassVar, Literal

from drivers.base import DeviceInfo, Driver, FieldCheck, FieldStep, Health
from drivers.scale_mt8217 import (
    Weight,
    WeightState,
    health_of_error,
    health_of_weight,
    no_weight_detail,
    weight_step,
)
from drivers.scale_units import WeightUnit, to_grams, unit_from_token
from drivers.transport import StreamTransport
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError

__all__ = ["CasMode", "CasScale", "parse_cas_continuous", "parse_cas_ecr_frame"]

CasMode = Literal["ecr", "continuous"]

SOH, STX, ETX, EOT, ENQ, ACK, DC1 = 0x01, 0x02, 0x03, 0x04, 0x05, 0x06, 0x11
# SOH STX status sign weight(5-6) unit(1-2) BCC ETX EOT.
ECR_FRAME_MIN, ECR_FRAME_MAX = 12, 15
CONTINUOUS_LEN = 22
_ECR_FIELDS = re.compile(rb"(?P<weight>[ 0-9.]{5,6}|[ ]*OL[ ]*)(?P<unit>[A-Za-z]{1,2})")


def _weight(
    stable: bool, overload: bool, negative_sign: bool, field: bytes, unit: WeightUnit, net: bool = False
) -> Weight:
    if overload:
        return Weight("overload", None, net=net, unit=unit)
    text = field.strip()
    if not text or not all(c in b"0123456789." for c in text) or text.count(b".") > 1 or text == b".":
        raise ProtocolError(f"CAS weight field {field!r} is not a number")
    grams = to_grams(text, unit)
    shown = text.decode("ascii")
    if negative_sign and grams:
        grams, shown = -grams, "-" + shown
    state: WeightState
    if grams < 0:
        state = "negative"
    elif not stable:
        state = "unstable"
    elif grams == 0:
        state = "zero"
    else:
        state = "stable"
    return Weight(state, grams, net=net, centre_of_zero=grams == 0 and stable, unit=unit, shown=shown)


def parse_cas_ecr_frame(frame: bytes) -> Weight:
    """Parse one ECR reply to DC1; ProtocolError on framing, BCC or field errors."""
    if not ECR_FRAME_MIN <= len(frame) <= ECR_FRAME_MAX:
        raise ProtocolError(
            f"CAS frame is {len(frame)} bytes, expected {ECR_FRAME_MIN} to {ECR_FRAME_MAX}"
        )
    if frame[0] != SOH or frame[1] != STX or frame[-2] != ETX or frame[-1] != EOT:
        raise ProtocolError("CAS frame is not SOH STX ... ETX EOT")
    body = frame[2:-3]
    bcc = 0
    for b in body:
        bcc ^= b
    if bcc != frame[-3]:
        raise ProtocolError(
            f"CAS frame BCC 0x{frame[-3]:02x} does not match 0x{bcc:02x}: line noise or wrong baud"
        )
    status, sign, rest = body[0:1], body[1:2], body[2:]
    fields = _ECR_FIELDS.fullmatch(rest)
    if status not in (b"S", b"U", b"F") or sign not in (b" ", b"-", b"+") or fields is None:
        raise ProtocolError(
            f"CAS frame fields {status!r} {sign!r} {rest!r} are not S|U|F, sign, weight and unit"
        )
    unit = unit_from_token(fields.group("unit"))
    if status == b"F":  # "weight is abnormal": no number to sell by
        return Weight("unstable", None, unit=unit)
    weight = fields.group("weight")
    return _weight(status == b"S", weight.strip() == b"OL", sign == b"-", weight, unit)


def parse_cas_continuous(line: bytes) -> Weight:
    """Parse one 22-byte continuous line (``ST,GS,10,+001.234 kg\\r\\n``)."""
    if len(line) != CONTINUOUS_LEN or not line.endswith(b"\r\n"):
        raise ProtocolError(
            f"CAS continuous line is {len(line)} bytes, expected {CONTINUOUS_LEN} ending CR LF"
        )
    head, kind = line[0:2], line[3:5]
    if line[2:3] != b"," or line[5:6] != b"," or line[8:9] != b",":
        raise ProtocolError("CAS continuous line is missing its commas")
    if head not in (b"ST", b"US", b"OL") or kind not in (b"GS", b"NT"):
        raise ProtocolError(f"CAS continuous header {head!r},{kind!r} is not ST|US|OL,GS|NT")
    weight, unit_field = line[9:17], line[17:20]
    if weight[:1] not in (b"+", b"-", b" ") or not unit_field[:1] == b" ":
        raise ProtocolError("CAS continuous weight is not sign + 7 characters + unit (' kg', '  g', ' lb')")
    unit = unit_from_token(unit_field)
    return _weight(head == b"ST", head == b"OL", weight[:1] == b"-", weight[1:], unit, net=kind == b"NT")


class CasScale(Driver):
    """A CAS scale on a serial port (``info.address``), in ECR (default) or continuous mode."""

    name: ClassVar[str] = "cas"
    kind = "scale"

    def __init__(self, info: DeviceInfo, *, mode: CasMode | None = None, reply_timeout: float = 0.5) -> None:
        super().__init__(info)
        self.mode: CasMode = mode or ("continuous" if info.extra.get("mode") == "continuous" else "ecr")
        self.reply_timeout = reply_timeout
        self._transport: StreamTransport | None = None
        self._lock = asyncio.Lock()

    async def open(self) -> None:
        if self._transport is None:
            self._transport = await StreamTransport.serial(self.info.address, 9600, 8, "N", 1)

    async def close(self) -> None:
        transport, self._transport = self._transport, None
        if transport is not None:
            await transport.close()

    async def _frame(self) -> bytes:
        """One weight frame as the scale sent it (ECR: asked for; continuous: the next line)."""
        if self._transport is None:
            raise DeviceUnavailable("scale is not open", self.info.device_id)
        async with self._lock:
            if self.mode == "continuous":
                return await _next_line(self._transport, self.reply_timeout)
            return await _ecr_frame(self._transport, self.reply_timeout)

    def _parse(self, frame: bytes) -> Weight:
        return parse_cas_continuous(frame) if self.mode == "continuous" else parse_cas_ecr_frame(frame)

    async def read_weight(self) -> Weight:
        return self._parse(await self._frame())

    async def field_check(self, wait_s: float) -> FieldCheck:
        """Read one weight frame and show it, with the unit and mode the scale uses (both come
        from the scale itself: nothing to set in the profile)."""
        profile = {"mode": self.mode}
        try:
            frame = await self._frame()
        except DeviceError as exc:
            return FieldCheck((FieldStep("weight", False, no_weight_detail(exc)),), profile)
        try:
            weight = self._parse(frame)
        except ProtocolError as exc:
            return FieldCheck((FieldStep("weight", False, f"the frame is not a CAS {self.mode} weight: {exc}",
                                         frame),), profile)
        return FieldCheck((weight_step(weight, frame),), {**profile, "unit": weight.unit})

    async def health(self) -> Health:
        if self._transport is None:
            return Health("failed", "not open")
        try:
            weight = await self.read_weight()
        except DeviceError as exc:
            return health_of_error(exc)
        return health_of_weight(weight)

    @classmethod
    async def probe_serial(cls, port: str, timeout: float = 0.5) -> DeviceInfo | None:
        """Whether ``port`` has a CAS scale: ECR handshake first, then a passive listen."""
        try:
            transport = await StreamTransport.serial(port, 9600, 8, "N", 1)
        except DeviceError:
            return None
        mode: CasMode
        try:
            try:
                parse_cas_ecr_frame(await _ecr_frame(transport, timeout))
                mode = "ecr"
            except DeviceError:
                # A continuous scale ignores ENQ but keeps talking: listen for one good line.
                await asyncio.sleep(0)
                transport.drain_input()
                parse_cas_continuous(await _next_line(transport, timeout))
                mode = "continuous"
        except DeviceError:
            return None
        finally:
            await transport.close()
        return DeviceInfo(
            device_id=f"scale:cas:{port}",
            kind="scale",
            transport="serial",
            address=port,
            driver=cls.name,
            model=f"CAS {mode} protocol",
            vendor="CAS",
            extra={"framing": "9600 8N1", "mode": mode},
        )


async def _read_exact(transport: StreamTransport, n: int, timeout: float, what: str, buf: bytearray) -> bytes:
    try:
        async with asyncio.timeout(timeout):
            while len(buf) < n:
                buf += await transport.read_some(timeout)
    except TimeoutError as exc:
        if buf:
            raise ProtocolError(f"{transport.label}: {what} truncated after {len(buf)} of {n} bytes") from exc
        raise DeviceTimeout(f"{transport.label}: no answer to {what} within {timeout:.2f}s") from exc
    data = bytes(buf[:n])
    del buf[:n]
    return data


async def _ecr_frame(transport: StreamTransport, timeout: float) -> bytes:
    """ENQ, ACK, DC1, then the weight frame up to its ETX EOT."""
    transport.drain_input()
    buf = bytearray()
    await transport.write(bytes([ENQ]))
    ack = await _read_exact(transport, 1, timeout, "ENQ", buf)
    if ack[0] != ACK:
        raise ProtocolError(f"{transport.label}: ENQ answered with 0x{ack[0]:02x}, not ACK")
    await transport.write(bytes([DC1]))
    try:
        async with asyncio.timeout(timeout):
            while (end := buf.find(bytes([ETX, EOT]))) < 0:
                if len(buf) > ECR_FRAME_MAX:
                    raise ProtocolError(
                        f"{transport.label}: {len(buf)} bytes without the ETX EOT that ends a CAS frame"
                    )
                buf += await transport.read_some(timeout)
    except TimeoutError as exc:
        if buf:
            raise ProtocolError(f"{transport.label}: weight frame truncated after {bytes(buf)!r}") from exc
        raise DeviceTimeout(f"{transport.label}: no answer to the weight request within {timeout:.2f}s") from exc
    if end + 2 != len(buf):
        raise ProtocolError(f"{transport.label}: {len(buf) - end - 2} stray bytes after the weight frame")
    return bytes(buf)


async def _next_line(transport: StreamTransport, timeout: float) -> bytes:
    """The next complete line: what was buffered is stale, and the first line may be partial."""
    transport.drain_input()
    buf = bytearray()
    synced = False
    try:
        async with asyncio.timeout(timeout * 2):
            while True:
                end = buf.find(b"\r\n")
                if end >= 0:
                    line = bytes(buf[: end + 2])
                    del buf[: end + 2]
                    if synced:
                        return line
                    synced = True  # the first line may have started before we listened
                    continue
                if len(buf) > 4 * CONTINUOUS_LEN:
                    raise ProtocolError(f"{transport.label}: {len(buf)} bytes without a CR LF line end")
                buf += await transport.read_some(timeout)
    except TimeoutError as exc:
        if buf:
            raise ProtocolError(
                f"{transport.label}: continuous line truncated after {len(buf)} bytes"
            ) from exc
        raise DeviceTimeout(f"{transport.label}: no weight line within {timeout * 2:.2f}s") from exc
