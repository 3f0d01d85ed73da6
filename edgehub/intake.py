"""Order intake: a terminal's order becomes durable, then the terminal is acked.

The contract (DESIGN.md, fixed): the terminal publishes ``…/pos/{terminal}/order`` at QoS 1 and
re-sends with the same ``order_id`` until it sees an ack on ``…/pos/{terminal}/ack``. The hub
acks ``accepted`` only after the group commit holding the order is on disk; a known order_id is
acked again with ``duplicate: true`` and never journaled twice, if it is that order again (same
terminal, same lines); an order that reuses another's id is rejected. An invalid order is acked
``rejected`` with the failing field; a payload without a usable ``order_id`` cannot be acked and
goes to ``…/hub/deadletter``. Every rejection and dead letter is also kept in the journal.
An order the journal has no room for (data disk full) is acked ``rejected`` with an error that
says so, never left unanswered: the terminal may send it again later, and it is taken then.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

import aiomqtt

from edgehub.bus import payloads
from edgehub.bus.connection import BusConnection, response_properties
from edgehub.bus.payloads import Order, Unaddressable, order_id_of, validate_order
from edgehub.bus.topics import Topics
from edgehub.config import LimitsConfig
from edgehub.errors import BrokerError, EdgehubError, JournalError, JournalFull, PayloadError
from edgehub.quota import TerminalQuota
from edgehub.store import Journal

log = logging.getLogger("edgehub.intake")

# The start of a rejected ack's error when the box could not journal the order (docs/asyncapi.yaml).
DISK_FULL = "store box disk full, order not taken; send it again when the box has room"


@dataclass(slots=True)
class _Taken:
    """A valid order of a batch, and where its ack goes."""

    order: Order
    ack_topic: str
    props: object


@dataclass(slots=True)
class _Refused:
    """A message of a batch that is not taken: dead-lettered, or (with an order_id) rejected."""

    topic: str
    raw: bytes
    reason: str
    order_id: str | None = None
    ack_topic: str = ""
    props: object = None
    retry_after_s: float | None = None


@dataclass
class IntakeStats:
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    conflicts: int = 0  # of the rejected: a known order_id, but another terminal's or other lines
    deadlettered: int = 0
    ack_failures: int = 0
    slowed_down: int = 0  # orders refused by the per-terminal quota (edgehub/quota.py), re-sent later


class Intake:
    def __init__(self, topics: Topics, limits: LimitsConfig, journal: Journal, bus: BusConnection | None = None,
                 clock: Callable[[], float] = time.perf_counter) -> None:
        self.topics = topics
        self.limits = limits
        self.journal = journal
        self.bus = bus
        self.clock = clock
        self.stats = IntakeStats()
        self.quota = TerminalQuota(limits.orders_per_s, limits.order_burst)
        # Hooks for what comes after an accepted order (kitchen routing, metrics).
        self.on_accepted: list[Callable[[Order], object]] = []
        self.on_ack: list[Callable[[str, float], None]] = []
        # Orders being taken right now: the cloud uplink's backlog replay gives way meanwhile.
        self.in_progress = 0

    async def handle(self, message: aiomqtt.Message) -> None:
        await self.handle_batch([message])

    async def handle_batch(self, messages: list[aiomqtt.Message]) -> None:
        """The orders that came in one turn of the loop (``BusConnection.route_batch``): each is
        checked on its own, and the valid ones are journaled in one write, then acked."""
        self.in_progress += len(messages)
        try:
            await self._handle_batch(messages)
        finally:
            self.in_progress -= len(messages)

    async def _handle_batch(self, messages: list[aiomqtt.Message]) -> None:
        started = self.clock()
        taken: list[_Taken] = []
        refused: list[_Refused] = []
        for message in messages:
            item = self._check(message)
            if isinstance(item, _Taken):
                taken.append(item)
            else:
                refused.append(item)
        if not refused:
            await self._accept(taken, started)
            return
        # Rare: dead letters and rejections journal what came, next to the batch's orders. All of
        # them finish before the batch is acknowledged to the broker, even if one of them failed.
        results = await asyncio.gather(*(self._refuse(item, started) for item in refused),
                                       *([self._accept(taken, started)] if taken else []), return_exceptions=True)
        for result in results:
            if isinstance(result, BaseException):
                raise result

    def _check(self, message: aiomqtt.Message) -> _Taken | _Refused:
        topic = message.topic.value
        raw = message.payload if isinstance(message.payload, bytes | bytearray) else str(message.payload).encode()
        raw = bytes(raw)
        terminal = self.topics.terminal_of(topic)
        if terminal is None:
            return _Refused(topic, raw, "not an order topic")
        try:
            doc, order_id = order_id_of(raw)
        except Unaddressable as exc:
            return _Refused(topic, raw, exc.reason)
        response_topic, props, problem = response_properties(message, self.topics.own_tree(terminal))
        ack_topic = response_topic or self.topics.ack(terminal)
        if problem:
            return _Refused(topic, raw, problem, order_id, ack_topic, props)
        if (wait := self.quota.take(terminal)) is not None:
            return _Refused(topic, raw, self.quota.error(terminal, wait), order_id, ack_topic, props, wait)
        try:
            order = validate_order(doc, order_id, terminal, len(raw), self.limits)
        except PayloadError as exc:
            return _Refused(topic, raw, str(exc), order_id, ack_topic, props)
        return _Taken(order, ack_topic, props)

    async def _refuse(self, item: _Refused, started: float) -> None:
        if item.order_id is None:
            await self._deadletter(item.topic, item.reason, item.raw)
            return
        if item.retry_after_s is not None:  # over the quota: nothing kept, the terminal sends it again
            self.stats.slowed_down += 1
        else:
            self.stats.rejected += 1
            await self.journal.add_deadletter(item.topic, f"rejected {item.order_id}: {item.reason}", item.raw)
        await self._ack(item.ack_topic, payloads.ack(item.order_id, "rejected", error=item.reason,
                                                     retry_after_s=item.retry_after_s),
                        item.props, started, "rejected")

    async def _accept(self, taken: list[_Taken], started: float) -> None:
        try:
            commits = await self.journal.accept_orders([item.order for item in taken])
        except JournalFull as exc:
            # Not taken, and the terminal is told so (rather than left re-sending in silence): the
            # cashier sees why, and the same order_id is accepted once the disk has room again.
            for item in taken:
                self.stats.rejected += 1
                log.error("order %s from %s refused: %s", item.order.order_id, item.order.terminal, exc)
                await self._ack(item.ack_topic, payloads.ack(item.order.order_id, "rejected",
                                                              error=f"{DISK_FULL}: {exc}"),
                                item.props, started, "rejected")
            return
        except JournalError as exc:
            # Not acked: the terminals re-send, and the orders are taken once the journal is back.
            log.error("%d order(s) not journaled (%s from %s first): %s", len(taken), taken[0].order.order_id,
                      taken[0].order.terminal, exc)
            return
        # The terminal first: what follows (the kitchen's tickets) is made from the durable order
        # and is made again at start-up if the hub stops in between.
        for item, commit in zip(taken, commits, strict=True):
            order = item.order
            if commit.conflict:
                # Acked as a duplicate it would be lost without a word: the terminal is told.
                self.stats.conflicts += 1
                log.warning("order %s from %s refused: %s", order.order_id, order.terminal, commit.conflict)
                await self._refuse(_Refused(self.topics.order(order.terminal), payloads.dumps(order.doc),
                                            commit.conflict, order.order_id, item.ack_topic, item.props), started)
                continue
            await self._ack(item.ack_topic, payloads.ack(order.order_id, "accepted", duplicate=commit.duplicate),
                            item.props, started, "accepted")
            if commit.duplicate:
                self.stats.duplicates += 1
            else:
                self.stats.accepted += 1
                for hook in self.on_accepted:
                    hook(order)

    async def _ack(self, topic: str, body: bytes, props: object, started: float, status: str) -> None:
        if self.bus is None:
            return
        try:
            # Handed to the MQTT session without awaiting the broker's PUBACK: a lost ack is
            # covered by the terminal's re-send, and waiting costs the loop (bus/connection.py).
            self.bus.publish_nowait(topic, body, qos=1, properties=props)  # type: ignore[arg-type]
        except BrokerError as exc:
            # The order is safe in the journal; the terminal's re-send gets a duplicate ack.
            self.stats.ack_failures += 1
            log.info("ack on %s not sent (%s); the terminal will re-send", topic, exc)
            return
        elapsed = self.clock() - started
        for hook in self.on_ack:
            hook(status, elapsed)

    async def _deadletter(self, topic: str, reason: str, raw: bytes) -> None:
        self.stats.deadlettered += 1
        log.info("dead letter from %s: %s", topic, reason)
        try:
            await self.journal.add_deadletter(topic, reason, raw)
        except EdgehubError as exc:
            log.error("dead letter from %s not journaled: %s", topic, exc)
        if self.bus is not None:
            try:
                await self.bus.publish(self.topics.deadletter, payloads.deadletter(topic, reason, raw, time.time()))
            except (BrokerError, TimeoutError) as exc:
                log.info("dead letter notice not sent: %s", exc)
