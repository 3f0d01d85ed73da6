"""The aiohttp site: ``/healthz`` (open), ``/api/v1/status`` (token), more as the box grows.

Handlers read state through a ``StatusSource`` (the hub), so the API owns no state of its own
and tests can serve it over a real socket with a real hub behind it.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any, Protocol

from aiohttp import web
from aiohttp.typedefs import Handler

from edgehub.api.auth import FailedLogins, LoginHandlers, Sessions, token_middleware
from edgehub.config import Address

log = logging.getLogger("edgehub.api")


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


class StatusSource(Protocol):
    def healthy(self) -> tuple[bool, str]: ...
    async def status(self) -> dict[str, Any]: ...


class ApiServer:
    """Owns the aiohttp runner and site; ``async with`` binds, exit closes."""

    def __init__(self, listen: Address, token: str, source: StatusSource, installer_pin: str = "") -> None:
        self.listen = listen
        self.token = token
        self.source = source
        self.failures = FailedLogins()
        self.sessions = Sessions()
        self.logins = LoginHandlers(token, installer_pin, self.failures, self.sessions)
        self._runner: web.AppRunner | None = None
        self.port = listen.port
        # Components (kitchen screens, dashboard, devices…) register their routes before start.
        self.route_setups: list[Callable[[web.Application], None]] = []
        # Run after route_setups: they add a route only where no component registered one.
        self.fallback_route_setups: list[Callable[[web.Application], None]] = []

    def make_app(self) -> web.Application:
        app = web.Application(middlewares=[json_errors, token_middleware(self.token, self.failures, self.sessions)],
                              client_max_size=256 * 1024)
        app.router.add_get("/healthz", self.healthz)
        app.router.add_get("/api/v1/status", self.status)
        self.logins.setup(app)
        for setup in self.route_setups:
            setup(app)
        for setup in self.fallback_route_setups:
            setup(app)
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
        self._runner = web.AppRunner(self.make_app(), access_log=None, handle_signals=False)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.listen.host, self.listen.port, reuse_address=True)
        await site.start()
        server = site._server  # aiohttp keeps the bound sockets there; needed for port 0
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._runner is not None:
            await self._runner.cleanup()

    @property
    def url(self) -> str:
        return Address(self.listen.host, self.port).local_url()
