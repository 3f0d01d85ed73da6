"""The kitchen's MQTT face: the tills' amends and cancels, the screens' commands and snapshot
requests, each checked, handed to the kitchen (``Kitchen``) and answered where the sender asked."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from typing import Any, Protocol

from edgehub.bus import payloads
from edgehub.bus.connection import response_properties
from edgehub.bus.message import Message
from edgehub.bus.payloads import Amend, Cancel, KdsCommand, Unaddressable, order_id_of
from edgehub.bus.topics import Topics
from edgehub.component import Bus, MqttRoute
from edgehub.config import LimitsConfig
from edgehub.errors import BrokerError, EdgehubError, JournalError, PayloadError, TicketRefused
from edgehub.store import Journal

log = logging.getLogger("edgehub.kitchen")


class _Counts(Protocol):
    publish_failures: int


class Kitchen(Protocol):
    """What the face hands messages to (``edgehub/kitchen/kitchen.py``)."""

    topics: Topics
    limits: LimitsConfig
    journal: Journal
    bus: Bus | None

    @property
    def stats(self) -> _Counts: ...

    async def amend(self, amend: Amend) -> bool: ...

    async def cancel(self, cancel: Cancel) -> bool: ...

    async def command(self, station: str, cmd: KdsCommand, source: str) -> dict[str, Any]: ...

    def snapshot(self, station: str) -> dict[str, Any]: ...


class KitchenMqtt:
    def __init__(self, kitchen: Kitchen) -> None:
        self.kitchen = kitchen

    def routes(self) -> list[MqttRoute]:
        topics = self.kitchen.topics
        return [MqttRoute(topics.all_amends, self.handle_amend),
                MqttRoute(topics.all_cancels, self.handle_cancel),
                MqttRoute(topics.all_kds_commands, self.handle_command),
                MqttRoute(topics.all_kds_snapshot_requests, self.handle_snapshot_request)]

    async def handle_amend(self, message: Message) -> None:
        await self._handle_change(message, "amend")

    async def handle_cancel(self, message: Message) -> None:
        await self._handle_change(message, "cancel")

    async def _handle_change(self, message: Message, kind: str) -> None:
        topic = message.topic
        raw = message.payload
        terminal = self.kitchen.topics.pos_terminal_of(topic, kind)
        try:
            if terminal is None:
                raise Unaddressable(f"not a {kind} topic")
            doc, order_id = order_id_of(raw)
        except Unaddressable as exc:
            await self._deadletter(topic, exc.reason, raw)
            return
        response_topic, props, problem = response_properties(message, self.kitchen.topics.own_tree(terminal))
        ack_topic = response_topic or self.kitchen.topics.ack(terminal)
        change_id = str(doc.get("amend_id", "")) if kind == "amend" else ""
        try:
            if problem:
                raise PayloadError("response topic", problem.removeprefix("response topic: "))
            if kind == "amend":
                amend = payloads.validate_amend(doc, order_id, terminal, len(raw), self.kitchen.limits)
                duplicate = await self.kitchen.amend(amend)
            else:
                duplicate = await self.kitchen.cancel(
                    payloads.validate_cancel(doc, order_id, terminal, len(raw), self.kitchen.limits)
                )
        except PayloadError as exc:
            with contextlib.suppress(EdgehubError):
                await self.kitchen.journal.add_deadletter(topic, f"rejected {kind} of {order_id}: {exc}", raw)
            body = payloads.change_ack(kind, order_id, change_id, "rejected", error=str(exc))
        except JournalError as exc:
            log.error("%s of %s from %s not journaled: %s", kind, order_id, terminal, exc)
            return  # not acked: the terminal re-sends
        else:
            body = payloads.change_ack(kind, order_id, change_id, "accepted", duplicate=duplicate)
        try:
            await self.kitchen.bus.publish(ack_topic, body, qos=1, properties=props) if self.kitchen.bus else None
        except (BrokerError, TimeoutError) as exc:
            log.info("%s ack on %s not sent (%s); the terminal will re-send", kind, ack_topic, exc)

    async def _deadletter(self, topic: str, reason: str, raw: bytes) -> None:
        log.info("dead letter from %s: %s", topic, reason)
        with contextlib.suppress(EdgehubError):
            await self.kitchen.journal.add_deadletter(topic, reason, raw)
        if self.kitchen.bus is not None:
            with contextlib.suppress(BrokerError, TimeoutError):
                await self.kitchen.bus.publish(
                    self.kitchen.topics.deadletter, payloads.deadletter(topic, reason, raw, time.time())
                )

    async def handle_command(self, message: Message) -> None:
        topic = message.topic
        station = self.kitchen.topics.station_of(topic)
        if station is None:
            return
        # Answers stay in the station's reply tree: a screen may command only its own stations
        # (the broker's ACL), and nothing there is taken for an event or a snapshot.
        response_topic, props, problem = response_properties(message, self.kitchen.topics.kds_reply_tree(station))
        reply_topic = response_topic or self.kitchen.topics.kds_reply(station)
        command_id = ""
        try:
            if problem:
                with contextlib.suppress(ValueError, TypeError, AttributeError):
                    command_id = str(json.loads(message.payload).get("command_id", ""))
                raise PayloadError("response topic", problem.removeprefix("response topic: "))
            cmd = payloads.parse_kds_command(message.payload)
            command_id = cmd.command_id
            ticket = await self.kitchen.command(station, cmd, "screen:mqtt")
            reply = payloads.kds_reply(command_id, True, ticket=ticket)
        except TicketRefused as exc:
            reply = payloads.kds_reply(command_id, False, exc.reason)
        except PayloadError as exc:
            reply = payloads.kds_reply(command_id, False, str(exc))
        except JournalError as exc:
            reply = payloads.kds_reply(command_id, False, f"not saved, try again: {exc}")
        # Handed to the session without awaiting the broker's PUBACK, as acks and events are, so
        # screens catching up hold nothing per command; a screen that misses a reply re-reads the
        # ticket from the next event or a snapshot.
        self._send_nowait(reply_topic, reply, props)

    async def handle_snapshot_request(self, message: Message) -> None:
        topics = self.kitchen.topics
        station = topics.station_of(message.topic)
        if station is None:
            return
        response_topic, props, problem = response_properties(message, topics.kds_reply_tree(station))
        if problem:
            log.info("snapshot request for %s answered on %s: %s", station, topics.kds_snapshot(station), problem)
        await self._send(response_topic or topics.kds_snapshot(station), self.kitchen.snapshot(station), props)

    def _send_nowait(self, topic: str, doc: dict[str, Any], properties: Any = None) -> None:
        """Handed to the MQTT session without waiting for its PUBACK."""
        bus = self.kitchen.bus
        if bus is None:
            return
        try:
            bus.publish_nowait(topic, payloads.dumps(doc), qos=1, properties=properties)
        except BrokerError as exc:
            self.kitchen.stats.publish_failures += 1
            log.debug("kitchen publish to %s failed: %s", topic, exc)

    async def _send(self, topic: str, doc: dict[str, Any], properties: Any = None) -> None:
        bus = self.kitchen.bus
        if bus is None:
            return
        try:
            await bus.publish(topic, payloads.dumps(doc), qos=1, properties=properties)
        except (BrokerError, TimeoutError) as exc:
            self.kitchen.stats.publish_failures += 1
            log.debug("kitchen publish to %s failed: %s", topic, exc)

