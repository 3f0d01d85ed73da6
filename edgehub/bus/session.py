"""One MQTT connection, driven by the event loop: ``async with MqttSession(...) as session``.

Every MQTT connection of the project goes through it: the hub's to the store's Mosquitto
(``BusConnection``), the uplink's to the chain's cloud (``CloudLink``), the doctor's login check,
and the simulated terminals, cooks and cloud service. paho encodes and decodes the packets
(``FastPaho``, its shortcuts for connections that carry many QoS 1 messages, or stock paho) and
this class drives it: the loop's selector watches paho's socket, so there is no paho thread and
every callback runs on the loop. Connecting (name lookup, TCP, the TLS handshake) is blocking
work and runs in a thread.

Messages in arrive as ``Message`` (edgehub/bus/message.py): to ``on_message``, or, without one,
through ``messages``. With ``manual_ack`` a QoS 1 message is acknowledged to the broker by ``ack``
once it was handled, not on arrival. Messages out get the broker's PUBACK reason code
(``on_puback``, or the return of ``publish``). ``lost`` completes with the reason when the
connection ends, whatever the cause; nothing reconnects here: the owner decides how to retry.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import socket
import ssl
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion, MQTTErrorCode
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.fastpaho import FastPaho
from edgehub.bus.message import Message
from edgehub.errors import MqttError, MqttRefused, MqttTimeout
from edgehub.tasks import cancel_and_wait, sleep_to_tick

log = logging.getLogger("edgehub.bus.session")

V5, V311 = 5, 4  # protocol levels (CONNECT)
RC_FAILURE = 0x80  # MQTT 5: reason codes from 0x80 up are failures (0x10 "no subscribers" is a success)
CLOSE_WAIT_S = 2.0  # a clean DISCONNECT waits this long for the broker to close; then the socket is shut

MessageHandler = Callable[[Message], None]
PubackHandler = Callable[[int, int], None]


@dataclass(frozen=True, slots=True)
class Will:
    """The message the broker publishes for the client when its connection dies without DISCONNECT."""

    topic: str
    payload: bytes
    qos: int = 1
    retain: bool = False


def reason_name(code: Any) -> str:
    """paho's name of a reason code ("Not authorized"), or the value itself."""
    return str(getattr(code, "getName", lambda: code)())


def disconnect_words(name: str, reason_code: Any, from_server: bool) -> str:
    """Why a connection to ``name`` ended, in words: paho reports a closed socket (the broker
    stopped, a load balancer dropped the link) as the bare reason "Unspecified error", and a
    broker may send a DISCONNECT that says no more."""
    reason = reason_name(reason_code)
    if reason in ("Unspecified error", ""):
        closed = f"{name} closed the connection"
        return f"{closed} (it sent DISCONNECT, no reason given)" if from_server else closed
    if from_server:
        # "Server shutting down", "Session taken over" (another client with this client id), ...
        return f"{name} disconnected the box: {reason}"
    return reason


def _code(code: Any) -> int:
    value = getattr(code, "value", code)
    return value if isinstance(value, int) else 0


def _to_message(message: mqtt.MQTTMessage, topic: str) -> Message:
    payload = message.payload
    if type(payload) is not bytes:  # stock paho decodes into a bytearray
        payload = bytes(payload)
    props = message.properties
    if props is None:  # FastPaho's hand decoding: a message without properties
        return Message(topic, payload, message.qos, message.retain, message.mid)
    correlation = getattr(props, "CorrelationData", None)
    return Message(topic, payload, message.qos, message.retain, message.mid,
                   response_topic=getattr(props, "ResponseTopic", None),
                   correlation_data=bytes(correlation) if correlation is not None else None,
                   user_properties=tuple((str(k), str(v)) for k, v in getattr(props, "UserProperty", ())),
                   message_expiry=getattr(props, "MessageExpiryInterval", None))


class MqttSession:
    """A connected session, or an ``MqttError`` from ``__aenter__``: ``MqttTimeout`` when nothing
    answered, ``MqttRefused`` when the broker said no, ``MqttError`` (with ``errno``) otherwise.

    ``fast`` picks FastPaho (the hub's and the uplink's sessions) over stock paho (the simulators:
    what they send and read is then paho's own doing, a check on the shortcuts at the other end).
    ``max_inflight`` is paho's limit on QoS 1 messages awaiting their PUBACK (``None``: paho's 20;
    0: none, for an owner that bounds what it sends itself). ``receive_maximum`` goes in the
    CONNECT (MQTT 5 Receive Maximum): the QoS 1 messages the broker may send before this client
    acknowledges them (``None``: the protocol's 65,535). ``name`` says which broker in errors
    ("the cloud broker"); ``tls_hint`` is added to a TLS failure's words (which setting to check).
    """

    def __init__(self, host: str, port: int, *, client_id: str, username: str | None = None,
                 password: str | None = None, protocol: int = V5, clean_start: bool = True,
                 session_expiry_s: int = 0, keepalive_s: int = 15, connect_timeout_s: float = 10.0,
                 will: Will | None = None, tls: ssl.SSLContext | None = None, manual_ack: bool = False,
                 fast: bool = False, max_inflight: int | None = None, receive_maximum: int | None = None,
                 on_message: MessageHandler | None = None, on_puback: PubackHandler | None = None,
                 name: str = "the broker", tls_hint: str = "") -> None:
        if protocol not in (V5, V311):
            raise ValueError(f"MQTT protocol level {protocol}: only 5 and 4 (3.1.1) are spoken")
        self.host, self.port = host, port
        self.address = f"{host}:{port}"
        self.client_id = client_id
        self._username, self._password = username, password
        self.protocol = protocol
        self.clean_start = clean_start
        self.session_expiry_s = session_expiry_s
        self.keepalive_s = keepalive_s
        self.connect_timeout_s = connect_timeout_s
        self.will = will
        self._tls = tls
        self.manual_ack = manual_ack
        self.fast = fast
        self.max_inflight = max_inflight
        self.receive_window = receive_maximum
        self.on_message = on_message
        self.on_puback = on_puback
        self.name = name
        self.tls_hint = tls_hint
        # From the CONNACK: whether the broker kept a session, how many QoS 1 messages it takes at once.
        self.session_present = False
        self.receive_maximum = 65535
        self.last_heard = 0.0  # loop time the broker last sent a byte (or the connection started)
        self.lost: asyncio.Future[str] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0
        self._client: mqtt.Client | None = None
        self._connack: asyncio.Future[None] | None = None
        self._misc: asyncio.Task[None] | None = None
        self._subacks: dict[int, asyncio.Future[list[int]]] = {}
        self._waiters: dict[int, asyncio.Future[int]] = {}
        self._inbox: collections.deque[Message] | None = None  # ``messages``, without an on_message
        self._arrival: asyncio.Future[None] | None = None  # what ``messages`` waits on
        self._closing = False
        self._closed = False

    # --- lifecycle -----------------------------------------------------------------------------

    def _make_client(self) -> mqtt.Client:
        protocol = mqtt.MQTTv5 if self.protocol == V5 else mqtt.MQTTv311
        kind = FastPaho if self.fast else mqtt.Client
        client = kind(CallbackAPIVersion.VERSION2, client_id=self.client_id, protocol=protocol,
                      reconnect_on_failure=False,
                      clean_session=None if self.protocol == V5 else self.clean_start)
        if isinstance(client, FastPaho):
            client.fast_puback = self._puback
        # The TCP connect and the TLS handshake in the connect thread end with our own wait.
        client.connect_timeout = self.connect_timeout_s
        if self._username is not None:
            client.username_pw_set(self._username, self._password)
        if self.will is not None:
            client.will_set(self.will.topic, self.will.payload, self.will.qos, self.will.retain)
        if self._tls is not None:
            client.tls_set_context(self._tls)
        if self.max_inflight is not None:
            client.max_inflight_messages_set(self.max_inflight)
        client.max_queued_messages_set(0)
        client.manual_ack_set(self.manual_ack)
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        client.on_message = self._on_paho_message
        client.on_socket_open = self._on_socket_open
        client.on_socket_close = self._on_socket_close
        client.on_socket_register_write = self._on_socket_register_write
        client.on_socket_unregister_write = self._on_socket_unregister_write
        return client

    async def __aenter__(self) -> MqttSession:
        self._loop = loop = asyncio.get_running_loop()
        self._loop_thread = threading.get_ident()
        self._connack = loop.create_future()
        self.lost = loop.create_future()
        if self.on_message is None:
            self._inbox = collections.deque()
        self.last_heard = loop.time()
        self._client = client = self._make_client()
        props = None
        if self.protocol == V5 and (self.session_expiry_s or self.receive_window):
            props = Properties(PacketTypes.CONNECT)
            if self.session_expiry_s:
                props.SessionExpiryInterval = self.session_expiry_s
            if self.receive_window:
                props.ReceiveMaximum = self.receive_window
        extra: dict[str, Any] = {"clean_start": self.clean_start, "properties": props} if self.protocol == V5 else {}
        try:
            async with asyncio.timeout(self.connect_timeout_s):
                # connect() resolves the name, opens TCP, does the TLS handshake and sends CONNECT.
                await asyncio.to_thread(client.connect, self.host, self.port, self.keepalive_s, **extra)
                await self._connack
        except TimeoutError:
            await self._abort()
            raise MqttTimeout(f"{self.name} {self.address} did not answer within "
                              f"{self.connect_timeout_s:g} s") from None
        except ssl.SSLError as exc:
            await self._abort()
            raise MqttError(f"cannot connect to {self.name} {self.address}: {exc}{self.tls_hint}") from exc
        except OSError as exc:
            await self._abort()
            raise MqttError(f"cannot connect to {self.name} {self.address}: {_os_reason(exc)}", exc.errno) from exc
        except BaseException:
            await self._abort()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def close(self) -> None:
        """A clean DISCONNECT (the broker publishes no Will); a link that does not pass it on in
        CLOSE_WAIT_S is shut instead."""
        client, lost = self._client, self.lost
        if client is not None and lost is not None and not lost.done() and not self._closed:
            self._closing = True
            client.disconnect()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(CLOSE_WAIT_S):
                    await asyncio.shield(lost)
        await self._abort()

    async def _abort(self) -> None:
        self.force_close("closed")
        self._closed = True
        await cancel_and_wait(self._misc)
        self._misc = None
        self._unwatch()
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.close()

    def force_close(self, reason: str) -> None:
        """End the connection now, even one where nothing gets through any more (no DISCONNECT)."""
        self._set_lost(reason)
        client = self._client
        sock = client.socket() if client is not None else None
        if isinstance(sock, socket.socket | ssl.SSLSocket):
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)

    def _set_lost(self, reason: str) -> None:
        if self.lost is not None and not self.lost.done():
            self.lost.set_result(reason)
        for waiters in (self._subacks, self._waiters):
            for fut in waiters.values():
                if not fut.done():
                    fut.set_exception(MqttError(f"connection to {self.name} {self.address} lost: {reason}"))
            waiters.clear()
        if self._connack is not None and not self._connack.done():
            self._connack.set_exception(MqttError(f"connection to {self.name} {self.address} lost while "
                                                  f"connecting: {reason}"))
            # Nobody awaits it when connecting was cancelled (its owner stopping): not worth a warning.
            self._connack.exception()

    # --- what an owner calls -------------------------------------------------------------------

    @property
    def is_up(self) -> bool:
        return self.lost is not None and not self.lost.done()

    def publish_nowait(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                       properties: Any = None) -> int:
        """Queue one message (written at the loop's next turn); returns its packet id. Its PUBACK
        goes to ``on_puback``. ``properties``: paho's ``Properties``, or anything with its ``pack()``.
        A topic paho refuses (a wildcard, NUL) raises ValueError; nothing was sent."""
        client = self._client
        if client is None or not self.is_up:
            raise MqttError(f"not connected to {self.name} {self.address}")
        if isinstance(payload, str):
            payload = payload.encode()
        if properties is None and isinstance(client, FastPaho):
            rc, mid = client.publish_unwaited(topic, payload, qos, retain)
        else:
            info = client.publish(topic, payload, qos, retain, properties)
            rc, mid = info.rc, info.mid
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS:
            raise MqttError(f"publish to {topic} failed: {mqtt.error_string(rc)}")
        return int(mid)

    async def publish(self, topic: str, payload: bytes | str, qos: int = 1, retain: bool = False,
                      properties: Any = None, timeout: float = 10.0) -> int:
        """Publish and wait for the broker's PUBACK (at QoS 0: until it is written); returns its
        reason code (from 0x80 up the broker refused the message: ``RC_FAILURE``)."""
        assert self._loop is not None
        mid = self.publish_nowait(topic, payload, qos, retain, properties)
        fut: asyncio.Future[int] = self._loop.create_future()
        self._waiters[mid] = fut
        try:
            async with asyncio.timeout(timeout):
                return await fut
        finally:
            self._waiters.pop(mid, None)

    async def subscribe(self, topic: str, qos: int = 1) -> list[int]:
        """Subscribe and wait for the SUBACK; returns its reason codes (from 0x80 up: refused)."""
        client, loop = self._client, self._loop
        if client is None or loop is None or not self.is_up:
            raise MqttError(f"not connected to {self.name} {self.address}")
        rc, mid = client.subscribe(topic, qos=qos)
        if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or mid is None:
            raise MqttError(f"subscribe to {topic} failed: {mqtt.error_string(rc)}")
        fut: asyncio.Future[list[int]] = loop.create_future()
        self._subacks[mid] = fut
        return await fut

    def ack(self, message: Message) -> None:
        """Acknowledge a QoS 1 message to the broker (with ``manual_ack``: once it was handled)."""
        client = self._client
        if client is not None and self.manual_ack and message.qos == 1 and self.is_up:
            client.ack(message.mid, 1)

    @property
    def read_error(self) -> OSError | None:
        """What the last failed read raised (paho itself only says "Unspecified error")."""
        return self._client.read_error if isinstance(self._client, FastPaho) else None

    @property
    def messages(self) -> AsyncIterator[Message]:
        """Messages in order of arrival, for a session made without ``on_message``; the iteration
        raises MqttError once the connection is lost and every message before it was taken."""
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Message]:
        inbox, lost, loop = self._inbox, self.lost, self._loop
        if inbox is None or lost is None or loop is None:
            raise MqttError("messages: this session hands its messages to on_message")
        while True:
            if inbox:  # taken from the inbox only here: a cancelled wait loses no message
                yield inbox.popleft()
                continue
            if lost.done():
                raise MqttError(f"connection to {self.name} {self.address} lost: {lost.result()}")
            arrival: asyncio.Future[Any] = loop.create_future()
            self._arrival = arrival
            await asyncio.wait({arrival, lost}, return_when=asyncio.FIRST_COMPLETED)

    # --- paho callbacks (on the loop, from loop_read / loop_write; socket ones also from the
    # connect thread) ---------------------------------------------------------------------------

    def _on_connect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        if self._connack is None or self._connack.done():
            return
        if getattr(reason_code, "is_failure", False):
            self._connack.set_exception(MqttRefused(
                f"{self.name} {self.address} refused the connection: {reason_name(reason_code)}", _code(reason_code)))
            return
        self.receive_maximum = int(getattr(props, "ReceiveMaximum", 65535) or 65535)
        self.session_present = bool(getattr(flags, "session_present", False))
        self._connack.set_result(None)

    def _on_disconnect(self, client: mqtt.Client, userdata: Any, flags: Any, reason_code: Any, props: Any) -> None:
        error = self.read_error
        if self._closing:
            self._set_lost("closed")
        elif error is None:
            from_server = bool(getattr(flags, "is_disconnect_packet_from_server", False))
            self._set_lost(disconnect_words(self.name, reason_code, from_server))
        elif isinstance(error, ssl.SSLError):
            self._set_lost(f"TLS error: {error}{self.tls_hint}")
        else:
            self._set_lost(_os_reason(error))

    def _on_publish(self, client: mqtt.Client, userdata: Any, mid: int, reason_code: Any, props: Any) -> None:
        self._puback(mid, _code(reason_code))

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
            fut.set_result([_code(c) for c in codes])

    def _on_paho_message(self, client: mqtt.Client, userdata: Any, message: mqtt.MQTTMessage) -> None:
        try:
            topic = message.topic
        except UnicodeDecodeError:  # a broker lets no such topic through; acked, so it does not come back
            log.warning("message from %s %s with a topic that is not UTF-8: dropped", self.name, self.address)
            if self.manual_ack and message.qos == 1:
                client.ack(message.mid, 1)
            return
        converted = _to_message(message, topic)
        if self.on_message is not None:
            self.on_message(converted)
        elif self._inbox is not None:
            self._inbox.append(converted)
            if self._arrival is not None and not self._arrival.done():
                self._arrival.set_result(None)

    # --- paho driven by the event loop ---------------------------------------------------------

    def _on_loop(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def _soon(self, callback: Callable[..., None], *args: Any) -> None:
        assert self._loop is not None
        if self._on_loop():
            callback(*args)
        else:
            # paho's __del__ may close its socket after the loop is closed: nothing is left to tell.
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(callback, *args)

    def _on_socket_open(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        # Called in the connect thread before CONNECT is written. Acks and PUBACKs are small:
        # without NODELAY each waits for Nagle and the peer's delayed ACK.
        if isinstance(sock, socket.socket):
            with contextlib.suppress(OSError):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._watch, sock)

    def _watch(self, sock: Any) -> None:
        assert self._loop is not None
        if self._closed:  # connecting took longer than the wait for it: nobody uses this socket
            with contextlib.suppress(OSError):
                sock.close()
            return
        if sock.fileno() < 0:
            return
        self._loop.add_reader(sock, self._readable)
        self._misc = self._loop.create_task(self._misc_loop(), name=f"mqtt-misc-{self.client_id}")

    def _unwatch(self) -> None:
        client = self._client
        sock = client.socket() if client is not None else None
        if sock is not None and self._loop is not None:
            with contextlib.suppress(ValueError, OSError):
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)

    def _readable(self) -> None:
        client = self._client
        if client is None:
            return
        assert self._loop is not None
        self.last_heard = self._loop.time()
        try:
            while True:
                rc = client.loop_read()
                sock = client.socket()
                if rc != MQTTErrorCode.MQTT_ERR_SUCCESS or sock is None:
                    break
                # A TLS socket holds decrypted bytes the selector does not see (FastPaho's own
                # read buffer is used up by its loop_read).
                if not (isinstance(sock, ssl.SSLSocket) and sock.pending() > 0):
                    break
        except Exception as exc:  # paho raises socket errors from loop_read on a broken link
            self._set_lost(str(exc) or type(exc).__name__)
            self._unwatch()

    def _writable(self) -> None:
        client = self._client
        if client is None:
            return
        try:
            client.loop_write()
        except Exception as exc:  # as in _readable
            self._set_lost(str(exc) or type(exc).__name__)
            self._unwatch()

    def _on_socket_close(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        if self._loop is None:
            return
        with contextlib.suppress(ValueError, OSError):
            if sock.fileno() >= 0:
                self._loop.remove_reader(sock)
                self._loop.remove_writer(sock)
        if self._misc is not None and not self._misc.done():
            self._loop.call_soon_threadsafe(self._misc.cancel)
        # Later, so that on_disconnect (which paho calls right after this) gives the reason.
        self._loop.call_soon_threadsafe(self._set_lost, "connection closed")

    def _on_socket_register_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._soon(self._add_writer, sock)

    def _add_writer(self, sock: Any) -> None:
        assert self._loop is not None
        if sock.fileno() >= 0 and not self._closed:
            self._loop.add_writer(sock, self._writable)

    def _on_socket_unregister_write(self, client: mqtt.Client, userdata: Any, sock: Any) -> None:
        self._soon(self._remove_writer, sock)

    def _remove_writer(self, sock: Any) -> None:
        assert self._loop is not None
        with contextlib.suppress(ValueError, OSError):
            if sock.fileno() >= 0:
                self._loop.remove_writer(sock)

    async def _misc_loop(self) -> None:
        # paho's keepalive (PINGREQ, and a connection whose PINGRESP never came is closed).
        client = self._client
        while client is not None and client.loop_misc() == MQTTErrorCode.MQTT_ERR_SUCCESS:
            await sleep_to_tick(1.0)  # on the grid: with the other periodic wakeups
        self._set_lost("keepalive expired")


def _os_reason(exc: OSError) -> str:
    return str(exc) or type(exc).__name__

