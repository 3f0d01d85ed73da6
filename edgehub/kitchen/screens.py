"""Kitchen screens over HTTP: ``/kds/{station}`` (the page) and ``/kds/{station}/ws`` (live).

The page is one static HTML file with its script inline (no build step); it holds no data, so
it is served without a token, under a content policy that lets only its own inline script run,
talk only to this box and never be framed. A station the box does not know (``/kds/grll``) is
refused, with links to the stations it does know. The websocket carries the orders and takes
the cook's taps and bump-bar keys, so it needs a screen secret (edgehub/kitchen/logins.py): the
page asks for it once, keeps it in localStorage and sends it as ``?token=``.

On the websocket, in this order: ``kds-screen/1`` (who the screen is logged in as, its stations
and settings: type scale, sound, bump-bar keys), ``kds-link/1`` (can orders reach the box: its
broker connection), ``kds-snapshot/1``, then every ``kds-event/1`` and ``kds-alert/1`` of the
station, a ``kds-link/1`` whenever the broker connection changes and every ``HEARTBEAT_S`` (a
page that hears nothing for a few heartbeats says it is offline), and the ``kds-reply/1`` of each
of the screen's commands. A refused screen gets ``screen-refused/1`` (why, and the
stations) and the close code: 4401 wrong secret, 4403 not this screen's station, 4404 no such
station, 4429 too many wrong secrets from this address.

The box's page lists every station with the address that sets a screen up for it, secret
included (``GET /api/v1/kitchen/screens``, behind the box token), and ``make run`` prints them.

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
import html
import json
import logging
import re
import time
import urllib.parse
from collections.abc import Callable, Sequence
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from edgehub.api.auth import FailedLogins
from edgehub.bus import payloads
from edgehub.bus.payloads import STATION_RE
from edgehub.component import Component
from edgehub.errors import JournalError, PayloadError, TicketRefused
from edgehub.kitchen.kitchen import Kitchen, ScreenFeed
from edgehub.kitchen.logins import ScreenLogin, ScreenLogins
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.kitchen.screens")

WS_UNAUTHORIZED = 4401  # application close codes live in 4000-4999
WS_FORBIDDEN = 4403
WS_NO_SUCH_STATION = 4404
WS_TOO_SLOW = 4408
WS_TOO_MANY_TRIES = 4429
SCREEN_REFUSED_SCHEMA = "screen-refused/1"
HEARTBEAT_S = 5.0  # the box's word to every screen at least this often
UNKNOWN_STATION_RETRY_S = 30  # a page for a station the box does not know looks again this often
BROKER_CHECK_S = 0.5  # how soon a screen hears that the broker connection changed

BrokerState = Callable[[], tuple[bool, str]]  # (connected, why not): the hub's link to its broker


def inline_hashes(page: bytes, tag: str) -> str:
    """CSP hashes of the page's inline ``<script>``/``<style>`` blocks: those run, nothing else."""
    blocks = re.findall(rb"<" + tag.encode() + rb">(.*?)</" + tag.encode() + rb">", page, re.S)
    return " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b).digest()).decode()}'" for b in blocks)


class StaticPage:
    """One of the box's screen pages (kitchen, pickup): static HTML with inline script and style,
    served under a content policy that runs only those and talks only to this box."""

    def __init__(self, name: str) -> None:
        self.name = name
        self._body: bytes | None = None
        self._csp = ""

    def response(self) -> web.Response:
        if self._body is None:
            self._body = resources.files("edgehub.kitchen").joinpath(f"static/{self.name}").read_bytes()
            self._csp = ("default-src 'none'; script-src " + inline_hashes(self._body, "script") +
                         "; style-src " + inline_hashes(self._body, "style") +
                         "; connect-src 'self'; img-src 'self' data:; base-uri 'none'; form-action 'none'; "
                         "frame-ancestors 'none'")
        return web.Response(body=self._body, content_type="text/html", charset="utf-8",
                            headers={"Cache-Control": "no-cache", **security_headers(self._csp)})


def security_headers(csp: str) -> dict[str, str]:
    return {"Content-Security-Policy": csp, "X-Frame-Options": "DENY", "Referrer-Policy": "no-referrer",
            "X-Content-Type-Options": "nosniff"}


def refused(code: int, error: str, stations: list[str] | None = None) -> str:
    doc: dict[str, Any] = {"schema": SCREEN_REFUSED_SCHEMA, "code": code, "error": error}
    if stations is not None:
        doc["stations"] = stations
    return payloads.dumps(doc).decode()


async def send_feed(ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
    """A screen's feed, in order, to its socket until the screen goes away."""
    while True:
        doc = await queue.get()
        try:
            await ws.send_str(payloads.dumps(doc).decode())
        except ConnectionError:
            return  # the screen went away mid-send (a closed tab): its session ends, no error


class StatusBeat:
    """The box's word to its browser screens (``kds-link/1``): its broker connection, at once when
    it changes and as a heartbeat, pushed into each screen's feed (one sender per socket keeps the
    order). Each screen also gets it when it connects."""

    def __init__(self, broker_link: BrokerState, heartbeat_s: float = HEARTBEAT_S) -> None:
        self.broker_link = broker_link
        self.heartbeat_s = heartbeat_s
        self.feeds: dict[ScreenFeed, str] = {}  # each screen's feed -> the broker state it was told
        self._task: asyncio.Task[None] | None = None

    def doc(self) -> dict[str, Any]:
        connected, reason = self.broker_link()
        return payloads.kds_link(connected, "" if connected else reason or "its broker connection is down")

    def attach(self, feed: ScreenFeed, told: dict[str, Any]) -> None:
        """Follow ``feed``, a screen that was just sent ``told`` (a ``doc()``)."""
        self.feeds[feed] = told["broker"]

    def detach(self, feed: ScreenFeed) -> None:
        self.feeds.pop(feed, None)

    async def __aenter__(self) -> StatusBeat:
        self._task = asyncio.create_task(self._run(), name="screen-link")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    async def _run(self) -> None:
        next_beat = time.monotonic() + self.heartbeat_s
        while True:
            await asyncio.sleep(min(BROKER_CHECK_S, self.heartbeat_s))
            doc = self.doc()
            beat = time.monotonic() >= next_beat
            if beat:
                next_beat = time.monotonic() + self.heartbeat_s
            # Compared with what each screen was told, so a change seen by a screen connecting
            # between two looks still reaches the screens already open.
            for feed, told in list(self.feeds.items()):
                if beat or told != doc["broker"]:
                    self.feeds[feed] = doc["broker"]
                    feed.push(doc)


class ScreenServer(Component):
    """The kitchen screens' page and websocket (``/kds/{station}``) and their list on the API."""

    name = "screens"

    def __init__(self, kitchen: Kitchen, logins: ScreenLogins, failures: FailedLogins,
                 broker_link: BrokerState | None = None) -> None:
        self.kitchen = kitchen
        self.logins = logins
        self.failures = failures
        self.status = StatusBeat(broker_link or (lambda: (True, "")))
        self._page = StaticPage("kds.html")
        self._sockets: set[web.WebSocketResponse] = set()

    @property
    def broker_link(self) -> BrokerState:
        """(connected, why not) of the hub's link to the store broker: what screens are told."""
        return self.status.broker_link

    @broker_link.setter
    def broker_link(self, value: BrokerState) -> None:
        self.status.broker_link = value

    def secret_for(self, station: str) -> str | None:
        """The secret a screen of ``station`` is set up with: a kitchen screen's own (a kds
        ``[[terminal]]`` with that station), else one that drives every station; None when no
        secret drives it."""
        return self.logins.secret_for(station)

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

    async def __aenter__(self) -> ScreenServer:
        await self.status.__aenter__()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.status.__aexit__(*exc)

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/kds", self.index), web.get("/kds/", self.index), web.get("/kds/{station}", self.page),
                web.get("/kds/{station}/ws", self.websocket),
                web.get("/api/v1/kitchen/screens", self.screens)]  # under /api/: behind the box token

    def _known(self, station: str) -> bool:
        return STATION_RE.match(station) is not None and station in self.kitchen.station_names()

    def _stations_page(self, status: int, title: str, text: str, refresh_s: int = 0) -> web.Response:
        items = "".join(f'<li><a href="/kds/{html.escape(s)}">{html.escape(s)}</a></li>'
                        for s in self.kitchen.station_names())
        refresh = f"<meta http-equiv=refresh content={refresh_s}>" if refresh_s else ""
        body = (f"<!doctype html><html lang=en><head><meta charset=utf-8><meta name=viewport "
                f"content='width=device-width, initial-scale=1'>{refresh}<title>{html.escape(title)}</title>"
                f"</head><body><h1>{html.escape(title)}</h1><p>{html.escape(text)}</p><ul>{items}</ul></body></html>")
        csp = "default-src 'none'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
        return web.Response(status=status, text=body, content_type="text/html", headers=security_headers(csp))

    async def index(self, request: web.Request) -> web.Response:
        return self._stations_page(200, "Kitchen screens", "Open the station this screen shows:")

    async def page(self, request: web.Request) -> web.Response:
        station = request.match_info["station"]
        if not self._known(station):
            # A station only order lines name is known from its first ticket on: the page looks again.
            return self._stations_page(
                404, f"No station {station!r} on this box",
                f"This box has no kitchen station called {station!r} (yet: this page looks again every "
                f"{UNKNOWN_STATION_RETRY_S} s). Its stations ({', '.join(self.kitchen.station_names())}) are:",
                UNKNOWN_STATION_RETRY_S)
        return self._page.response()

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        station = request.match_info["station"]
        address = request.remote or "?"
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=64 * 1024)
        await ws.prepare(request)
        login = await self._admit(ws, station, address, request.query.get("token", ""))
        if login is None:
            return ws
        self._sockets.add(ws)
        source = f"screen:{address}" if login.kitchen_wide else f"screen:{login.terminal}"
        hello = payloads.kds_screen(
            station, login.terminal, list(login.stations) if login.stations is not None else None,
            self.kitchen.station_names(), login.scale, login.sound, login.keys_doc(), self.status.heartbeat_s)
        await ws.send_str(payloads.dumps(hello).decode())
        link = self.status.doc()
        await ws.send_str(payloads.dumps(link).decode())
        feed = self.kitchen.attach(station)
        self.status.attach(feed, link)
        sender = asyncio.create_task(send_feed(ws, feed.queue), name=f"kds-{station}-send")
        dropped = asyncio.create_task(feed.dropped.wait())
        try:
            receiver = asyncio.create_task(self._receive(ws, station, source))
            done, _ = await asyncio.wait({sender, receiver, dropped}, return_when=asyncio.FIRST_COMPLETED)
            if dropped in done:
                log.info(
                    "screen %s at %s fell behind; closing it so it reconnects to a snapshot", address, station
                )
                await ws.close(code=WS_TOO_SLOW, message=b"too far behind; reconnect for a snapshot")
            await cancel_and_wait(receiver)
        finally:
            self.status.detach(feed)
            self.kitchen.detach(feed)
            await cancel_and_wait(sender, dropped)
            self._sockets.discard(ws)
        return ws

    async def _admit(self, ws: web.WebSocketResponse, station: str, address: str,
                     token: str) -> ScreenLogin | None:
        """The screen's login for ``station``, or None after telling it why not and closing."""
        stations = self.kitchen.station_names()
        if self.failures.blocked(address):
            code, error = WS_TOO_MANY_TRIES, "too many wrong screen secrets from this address: wait a minute"
        elif not self._known(station):
            code, error = WS_NO_SUCH_STATION, (f"no station {station!r} on this box; its stations: "
                                               f"{', '.join(stations)}")
        elif (login := self.logins.find(token)) is None:
            self.failures.record(address)
            code, error = WS_UNAUTHORIZED, ("wrong screen secret" if token else "no screen secret") + (
                f" for station {station}")
            if why := self.logins.mistake(token):
                error += f": {why}"
        elif not login.drives(station):
            code = WS_FORBIDDEN
            if login.kind != "kds":
                error = f"this is the secret of {login.terminal}, a customer display: it opens /pickup"
            else:
                mine = list(login.stations or ())
                error = f"this screen ({login.terminal}) drives {', '.join(mine)}, not {station}"
                stations = mine
        else:
            return login
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(refused(code, error, stations))
        await ws.close(code=code, message=error.encode()[:120])
        return None

    async def _receive(self, ws: web.WebSocketResponse, station: str, source: str) -> None:
        async for msg in ws:
            if msg.type != WSMsgType.TEXT:
                continue
            command_id = ""
            try:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    command_id = str(json.loads(msg.data).get("command_id", ""))
                cmd = payloads.parse_kds_command(msg.data.encode())
                ticket = await self.kitchen.command(station, cmd, source)
                reply = payloads.kds_reply(cmd.command_id, True, ticket=ticket)
            except TicketRefused as exc:
                reply = payloads.kds_reply(command_id, False, exc.reason)
            except PayloadError as exc:
                reply = payloads.kds_reply(command_id, False, str(exc))
            except JournalError as exc:
                reply = payloads.kds_reply(command_id, False, f"not saved, try again: {exc}")
            await ws.send_str(payloads.dumps(reply).decode())

    async def http_stopping(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub stopping")
