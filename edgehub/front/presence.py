"""Which tills, handhelds, kiosks, screens, pagers and displays are connected now, from the broker's events.

Mosquitto logs every connection and disconnection (``connection_messages true``); the box's
generated config also publishes its log on ``$SYS/broker/log/N`` (``log_dest topic``), which
only the hub may read. A terminal needs to do nothing for it: no Will, no heartbeat of its own.
What the lines say (Mosquitto 2.0, checked here):

* ``New client connected from 10.0.0.7:51234 as pos-1 (p5, c0, k30, u'pos-1').`` (after the
  line's time stamp) — on the LAN listener the client id is the user
  (``use_username_as_clientid``); on the hub's loopback listener the user is in ``u'…'``. A second
  connection with a client id already connected takes the session over: it gets no line of its
  own for the old one.
* ``Client pos-1 disconnected.`` (a clean DISCONNECT), ``Client pos-1 closed its connection.``
  (the socket closed without one: killed, unplugged), ``Client pos-1 has exceeded timeout,
  disconnecting.`` (silent past 1.5 keep-alives: Wi-Fi or power gone), ``Socket error on client
  pos-1, disconnecting.``

Each change is published retained on ``…/presence/{terminal}`` (``presence/1``), which is also
how a restarted hub knows who was connected before it (the broker keeps the hub's session and
queues the log lines of its absence; a record is taken only where no newer line was seen). A
restart of the broker itself ends every connection: the hub finds its session gone when it
connects again and marks every terminal it saw connected disconnected. Terminals that reconnect
before the hub does are not seen until their next connection; ``complete`` says so, comparing
the broker's own count of connected clients (``$SYS/broker/clients/connected``, every 10 s)
with the connections the hub knows of.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgehub.bus import payloads
from edgehub.bus.connection import BusConnection
from edgehub.bus.message import Message
from edgehub.bus.topics import Topics
from edgehub.component import BUS_CONNECTED, Component, Listener, MqttBatch, MqttRoute, StatusReader, on
from edgehub.config import TerminalConfig
from edgehub.errors import BrokerError, PayloadError
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.front.presence")

_CONNECTED = re.compile(r"^New client connected from (?P<address>.+):(?P<port>\d+) as (?P<client>.+) "
                        r"\(p(?P<protocol>\d+), c\d+, k(?P<keepalive>\d+)(?:, u'(?P<user>.*)')?\)\.$")
_GONE = re.compile(r"^(?:Client (?P<client>.+?) (?P<how>disconnected|closed its connection|has exceeded timeout)"
                   r"|Socket error on client (?P<sclient>.+?), disconnecting)(?P<rest>.*)\.$")
REASONS = {
    "disconnected": "said goodbye (a clean DISCONNECT)",
    "closed its connection": "connection closed without a goodbye (switched off, killed or unplugged)",
    "has exceeded timeout": "went silent past its keep-alive (Wi-Fi or power lost)",
    "socket error": "network error",
}
PROTOCOLS = {"1": "MQTT 3.1", "2": "MQTT 3.1.1", "5": "MQTT 5"}
# The broker counts its clients every sys_interval (10 s); two readings apart, so a count taken
# while a terminal was connecting is not called a gap.
COUNT_GRACE = 2
MAX_LEFT = 1024


@dataclass
class Seen:
    """One terminal as the broker's events show it."""

    terminal: str
    kind: str
    connected: bool | None = None  # None: not seen since the box started
    since: float | None = None
    address: str = ""
    protocol: str = ""
    keepalive_s: int | None = None
    reason: str = ""
    clients: tuple[str, ...] = ()  # its connections' client ids (the terminal id on the LAN listener)

    def doc(self) -> dict[str, Any]:
        return {"terminal": self.terminal, "kind": self.kind,
                "state": "unknown" if self.connected is None else "connected" if self.connected else "disconnected",
                "since": self.since, "address": self.address, "protocol": self.protocol,
                "keepalive_s": self.keepalive_s, "reason": self.reason, "clients": list(self.clients)}


class Presence(Component):
    """``async with`` owns nothing; the bus routes the broker's events here."""

    name = "presence"

    def __init__(self, topics: Topics, terminals: Iterable[TerminalConfig], bus: BusConnection,
                 clock: Callable[[], float] = time.time,
                 web_screens: Callable[[], Mapping[str, int]] | None = None) -> None:
        self.topics = topics
        self.bus = bus
        self.clock = clock
        self.web_screens = web_screens
        self.seen = {t.id: Seen(t.id, t.kind) for t in terminals}
        self._clients: dict[str, tuple[str, str]] = {}  # client id -> (user, address)
        self._left: dict[str, tuple[float, str]] = {}  # client id -> (when, why): gone before it was known
        self.broker_clients: int | None = None
        self._short = 0  # readings in a row where the broker counts more clients than the hub knows
        self.broker_restarts = 0
        self._reconnected: asyncio.Task[None] | None = None

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return [MqttRoute(self.topics.broker_log, self.handle_log),
                MqttRoute(self.topics.broker_clients, self.handle_count),
                MqttRoute(self.topics.all_presence, self.handle_record)]

    def listens(self) -> Sequence[Listener]:
        return [on(BUS_CONNECTED, self._on_connect)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"terminals": self.status}

    async def __aenter__(self) -> Presence:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._reconnected)

    # --- the broker's events ---------------------------------------------------------------

    async def handle_log(self, message: Message) -> None:
        stamp, _, line = _text(message).partition(": ")
        at = _broker_time(stamp) or self.clock()
        if m := _CONNECTED.match(line):
            client, user = m["client"], m["user"] if m["user"] is not None else ""
            self._clients[client] = (user, m["address"])  # replaces a connection taken over
            seen = self.seen.get(user)
            if seen is not None:
                seen.protocol = PROTOCOLS.get(m["protocol"], f"p{m['protocol']}")
                seen.keepalive_s = int(m["keepalive"])
                await self._update(seen, at, m["address"], "")
        elif m := _GONE.match(line):
            client = m["client"] or m["sclient"]
            how = m["how"] or "socket error"
            found = self._clients.pop(client, None)
            if found is None:
                # A connection from before this hub started: its record (retained) may come next.
                self._left[client] = (at, REASONS.get(how, how))
                while len(self._left) > MAX_LEFT:
                    del self._left[next(iter(self._left))]
            elif (seen := self.seen.get(found[0])) is not None:
                await self._update(seen, at, found[1], REASONS.get(how, how))

    async def _update(self, seen: Seen, at: float, address: str, reason: str) -> None:
        seen.clients = tuple(sorted(c for c, (user, _) in self._clients.items() if user == seen.terminal))
        connected = bool(seen.clients)
        changed = connected != seen.connected
        if changed or connected:
            seen.address = address
        if changed:
            seen.connected, seen.since, seen.reason = connected, at, reason
            log.info("terminal %s (%s) %s%s", seen.terminal, seen.kind,
                     "connected" if connected else "disconnected", f": {reason}" if reason else "")
            await self._publish(seen)

    def _on_connect(self, _: None = None) -> None:
        """A broker that no longer had the hub's session started afresh (or the hub is new to
        it): whatever this hub saw connected before was cut off by that restart."""
        if self.bus.session_present:
            return
        self._clients.clear()
        self._left.clear()
        stale = [seen for seen in self.seen.values() if seen.connected]
        if stale:
            self.broker_restarts += 1
            log.warning("the store's broker restarted: %d terminals were cut off and reconnect", len(stale))
        for seen in stale:
            seen.connected, seen.since, seen.clients = False, self.clock(), ()
            seen.reason = "the store's broker restarted"
        if stale:
            self._reconnected = asyncio.get_running_loop().create_task(self._publish_all(stale),
                                                                      name="presence-restarted")

    async def _publish_all(self, seen: list[Seen]) -> None:
        for one in seen:
            await self._publish(one)

    async def handle_count(self, message: Message) -> None:
        text = _text(message)
        if not text.isdigit():
            return
        self.broker_clients = int(text)
        # The hub sees its own connection only when the broker kept its session (it subscribes after).
        known = len(self._clients) + (self.bus.client_id not in self._clients)
        self._short = self._short + 1 if self.broker_clients > known else 0

    async def handle_record(self, message: Message) -> None:
        """A retained ``presence/1`` (the hub's own, from before a restart of the hub): taken where
        no newer event was seen."""
        terminal = self.topics.presence_terminal_of(message.topic)
        seen = self.seen.get(terminal or "")
        if seen is None or not message.payload:
            return
        try:
            doc = payloads.parse_presence(_text(message).encode())
        except PayloadError as exc:
            log.info("presence record on %s ignored: %s", message.topic, exc)
            return
        if doc["since"] is None or (seen.since is not None and seen.since >= doc["since"]):
            return
        if doc["state"] == "unknown":
            return
        seen.connected = doc["state"] == "connected"
        seen.since, seen.address, seen.reason = doc["since"], doc["address"], doc["reason"]
        seen.protocol, seen.keepalive_s = doc["protocol"], doc["keepalive_s"]
        seen.clients = tuple(doc["clients"]) if seen.connected else ()
        for client in seen.clients:  # its lines of disconnection name these
            self._clients.setdefault(client, (seen.terminal, seen.address))
        # Lines that came before the record (the broker queued them while the hub was away).
        for client in seen.clients:
            left = self._left.pop(client, None)
            if left is not None and left[0] >= doc["since"]:
                self._clients.pop(client, None)
                await self._update(seen, left[0], seen.address, left[1])

    async def _publish(self, seen: Seen) -> None:
        try:
            self.bus.publish_nowait(self.topics.presence(seen.terminal), payloads.presence(seen.doc()),
                                    qos=1, retain=True)
        except BrokerError as exc:
            log.debug("presence of %s not published: %s", seen.terminal, exc)

    # --- what the page, the status and the cloud read -------------------------------------

    @property
    def complete(self) -> bool:
        return self._short < COUNT_GRACE

    def connected(self) -> list[str]:
        return sorted(t for t, s in self.seen.items() if s.connected)

    def summary(self) -> dict[str, Any]:
        """For the cloud's telemetry sample: who is connected, who is not, who was not seen."""
        groups: dict[str, list[str]] = {"connected": [], "disconnected": [], "unknown": []}
        for terminal, seen in sorted(self.seen.items()):
            groups[seen.doc()["state"]].append(terminal)
        return {**groups, "complete": self.complete}

    async def status(self) -> dict[str, Any]:
        others = sum(1 for user, _ in self._clients.values() if user not in self.seen)
        return {
            "connected": len(self.connected()),
            "configured": len(self.seen),
            "complete": self.complete,
            "broker_clients": self.broker_clients,
            "other_clients": others,
            "broker_restarts": self.broker_restarts,
            "terminals": [s.doc() for _, s in sorted(self.seen.items())],
            "web_screens": dict(self.web_screens()) if self.web_screens is not None else {},
        }


def _broker_time(stamp: str) -> float | None:
    """The time a log line carries: Unix seconds, or ``log_timestamp_format``'s local
    ``%Y-%m-%dT%H:%M:%S`` (the box's broker config, edgehub/broker.py)."""
    if stamp.isdigit():
        return float(stamp)
    try:
        return time.mktime(time.strptime(stamp, "%Y-%m-%dT%H:%M:%S"))
    except (ValueError, OverflowError):
        return None


def _text(message: Message) -> str:
    return message.payload.decode(errors="replace").strip()
