"""One MQTT 5 connection to the chain's cloud broker: ``async with CloudLink(...) as link``.

Built on paho directly, driven by the event loop (no paho thread), because the uplink needs
what a higher-level client hides: the PUBACK *reason code* of every message (a 0x87 "not
authorized" PUBACK is not a delivery, and the row must stay in the outbox), a callback per
PUBACK instead of a coroutine per message (a week of backlog is a million of them), manual acks
of incoming messages (a downlink document is acked after it is durable), and the server's
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
import logging
import socket
import ssl
import uuid
from collections.abc import Callable
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.fastpaho import FastPaho
from edgehub.config import CloudConfig
from edgehub.errors import CloudSilent, UplinkError
from edgehub.tasks import cancel_and_wait
from edgehub.uplink import cloudapi
from edgehub.uplink.cloudapi import CloudTopics
from edgehub.uplink.route import REFUSING

log = logging.getLogger("edgehub.uplink.link")

SESSION_EXPIRY_S = 7 * 24 * 3600
RC_FAILURE = 0x80  # MQTT 5: reason codes from 0x80 up are failures (0x10 "no subscribers" is a success)

MessageHandler = Callable[[mqtt.MQTTMessage], None]
PubackHandler = Callable[[int, int], None]


def _reason(code: Any) -> str:
    return str(getattr(code, "getName", lambda: code)())


# What a person is told when the connection ended without a reason worth showing: paho reports a
# closed socket (the broker stopped or restarted, a load balancer dropped the box) as the bare
# DISCONNECT reason "Unspecified error", and a broker may send a DISCONNECT that says no more.
CLOSED_BY_BROKER = "the cloud broker closed the connection"


def disconnect_reason(reason_code: Any, flags: Any) -> str:
    """Words for why the connection ended, from paho's ``on_disconnect`` arguments."""
    reason = _reason(reason_code)
    from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
    if reason in ("Unspecified error", ""):
        return f"{CLOSED_BY_BROKER} (it sent DISCONNECT, no reason given)" if from_server else CLOSED_BY_BROKER
    if from_server:
        # "Server shutting down", "Session taken over" (another box with this client id), ...
        return f"the cloud broker disconnected the box: {reason}"
    return reason


class CloudLink:
    """A connected session, or an ``UplinkError`` from ``__aenter__``. ``lost`` completes (with
    the reason) when the connection ends for any cause; nothing reconnects here."""

    def __init__(self, cfg: CloudConfig, topics: CloudTopics, *,
                 subscriptions: tuple[tuple[str, int], ...] = (),
                 on_message: MessageHandler | None = None,
                 on_puback: PubackHandler | None = None) -> None:
        self.cfg = cfg
        self.topics = topics
        self.subscriptions = subscriptions
        self.on_message = on_message
        self.on_puback = on_puback
        self.receive_maximum = 65535
        self.session_present = False
        self.address = f"{cfg.host}:{cfg.port}"
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: FastPaho | None = None
        self._connack: asyncio.Future[None] | None = None
        self.lost: asyncio.Future[str] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._pings: dict[str, asyncio.Future[None]] = {}  # awaited pings (``ping``)
        self._ping_sent: dict[str, float] = {}  # every ping not yet answered -> when it was sent
        self.rtt: float | None = None  # seconds, of the last ping answered
        self.last_heard = 0.0  # loop time the cloud last sent a byte (or the connection started)
        self.silent = ""  # why the link was declared silent, if that is how it ended
        self._subacks: dict[int, asyncio.Future[list[Any]]] = {}
        self._waiters: dict[int, asyncio.Future[int]] = {}

    # --- lifecycle -----------------------------------------------------------------------------

    def _make_client(self) -> FastPaho:
        cfg = self.cfg
        client = FastPaho(CallbackAPIVersion.VERSION2, client_id=cfg.client_id, protocol=mqtt.MQTTv5,
                               reconnect_on_failure=False)
        client.connect_timeout = cfg.connect_timeout_s  # its TCP connect: the thread ends with our wait
        client.fast_puback = self._puback
        if cfg.username:
            client.username_pw_set(cfg.username, cfg.password or None)
        if cfg.tls:
            try:
                client.tls_set(ca_certs=str(cfg.ca_file) if cfg.ca_file else None,
                               certfile=str(cfg.cert_file) if cfg.cert_file else None,
                               keyfile=str(cfg.key_file) if cfg.key_file else None,
                               cert_reqs=ssl.CERT_REQUIRED, tls_version=ssl.PROTOCOL_TLS_CLIENT)
            except (OSError, ssl.SSLError, ValueError) as exc:
                raise UplinkError(f"cloud TLS files unusable (ca_file, cert_file, key_file): {exc}") from exc
        # The uplink bounds what is in flight itself (and honours the server's Receive Maximum);
        # paho's own limit would only queue messages where their PUBACK cannot be tracked.
        client.max_inflight_messages_set(0)
        client.max_queued_messages_set(0)
        client.manual_ack_set(True)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def __aenter__(self) -> CloudLink:
        self._loop = loop = asyncio.get_running_loop()
        self._connack = loop.create_future()
        self.lost = loop.create_future()
        self.last_heard = loop.time()
        self._client = client = self._make_client()
        props = Properties(PacketTypes.CONNECT)
        props.SessionExpiryInterval = SESSION_EXPIRY_S
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                # connect() resolves the name, opens TCP and does the TLS handshake: blocking work.
                await asyncio.to_thread(client.connect, self.cfg.host, self.cfg.port, self.cfg.keepalive_s,
                                        clean_start=False, properties=props)
                sock = client.socket()
                if isinstance(sock, socket.socket):
                    # PUBACKs and pings are small: without NODELAY each waits for Nagle.
                    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await self._connack
                for topic, qos in self.subscriptions:
                    await self._subscribe(topic, qos)
        except TimeoutError:
            await self._abort()
            raise CloudSilent(f"cloud broker {self.address} did not answer within "
                              f"{self.cfg.connect_timeout_s:g} s") from None
        except ssl.SSLError as exc:
            await self._abort()
            raise UplinkError(f"cannot connect to the cloud broker {self.address}: {exc}") from exc
        except OSError as exc:
            await self._abort()
            # Refused or reset: the far end said no (back off). Unreachable, no route, a name that
            # does not resolve: nothing reached it (the route is silent).
            error = UplinkError if exc.errno in REFUSING else CloudSilent
            raise error(f"cannot connect to the cloud broker {self.address}: {exc}") from exc
        except BaseException:
            await self._abort()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        client, lost = self._client, self.lost
        if client is not None and lost is not None and not lost.done():
            # A clean DISCONNECT (no will); if the link is stuck, shut the socket instead.
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await asyncio.shield(lost)
        await self._abort()

    async def _abort(self) -> None:
        self.force_close("closed")
        await cancel_and_wait(self._misc)
        self._misc = None
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
            with contextlib.suppress(OSError):
                sock.close()

    def force_close(self, reason: str, silent: bool = False) -> None:
        """End the connection now, even a black-holed one (no DISCONNECT can get through).
        ``silent``: the cloud stopped answering (``silent`` keeps the reason)."""
        if silent and self.is_up:
            self.silent = reason
        self._set_lost(reason)
        client = self._client
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _set_lost(self, reason: str) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(reason)
        for waiters in (self._pings, self._subacks, self._waiters):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(UplinkError(f"cloud link lost: {reason}"))
            waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(UplinkError(f"cloud link to {self.address} lost while connecting: {reason}"))
            # Nobody awaits it when connecting was cancelled (hub stopping): not worth a warning.
            self._connack.exception()

    # --- what the uplink calls -----------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.lost is not None and not self.lost.done()

    def publish(self, topic: str, payload: bytes, properties: Any = None, qos: int = 1) -> int:
        """Queue one message; returns its packet id. ``on_puback(mid, reason)`` follows."""
        if self._client is None or not self.is_up:
            raise UplinkError("cloud link is not up")
        info = self._client.publish(topic, payload, qos=qos, properties=properties)
        if info.rc != mqtt.MQTT_ERR_SUCCESS:
            raise UplinkError(f"publish to {topic} failed: {mqtt.error_string(info.rc)}")
        return int(info.mid)

    async def publish_wait(self, topic: str, payload: bytes, properties: Any = None, timeout: float = 10.0) -> None:
        """Publish at QoS 1 and wait for a successful PUBACK."""
        assert self._loop is not None
        mid = self.publish(topic, payload, properties)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiters[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                code = await fut
        finally:
            self._waiters.pop(mid, None)
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

    def ack(self, message: mqtt.MQTTMessage) -> None:
        """Acknowledge an incoming QoS 1 message (after what it carries is durable)."""
        if self._client is not None and self.is_up and message.qos > 0:
            self._client.ack(message.mid, message.qos)

    async def _subscribe(self, topic: str, qos: int) -> None:
        assert self._client is not None and self._loop is not None
        rc, mid = self._client.subscribe(topic, qos=qos)
        if rc != mqtt.MQTT_ERR_SUCCESS or mid is None:
            raise UplinkError(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[Any]] = self._loop.create_future()
        self._subacks[mid] = fut
        codes = await fut
        if any(getattr(c, "value", 0) >= RC_FAILURE for c in codes):
            raise UplinkError(f"cloud broker refused the subscription to {topic}: "
                              f"{', '.join(_reason(c) for c in codes)} (check the cloud ACL)")

    # --- paho callbacks (all on the event loop, from loop_read/loop_write) ---------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self._connack is None or self._connack.done():
            return
        if getattr(reason_code, "is_failure", False):
            self._connack.set_exception(UplinkError(
                f"cloud broker {self.address} refused the connection: {_reason(reason_code)} "
                "(check [cloud] username, password, client certificate)"))
            return
        self.receive_maximum = int(getattr(props, "ReceiveMaximum", 65535) or 65535)
        self.session_present = bool(getattr(flags, "session_present", False))
        self._connack.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        error = getattr(client, "read_error", None)
        if error is None:
            self._set_lost(disconnect_reason(reason_code, flags))
        elif isinstance(error, ssl.SSLError):
            self._set_lost(f"TLS error: {error} (check [cloud] ca_file, cert_file, key_file)")
        else:
            self._set_lost(str(error) or type(error).__name__)

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        self._puback(mid, int(getattr(reason_code, "value", 0)))

    def _puback(self, mid: int, code: int) -> None:
        waiter = self._waiters.pop(mid, None)
        if waiter is not None:
            if not waiter.done():
                waiter.set_result(code)
            return
        if self.on_puback is not None:
            self.on_puback(mid, code)

    def _on_subscribe(self, client: mqtt.Client, userdata: Any, mid: int, codes: list[Any], props: Any) -> None:
        fut = self._subacks.pop(mid, None)
        if fut is not None and not fut.done():
            fut.set_result(list(codes))

    def _on_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
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

    # --- paho driven by the event loop (no paho thread) ----------------------------------------

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Called from the connect thread: hand the socket to the loop from there.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() < 0:
            return
        self._loop.add_reader(sock, self._readable)
        self._misc = self._loop.create_task(self._misc_loop(), name="cloud-link-misc")

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        if self._loop is not None:
            self.last_heard = self._loop.time()
        try:
            while True:
                rc = client.loop_read()
                sock = client.socket()
                if rc != mqtt.MQTT_ERR_SUCCESS or sock is None:
                    break
                # TLS sockets hold bytes the selector does not see (FastPaho.loop_read uses up
                # its own read buffer itself).
                if not (hasattr(sock, "pending") and sock.pending() > 0):
                    break
        except Exception as exc:  # paho raises socket errors from loop_read on a broken link
            self._set_lost(str(exc) or type(exc).__name__)
            self._abort_socket()

    def _writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception as exc:  # as in _readable
            self._set_lost(str(exc) or type(exc).__name__)
            self._abort_socket()

    def _abort_socket(self) -> None:
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, OSError):
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        if self._misc is not None and not self._misc.done():
            self._loop.call_soon_threadsafe(self._misc.cancel)
        self._loop.call_soon_threadsafe(self._set_lost, "connection closed")

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0:
            self._loop.add_writer(sock, self._writable)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            if sock.fileno() >= 0:
                self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        # paho's keepalive (PINGREQ/PINGRESP) and retry bookkeeping.
        client = self._client
        while client is not None and client.loop_misc() == mqtt.MQTT_ERR_SUCCESS:  # noqa: ASYNC110 - a 1 s tick
            await asyncio.sleep(1)
        self._set_lost("keepalive expired")


def reconcile_properties(topics: CloudTopics, request_id: str) -> Properties:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = topics.reconcile_response
    props.CorrelationData = request_id.encode()
    return props
