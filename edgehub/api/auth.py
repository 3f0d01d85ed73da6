"""Bearer-token authentication for everything under /api/ (``/healthz`` stays open).

Tokens are compared in constant time; repeated failures from one address are slowed down
(a small token bucket per client address), so guessing is impractical from the store LAN.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable

from aiohttp import web

OPEN_PATHS = frozenset({"/healthz"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class FailedLogins:
    """Allows ``burst`` failures per address, refilled at ``per_minute``; beyond that: 429."""

    def __init__(self, burst: int = 10, per_minute: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}

    def _level(self, address: str) -> float:
        tokens, at = self._buckets.get(address, (float(self.burst), self.clock()))
        return min(float(self.burst), tokens + (self.clock() - at) * self.rate)

    def blocked(self, address: str) -> bool:
        return self._level(address) < 1.0

    def record(self, address: str) -> None:
        self._buckets[address] = (self._level(address) - 1.0, self.clock())
        if len(self._buckets) > 4096:  # bound memory against address churn
            self._buckets.clear()


def token_middleware(token: str, failures: FailedLogins) -> Callable[..., Awaitable[web.StreamResponse]]:
    expected = token.encode()

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or not request.path.startswith("/api/"):
            return await handler(request)
        address = request.remote or "?"
        if failures.blocked(address):
            raise web.HTTPTooManyRequests(text='{"error":"too many failed logins; wait a minute"}',
                                          content_type="application/json")
        header = request.headers.get("Authorization", "")
        scheme, _, given = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(given.strip().encode(), expected):
            failures.record(address)
            raise web.HTTPUnauthorized(
                text='{"error":"missing or wrong token: send Authorization: Bearer <token>"}',
                content_type="application/json", headers={"WWW-Authenticate": 'Bearer realm="edgehub"'},
            )
        return await handler(request)

    return middleware
