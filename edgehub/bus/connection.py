"""The hub's one connection to the store's Mosquitto, kept up for the life of the hub.

A persistent MQTT 5 session (clean start off, long session expiry), so orders published while
the hub restarts wait in the broker and arrive when it returns. ``…/hub/$state`` is retained
``ready`` on every connect, with a retained Last Will ``lost``. On a lost connection it
reconnects with capped backoff; state changes are logged once per change, not once per try.
Each connection is an ``MqttSession`` (edgehub/bus/session.py) on FastPaho.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import random
from collections.abc import Awaitable, Callable
from typing import Any

from paho.mqtt.client import topic_matches_sub
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus import payloads
from edgehub.bus.message import Message
from edgehub.bus.session import RC_FAILURE, MqttSession, Will
from edgehub.bus.topics import Topics
from edgehub.errors import BrokerError, MqttError
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.bus")

Handler = Callable[[Message], Awaitable[None]]
BatchHandler = Callable[[list[Message]], Awaitable[None]]
SESSION_EXPIRY_S = 7 * 24 * 3600
ROUTE_CACHE = 4096  # topics whose handler is remembered (terminals, stations, devices: a few dozen)
BACKOFF_FIRST_S, BACKOFF_MAX_S = 0.1, 5.0  # between connection attempts, doubling, with jitter


class Batched:
    """A route whose handler takes the messages of one turn of the loop together (``route_batch``)."""

    def __init__(self, topic_filter: str, handler: BatchHandler) -> None:
        self.topic_filter = topic_filter
        self.handler = handler
        self.pending: list[tuple[Message, MqttSession | None]] = []


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
        # (message, the session it came on): acked on that connection once handled
        self._waiting: collections.deque[tuple[Message, MqttSession | None]] = collections.deque()
        self._handler_of: dict[str, Handler | Batched | None] = {}  # topic -> route, learnt as messages come
        self._session: MqttSession | None = None  # the latest connection's
        self._tasks: set[asyncio.Task[None]] = set()
        self.connected = asyncio.Event()
        self.connects = 0
        self.last_error = ""
        self.on_connect: list[Callable[[], Awaitable[None]]] = []
        # Awaited before every connection attempt: in managed mode, until the hub's own Mosquitto
        # is the one listening (never log in to a broker some other program put on the port).
        self.gate: Callable[[], Awaitable[None]] | None = None

    def _make_session(self) -> MqttSession:
        session = MqttSession(
            self.host, self.port, client_id=self.client_id, username=self._username, password=self._password,
            clean_start=False, session_expiry_s=SESSION_EXPIRY_S, keepalive_s=15, connect_timeout_s=10,
            will=Will(self.topics.hub_state, payloads.hub_state("lost", self.version), qos=1, retain=True),
            # A QoS 1 message is acknowledged to the broker once it was handled (an order: once it
            # is journaled), not when it arrives. The broker then sends at most its
            # ``max_inflight_messages`` unacknowledged messages (broker.py): that bounds what the
            # hub reads in while it is behind, and a rush waits in the broker's queue, not as
            # thousands of handlers in the hub's memory. A message the hub never finished is
            # sent again by the broker after a reconnect.
            manual_ack=True,
            # No client-side inflight limit: the broker acks each QoS 1 message at once (its
            # queues are sized in broker.py), and FastPaho decodes PUBACKs by hand only then.
            fast=True, max_inflight=0,
        )
        # Each message remembers its session: it is acknowledged on that connection or not at all.
        session.on_message = lambda message: self._dispatch(message, session)
        return session

    async def run(self) -> None:
        """Stay connected until cancelled."""
        backoff = BACKOFF_FIRST_S
        while True:
            if self.gate is not None:
                await self.gate()
            try:
                async with self._make_session() as session:
                    self._session = session
                    for topic, _ in self.routes:
                        codes = await session.subscribe(topic, qos=1)
                        if any(code >= RC_FAILURE for code in codes):
                            log.error("broker %s:%d refused the hub's subscription to %s (reason 0x%02x): nothing "
                                      "sent there reaches the hub; check the broker's ACL (edgehub broker "
                                      "write-config)", self.host, self.port, topic, max(codes))
                    await session.publish(self.topics.hub_state, payloads.hub_state("ready", self.version),
                                          qos=1, retain=True)
                    self.connects += 1
                    self.connected.set()
                    if self.last_error:
                        log.info("broker %s:%d connected again", self.host, self.port)
                    self.last_error = ""
                    backoff = BACKOFF_FIRST_S
                    for callback in self.on_connect:
                        await callback()
                    # Messages that came with the session (the broker sends them right after
                    # CONNACK) waited until now: subscribed, state published, callbacks run.
                    self._accepting = True
                    self._start_waiting()
                    assert session.lost is not None
                    reason = await asyncio.shield(session.lost)
                    raise MqttError(f"connection lost: {reason}")
            except (MqttError, TimeoutError) as exc:
                error = _readable(str(exc) or type(exc).__name__, self.host, self.port)
                if error != self.last_error:
                    log.warning("broker %s:%d connection lost or refused: %s", self.host, self.port, error)
                self.last_error = error
            finally:
                self._accepting = False
                self._session = None
                self.connected.clear()
            await asyncio.sleep(backoff * (0.5 + random.random()))
            backoff = min(backoff * 2, BACKOFF_MAX_S)

    @property
    def handling(self) -> int:
        """Messages being handled now (at most the broker's window while the hub is behind)."""
        return self._active

    @property
    def session_present(self) -> bool:
        """Whether the broker still had the hub's session at the last connect: it had not after a
        restart of its own, which ended every connection (edgehub/front/presence.py)."""
        return self._session is not None and self._session.session_present

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

    def _dispatch(self, message: Message, via: MqttSession | None) -> None:
        if self._waiting or not self._accepting or self._active >= self._max_handlers:
            self._waiting.append((message, via))
            return
        self._start(message, via)

    def _start(self, message: Message, via: MqttSession | None) -> None:
        self._active += 1
        route = self._route(message.topic)
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

    def _ack(self, message: Message, via: MqttSession | None) -> None:
        """The broker's PUBACK for a handled QoS 1 message, on the connection it came on (after a
        reconnect the broker sends it again, and it is handled again: handlers are idempotent)."""
        if via is not None and via is self._session:
            via.ack(message)

    def _route(self, topic: str) -> Handler | Batched | None:
        try:
            return self._handler_of[topic]
        except KeyError:
            pass
        found = next((handler for topic_filter, handler in self.routes if topic_matches_sub(topic_filter, topic)),
                     None)
        if len(self._handler_of) >= ROUTE_CACHE:
            self._handler_of.clear()
        self._handler_of[topic] = found
        return found

    async def _handle(self, handler: Handler | None, message: Message, via: MqttSession | None) -> None:
        try:
            if handler is None:
                log.debug("no route for %s", message.topic)
            else:
                await handler(message)
        except Exception:
            # The daemon never dies on input; what went wrong is logged with the topic.
            log.exception("handling a message on %s failed", message.topic)
        finally:
            self._ack(message, via)
            self._active -= 1
            self._start_waiting()

    async def _handle_batch(self, route: Batched, items: list[tuple[Message, MqttSession | None]]) -> None:
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
        session = self._session
        if session is None or not self.connected.is_set():
            raise BrokerError(f"not connected to the broker at {self.host}:{self.port}")
        try:
            await session.publish(topic, payload, qos=qos, retain=retain, properties=properties, timeout=timeout)
        except MqttError as exc:
            raise BrokerError(f"publish to {topic} failed: {exc}") from exc
        except ValueError as exc:  # paho refuses a topic with a wildcard or NUL before sending
            raise BrokerError(f"publish to {topic!r} refused: {exc}") from exc

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                       properties: Properties | None = None) -> None:
        """Hand a message to the MQTT session without waiting for the broker's PUBACK.

        For messages whose sender does nothing with the PUBACK: order acks (a terminal that
        misses one re-sends and is acked again) and kitchen events (the session re-sends an
        unacknowledged QoS 1 message after a reconnect; screens resync on a seq gap): no future
        and no task per message at the rush.
        Raises BrokerError when not connected or the client refuses the message.
        """
        session = self._session
        if session is None or not self.connected.is_set():
            raise BrokerError(f"not connected to the broker at {self.host}:{self.port}")
        try:
            session.publish_nowait(topic, payload, qos, retain, properties)
        except ValueError as exc:  # a topic with a wildcard or NUL: nothing was sent
            raise BrokerError(f"publish to {topic!r} refused: {exc}") from exc
        except MqttError as exc:
            raise BrokerError(str(exc)) from exc

    async def close(self, final_state: str = "lost") -> None:
        """Say goodbye on the state topic (a clean disconnect sends no Last Will)."""
        session = self._session
        if session is not None and self.connected.is_set():
            try:
                await session.publish(self.topics.hub_state, payloads.hub_state(final_state, self.version),
                                      qos=1, retain=True, timeout=2)
            except (MqttError, TimeoutError) as exc:
                log.info("could not publish final state: %s", exc)
        await cancel_and_wait(*self._tasks)


def _readable(error: str, host: str, port: int) -> str:
    """What a person can act on instead of paho's ``[Errno 111] Connection refused``."""
    if "Connection refused" in error:
        return f"nothing listens on {host}:{port} (connection refused): the broker is not running"
    if "timed out" in error.lower():
        return f"no answer from {host}:{port} ({error})"
    return error


def response_properties(message: Message, allowed_prefix: str) -> tuple[str | None, Properties | None, str | None]:
    """MQTT 5 request/response: the requester's response topic, the properties of the reply
    (correlation data echoed) and, for a response topic that may not be used, what is wrong
    with it (``payloads.reply_topic_problem``): the request is then refused like any bad field,
    the refusal going to the requester's default reply topic. Returns (topic, props, problem)."""
    response_topic, correlation = message.response_topic, message.correlation_data
    reply: Any = None
    if correlation is not None:
        reply = Properties(PacketTypes.PUBLISH)
        reply.CorrelationData = correlation
    if response_topic is None:
        return None, reply, None
    problem = payloads.reply_topic_problem(response_topic, allowed_prefix)
    return (None, reply, f"response topic: {problem}") if problem else (response_topic, reply, None)
