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

Orders arrive in batches (the messages of one turn of the loop), and one message never fails,
delays or drops another of its batch: each is checked on its own (a check that fails
unexpectedly dead-letters that message alone), each order is written under a savepoint of its
own, a write that fails as a whole is tried again one order at a time (an order that fails
alone while others pass is rejected with the reason), every ack is sent before any rejection
is journaled, and what follows an accepted order (the kitchen) runs after the batch's acks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from edgehub.bus import payloads
from edgehub.bus.connection import response_properties
from edgehub.bus.message import Message
from edgehub.bus.payloads import Order, Unaddressable, order_id_of, validate_order
from edgehub.bus.topics import Topics
from edgehub.component import Bus, Component, MqttBatch, MqttRoute, Signal, Signals, StatusReader
from edgehub.config import LimitsConfig
from edgehub.context import Context
from edgehub.errors import BrokerError, EdgehubError, JournalError, JournalFull, PayloadError
from edgehub.quota import TerminalQuota
from edgehub.store import Journal
from edgehub.store.journal import OrderCommit

log = logging.getLogger("edgehub.intake")

# The start of a rejected ack's error when the box could not journal the order (docs/asyncapi.yaml).
DISK_FULL = "store box disk full, order not taken; send it again when the box has room"

# An order durably accepted and acked (emitted after its batch's acks): the kitchen cooks it.
ORDER_ACCEPTED: Signal[Order] = Signal("order accepted")
# An ack handed to the bus: its status and the seconds since the order's batch came in.
ACK_SENT: Signal[tuple[str, float]] = Signal("ack sent")


@dataclass(slots=True)
class _Taken:
    """A valid order of a batch, what came on the wire, and where its ack goes."""

    order: Order
    topic: str
    raw: bytes
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
    retried_alone: int = 0  # orders written again one at a time after their batch's write failed


def setup(ctx: Context, limits: LimitsConfig) -> Intake:
    return Intake(ctx.topics, limits, ctx.journal, ctx.bus, signals=ctx.signals)


class Intake(Component):
    name = "intake"

    def __init__(self, topics: Topics, limits: LimitsConfig, journal: Journal, bus: Bus | None = None,
                 clock: Callable[[], float] = time.perf_counter, signals: Signals | None = None) -> None:
        self.topics = topics
        self.limits = limits
        self.journal = journal
        self.bus = bus
        self.clock = clock
        self.signals = signals or Signals()  # ORDER_ACCEPTED and ACK_SENT go out here
        self.stats = IntakeStats()
        self.quota = TerminalQuota(limits.orders_per_s, limits.order_burst)
        # Orders being taken right now: the cloud uplink's backlog replay gives way meanwhile.
        self.in_progress = 0
        self.last_order_at = float("-inf")  # time.monotonic() of the last order that came in

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return [MqttBatch(self.topics.all_orders, self.handle_batch)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"intake": self.status}

    async def status(self) -> dict[str, Any]:
        return vars(self.stats).copy()

    def busy(self) -> bool:
        """A terminal waits for an ack right now."""
        return self.in_progress > 0

    async def handle(self, message: Message) -> None:
        await self.handle_batch([message])

    async def handle_batch(self, messages: list[Message]) -> None:
        """The orders that came in one turn of the loop (``BusConnection.route_batch``): each is
        checked on its own, and the valid ones are journaled in one write, then acked."""
        self.in_progress += len(messages)
        self.last_order_at = time.monotonic()
        try:
            await self._handle_batch(messages)
        finally:
            self.in_progress -= len(messages)

    async def _handle_batch(self, messages: list[Message]) -> None:
        started = self.clock()
        taken: list[_Taken] = []
        refused: list[_Refused] = []
        for message in messages:
            item = self._check_one(message)
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

    # --- checking one message ------------------------------------------------------------------

    def _check_one(self, message: Message) -> _Taken | _Refused:
        topic, raw = message.topic, message.payload
        try:
            return self._check(topic, raw, message)
        except Exception:
            # A check that fails unexpectedly (a bug met by this input) is this message's alone.
            log.exception("checking a message on %s failed", topic)
            return _Refused(topic, raw, "payload: the hub could not check it (an error of the hub, logged)")

    def _check(self, topic: str, raw: bytes, message: Message) -> _Taken | _Refused:
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
        return _Taken(order, topic, raw, ack_topic, props)

    # --- answering -----------------------------------------------------------------------------

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
        results = await self._journal(taken)
        accepted: list[Order] = []
        refused: list[_Refused] = []
        # Every accepted order is acked before anything else is done: a rejection's journal write
        # must not hold up the acks of its batch. The terminal first, then what follows (the
        # kitchen's tickets), which is made from the durable order and made again at start-up if
        # the hub stops in between.
        for item, result in zip(taken, results, strict=True):
            order = item.order
            if isinstance(result, JournalFull):
                # Not taken, and the terminal is told so (rather than left re-sending in silence): the
                # cashier sees why, and the same order_id is accepted once the disk has room again.
                self.stats.rejected += 1
                log.error("order %s from %s refused: %s", order.order_id, order.terminal, result)
                await self._ack(item.ack_topic, payloads.ack(order.order_id, "rejected",
                                                             error=f"{DISK_FULL}: {result}"),
                                item.props, started, "rejected")
            elif isinstance(result, JournalError):
                # Not acked: the terminal re-sends, and the order is taken once the journal is back.
                log.error("order %s from %s not journaled: %s", order.order_id, order.terminal, result)
            elif result.error or result.conflict:
                # A conflict acked as a duplicate would be lost without a word: the terminal is told.
                if result.conflict:
                    self.stats.conflicts += 1
                    log.warning("order %s from %s refused: %s", order.order_id, order.terminal, result.conflict)
                reason = result.conflict or f"payload: {result.error}"
                refused.append(_Refused(item.topic, item.raw, reason, order.order_id, item.ack_topic, item.props))
            else:
                order = replace(order, seq=result.seq)
                await self._ack(item.ack_topic, payloads.ack(order.order_id, "accepted", duplicate=result.duplicate,
                                                             order_no=order.order_no),
                                item.props, started, "accepted")
                if result.duplicate:
                    self.stats.duplicates += 1
                else:
                    self.stats.accepted += 1
                    accepted.append(order)
        # A listener that fails is logged and the others still hear it: the order is durable and
        # acked, and start-up recovery makes its tickets again.
        for order in accepted:
            self.signals.emit(ORDER_ACCEPTED, order)
        for refusal in refused:
            await self._refuse(refusal, started)

    async def _journal(self, taken: list[_Taken]) -> list[OrderCommit | JournalError]:
        """Each order's commit, or the error that kept it out of the journal. A write that fails as
        a whole is tried again one order at a time: if some orders pass alone, one that still
        fails is its own problem and is rejected; if none passes, the journal is (none is acked)."""
        orders = [item.order for item in taken]
        try:
            return list(await self.journal.accept_orders(orders))
        except JournalError as exc:
            if len(orders) == 1 or isinstance(exc, JournalFull):
                return [exc] * len(orders)
            log.warning("a write of %d orders failed (%s); each is written again alone", len(orders), exc)
        results: list[OrderCommit | JournalError] = []
        for order in orders:
            self.stats.retried_alone += 1
            try:
                results.append((await self.journal.accept_orders([order]))[0])
            except JournalError as exc:
                results.append(exc)
        if any(isinstance(result, OrderCommit) for result in results):
            results = [OrderCommit(seq=0, duplicate=False, error=f"could not be journaled: {result}")
                       if not isinstance(result, OrderCommit | JournalFull) else result for result in results]
        return results

    async def _ack(self, topic: str, body: bytes, props: object, started: float, status: str) -> None:
        if self.bus is None:
            return
        try:
            # Handed to the MQTT session without awaiting the broker's PUBACK: a lost ack is
            # covered by the terminal's re-send, and waiting costs the loop (bus/connection.py).
            self.bus.publish_nowait(topic, body, qos=1, properties=props)
        except (BrokerError, ValueError) as exc:
            # The order is safe in the journal; the terminal's re-send gets a duplicate ack.
            # (ValueError: the MQTT client refused the topic, e.g. a response topic it cannot use.)
            self.stats.ack_failures += 1
            log.info("ack on %s not sent (%s); the terminal will re-send", topic, exc)
            return
        self.signals.emit(ACK_SENT, (status, self.clock() - started))

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
