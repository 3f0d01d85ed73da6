"""One MQTT 5 connection to the chain's cloud broker: ``async with CloudLink(...) as link``.

An ``MqttSession`` (edgehub/bus/session.py) on FastPaho, driven by the event loop, because the
uplink needs what a higher-level client hides: the PUBACK *reason code* of every message (a
0x87 "not authorized" PUBACK is not a delivery, and the row must stay in the outbox), a callback
per PUBACK instead of a coroutine per message (a week of backlog is a million of them), manual
acks of incoming messages (a downlink document is acked after it is durable), and the server's
Receive Maximum. TLS with a client certificate for ``mqtts://``; plain ``mqtt://`` for tests.

A persistent session (clean start off, session expiry of a week) keeps the hub's downlink
subscriptions and queued documents while the WAN is down. Liveness is not TCP: a ping is a
round trip of a message through the cloud broker to the hub's own echo topic, and
``last_heard`` is when the cloud last sent any byte; the uplink's watchdog drops a link that
has been silent too long (``force_close(..., silent=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import ssl
import uuid
from collections.abc import Callable
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.message import Message
from edgehub.bus.session import RC_FAILURE, MqttSession
from edgehub.config import CloudConfig
from edgehub.errors import CloudSilent, MqttError, MqttRefused, MqttTimeout, UplinkError
from edgehub.uplink import cloudapi
from edgehub.uplink.cloudapi import CloudTopics
from edgehub.uplink.route import REFUSING

SESSION_EXPIRY_S = 7 * 24 * 3600
BROKER = "the cloud broker"
RECEIVE_MAXIMUM = 64  # unacknowledged downlink messages in flight (MQTT 5 Receive Maximum)
# What a person is told when the connection ended without a reason worth showing: paho reports a
# closed socket (the broker stopped or restarted, a load balancer dropped the box) as the bare
# DISCONNECT reason "Unspecified error", and a broker may send a DISCONNECT that says no more.
CLOSED_BY_BROKER = f"{BROKER} closed the connection"
TLS_HINT = " (check [cloud] ca_file, cert_file, key_file)"

MessageHandler = Callable[[Message], None]
PubackHandler = Callable[[int, int], None]

__all__ = ["BROKER", "CLOSED_BY_BROKER", "RC_FAILURE", "CloudLink", "reconcile_properties"]


def tls_context(cfg: CloudConfig) -> ssl.SSLContext:
    """The client side of ``mqtts://``: the server's certificate checked against ``ca_file`` (or
    the system's CAs) and its name, the box's own certificate shown when it has one."""
    try:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED, names checked
        if cfg.cert_file:
            context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file) if cfg.key_file else None)
        if cfg.ca_file:
            context.load_verify_locations(str(cfg.ca_file))
        else:
            context.load_default_certs()
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise UplinkError(f"cloud TLS files unusable (ca_file, cert_file, key_file): {exc}") from exc
    return context


class CloudLink:
    """A connected session, or an ``UplinkError`` from ``__aenter__`` (``CloudSilent`` when
    nothing answered). ``lost`` completes (with the reason) when the connection ends for any
    cause; nothing reconnects here."""

    def __init__(self, cfg: CloudConfig, topics: CloudTopics, *,
                 subscriptions: tuple[tuple[str, int], ...] = (),
                 on_message: MessageHandler | None = None,
                 on_puback: PubackHandler | None = None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_puback = on_puback
        self.address = f"{cfg.host}:{cfg.port}"
        self.session: MqttSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pings: dict[str, asyncio.Future[None]] = {}  # awaited pings (``ping``)
        self._ping_sent: dict[str, float] = {}  # every ping not yet answered -> when it was sent
        self.rtt: float | None = None  # seconds, of the last ping answered
        self.silent = ""  # why the link was declared silent, if that is how it ended

    # --- lifecycle -----------------------------------------------------------------------------

    def _make_session(self) -> MqttSession:
        cfg = self.cfg
        return MqttSession(
            cfg.host, cfg.port, client_id=cfg.client_id, username=cfg.username or None,
            password=cfg.password or None, clean_start=False, session_expiry_s=SESSION_EXPIRY_S,
            keepalive_s=cfg.keepalive_s, connect_timeout_s=cfg.connect_timeout_s,
            tls=tls_context(cfg) if cfg.tls else None, manual_ack=True, fast=True,
            # The uplink bounds what is in flight itself (and honours the server's Receive Maximum);
            # paho's own limit would only queue messages where their PUBACK cannot be tracked.
            max_inflight=0, on_message=self._on_message, on_puback=self._on_puback,
            # The cloud sends at most this many QoS 1 messages the box has not acknowledged yet: a
            # backlog of online orders (each acknowledged once journaled) comes in steps the box
            # takes as it goes, not as thousands read in one go and held in memory.
            receive_maximum=RECEIVE_MAXIMUM, name=BROKER, tls_hint=TLS_HINT,
        )

    async def __aenter__(self) -> CloudLink:
        self._loop = loop = asyncio.get_running_loop()
        deadline = loop.time() + self.cfg.connect_timeout_s  # for connecting and subscribing
        self.session = session = self._make_session()
        try:
            await session.__aenter__()
        except MqttTimeout as exc:
            raise CloudSilent(str(exc)) from None
        except MqttRefused as exc:
            raise UplinkError(f"{exc} (check [cloud] username, password, client certificate)") from exc
        except MqttError as exc:
            # Refused or reset: the far end said no (back off). Unreachable, no route, a name that
            # does not resolve: nothing reached it (the route is silent). A TLS failure says no.
            silent = exc.errno is not None and exc.errno not in REFUSING
            raise (CloudSilent if silent else UplinkError)(str(exc)) from exc
        assert session.lost is not None
        session.lost.add_done_callback(self._fail_pings)
        try:
            async with asyncio.timeout_at(deadline):
                for topic, qos in self.subscriptions:
                    codes = await session.subscribe(topic, qos)
                    if any(code >= RC_FAILURE for code in codes):
                        raise UplinkError(f"cloud broker refused the subscription to {topic}: "
                                          f"{', '.join(f'0x{c:02x}' for c in codes)} (check the cloud ACL)")
        except TimeoutError:
            session.force_close("no SUBACK")
            await session.close()
            raise CloudSilent(f"{BROKER} {self.address} did not answer within {self.cfg.connect_timeout_s:g} s"
                              ) from None
        except MqttError as exc:
            await session.close()
            raise UplinkError(str(exc)) from exc
        except BaseException:
            await session.close()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.session is not None:
            await self.session.close()

    def force_close(self, reason: str, silent: bool = False) -> None:
        """End the connection now, even a black-holed one (no DISCONNECT can get through).
        ``silent``: the cloud stopped answering (``silent`` keeps the reason)."""
        if silent and self.is_up:
            self.silent = reason
        if self.session is not None:
            self.session.force_close(reason)

    def _fail_pings(self, lost: asyncio.Future[str]) -> None:
        reason = "closed" if lost.cancelled() else lost.result()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(UplinkError(f"cloud link lost: {reason}"))
        self._pings.clear()

    # --- what the uplink calls -----------------------------------------------------------------

    @property
    def lost(self) -> asyncio.Future[str] | None:
        return self.session.lost if self.session is not None else None

    @property
    def is_up(self) -> bool:
        return self.session is not None and self.session.is_up

    @property
    def receive_maximum(self) -> int:
        return self.session.receive_maximum if self.session is not None else 65535

    @property
    def session_present(self) -> bool:
        return self.session is not None and self.session.session_present

    @property
    def last_heard(self) -> float:
        """Loop time the cloud last sent a byte (or the connection started)."""
        return self.session.last_heard if self.session is not None else 0.0

    def publish(self, topic: str, payload: bytes, properties: Any = None, qos: int = 1) -> int:
        """Queue one message; returns its packet id. ``on_puback(mid, reason)`` follows."""
        if self.session is None or not self.is_up:
            raise UplinkError("cloud link is not up")
        try:
            return self.session.publish_nowait(topic, payload, qos=qos, properties=properties)
        except MqttError as exc:
            raise UplinkError(str(exc)) from exc

    async def publish_wait(self, topic: str, payload: bytes, properties: Any = None, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for a successful PUBACK."""
        if self.session is None or not self.is_up:
            raise UplinkError("cloud link is not up")
        try:
            code = await self.session.publish(topic, payload, properties=properties, timeout=timeout)
        except MqttError as exc:
            raise UplinkError(str(exc)) from exc
        if code >= RC_FAILURE:
            raise UplinkError(f"cloud broker refused the message on {topic} (reason 0x{code:02x})")

    async def ping(self, timeout: float) -> float:
        """Round trip of one message through the cloud broker; returns seconds, or CloudSilent."""
        assert self._loop is not None
        fut: asyncio.Future[None] = self._loop.create_future()
        nonce = self.send_ping()
        self._pings[nonce] = fut
        started = self._loop.time()
        try:
            async with asyncio.timeout(timeout):
                await fut
        except TimeoutError:
            raise CloudSilent(f"no ping answer through the cloud broker within {timeout:g} s") from None
        finally:
            self._pings.pop(nonce, None)
        return self._loop.time() - started

    def send_ping(self) -> str:
        """Send a ping without waiting; its answer sets ``rtt`` and ``last_heard``."""
        assert self._loop is not None
        nonce = uuid.uuid4().hex
        self.publish(self.topics.ping, cloudapi.ping(nonce), qos=0)
        # A ping sent before the last byte from the cloud waits for nothing any more.
        self._ping_sent = {n: t for n, t in self._ping_sent.items() if t >= self.last_heard}
        self._ping_sent[nonce] = self._loop.time()
        return nonce

    def ping_overdue_s(self, now: float) -> float:
        """How long the oldest ping sent since the cloud's last byte has waited: nothing at all
        came back meanwhile (0 when no such ping waits)."""
        waiting = [t for t in self._ping_sent.values() if t >= self.last_heard]
        return now - min(waiting) if waiting else 0.0

    @property
    def last_ping_at(self) -> float | None:
        """Loop time of the newest ping sent since the cloud's last byte."""
        waiting = [t for t in self._ping_sent.values() if t >= self.last_heard]
        return max(waiting) if waiting else None

    def ack(self, message: Message) -> None:
        """Acknowledge an incoming QoS 1 message (after what it carries is durable)."""
        if self.session is not None:
            self.session.ack(message)

    # --- the session's callbacks (on the loop) -------------------------------------------------

    def _on_puback(self, mid: int, code: int) -> None:
        if self.on_puback is not None:
            self.on_puback(mid, code)

    def _on_message(self, message: Message) -> None:
        if message.topic == self.topics.ping:
            with contextlib.suppress(ValueError, AttributeError, TypeError, KeyError):
                nonce = json.loads(message.payload)["nonce"]
                sent = self._ping_sent.get(nonce)
                if sent is not None and self._loop is not None:
                    self.rtt = self._loop.time() - sent
                    # An answer also vouches for the pings sent before it.
                    self._ping_sent = {n: t for n, t in self._ping_sent.items() if t > sent}
                fut = self._pings.get(nonce)
                if fut is not None and not fut.done():
                    fut.set_result(None)
            return
        if self.on_message is not None:
            self.on_message(message)
        else:
            self.ack(message)


def reconcile_properties(topics: CloudTopics, request_id: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topics.reconcile_response
    props.CorrelationData = request_id.encode()
    return props
