"""Asking an NTP server for the time, as a till on the store's LAN does (SNTP, RFC 4330).

One 48-byte request in client mode (version 4), one answer: its stratum, its leap indicator (3:
"alarm, not synchronised", which clients refuse), its reference id and the offset of our clock
from its (RFC 5905, section 8). ``edgehub doctor`` uses it to prove the box serves time; tests
use it against a real chronyd.
"""

from __future__ import annotations

import asyncio
import os
import socket
import struct
import time
from dataclasses import dataclass

NTP_EPOCH_OFFSET = 2_208_988_800  # 1900-01-01 to 1970-01-01, in seconds
LEAP_ALARM = 3


@dataclass(frozen=True)
class NtpAnswer:
    stratum: int
    leap: int  # 0 no warning, 1/2 a leap second today, 3 not synchronised (clients refuse it)
    reference: str  # "127.127.1.1"-style for IPv4 references, else the four ASCII letters
    offset_s: float  # how far the asker's clock is behind the server's (positive: behind)
    delay_s: float

    @property
    def usable(self) -> bool:
        """Would a client set its clock from it (RFC 5905: stratum 1-15 and no alarm)?"""
        return self.leap != LEAP_ALARM and 0 < self.stratum < 16


def _to_ntp(t: float) -> tuple[int, int]:
    whole = int(t) + NTP_EPOCH_OFFSET
    return whole, int((t - int(t)) * 2**32)


def _from_ntp(seconds: int, fraction: int) -> float:
    return seconds - NTP_EPOCH_OFFSET + fraction / 2**32


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.answer: asyncio.Future[tuple[bytes, float]] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.answer.done():
            self.answer.set_result((data, time.time()))

    def error_received(self, exc: Exception) -> None:
        if not self.answer.done():
            self.answer.set_exception(exc)


async def query(host: str, port: int = 123, timeout: float = 2.0) -> NtpAnswer:
    """One SNTP exchange with ``host:port``. Raises TimeoutError (no answer), OSError (refused)
    or ValueError (not an NTP answer to this request)."""
    loop = asyncio.get_running_loop()
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    transport, protocol = await loop.create_datagram_endpoint(_Protocol, remote_addr=(host, port), family=family)
    try:
        sent_at = time.time()
        # Transmit timestamp: random low bits, so an answer to another request is told apart.
        seconds, _ = _to_ntp(sent_at)
        nonce = int.from_bytes(os.urandom(4), "big")
        request = struct.pack("!B B b b 11I", (0 << 6) | (4 << 3) | 3, 0, 0, 0, *([0] * 9), seconds, nonce)
        transport.sendto(request)
        async with asyncio.timeout(timeout):
            data, received_at = await protocol.answer
    finally:
        transport.close()
    if len(data) < 48:
        raise ValueError(f"an NTP answer is 48 bytes or more, got {len(data)}")
    first, stratum = data[0], data[1]
    ref = data[12:16]
    origin = struct.unpack("!II", data[24:32])
    receive = _from_ntp(*struct.unpack("!II", data[32:40]))
    transmit = _from_ntp(*struct.unpack("!II", data[40:48]))
    if (first & 0x07) != 4 or origin != (seconds, nonce):
        raise ValueError("not a server's answer to this request (mode or origin timestamp differs)")
    reference = ".".join(str(b) for b in ref) if stratum > 1 else ref.decode("ascii", "replace").strip("\x00")
    offset = ((receive - sent_at) + (transmit - received_at)) / 2
    delay = (received_at - sent_at) - (transmit - receive)
    return NtpAnswer(stratum=stratum, leap=first >> 6, reference=reference, offset_s=offset, delay_s=delay)
