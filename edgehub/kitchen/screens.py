"""Kitchen screens over HTTP: ``/kds/{station}`` (the page) and ``/kds/{station}/ws`` (live).

The page is one static HTML file with its script inline (no build step); it holds no data, so
it is served without a token, under a content policy that lets only its own inline script run,
talk only to this box and never be framed. The websocket carries the orders and takes the cook's
taps, so it needs a screen secret as ``?token=``: browsers cannot set an Authorization header on
a websocket. Each kitchen screen (a ``[[terminal]]`` of kind ``kds``) has its own secret, which
drives only that screen's stations and nothing else (never the API: a tablet on the pass keeps
it where anyone can read it); ``kitchen.screen_token``, if set, drives every station. A screen
is set up once with ``https://box:8080/kds/grill?token=…``; the page keeps the secret in
localStorage and takes it out of the address bar. Wrong secrets count against the same
per-address limit as the API.

Why aiohttp websockets rather than MQTT over websockets: one less listener and port on the box
(no websocket listener in Mosquitto, no second set of credentials on screens), and the hub
itself hands each connecting screen its snapshot and then every event in order, with no window
between the two. Native KDS apps use the MQTT topics (docs/asyncapi.yaml); the messages are the
same documents.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import hashlib
import hmac
import json
import logging
import re
import urllib.parse
from collections.abc import Callable, Mapping, Sequence
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from edgehub.api.auth import FailedLogins
from edgehub.bus import payloads
from edgehub.bus.payloads import STATION_RE
from edgehub.component import Component
from edgehub.config import Config
from edgehub.errors import JournalError, PayloadError, TicketRefused
from edgehub.kitchen.kitchen import Kitchen
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.kitchen.screens")

WS_UNAUTHORIZED = 4401  # application close codes live in 4000-4999
WS_TOO_SLOW = 4408


ALL_STATIONS = None  # a screen secret that drives every station (kitchen.screen_token)


def screen_secrets(config: Config) -> dict[str, tuple[str, ...] | None]:
    """Each screen secret and the stations it drives (None: every station)."""
    found: dict[str, tuple[str, ...] | None] = {}
    if config.kitchen.screen_token:
        found[config.kitchen.screen_token] = ALL_STATIONS
    for terminal in config.terminals:
        if terminal.kind == "kds" and terminal.screen_token:
            found[terminal.screen_token] = terminal.stations
    return found


def _inline_hashes(page: bytes, tag: str) -> str:
    """CSP hashes of the page's inline ``<script>``/``<style>`` blocks: those run, nothing else."""
    blocks = re.findall(rb"<" + tag.encode() + rb">(.*?)</" + tag.encode() + rb">", page, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)


LINK_CHECK_S = 1.0  # how often the broker link is looked at for the screens (a change is sent at once)


class ScreenServer(Component):
    """The kitchen screens' page and websocket (``/kds/{station}``) and their list on the API."""

    name = "screens"

    def __init__(self, kitchen: Kitchen, secrets: Mapping[str, tuple[str, ...] | None],
                 failures: FailedLogins, broker_link: Callable[[], tuple[bool, str]] | None = None) -> None:
        self.kitchen = kitchen
        self._secrets = [(secret.encode(), stations) for secret, stations in secrets.items()]
        self.failures = failures
        # (connected, why not) of the hub's link to the store broker: screens show it.
        self.broker_link = broker_link or (lambda: (True, ""))
        self._told: dict[web.WebSocketResponse, bool] = {}  # what each screen was last told of it
        self._page: bytes | None = None
        self._csp = ""
        self._sockets: set[web.WebSocketResponse] = set()
        self._watch: asyncio.Task[None] | None = None

    def _drives(self, given: bytes, station: str) -> bool:
        """Does ``given`` drive ``station``? Every secret is compared, in constant time."""
        ok = False
        for secret, stations in self._secrets:
            match = hmac.compare_digest(given, secret)
            ok |= match and (stations is None or station in stations)
        return ok

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/kds/{station}", self.page), web.get("/kds/{station}/ws", self.websocket),
                web.get("/api/v1/kitchen/screens", self.screens)]  # under /api/: behind the box token

    async def __aenter__(self) -> ScreenServer:
        self._watch = asyncio.create_task(self._watch_link(), name="kds-link")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._watch)

    def secret_for(self, station: str) -> str | None:
        """The secret a screen of ``station`` is set up with: the secret of a kitchen screen
        (``[[terminal]]`` of kind kds) with that station, else ``kitchen.screen_token``; None
        when no secret drives it."""
        own = next((secret for secret, stations in self._secrets if stations is not None and station in stations),
                   None)
        every = next((secret for secret, stations in self._secrets if stations is ALL_STATIONS), None)
        found = own or every
        return found.decode() if found is not None else None

    async def _watch_link(self) -> None:
        """Tell each screen when the hub's broker link goes down or comes back (each screen is
        compared with what it was told itself: one that connected a moment ago may know already)."""
        while True:
            await asyncio.sleep(LINK_CHECK_S)
            connected, reason = self.broker_link()
            for ws, told in list(self._told.items()):
                if told != connected:
                    await self._tell_link(ws, connected, reason)

    async def _tell_link(self, ws: web.WebSocketResponse, connected: bool, reason: str) -> None:
        self._told[ws] = connected
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(payloads.dumps(payloads.kds_link(connected, reason)).decode())

    def link(self, station: str, base: str = "/") -> str:
        """The address that sets a screen up for ``station`` once (the page keeps the secret);
        without a secret for it, the bare page, which says how to set the screen up."""
        page = f"{base}kds/{urllib.parse.quote(station)}"
        secret = self.secret_for(station)
        return page if secret is None else f"{page}?token={urllib.parse.quote(secret, safe='')}"

    async def screens(self, request: web.Request) -> web.Response:
        """Each station with its open tickets, connected screens and the link that sets a screen
        up: what the box's page lists in its kitchen section (docs/kitchen.md, Screens)."""
        status = await self.kitchen.status()
        return web.json_response({"screens": [
            {"station": station, "open": status["open"].get(station, 0),
             "connected": status["screens"].get(station, 0), "url": self.link(station),
             "secret": self.secret_for(station) is not None}
            for station in self.kitchen.station_names()]})

    def _station(self, request: web.Request) -> str:
        station = request.match_info["station"]
        if not STATION_RE.match(station):
            raise web.HTTPNotFound(text="no such station: lowercase letters, digits, - or _ (max 32)")
        return station

    async def page(self, request: web.Request) -> web.Response:
        self._station(request)
        if self._page is None:
            self._page = resources.files("edgehub.kitchen").joinpath("static/kds.html").read_bytes()
            self._csp = ("default-src 'none'; script-src " + _inline_hashes(self._page, "script") +
                         "; style-src " + _inline_hashes(self._page, "style") +
                         "; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'")
        return web.Response(
            body=self._page, content_type="text/html", charset="utf-8",
            headers={"Cache-Control": "no-cache", "Content-Security-Policy": self._csp,
                     "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
                     "X-Content-Type-Options": "nosniff"},
        )

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        station = self._station(request)
        address = request.remote or "?"
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=64 * 1024)
        await ws.prepare(request)
        given = request.query.get("token", "").encode()
        if self.failures.blocked(address) or not self._drives(given, station):
            self.failures.record(address)
            await ws.close(code=WS_UNAUTHORIZED, message=b"wrong or missing screen token for this station")
            return ws
        self._sockets.add(ws)
        await self._tell_link(ws, *self.broker_link())
        feed = self.kitchen.attach(station)
        sender = asyncio.create_task(self._send(ws, feed.queue), name=f"kds-{station}-send")
        dropped = asyncio.create_task(feed.dropped.wait())
        try:
            receiver = asyncio.create_task(self._receive(ws, station, address))
            done, _ = await asyncio.wait({sender, receiver, dropped}, return_when=asyncio.FIRST_COMPLETED)
            if dropped in done:
                log.info(
                    "screen %s at %s fell behind; closing it so it reconnects to a snapshot", address, station
                )
                await ws.close(code=WS_TOO_SLOW, message=b"too far behind; reconnect for a snapshot")
            await cancel_and_wait(receiver)
        finally:
            self.kitchen.detach(feed)
            await cancel_and_wait(sender, dropped)
            self._sockets.discard(ws)
            self._told.pop(ws, None)
        return ws

    async def _send(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            doc = await queue.get()
            try:
                await ws.send_str(payloads.dumps(doc).decode())
            except ConnectionError:
                return  # the screen went away mid-send (a closed tab): its session ends, no error

    async def _receive(self, ws: web.WebSocketResponse, station: str, address: str) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            command_id = ""
            try:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    command_id = str(json.loads(msg.data).get("command_id", ""))
                cmd = payloads.parse_kds_command(msg.data.encode())
                ticket = await self.kitchen.command(station, cmd, f"screen:{address}")
                reply = payloads.kds_reply(cmd.command_id, True, ticket=ticket)
            except TicketRefused as exc:
                reply = payloads.kds_reply(command_id, False, exc.reason)
            except PayloadError as exc:
                reply = payloads.kds_reply(command_id, False, str(exc))
            except JournalError as exc:
                reply = payloads.kds_reply(command_id, False, f"not saved, try again: {exc}")
            await ws.send_str(payloads.dumps(reply).decode())

    async def http_stopping(self) -> None:
        await cancel_and_wait(self._watch)
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub stopping")
