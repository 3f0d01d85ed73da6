"""Kitchen screens over HTTP: ``/kds/{station}`` (the page) and ``/kds/{station}/ws`` (live).

The page is one static HTML file with its script inline (no build step); it holds no data, so
it is served without a token. The websocket carries the orders and takes the cook's taps, so it
needs the screen token (``kitchen.screen_token``, by default the API token) as ``?token=``:
browsers cannot set an Authorization header on a websocket. A screen is set up once with
``http://box:8080/kds/grill?token=…``; the page keeps the token in localStorage and takes it out
of the address bar. Wrong tokens count against the same per-address limit as the API.

Why aiohttp websockets rather than MQTT over websockets: one less listener and port on the box
(no websocket listener in Mosquitto, no second set of credentials on screens), and the hub
itself hands each connecting screen its snapshot and then every event in order, with no window
between the two. Native KDS apps use the MQTT topics (docs/asyncapi.yaml); the messages are the
same documents.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
from importlib import resources
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from edgehub.api.auth import FailedLogins
from edgehub.bus import payloads
from edgehub.bus.payloads import STATION_RE
from edgehub.errors import JournalError, PayloadError, TicketRefused
from edgehub.kitchen.kitchen import Kitchen
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.kitchen.screens")

WS_UNAUTHORIZED = 4401  # application close codes live in 4000-4999
WS_TOO_SLOW = 4408


class ScreenServer:
    def __init__(self, kitchen: Kitchen, token: str, failures: FailedLogins) -> None:
        self.kitchen = kitchen
        self._token = token.encode()
        self.failures = failures
        self._page: bytes | None = None
        self._sockets: set[web.WebSocketResponse] = set()

    def setup(self, app: web.Application) -> None:
        app.router.add_get("/kds/{station}", self.page)
        app.router.add_get("/kds/{station}/ws", self.websocket)
        app.on_shutdown.append(self._close_all)

    def _station(self, request: web.Request) -> str:
        station = request.match_info["station"]
        if not STATION_RE.match(station):
            raise web.HTTPNotFound(text="no such station: lowercase letters, digits, - or _ (max 32)")
        return station

    async def page(self, request: web.Request) -> web.Response:
        self._station(request)
        if self._page is None:
            self._page = resources.files("edgehub.kitchen").joinpath("static/kds.html").read_bytes()
        return web.Response(
            body=self._page, content_type="text/html", charset="utf-8", headers={"Cache-Control": "no-cache"}
        )

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        station = self._station(request)
        address = request.remote or "?"
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=64 * 1024)
        await ws.prepare(request)
        given = request.query.get("token", "").encode()
        if self.failures.blocked(address) or not hmac.compare_digest(given, self._token):
            self.failures.record(address)
            await ws.close(code=WS_UNAUTHORIZED, message=b"wrong or missing screen token")
            return ws
        self._sockets.add(ws)
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
        return ws

    async def _send(self, ws: web.WebSocketResponse, queue: asyncio.Queue[dict[str, Any]]) -> None:
        while True:
            doc = await queue.get()
            await ws.send_str(payloads.dumps(doc).decode())

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

    async def _close_all(self, app: web.Application) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub stopping")
