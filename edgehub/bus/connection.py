"""The hub's one connection to the store's Mosquitto, kept up for the life of the hub.

A persistent MQTT 5 session (clean start off, long session expiry), so orders published while
the hub restarts wait in the broker and arrive when it returns. ``…/hub/$state`` is retained
``ready`` on every connect, with a retained Last Will ``lost``. On a lost connection it
reconnects with capped backoff; state changes are logged once per change, not once per try.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
import socket
from collections.abc import Awaitable, Callable
from typing import Any

import aiomqtt
import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode

from edgehub.bus import payloads
from edgehub.bus.fastpaho import FastPaho
from edgehub.bus.topics import Topics
from edgehub.errors import BrokerError
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.bus")

Handler = Callable[[aiomqtt.Message], Awaitable[None]]
BatchHandler = Callable[[list[aiomqtt.Message]], Awaitable[None]]
SESSION_EXPIRY_S = 7 * 24 * 3600
ROUTE_CACHE = 4096  # topics whose handler is remembered (terminals, stations, devices: a few dozen)


class Batched:
    """A route whose handler takes the messages of one turn of the loop together (``route_batch``)."""

    def __init__(self, topic_filter: str, handler: BatchHandler) -> None:
        self.topic_filter = topic_filter
        self.handler = handler
        self.pending: list[tuple[aiomqtt.Message, mqtt.Client | None]] = []


class BusConnection:
    def __init__(
        self,
        host: str,
        port: int,
        username: str,
        password: str,
        client_id: str,
        topics: Topics,
        version: str,
        max_handlers: int = 2000,
    ) -> None:
        self.host = host
        self.port = port
        self._username = username
        self._password = password
        self.client_id = client_id
        self.topics = topics
        self.version = version
        # (topic filter, handler): each component routes its own topics; subscribed on connect.
        self.routes: list[tuple[str, Handler | Batched]] = []
        # At most max_handlers messages handled at once; the rest wait their turn, in order.
        self._max_handlers = max_handlers
        self._active = 0
        self._accepting = False  # connected and set up: messages may be handled
        # (message, the paho client it came on): acked on that connection once handled
        self._waiting: collections.deque[tuple[aiomqtt.Message, mqtt.Client | None]] = collections.deque()
        self._handler_of: dict[str, Handler | Batched | None] = {}  # topic -> route, learnt as messages come
        self._loop: asyncio.AbstractEventLoop | None = None
        self._client: aiomqtt.Client | None = None
        self._paho: mqtt.Client | None = None  # the paho client of the latest connection
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error = ""
        self.on_connect: list[Callable[[], Awaitable[None]]] = []
        # Awaited before every connection attempt: in managed mode, until the hub's own Mosquitto
        # is the one listening (never log in to a broker some other program put on the port).
        self.gate: Callable[[], Awaitable[None]] | None = None

    def _make_client(self) -> aiomqtt.Client:
        connect_props = Properties(PacketTypes.CONNECT)
        connect_props.SessionExpiryInterval = SESSION_EXPIRY_S
        will = aiomqtt.Will(self.topics.hub_state, payloads.hub_state("lost", self.version), qos=1, retain=True)
        client = aiomqtt.Client(
            self.host,
            self.port,
            username=self._username,
            password=self._password,
            identifier=self.client_id,
            protocol=aiomqtt.ProtocolVersion.V5,
            clean_start=False,
            properties=connect_props,
            will=will,
            keepalive=15,
            timeout=10,
            # No client-side inflight limit: the broker acks each QoS 1 message at once (its
            # queues are sized in broker.py), and without a limit a PUBACK never has to release
            # a queued message, which lets FastPaho decode it by hand.
            max_inflight_messages=0,
            # Acks are small: without NODELAY each waits for Nagle and the peer's delayed ACK.
            socket_options=[(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)],
        )
        # Many acks in flight at once is the normal case at the dinner rush, not a warning.
        client.pending_calls_threshold = 5000
        paho = getattr(client, "_client", None)  # aiomqtt's paho client: no public handle on it
        if isinstance(paho, mqtt.Client):
            self._paho = paho
            # A QoS 1 message is acknowledged to the broker once it was handled (an order: once it
            # is journaled), not when it arrives. The broker then sends at most its
            # ``max_inflight_messages`` unacknowledged messages (broker.py): that bounds what the
            # hub reads in while it is behind, and a rush waits in the broker's queue, not as
            # thousands of handlers in the hub's memory. A message the hub never finished is
            # sent again by the broker after a reconnect.
            paho.manual_ack_set(True)
            # A publish someone awaits is completed as aiomqtt would (its on_publish callback).
            FastPaho.adopt(paho, self._puback_for(client, paho))
            # Messages go from paho's callback straight to their handler, not through aiomqtt's
            # queue and iterator (a queue task and an ``asyncio.wait`` per message at the rush).
            paho.on_message = self._on_paho_message
        return client

    @staticmethod
    def _puback_for(client: aiomqtt.Client, paho: mqtt.Client) -> Callable[[int, int], None]:
        """What a PUBACK does: complete the publish aiomqtt awaits for that mid, if any. Most have
        none (acks and kitchen events are not awaited: ``publish_nowait``), and aiomqtt's own
        callback finds that out by raising and suppressing a KeyError, three times an order."""
        pending = getattr(client, "_pending_publishes", None)
        if not isinstance(pending, dict):  # pragma: no cover - an aiomqtt without it
            return lambda mid, code: client._on_publish(
                paho, None, mid, ReasonCode(PacketTypes.PUBACK, identifier=code), Properties(PacketTypes.PUBACK))

        def puback(mid: int, _code: int) -> None:
            event = pending.pop(mid, None)
            if event is not None:
                event.set()

        return puback

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = 0.1
        self._loop = asyncio.get_running_loop()
        while True:
            if self.gate is not None:
                await self.gate()
            try:
                async with self._make_client() as client:
                    self._client = client
                    _mark_seen(client)
                    for topic, _ in self.routes:
                        await client.subscribe(topic, qos=1)
                    await client.publish(self.topics.hub_state, payloads.hub_state("ready", self.version),
                                         qos=1, retain=True)
                    self.connects += 1
                    self.connected.set()
                    if self.last_error:
                        log.info("broker %s:%d connected again", self.host, self.port)
                    self.last_error = ""
                    backoff = 0.1
                    for callback in self.on_connect:
                        await callback()
                    # Messages that came with the session (the broker sends them right after
                    # CONNACK) waited until now: subscribed, state published, callbacks run.
                    self._accepting = True
                    self._start_waiting()
                    # Ends (MqttError) when the connection does. Messages arrive here only if
                    # paho's callback could not be taken over (see _make_client); paho then
                    # acknowledges them itself.
                    async for message in client.messages:
                        self._dispatch(message, None)
            except aiomqtt.MqttError as exc:
                error = _readable(str(exc) or type(exc).__name__, self.host, self.port)
                if error != self.last_error:
                    log.warning("broker %s:%d connection lost or refused: %s", self.host, self.port, error)
                self.last_error = error
            finally:
                self._accepting = False
                self._client = None
                self.connected.clear()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, 5.0)

    @property
    def handling(self) -> int:
        """Messages being handled now (at most the broker's window while the hub is behind)."""
        return self._active

    def route(self, topic_filter: str, handler: Handler) -> None:
        """Deliver messages matching ``topic_filter`` to ``handler`` (call before ``run``)."""
        self.routes.append((topic_filter, handler))
        self._handler_of.clear()

    def route_batch(self, topic_filter: str, handler: BatchHandler) -> None:
        """Like ``route``, for a handler that takes a list: the messages matching ``topic_filter``
        that arrive in one turn of the loop (at the rush, the packets of one read) go to it
        together, in one task, and each is acknowledged to the broker once the handler returns.
        Orders come this way: one task, one journal write and one future per batch instead of
        per order (docs/footprint.md, Intake)."""
        self.routes.append((topic_filter, Batched(topic_filter, handler)))
        self._handler_of.clear()

    def _on_paho_message(self, client: mqtt.Client, _userdata: Any, message: mqtt.MQTTMessage) -> None:
        converted = aiomqtt.Message._from_paho_message(message)  # what aiomqtt's own callback makes
        try:
            running = asyncio.get_running_loop()
        except RuntimeError:  # paho's callback on another thread (aiomqtt connects in an executor)
            running = None
        if running is not None and running is self._loop:
            self._dispatch(converted, client)
        elif self._loop is not None:
            self._loop.call_soon_threadsafe(self._dispatch, converted, client)

    def _dispatch(self, message: aiomqtt.Message, via: mqtt.Client | None) -> None:
        if self._waiting or not self._accepting or self._active >= self._max_handlers:
            self._waiting.append((message, via))
            return
        self._start(message, via)

    def _start(self, message: aiomqtt.Message, via: mqtt.Client | None) -> None:
        self._active += 1
        route = self._route(message.topic.value, message)
        if isinstance(route, Batched):
            # Joins the messages of this turn of the loop for the same route: one task for all.
            if not route.pending:
                asyncio.get_running_loop().call_soon(self._start_batch, route)
            route.pending.append((message, via))
            return
        self._spawn(self._handle(route, message, via))

    def _start_batch(self, route: Batched) -> None:
        items, route.pending = route.pending, []
        if items:
            self._spawn(self._handle_batch(route, items))

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _start_waiting(self) -> None:
        while self._waiting and self._accepting and self._active < self._max_handlers:
            self._start(*self._waiting.popleft())

    def _ack(self, message: aiomqtt.Message, via: mqtt.Client | None) -> None:
        """The broker's PUBACK for a handled QoS 1 message, on the connection it came on (after a
        reconnect the broker sends it again, and it is handled again: handlers are idempotent)."""
        if via is not None and message.qos == 1 and self._client is not None and via is self._paho:
            via.ack(message.mid, 1)  # _paho is set only where manual acks were switched on

    def _route(self, topic: str, message: aiomqtt.Message) -> Handler | Batched | None:
        try:
            return self._handler_of[topic]
        except KeyError:
            pass
        found = next((handler for topic_filter, handler in self.routes if message.topic.matches(topic_filter)),
                     None)
        if len(self._handler_of) >= ROUTE_CACHE:
            self._handler_of.clear()
        self._handler_of[topic] = found
        return found

    async def _handle(self, handler: Handler | None, message: aiomqtt.Message, via: mqtt.Client | None) -> None:
        topic = message.topic.value
        try:
            if handler is None:
                log.debug("no route for %s", topic)
            else:
                await handler(message)
        except Exception:
            # The daemon never dies on input; what went wrong is logged with the topic.
            log.exception("handling a message on %s failed", topic)
        finally:
            self._ack(message, via)
            self._active -= 1
            self._start_waiting()

    async def _handle_batch(self, route: Batched, items: list[tuple[aiomqtt.Message, mqtt.Client | None]]) -> None:
        try:
            await route.handler([message for message, _ in items])
        except Exception:
            log.exception("handling %d messages on %s failed", len(items), route.topic_filter)
        finally:
            for message, via in items:
                self._ack(message, via)
            self._active -= len(items)
            self._start_waiting()

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      properties: Properties | None = None, timeout: float = 10.0) -> None:
        client = self._client
        if client is None or not self.connected.is_set():
            raise BrokerError(f"not connected to the broker at {self.host}:{self.port}")
        try:
            await client.publish(topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout)
        except aiomqtt.MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        except ValueError as exc:  # paho refuses a topic with a wildcard or NUL before sending
            raise BrokerError(f"publish to {topic!r} refused: {exc}") from exc

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                       properties: Properties | None = None) -> None:
        """Hand a message to the MQTT client without waiting for the broker's PUBACK.

        For messages whose sender does nothing with the PUBACK: order acks (a terminal that
        misses one re-sends and is acked again) and kitchen events (the session re-sends an
        unacknowledged QoS 1 message after a reconnect; screens resync on a seq gap). Awaiting
        each PUBACK costs an Event, a ``wait_for`` task and aiomqtt's bookkeeping, which walks
        every pending publish: at the rush, a quarter of the event loop (bench/intake.py).
        Raises BrokerError when not connected or the client refuses the message.
        """
        client = self._client
        if client is None or not self.connected.is_set():
            raise BrokerError(f"not connected to the broker at {self.host}:{self.port}")
        paho = getattr(client, "_client", None)  # aiomqtt's paho client: no public handle on it
        if paho is None:  # pragma: no cover - a future aiomqtt without it
            self._spawn_publish(topic, payload, qos, retain, properties)
            return
        try:
            if isinstance(paho, FastPaho) and properties is None:
                rc = paho.publish_unwaited(topic, payload, qos, retain)
            else:
                rc = paho.publish(topic, payload, qos, retain, properties).rc
        except ValueError as exc:  # a topic with a wildcard or NUL: nothing was sent
            raise BrokerError(f"publish to {topic!r} refused: {exc}") from exc
        if rc != 0:  # MQTT_ERR_SUCCESS
            raise BrokerError(f"publish to {topic} failed: paho error {rc}")

    def _spawn_publish(self, topic: str, payload: bytes, qos: int, retain: bool,
                       properties: Properties | None) -> None:
        async def publish() -> None:
            try:
                await self.publish(topic, payload, qos=qos, retain=retain, properties=properties)
            except (BrokerError, TimeoutError) as exc:
                log.info("publish to %s failed: %s", topic, exc)

        task = asyncio.create_task(publish())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def close(self, final_state: str = "lost") -> None:
        """Say goodbye on the state topic (a clean disconnect sends no Last Will)."""
        client = self._client
        if client is not None and self.connected.is_set():
            try:
                await client.publish(self.topics.hub_state, payloads.hub_state(final_state, self.version),
                                     qos=1, retain=True, timeout=2)
            except (aiomqtt.MqttError, TimeoutError) as exc:
                log.info("could not publish final state: %s", exc)
        await cancel_and_wait(*self._tasks)


def _readable(error: str, host: str, port: int) -> str:
    """What a person can act on instead of paho's ``[Errno 111] Connection refused``."""
    if "Connection refused" in error:
        return f"nothing listens on {host}:{port} (connection refused): the broker is not running"
    if "timed out" in error.lower():
        return f"no answer from {host}:{port} ({error})"
    return error


def _mark_seen(client: aiomqtt.Client) -> None:
    """A connection lost while the bus is being stopped (the hub's own Mosquitto stopping first)
    is an exception on aiomqtt's ``_disconnected`` future that nothing awaits any more: aiomqtt's
    ``__aexit__`` leaves it, and asyncio logged "Future exception was never retrieved" at an error
    level whenever the future was collected. While running, ``run`` sees the loss through
    ``client.messages`` and logs it as a warning; this only marks it as seen."""
    disconnected = getattr(client, "_disconnected", None)
    if isinstance(disconnected, asyncio.Future):
        disconnected.add_done_callback(lambda fut: fut.cancelled() or fut.exception())


def response_properties(message: aiomqtt.Message, allowed_prefix: str
                        ) -> tuple[str | None, Properties | None, str | None]:
    """MQTT 5 request/response: the requester's response topic, the properties of the reply
    (correlation data echoed) and, for a response topic that may not be used, what is wrong
    with it (``payloads.reply_topic_problem``): the request is then refused like any bad field,
    the refusal going to the requester's default reply topic. Returns (topic, props, problem)."""
    props: Any = message.properties
    if props is None:
        return None, None, None
    response_topic = getattr(props, "ResponseTopic", None)
    correlation = getattr(props, "CorrelationData", None)
    reply = None
    if correlation is not None:
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = correlation
    if response_topic is None:
        return None, reply, None
    problem = payloads.reply_topic_problem(response_topic, allowed_prefix)
    return (None, reply, f"response topic: {problem}") if problem else (response_topic, reply, None)
