"""Is the route to the cloud broker back? Asked cheaply and often while it is silent.

A WAN that loses its route mostly drops packets without a word: a connect to the cloud then
hangs until its timeout, and TCP itself waits 1, 3, 7 … s between SYNs, so a route that came back
is only seen at the next retry. ``RouteProbe.wait_open`` starts a fresh TCP connect every
``every`` seconds, each allowed ``timeout`` (a slow route still gets its handshake), and returns
as soon as one is answered: a returning WAN is seen within about ``every`` plus one round trip.
Each of the name's addresses (at most MAX_ADDRESSES) gets its connect: an IPv6 address without an
IPv6 route must not hide the IPv4 one that works.
A connect is one SYN, and while the route is dead it reaches no one; once it answers, the uplink
closes it and makes its real connection (TLS, MQTT). A connect the far end refuses (RST) is not
silence: ``wait_open`` raises ``UplinkError`` and the uplink backs off, so a cloud broker that
is down is not hammered.

Names are resolved once at a time, on a thread of their own (a resolver that does not answer
holds it for its own timeouts, not the event loop's default executor, which the journal's
reads use), and the last addresses are kept for the probes meanwhile.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import errno
import ipaddress
import logging
import socket
import time
from typing import Any

from edgehub.errors import UplinkError
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.uplink.route")

OPEN, SILENT, REFUSED = "open", "silent", "refused"
# A connect ended by the far end (or a middlebox on its behalf) is a refusal; anything else that
# fails (unreachable network or host, no route, a name that does not resolve) says the route is
# not there, which is silence for the back-off rule.
REFUSING = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED})
RESOLVE_AGAIN_S = 30.0  # a name's addresses are looked up again after this while probing
MAX_ADDRESSES = 4  # of a name's addresses, the first this many are probed


class RouteProbe:
    def __init__(self, host: str, port: int, every: float, timeout: float) -> None:
        self.host = host
        self.port = port
        self.every = every
        self.timeout = timeout
        self.attempts = 0  # TCP connects started, all time
        self.last_outcome = ""
        self._addresses: list[tuple[int, Any]] = []  # (family, socket address)
        self._resolved_at = float("-inf")
        self._resolving: asyncio.Future[None] | None = None
        self._resolver: concurrent.futures.ThreadPoolExecutor | None = None
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return
        family = socket.AF_INET6 if ip.version == 6 else socket.AF_INET
        self._addresses = [(family, (host, port) if family == socket.AF_INET else (host, port, 0, 0))]
        self._resolved_at = float("inf")  # an address: nothing to resolve

    def close(self) -> None:
        if self._resolving is not None:
            self._resolving.cancel()
        if self._resolver is not None:
            self._resolver.shutdown(wait=False, cancel_futures=True)
            self._resolver = None

    async def wait_open(self) -> None:
        """Return once the route answers a TCP connect; raise UplinkError when it is refused.
        Cancelling stops every connect in flight."""
        loop = asyncio.get_running_loop()
        attempts: set[asyncio.Task[tuple[str, str]]] = set()
        next_start = loop.time()
        try:
            while True:
                now = loop.time()
                if now >= next_start:
                    self._refresh_addresses()
                    addresses: list[tuple[int, Any] | None] = [*self._addresses[:MAX_ADDRESSES]] or [None]
                    for address in addresses:
                        attempts.add(asyncio.create_task(self._attempt(address), name="uplink-route-probe"))
                    next_start = now + self.every
                if not attempts:
                    await asyncio.sleep(next_start - now)
                    continue
                done, _ = await asyncio.wait(attempts, timeout=max(0.0, next_start - loop.time()),
                                             return_when=asyncio.FIRST_COMPLETED)
                for task in done:
                    attempts.discard(task)
                    outcome, detail = task.result()
                    self.last_outcome = f"{outcome}: {detail}" if detail else outcome
                    if outcome == OPEN:
                        return
                    if outcome == REFUSED:
                        raise UplinkError(f"the cloud broker {self.host}:{self.port} refused the connection: {detail}")
        finally:
            await cancel_and_wait(*attempts)

    async def _attempt(self, address: tuple[int, Any] | None) -> tuple[str, str]:
        """One TCP connect to ``address`` (family, socket address); None: the name's first
        address, once its lookup (under way) gives one."""
        self.attempts += 1
        loop = asyncio.get_running_loop()
        started = loop.time()
        if address is None:
            if self._resolving is not None:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(asyncio.shield(self._resolving), self.timeout)
            if not self._addresses:
                return SILENT, f"{self.host} does not resolve"
            address = self._addresses[0]
        family, sockaddr = address
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setblocking(False)
        try:
            async with asyncio.timeout(max(0.0, self.timeout - (loop.time() - started))):
                await loop.sock_connect(sock, sockaddr)
        except TimeoutError:
            return SILENT, f"no answer within {self.timeout:g} s"
        except OSError as exc:
            if exc.errno in REFUSING:
                return REFUSED, exc.strerror or type(exc).__name__
            return SILENT, exc.strerror or type(exc).__name__
        finally:
            sock.close()
        return OPEN, ""

    def _refresh_addresses(self) -> None:
        """Look the name up again (one lookup at a time) when the last is older than RESOLVE_AGAIN_S."""
        if self._resolving is not None or time.monotonic() - self._resolved_at < RESOLVE_AGAIN_S:
            return
        if self._resolver is None:
            self._resolver = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="uplink-resolve")
        self._resolving = asyncio.ensure_future(self._resolve())

    async def _resolve(self) -> None:
        loop = asyncio.get_running_loop()
        assert self._resolver is not None
        try:
            infos = await loop.run_in_executor(
                self._resolver, socket.getaddrinfo, self.host, self.port, 0, socket.SOCK_STREAM, 0,
                socket.AI_ADDRCONFIG)
        except OSError as exc:
            log.debug("%s does not resolve: %s", self.host, exc)
        else:
            self._addresses = [(family, address) for family, _, _, _, address in infos] or self._addresses
            self._resolved_at = time.monotonic()
        finally:
            self._resolving = None
