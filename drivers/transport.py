"""Byte transports a driver talks through: TCP, serial (pyserial-asyncio-fast) and USB (pyusb).

All three expose the same small face: ``write``, ``read_exactly``, ``read_until``, ``read_some``,
``drain_input`` and ``close``, each bounded by a timeout. Library exceptions become
``DeviceUnavailable`` / ``DeviceTimeout`` here, so drivers never see socket, serial or usb errors.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from typing import Any, Protocol

from edgehub.errors import DeviceTimeout, DeviceUnavailable


class ByteTransport(Protocol):
    label: str

    async def write(self, data: bytes, timeout: float = 2.0) -> None: ...
    async def read_exactly(self, n: int, timeout: float) -> bytes: ...
    async def read_until(self, sep: bytes, timeout: float, limit: int = 4096) -> bytes: ...
    async def read_some(self, timeout: float, limit: int = 4096) -> bytes: ...
    def drain_input(self) -> bytes: ...
    async def close(self) -> None: ...


class StreamTransport:
    """An asyncio stream pair: a TCP socket or a serial port opened through pyserial-asyncio-fast."""

    def __init__(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, label: str, fd: int | None = None
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.label = label
        # A serial port's file descriptor: written here, not through the transport (see write).
        self._fd = fd

    @classmethod
    async def tcp(cls, host: str, port: int, timeout: float = 2.0) -> StreamTransport:
        label = f"tcp://{host}:{port}"
        try:
            async with asyncio.timeout(timeout):
                reader, writer = await asyncio.open_connection(host, port)
        except TimeoutError as exc:
            raise DeviceTimeout(f"no connection to {label} within {timeout:.1f}s") from exc
        except OSError as exc:
            raise DeviceUnavailable(f"cannot connect to {label}: {exc.strerror or exc}") from exc
        return cls(reader, writer, label)

    @classmethod
    async def serial(
        cls,
        port: str,
        baudrate: int = 9600,
        bytesize: int = 8,
        parity: str = "N",
        stopbits: float = 1,
        timeout: float = 2.0,
        *,
        rtscts: bool = False,
        dsrdtr: bool = False,
        xonxoff: bool = False,
    ) -> StreamTransport:
        """``rtscts`` / ``dsrdtr`` / ``xonxoff``: the flow control the device uses. With XON/XOFF
        the kernel's line discipline stops our output on XOFF and takes both bytes out of the
        input, so a reader never sees them."""
        import termios

        import serial
        import serial_asyncio_fast

        flow = "/rtscts" if rtscts else "/dsrdtr" if dsrdtr else "/xonxoff" if xonxoff else ""
        label = f"serial://{port}@{baudrate}/{bytesize}{parity}{stopbits:g}{flow}"
        try:
            async with asyncio.timeout(timeout):
                # Exclusive (an flock): a second opener (``edgehub discover`` beside the running
                # hub) is refused instead of sending its probes into a device in service.
                reader, writer = await serial_asyncio_fast.open_serial_connection(
                    url=port, baudrate=baudrate, bytesize=bytesize, parity=parity, stopbits=stopbits, exclusive=True,
                    rtscts=rtscts, dsrdtr=dsrdtr, xonxoff=xonxoff,
                )
        except TimeoutError as exc:
            raise DeviceTimeout(f"cannot open {label} within {timeout:.1f}s") from exc
        except (OSError, serial.SerialException, ValueError, termios.error) as exc:
            raise DeviceUnavailable(f"cannot open {label}: {exc}") from exc
        port_object = getattr(writer.transport, "serial", None)
        fd = getattr(port_object, "fd", None)
        return cls(reader, writer, label, fd if isinstance(fd, int) else None)

    @property
    def dead(self) -> bool:
        """The other end closed or reset the connection (seen by the event loop, no read
        pending needed): nothing written now can reach the device on this connection."""
        return self._writer.is_closing() or self._reader.at_eof() or self._reader.exception() is not None

    def keepalive(self, idle_s: int, interval_s: int, count: int) -> bool:
        """TCP keepalive on this connection: the kernel probes a silent peer after ``idle_s``
        and gives up after ``count`` unanswered probes ``interval_s`` apart, which closes the
        connection (``dead``) without a byte of the device's protocol. False when not TCP."""
        sock = self._writer.get_extra_info("socket")
        if sock is None or sock.type != socket.SOCK_STREAM or sock.family not in (socket.AF_INET, socket.AF_INET6):
            return False
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
        for option, value in (("TCP_KEEPIDLE", idle_s), ("TCP_KEEPINTVL", interval_s), ("TCP_KEEPCNT", count)):
            if hasattr(socket, option):
                sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)
        return True

    async def write(self, data: bytes, timeout: float = 2.0) -> None:
        if self._writer.is_closing():
            raise DeviceUnavailable(f"{self.label} is closed")
        if self._fd is not None:
            await self._write_fd(self._fd, data, timeout)
            return
        try:
            self._writer.write(data)
            async with asyncio.timeout(timeout):
                await self._writer.drain()
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.label} did not take {len(data)} bytes within {timeout:.1f}s") from exc
        except (OSError, RuntimeError) as exc:
            raise DeviceUnavailable(f"write to {self.label} failed: {exc}") from exc

    async def _write_fd(self, fd: int, data: bytes, timeout: float) -> None:
        """Serial writes straight to the port: pyserial's non-blocking write spins on EAGAIN
        (it loops without waiting) when the line discipline has stopped output, which is what
        XOFF from the printer does; here an EAGAIN waits for the port to be writable again."""
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        try:
            async with asyncio.timeout(timeout):
                while view:
                    try:
                        sent = os.write(fd, view)
                    except BlockingIOError:
                        ready: asyncio.Future[None] = loop.create_future()

                        def writable(ready: asyncio.Future[None] = ready) -> None:
                            if not ready.done():
                                ready.set_result(None)

                        loop.add_writer(fd, writable)
                        try:
                            await ready
                        finally:
                            loop.remove_writer(fd)
                        continue
                    view = view[sent:]
        except TimeoutError as exc:
            raise DeviceTimeout(
                f"{self.label} did not take {len(data)} bytes within {timeout:.1f}s "
                f"({len(data) - len(view)} went out; flow control holding it?)"
            ) from exc
        except OSError as exc:
            raise DeviceUnavailable(f"write to {self.label} failed: {exc}") from exc

    async def _read(self, coro: Any, timeout: float, what: str) -> bytes:
        try:
            async with asyncio.timeout(timeout):
                data: bytes = await coro
        except TimeoutError as exc:
            raise DeviceTimeout(f"{self.label} sent no {what} within {timeout:.2f}s") from exc
        except asyncio.IncompleteReadError as exc:
            raise DeviceUnavailable(f"{self.label} closed the connection after {len(exc.partial)} bytes") from exc
        except asyncio.LimitOverrunError as exc:
            raise DeviceUnavailable(f"{self.label} sent an over-long frame") from exc
        except OSError as exc:
            raise DeviceUnavailable(f"read from {self.label} failed: {exc}") from exc
        return data

    async def read_exactly(self, n: int, timeout: float) -> bytes:
        return await self._read(self._reader.readexactly(n), timeout, f"{n}-byte reply")

    async def read_until(self, sep: bytes, timeout: float, limit: int = 4096) -> bytes:
        async def until() -> bytes:
            buf = bytearray()
            while not buf.endswith(sep):
                if len(buf) >= limit:
                    raise DeviceUnavailable(f"{self.label} sent {limit} bytes without a frame end")
                chunk = await self._reader.read(1)
                if not chunk:
                    raise asyncio.IncompleteReadError(bytes(buf), None)
                buf += chunk
            return bytes(buf)

        return await self._read(until(), timeout, f"frame ending {sep!r}")

    async def read_some(self, timeout: float, limit: int = 4096) -> bytes:
        data = await self._read(self._reader.read(limit), timeout, "data")
        if not data:
            raise DeviceUnavailable(f"{self.label} closed the connection")
        return data

    def drain_input(self) -> bytes:
        """Drop (and return) whatever unread bytes are buffered, e.g. a stale status byte."""
        buf = getattr(self._reader, "_buffer", None)
        if not buf:
            return b""
        data = bytes(buf)
        buf.clear()
        return data

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            self._writer.close()
            async with asyncio.timeout(1.0):
                await self._writer.wait_closed()
