"""The cloud's menu (and its prices) served to every terminal of the store, WAN or not.

The cloud pushes its menu as a downlink document (kind ``menu``, docs/cloud.md); the box keeps
the newest version in its journal (edgehub/uplink/downlink.py, which refuses a document that
fails validation and keeps the one it had). This component serves that version:

* MQTT, retained, on ``…/menu`` (``menu/1``): a till that connects, or restarts during an
  outage, gets it from the broker at once. Published again on every connection to the broker,
  since the store's Mosquitto keeps no retained messages across its own restart (persistence is
  off, docs/design.md). A menu larger than the broker's packet limit goes out without its body,
  saying where to fetch it (``http``), so a till never waits for a message the broker refuses.
* HTTP, ``GET /pos/v1/menu`` with the terminal's own credentials (edgehub/front/auth.py) and
  ``GET /api/v1/menu`` with the box token; ``ETag`` is the version, so a till that already has
  it gets ``304 Not Modified`` for a poll.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from typing import Any

from aiohttp import web

from edgehub.bus import payloads
from edgehub.bus.connection import BusConnection
from edgehub.bus.topics import Topics
from edgehub.component import BUS_CONNECTED, Component, Listener, StatusReader, on
from edgehub.errors import BrokerError
from edgehub.front.auth import TerminalLogin
from edgehub.uplink.cloudapi import DownlinkDoc
from edgehub.uplink.downlink import Downlink

log = logging.getLogger("edgehub.front.menu")

MENU_PATH = "/pos/v1/menu"
# What a retained message may carry besides the body itself (topic, properties, header).
PACKET_MARGIN = 1024


class MenuServer(Component):
    """``async with`` owns nothing but the publish in flight; the menu comes from the downlink."""

    name = "menu"

    def __init__(self, topics: Topics, downlink: Downlink, bus: BusConnection, login: TerminalLogin,
                 max_packet_bytes: int) -> None:
        self.topics = topics
        self.bus = bus
        self.login = login
        self.max_packet_bytes = max_packet_bytes
        self.doc: DownlinkDoc | None = None
        self._full = b""  # menu/1 with the body: what HTTP serves
        self._retained = b""  # what the broker keeps: the same, or without the body if too large
        self._published = 0  # the version the broker holds (0: none since the last connection)
        self._task: asyncio.Task[None] | None = None
        self.publish_failures = 0
        downlink.on_change("menu", self._take)

    def listens(self) -> Sequence[Listener]:
        return [on(BUS_CONNECTED, self._connected)]

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get(MENU_PATH, self._terminal_get), web.get("/api/v1/menu", self._get)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"menu": self.status}

    async def __aenter__(self) -> MenuServer:
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the menu in, out to the broker ----------------------------------------------------

    def _take(self, doc: DownlinkDoc) -> None:
        full = payloads.menu(doc.version, doc.issued_at, doc.received_at, payloads.dumps(doc.body))
        self.doc, self._full = doc, full
        if len(full) + len(self.topics.menu) + PACKET_MARGIN <= self.max_packet_bytes:
            self._retained = full
        else:
            self._retained = payloads.menu(doc.version, doc.issued_at, doc.received_at, None,
                                           size=len(full), http=MENU_PATH)
            log.warning("menu v%d is %d bytes, more than the broker carries (broker.max_packet_kib): terminals "
                        "are told to fetch it from %s", doc.version, len(full), MENU_PATH)
        self._published = 0
        if self.bus.connected.is_set() and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="menu-publish")

    def _connected(self, _: None = None) -> None:
        """The broker may have lost the retained menu (persistence is off): published again."""
        self._published = 0
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self._publish(), name="menu-publish")

    async def _publish(self) -> None:
        while self.doc is not None and self._published != self.doc.version:
            version, body = self.doc.version, self._retained
            try:
                await self.bus.publish(self.topics.menu, body, qos=1, retain=True)
            except (BrokerError, TimeoutError) as exc:
                # Published again with the next connection to the broker.
                self.publish_failures += 1
                log.info("menu v%d not published yet: %s", version, exc)
                return
            self._published = version
            log.info("menu v%d served to terminals on %s (%d bytes)", version, self.topics.menu, len(body))

    # --- HTTP ------------------------------------------------------------------------------

    async def _terminal_get(self, request: web.Request) -> web.Response:
        self.login.check(request)
        return await self._get(request)

    async def _get(self, request: web.Request) -> web.Response:
        doc = self.doc
        if doc is None:
            return web.json_response({"error": "no menu yet: the cloud has not sent this box one"}, status=404)
        etag = f'"menu-{doc.version}"'
        headers = {"ETag": etag, "Cache-Control": "no-cache"}
        if etag in {tag.strip() for tag in request.headers.get("If-None-Match", "").split(",")}:
            return web.Response(status=304, headers=headers)
        return web.Response(body=self._full, content_type="application/json", headers=headers)

    # --- status ----------------------------------------------------------------------------

    async def status(self) -> dict[str, Any]:
        doc = self.doc
        if doc is None:
            return {"version": None}
        return {"version": doc.version, "issued_at": doc.issued_at, "received_at": doc.received_at,
                "bytes": len(self._full), "over_mqtt": self._retained is self._full,
                "published": self._published == doc.version, "publish_failures": self.publish_failures}
