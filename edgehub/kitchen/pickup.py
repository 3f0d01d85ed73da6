"""The customer-facing "order ready" page: ``/pickup`` (the page) and ``/pickup/ws`` (live).

A screen at the pass shows, in large type, the numbers being prepared and the numbers ready to
collect (the pickup board of edgehub/kitchen/ready.py). Like the kitchen screens' page it is a
static file under a strict content policy, and its websocket needs a screen secret: a customer
display's (``[[terminal]]`` of kind ``display``; docs/kitchen.md) or ``kitchen.screen_token``.

On the websocket: ``pickup-screen/1`` (the display's settings: type scale, sound), the box's
``kds-link/1`` (at once when its broker connection changes and every heartbeat, so the page
can say it is offline), then the board (``pickup-board/1``) and every change of it. A refused
screen gets ``screen-refused/1`` and close code 4401 (wrong secret), 4403 (a kitchen screen's
secret) or 4429 (too many wrong secrets from this address).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

from aiohttp import WSCloseCode, WSMsgType, web

from edgehub.api.auth import FailedLogins
from edgehub.bus import payloads
from edgehub.component import Component
from edgehub.kitchen.kitchen import ScreenFeed
from edgehub.kitchen.logins import ScreenLogin, ScreenLogins
from edgehub.kitchen.ready import ReadyBoard
from edgehub.kitchen.screens import (
    WS_FORBIDDEN,
    WS_TOO_MANY_TRIES,
    WS_TOO_SLOW,
    WS_UNAUTHORIZED,
    StaticPage,
    StatusBeat,
    refused,
    send_feed,
)
from edgehub.tasks import cancel_and_wait

PICKUP_SCREEN_SCHEMA = "pickup-screen/1"


class PickupServer(Component):
    """The pickup page and its websocket."""

    name = "pickup"

    def __init__(self, board: ReadyBoard, logins: ScreenLogins, failures: FailedLogins, status: StatusBeat) -> None:
        self.board = board
        self.logins = logins
        self.failures = failures
        self.status = status
        self._page = StaticPage("pickup.html")
        self._sockets: set[web.WebSocketResponse] = set()

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/pickup", self.page), web.get("/pickup/ws", self.websocket)]

    async def page(self, request: web.Request) -> web.Response:
        return self._page.response()

    async def websocket(self, request: web.Request) -> web.WebSocketResponse:
        address = request.remote or "?"
        ws = web.WebSocketResponse(heartbeat=10, max_msg_size=4096)
        await ws.prepare(request)
        login = await self._admit(ws, address, request.query.get("token", ""))
        if login is None:
            return ws
        self._sockets.add(ws)
        hello: dict[str, Any] = {"schema": PICKUP_SCREEN_SCHEMA, "terminal": login.terminal, "scale": login.scale,
                                 "sound": login.sound, "heartbeat_s": self.status.heartbeat_s}
        await ws.send_str(payloads.dumps(hello).decode())
        link = self.status.doc()
        await ws.send_str(payloads.dumps(link).decode())
        feed = ScreenFeed("pickup")
        feed.push(self.board.current())
        self.board.feeds.add(feed)
        self.status.attach(feed, link)
        sender = asyncio.create_task(send_feed(ws, feed.queue), name="pickup-send")
        dropped = asyncio.create_task(feed.dropped.wait())
        receiver = asyncio.create_task(self._drain(ws))
        try:
            done, _ = await asyncio.wait({sender, receiver, dropped}, return_when=asyncio.FIRST_COMPLETED)
            if dropped in done:
                await ws.close(code=WS_TOO_SLOW, message=b"too far behind; reconnect")
        finally:
            self.board.feeds.discard(feed)
            self.status.detach(feed)
            await cancel_and_wait(sender, dropped, receiver)
            self._sockets.discard(ws)
        return ws

    async def _admit(self, ws: web.WebSocketResponse, address: str, token: str) -> ScreenLogin | None:
        if self.failures.blocked(address):
            code, error = WS_TOO_MANY_TRIES, "too many wrong screen secrets from this address: wait a minute"
        elif (login := self.logins.find(token)) is None:
            self.failures.record(address)
            code, error = WS_UNAUTHORIZED, "wrong screen secret for the pickup board" if token else "no screen secret"
            if why := self.logins.mistake(token):
                error += f": {why}"
        elif not login.shows_pickup():
            code, error = WS_FORBIDDEN, (f"this is the secret of {login.terminal}, a kitchen screen: the pickup "
                                         "board takes a customer display's secret (kind = \"display\")")
        else:
            return login
        with contextlib.suppress(ConnectionError, RuntimeError):
            await ws.send_str(refused(code, error))
        await ws.close(code=code, message=error.encode()[:120])
        return None

    async def _drain(self, ws: web.WebSocketResponse) -> None:
        """The page sends nothing; reading keeps the socket's close and ping handling going."""
        async for msg in ws:
            if msg.type == WSMsgType.ERROR:
                return

    async def http_stopping(self) -> None:
        for ws in list(self._sockets):
            await ws.close(code=WSCloseCode.GOING_AWAY, message=b"hub stopping")
