"""A TCP fault-injection proxy for tests: the WAN between the hub and the cloud broker.

``async with FaultProxy(target_port) as proxy`` listens on a free loopback port and forwards to
the target. Tests drive it:

* ``close_all()`` — clean close (FIN) of every connection; ``reset_all()`` — RST.
* ``blackhole()`` — the route goes silent, as a WAN that lost it: bytes of open connections are
  swallowed both ways (no FIN, no RST), and new connections get no SYN-ACK (the proxy stops
  accepting and keeps its listen queue full, so the kernel drops their SYNs and the client's TCP
  retries them). ``heal()`` ends every fault.
* ``last_down_at`` — loop time the proxy last passed bytes from the broker to the client (the
  last byte the cloud sent back).
* ``refuse()`` — new connections are reset at once (WAN down, router up).
* ``slow(bytes_per_s, latency_s)`` — a thin, slow link.
* ``cut_at(direction, packet=N, packet_type=T, mid_packet=False, action="reset")`` — count MQTT
  packets (optionally only of one type, e.g. PUBLISH=3, PUBACK=4) in one direction ("up" is
  client → broker) on the next connection and cut when the N-th arrives: before forwarding it,
  or after forwarding half of its bytes (``mid_packet``). ``cut_after_bytes(direction, n)`` cuts
  at a byte count. Each cut fires once.
* ``drop_on_topic(prefix)`` — every connection is closed (FIN) when a PUBLISH to a topic that
  starts with ``prefix`` comes up, before it reaches the broker: a cloud that answers a message
  it refuses by hanging up (AWS IoT does). ``heal()`` ends it.

Bytes the proxy has already received are passed on even when that side then resets, as a router
would: asyncio's StreamReader raises the reset before handing out what it buffered.

MQTT framing is parsed only to count packets (fixed header + remaining length).
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import struct
from dataclasses import dataclass, field

PUBLISH, PUBACK = 3, 4
BACKLOG = 64


@dataclass
class Cut:
    direction: str
    packet: int | None = None
    packet_type: int | None = None
    byte: int | None = None
    mid_packet: bool = False
    action: str = "reset"
    fired: asyncio.Event = field(default_factory=asyncio.Event)


class _Framer:
    """Splits a byte stream into MQTT packets (the last one may be incomplete)."""

    def __init__(self) -> None:
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        self.buf += data
        out = []
        while True:
            n = self._length()
            if n is None or len(self.buf) < n:
                return out
            out.append(bytes(self.buf[:n]))
            del self.buf[:n]

    def _length(self) -> int | None:
        if len(self.buf) < 2:
            return None
        multiplier, value = 1, 0
        for i in range(1, 5):
            if i >= len(self.buf):
                return None
            byte = self.buf[i]
            value += (byte & 0x7F) * multiplier
            if not byte & 0x80:
                return 1 + i + value
            multiplier *= 128
        raise ValueError("malformed MQTT remaining length")


def _topic(packet: bytes) -> str:
    """The topic of a whole PUBLISH packet."""
    i = 1
    while packet[i] & 0x80:
        i += 1
    n = int.from_bytes(packet[i + 1:i + 3], "big")
    return packet[i + 3:i + 3 + n].decode("utf-8", "replace")


class _Pair:
    def __init__(self, proxy: FaultProxy, client: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                 server: tuple[asyncio.StreamReader, asyncio.StreamWriter]) -> None:
        self.proxy = proxy
        self.client = client
        self.server = server
        self.counts = {"up": 0, "down": 0}
        self.typed = {"up": {}, "down": {}}  # type: dict[str, dict[int, int]]
        self.bytes = {"up": 0, "down": 0}
        self.tasks: list[asyncio.Task[None]] = []
        self.closed = False

    def start(self) -> None:
        self.tasks = [asyncio.create_task(self._pump("up", self.client[0], self.server[1])),
                      asyncio.create_task(self._pump("down", self.server[0], self.client[1]))]

    async def _pump(self, direction: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        framer = _Framer()
        try:
            while not self.closed:
                data = await reader.read(65536)
                if not data:
                    break
                if self.proxy.silent:
                    continue  # swallowed: the far side never hears, nobody is told
                for packet in framer.feed(data):
                    if not await self._forward(direction, packet, writer):
                        return
            # The far side closed cleanly: pass the FIN on.
            with contextlib.suppress(OSError):
                if writer.can_write_eof():
                    writer.write_eof()
        except (ConnectionError, OSError):
            # The reset overtook bytes that had arrived before it (Mosquitto sends a PUBACK and
            # resets): a router would have passed them on. StreamReader keeps them in _buffer.
            with contextlib.suppress(ConnectionError, OSError, ValueError):
                for packet in framer.feed(bytes(reader._buffer)):  # type: ignore[attr-defined]  # noqa: SLF001
                    if not await self._forward(direction, packet, writer):
                        return
        finally:
            if not self.closed:
                await self.close(reset=False)

    async def _forward(self, direction: str, packet: bytes, writer: asyncio.StreamWriter) -> bool:
        ptype = packet[0] >> 4
        prefix = self.proxy.dropping
        if prefix is not None and direction == "up" and ptype == PUBLISH and _topic(packet).startswith(prefix):
            self.proxy.dropped += 1
            await self.close(reset=False)
            return False
        self.counts[direction] += 1
        self.typed[direction][ptype] = self.typed[direction].get(ptype, 0) + 1
        cut = self.proxy._pending_cut  # noqa: SLF001
        if cut is not None and cut.direction == direction:
            hit = False
            if cut.packet is not None:
                n = self.typed[direction][ptype] if cut.packet_type is not None else self.counts[direction]
                hit = (cut.packet_type is None or cut.packet_type == ptype) and n == cut.packet
            if cut.byte is not None and self.bytes[direction] + len(packet) >= cut.byte:
                hit = True
                packet = packet[: max(0, cut.byte - self.bytes[direction])]
                cut = Cut(cut.direction, mid_packet=True, action=cut.action, fired=cut.fired)
            if hit:
                self.proxy._pending_cut = None  # noqa: SLF001
                if cut.mid_packet and packet:
                    writer.write(packet if cut.byte is not None else packet[: max(1, len(packet) // 2)])
                    with contextlib.suppress(OSError):
                        await writer.drain()
                cut.fired.set()
                if cut.action == "blackhole":
                    self.proxy.blackhole()
                    return True
                await self.close(reset=cut.action == "reset")
                return False
        await self.proxy._throttle(len(packet))  # noqa: SLF001
        self.bytes[direction] += len(packet)
        writer.write(packet)
        await writer.drain()
        if direction == "down":
            self.proxy.last_down_at = asyncio.get_running_loop().time()
        return True

    async def close(self, reset: bool) -> None:
        if self.closed:
            return
        self.closed = True
        for _, writer in (self.client, self.server):
            sock = writer.get_extra_info("socket")
            if reset and sock is not None:
                with contextlib.suppress(OSError):
                    # SO_LINGER 0: close sends RST instead of FIN.
                    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
        for _, writer in (self.client, self.server):
            with contextlib.suppress(OSError, ConnectionError):
                await writer.wait_closed()
        self.proxy.pairs.discard(self)
        current = asyncio.current_task()
        for task in self.tasks:
            if task is not current:
                task.cancel()


class FaultProxy:
    def __init__(self, target_port: int, target_host: str = "127.0.0.1") -> None:
        self.target = (target_host, target_port)
        self.port = 0
        self.pairs: set[_Pair] = set()
        self.silent = False
        self.refusing = False
        self.rate: float | None = None
        self.latency = 0.0
        self.connections = 0
        self.last_down_at: float | None = None
        self._pending_cut: Cut | None = None
        self.dropping: str | None = None  # drop_on_topic's prefix
        self.dropped = 0
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._plug: socket.socket | None = None  # keeps the listen queue full while silent
        self._plugs: set[tuple[str, int]] = set()  # addresses of plugs still queued, to be dropped
        self._tasks: set[asyncio.Task[None]] = set()
        self._bucket_at = 0.0

    async def __aenter__(self) -> FaultProxy:
        # A listening socket of our own (not asyncio.start_server): a silent route must be able to
        # stop accepting, so that new SYNs go unanswered instead of being refused.
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(BACKLOG)
        listener.setblocking(False)
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._start_accepting()
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._accepting is not None:
            self._accepting.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._accepting
        for sock in (self._listener, self._plug):
            if sock is not None:
                sock.close()
        await self.reset_all()

    def _start_accepting(self) -> None:
        if self._accepting is None or self._accepting.done():
            self._accepting = asyncio.create_task(self._accept_loop(), name="faultproxy-accept")

    async def _accept_loop(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._listener is not None
        while True:
            conn, peer = await loop.sock_accept(self._listener)
            if peer in self._plugs:
                self._plugs.discard(peer)
                conn.close()  # the plug of a past silence
                continue
            reader, writer = await asyncio.open_connection(sock=conn)
            task = asyncio.create_task(self._accept(reader, writer))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        if self.refusing:
            sock = writer.get_extra_info("socket")
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            writer.close()
            return
        try:
            server = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        for w in (writer, server[1]):
            w.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        pair = _Pair(self, (reader, writer), server)
        self.pairs.add(pair)
        pair.start()

    async def _throttle(self, size: int) -> None:
        if self.latency:
            await asyncio.sleep(self.latency)
        if self.rate:
            loop = asyncio.get_running_loop()
            now = loop.time()
            self._bucket_at = max(self._bucket_at, now) + size / self.rate
            if self._bucket_at > now:
                await asyncio.sleep(self._bucket_at - now)

    # --- what tests call -----------------------------------------------------------------------

    async def close_all(self) -> None:
        for pair in list(self.pairs):
            await pair.close(reset=False)

    async def reset_all(self) -> None:
        for pair in list(self.pairs):
            await pair.close(reset=True)

    def blackhole(self) -> None:
        self.silent = True
        if self._accepting is not None:
            self._accepting.cancel()
        listener = self._listener
        if listener is not None and self._plug is None:
            # Backlog 0 and one connection of our own waiting in the queue: Linux drops every
            # further SYN while the queue is full (tcp_conn_request), as a dead route would.
            listener.listen(0)
            plug = socket.socket()
            plug.setblocking(False)
            with contextlib.suppress(BlockingIOError):
                plug.connect(listener.getsockname())
            self._plug = plug
            self._plugs.add(plug.getsockname())

    def refuse(self) -> None:
        self.refusing = True

    def slow(self, bytes_per_s: float | None, latency_s: float = 0.0) -> None:
        self.rate, self.latency = bytes_per_s, latency_s

    def heal(self) -> None:
        self.silent = False
        if self._listener is not None:
            self._listener.listen(BACKLOG)
            self._start_accepting()
        if self._plug is not None:
            self._plug.close()
            self._plug = None
        self.refusing = False
        self.rate, self.latency = None, 0.0
        self._pending_cut = None
        self.dropping = None

    def drop_on_topic(self, prefix: str) -> None:
        self.dropping = prefix

    def cut_at(self, direction: str, packet: int, packet_type: int | None = None, mid_packet: bool = False,
               action: str = "reset") -> Cut:
        cut = Cut(direction, packet=packet, packet_type=packet_type, mid_packet=mid_packet, action=action)
        self._pending_cut = cut
        return cut

    def cut_after_bytes(self, direction: str, n: int, action: str = "reset") -> Cut:
        cut = Cut(direction, byte=n, action=action)
        self._pending_cut = cut
        return cut
