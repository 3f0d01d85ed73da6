"""Devices: the registry of every device the box knows, the watchdog that probes them, the feeds
of scans and weights, and the installer's field checks (discovery, which fills the registry, is
``edgehub.discovery``).

``setup`` builds them as one hub component (``Devices``); the registry is the port other
components read (discovery, roles, support).
"""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Mapping, Sequence
from typing import Protocol

from aiohttp import web

from drivers.escpos import PrinterTiming
from edgehub.component import Component, StatusReader
from edgehub.config import DiscoveryConfig
from edgehub.context import Context
from edgehub.devices.api import devices_routes
from edgehub.devices.factory import DriverFactory
from edgehub.devices.feeds import DeviceFeeds
from edgehub.devices.fieldcheck import FieldChecks
from edgehub.devices.registry import DEVICE_CHANGED, DeviceEntry, DeviceEvent, DeviceRegistry
from edgehub.devices.tables import TABLES
from edgehub.devices.watchdog import Watchdog, WatchdogTiming
from edgehub.store.schema import Tables

__all__ = ["DEVICE_CHANGED", "DeviceEntry", "DeviceEvent", "DeviceRegistry", "Devices", "Watchdog",
           "WatchdogTiming", "setup"]


class CloudOutbox(Protocol):
    """Where rows bound for the cloud are kept (``store.outbox.Outbox``)."""

    async def add_now(self, stream: str, msg_id: str, payload: bytes) -> bool: ...


def setup(ctx: Context, cfg: DiscoveryConfig, *, usb_backend: object | None, outbox: CloudOutbox | None) -> Devices:
    """``cfg``: probe intervals and thresholds; ``outbox``: device alerts go to the cloud too
    (``devices`` stream)."""

    async def keep_alert(device_id: str, payload: bytes) -> None:
        if outbox is not None:
            await outbox.add_now("devices", f"dev-alert-{uuid.uuid4().hex}", payload)

    async def publish(topic: str, payload: bytes, retain: bool) -> None:
        await ctx.bus.publish(topic, payload, qos=1, retain=retain)

    registry = DeviceRegistry(ctx.topics, publish,
                              driver_factory=DriverFactory(usb_backend, PrinterTiming(
                                  missed_limit=cfg.printer_missed_probes)),
                              alert_sink=keep_alert, signals=ctx.signals)
    watchdog = Watchdog(registry, WatchdogTiming(printer_interval=cfg.probe_interval_s,
                                                 printer_missed=cfg.printer_missed_probes))
    return Devices(registry, watchdog, DeviceFeeds(registry, publish), FieldChecks(registry, ctx.journal),
                   ctx.store_id)


class Devices(Component):
    """The registry first, then the watchdog that probes what is in it, the feeds that publish
    scans and weights, and the field checks kept in the journal."""

    name = "devices"

    def __init__(self, registry: DeviceRegistry, watchdog: Watchdog, feeds: DeviceFeeds, field_checks: FieldChecks,
                 store_id: str) -> None:
        self.registry = registry
        self.watchdog = watchdog
        self.feeds = feeds
        self.field_checks = field_checks
        self.store_id = store_id
        self._stack = contextlib.AsyncExitStack()

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [*devices_routes(self.registry, self.store_id), *self.field_checks.http_routes()]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"devices": self.registry.status}

    def tables(self) -> Sequence[Tables]:
        return [TABLES]

    async def __aenter__(self) -> Devices:
        async with contextlib.AsyncExitStack() as stack:
            for part in (self.registry, self.watchdog, self.feeds, self.field_checks):
                await stack.enter_async_context(part)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()
