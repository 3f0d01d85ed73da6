"""The aiohttp site: ``/healthz`` (open), ``/api/v1/status`` (token), and the routes components declare.

Handlers read state through a ``StatusSource`` (the hub), so the API owns no state of its own
and tests can serve it over a real socket with a real hub behind it. Every path the published
document (``openapi.json``) names answers: one no component of this box serves says so (501).
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from edgehub.api.auth import FailedLogins, LoginHandlers, Sessions, client_key, token_middleware
from edgehub.config import Address
from edgehub.errors import EdgehubError

log = logging.getLogger("edgehub.api")

OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """An API client reads every error as ``{"error": …}``, the router's own too (no such path,
    a method the path does not take), which aiohttp answers in plain text."""
    try:
        return await handler(request)
    except (web.HTTPNotFound, web.HTTPMethodNotAllowed) as exc:
        routed = getattr(request.match_info, "http_exception", None) is None  # a handler's own answer
        if routed or not request.path.startswith("/api/"):
            raise
        if isinstance(exc, web.HTTPMethodNotAllowed):
            allowed = ", ".join(sorted(exc.allowed_methods))
            error = f"{request.method} is not allowed on {request.path} (allowed: {allowed})"
            raise web.HTTPMethodNotAllowed(request.method, exc.allowed_methods, text=_json_error(error),
                                           content_type="application/json") from None
        raise web.HTTPNotFound(text=_json_error(f"no such endpoint: {request.path}"),
                               content_type="application/json") from None


def _json_error(message: str) -> str:
    return json.dumps({"error": message})


def _not_configured(app: web.Application, paths: dict[str, Any]) -> None:
    """A documented path no component of this box serves answers 501 with the reason."""
    taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
    for path, operations in paths.items():
        for method in operations:
            if (method.upper(), path) in taken:
                continue

            async def missing(request: web.Request) -> web.Response:
                return web.json_response({"error": f"{request.method} {request.path}: the part of edgehub that "
                                                   "serves it is not configured on this box"}, status=501)

            app.router.add_route(method.upper(), path, missing)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    response.headers.setdefault("X-Content-Type-Options", "nosniff")
    response.headers.setdefault("Referrer-Policy", "no-referrer")
    if request.path == "/" or request.path.startswith("/static/"):
        response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
        response.headers.setdefault("X-Frame-Options", "DENY")
    if request.path.startswith("/api/") or request.path == "/metrics":
        response.headers.setdefault("Cache-Control", "no-store")


class StatusSource(Protocol):
    def healthy(self) -> tuple[bool, str]: ...
    async def status(self) -> dict[str, Any]: ...


HEADER_TIMEOUT_S = 10.0  # a connection must finish a request's header this soon after it is idle
MAX_PER_ADDRESS = 32  # connections from one address (IPv6: one /64) at once
MAX_CONNECTIONS = 256  # from the LAN at once; loopback (the box's own tools) is not counted
ACCEPT_ERROR_LOG_EVERY_S = 60.0


class _Conn:
    __slots__ = ("busy", "deadline", "key", "loopback", "requests", "transport")

    def __init__(self, transport: asyncio.Transport, key: str, loopback: bool) -> None:
        self.transport = transport
        self.key = key
        self.loopback = loopback
        self.requests = 0
        self.busy = 0
        self.deadline: asyncio.TimerHandle | None = None


class ConnectionGuard:
    """Slow and idle HTTP clients cannot hold the box: a connection that does not finish a
    request's header within ``header_timeout`` of being idle is closed (aiohttp has no header
    timeout of its own: an unfinished header was held 150 s), and connections per address and
    in all are capped, so /healthz and the page keep answering while someone holds a thousand
    sockets open. A middleware tells the guard when a request starts and ends."""

    def __init__(self, header_timeout: float = HEADER_TIMEOUT_S, per_address: int = MAX_PER_ADDRESS,
                 total: int = MAX_CONNECTIONS) -> None:
        self.header_timeout = header_timeout
        self.per_address = per_address
        self.total = total
        self._conns: dict[int, _Conn] = {}  # id(transport) -> connection
        self._by_key: dict[str, int] = {}
        self._counted = 0
        self.refused = 0
        self.timed_out = 0
        self._last_refusal_log = 0.0

    def open_from(self, address: str) -> int:
        return self._by_key.get(client_key(address), 0)

    def protocol(self, make: Callable[[], asyncio.BaseProtocol]) -> Callable[[], asyncio.BaseProtocol]:
        return lambda: _Guarded(self, make())

    def admit(self, transport: asyncio.Transport) -> bool:
        peer = transport.get_extra_info("peername")
        host = peer[0] if isinstance(peer, tuple) and peer else "?"
        key = client_key(host)
        loopback = host in ("127.0.0.1", "::1") or host.startswith("127.")
        if self._by_key.get(key, 0) >= self.per_address or (not loopback and self._counted >= self.total):
            self.refused += 1
            now = time.monotonic()
            if now - self._last_refusal_log >= ACCEPT_ERROR_LOG_EVERY_S:
                self._last_refusal_log = now
                log.warning("HTTP connection from %s refused: %d open from it, %d from the LAN (limits %d, %d); "
                            "%d refused so far", key, self._by_key.get(key, 0), self._counted, self.per_address,
                            self.total, self.refused)
            return False
        conn = _Conn(transport, key, loopback)
        self._conns[id(transport)] = conn
        self._by_key[key] = self._by_key.get(key, 0) + 1
        self._counted += not loopback
        self._arm(conn)
        return True

    def gone(self, transport: asyncio.BaseTransport) -> None:
        conn = self._conns.pop(id(transport), None)
        if conn is None:
            return
        if conn.deadline is not None:
            conn.deadline.cancel()
        left = self._by_key.get(conn.key, 1) - 1
        if left > 0:
            self._by_key[conn.key] = left
        else:
            self._by_key.pop(conn.key, None)
        self._counted -= not conn.loopback

    def _arm(self, conn: _Conn) -> None:
        if conn.deadline is not None:
            conn.deadline.cancel()
        seen = conn.requests
        conn.deadline = asyncio.get_running_loop().call_later(self.header_timeout, self._expire, conn, seen)

    def _expire(self, conn: _Conn, seen: int) -> None:
        conn.deadline = None
        if conn.busy or conn.requests != seen:
            return
        self.timed_out += 1
        conn.transport.close()

    def started(self, transport: asyncio.BaseTransport | None) -> _Conn | None:
        conn = self._conns.get(id(transport)) if transport is not None else None
        if conn is not None:
            conn.requests += 1
            conn.busy += 1
            if conn.deadline is not None:
                conn.deadline.cancel()
                conn.deadline = None
        return conn

    def finished(self, conn: _Conn | None) -> None:
        if conn is not None and id(conn.transport) in self._conns:
            conn.busy -= 1
            if not conn.busy:
                self._arm(conn)

    def middleware(self) -> Callable[..., Any]:
        @web.middleware
        async def guard(request: web.Request, handler: Handler) -> web.StreamResponse:
            conn = self.started(request.transport)
            try:
                return await handler(request)
            finally:
                self.finished(conn)

        return guard


class _Guarded(asyncio.Protocol):
    """aiohttp's request handler behind the guard: refused connections never reach it."""

    def __init__(self, guard: ConnectionGuard, inner: asyncio.BaseProtocol) -> None:
        self._guard = guard
        self._inner: Any = inner
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        if not self._guard.admit(transport):
            transport.abort()
            return
        self._transport = transport
        self._inner.connection_made(transport)

    @property
    def _admitted(self) -> bool:
        return self._transport is not None

    def connection_lost(self, exc: Exception | None) -> None:
        if self._transport is not None:
            self._guard.gone(self._transport)
            self._inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        if self._admitted:
            self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._admitted else None

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


class GuardedSite(web.TCPSite):
    """aiohttp's TCPSite with the guard in front of each connection and a TLS handshake that
    must finish as fast as a header."""

    def __init__(self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard,
                 ssl_context: ssl.SSLContext | None) -> None:
        super().__init__(runner, host, port, ssl_context=ssl_context, reuse_address=True, backlog=128)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        server = self._runner.server
        assert server is not None
        self._server = await asyncio.get_running_loop().create_server(
            self.guard.protocol(server), self._host, self._port, ssl=self._ssl_context, backlog=self._backlog,
            reuse_address=True, ssl_handshake_timeout=self.guard.header_timeout if self._ssl_context else None)


def quiet_accept_errors(loop: asyncio.AbstractEventLoop) -> None:
    """asyncio logs "socket.accept() out of system resource" at every failed accept (a full file
    table: 9,794 lines in one flood); once a minute with the count is enough to act on."""
    previous = loop.get_exception_handler()
    state = {"last": 0.0, "count": 0}

    def handler(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        if str(context.get("message", "")).startswith("socket.accept() out of system resource"):
            state["count"] += 1
            now = time.monotonic()
            if now - state["last"] < ACCEPT_ERROR_LOG_EVERY_S:
                return
            log.error("socket.accept() out of system resource (%s), %d times since the last report",
                      context.get("exception"), state["count"])
            state["last"], state["count"] = now, 0
            return
        if previous is not None:
            previous(loop, context)
        else:
            loop.default_exception_handler(context)

    loop.set_exception_handler(handler)


class ApiServer:
    """Owns the aiohttp runner and site; ``async with`` binds, exit closes."""

    def __init__(self, listen: Address, token: str, source: StatusSource, installer_pin: str = "",
                 ssl_context: ssl.SSLContext | None = None, guard: ConnectionGuard | None = None,
                 sessions_file: Path | None = None) -> None:
        self.listen = listen
        self.token = token
        self.source = source
        self.ssl_context = ssl_context
        self.guard = guard or ConnectionGuard()
        self.failures = FailedLogins()
        # Keyed with both credentials: a new token or PIN ends every session kept in the file.
        self.sessions = Sessions(path=sessions_file, secret=f"{token}\0{installer_pin}")
        self.logins = LoginHandlers(token, installer_pin, self.failures, self.sessions)
        self._runner: web.AppRunner | None = None
        self.port = listen.port
        # Components (kitchen screens, dashboard, devices…) register their routes before start.
        self.route_setups: list[Callable[[web.Application], None]] = []

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[self.guard.middleware(), json_errors,
                                           token_middleware(self.token, self.failures, self.sessions)],
                              client_max_size=256 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/v1/status", self.status)
        self.logins.setup(app)
        for setup in self.route_setups:
            setup(app)
        _not_configured(app, json.loads(OPENAPI_FILE.read_bytes())["paths"])
        app.on_response_prepare.append(_security_headers)
        return app

    async def healthz(self, request: web.Request) -> web.Response:
        ok, reason = self.source.healthy()
        body = {"status": "ok" if ok else "unavailable"}
        if not ok:
            body["reason"] = reason
        return web.json_response(body, status=200 if ok else 503)

    async def status(self, request: web.Request) -> web.Response:
        return web.json_response(await self.source.status())

    async def __aenter__(self) -> ApiServer:
        await asyncio.to_thread(self.sessions.load)
        # keepalive_timeout: an idle keep-alive connection is dropped by the guard's header
        # deadline anyway; this keeps aiohttp's own timer from outliving it.
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False,
                                     keepalive_timeout=self.guard.header_timeout)
        await self._runner.setup()
        quiet_accept_errors(asyncio.get_running_loop())
        site = GuardedSite(self._runner, self.listen.host, self.listen.port, self.guard, self.ssl_context)
        try:
            await site.start()
        except OSError as exc:
            await self._runner.cleanup()
            raise EdgehubError(f"the box's page cannot listen on {self.listen} (api.listen): "
                               f"{exc.strerror or exc}") from exc
        server = site._server  # aiohttp keeps the bound sockets there; needed for port 0  # noqa: SLF001
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return Address(self.listen.host, self.port).local_url("/", "https" if self.ssl_context else "http")
