"""What the print queue and the payments use of the roles: who serves a role, and where answers go.

``Serving`` is the narrow face of ``Roles`` that its workers (``printqueue.PrintQueue``,
``payments.Payments``, the tenders) are given, so they hold no reference to the component
itself. ``Reply`` and ``Requester`` say who asked and where the answer goes.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Protocol

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from drivers.base import Driver
from edgehub.bus import payloads
from edgehub.bus.connection import response_properties
from edgehub.bus.message import Message
from edgehub.bus.topics import Topics
from edgehub.devices.registry import DeviceEntry
from edgehub.roles.failover import RoleSeat


@dataclass(frozen=True)
class Reply:
    """Where the answers to one request go: an MQTT 5 response topic with correlation data, or
    a 3.1.1 client's ``reply_to`` with its ``request_id``. Journaled with jobs and payments so a
    result that comes after a restart still reaches the terminal."""

    topic: str | None
    correlation: bytes | None
    request_id: str | None

    def properties(self) -> Properties | None:
        if self.correlation is None:
            return None
        props = Properties(PacketTypes.PUBLISH)
        props.CorrelationData = self.correlation
        return props


NO_REPLY = Reply(None, None, None)  # a job nobody waits to hear of (kitchen slips, the day's report)


@dataclass(frozen=True)
class Requester:
    """Who sent a role command (the terminal its topic names) and where its answers may go:
    its MQTT 5 response topic or ``reply_to`` under its own tree, else ``…/pos/{terminal}/reply``."""

    terminal: str
    own_tree: str
    default_topic: str
    response_topic: str | None
    correlation: bytes | None
    problem: str | None  # the response topic named is not one the hub answers on

    @classmethod
    def of(cls, message: Message, terminal: str, topics: Topics) -> Requester:
        own = topics.own_tree(terminal)
        topic, props, problem = response_properties(message, own)
        correlation = getattr(props, "CorrelationData", None) if props is not None else None
        return cls(terminal, own, topics.reply(terminal), topic,
                   bytes(correlation) if correlation is not None else None, problem)

    def reply(self, reply_to: str | None, request_id: str | None) -> Reply:
        return Reply(self.response_topic or reply_to or self.default_topic, self.correlation, request_id)

    def refusal(self, raw: bytes) -> Reply:
        """Where to say that a request was refused before it could be parsed."""
        return self.reply(*payloads.reply_address(raw, self.own_tree))


class Serving(Protocol):
    """The roles as their workers use them (``Roles`` is the one implementation)."""

    @property
    def seats(self) -> Mapping[str, RoleSeat]: ...

    def serving(self, role: str) -> str | None: ...

    def ensure_role(self, name: str) -> RoleSeat: ...

    async def acquire(self, role: str) -> str: ...

    def try_acquire(self, role: str) -> str | None: ...

    def release(self, role: str) -> None: ...

    def device(self, device_id: str) -> DeviceEntry | None: ...

    async def open_driver(self, device_id: str) -> Driver: ...

    async def device_failed(self, device_id: str, reason: str) -> None: ...

    def evaluate(self, only: str | None = None, because: str = "") -> None: ...

    def mark_dirty(self, role: str) -> None: ...

    async def reply(self, reply: Reply, body: bytes) -> None: ...

    async def next_scan(self, role: str, timeout: float) -> str | None: ...
