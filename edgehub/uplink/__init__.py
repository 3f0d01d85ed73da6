"""The WAN half of the box: the outbox drained to the chain's cloud, and what the cloud pushes down.

``setup(ctx, cfg, ...)`` builds it as one hub component (``Cloud``): the outbox policy (quota,
TTL, disk guard), the downlink registry and the telemetry sample always, the cloud link when
``[cloud] enabled``; it serves the ``uplink`` status section and ``/api/v1/sync``. Other
components take its ports: the outbox (device alerts), the downlink (the kitchen follows the
cloud's routing rules) and ``wan_down`` (QR pay). Topics and payloads: docs/cloud.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from edgehub.component import Component, StatusReader
from edgehub.config import CloudConfig
from edgehub.context import Context
from edgehub.store.outbox import Outbox, OutboxPolicy
from edgehub.store.schema import Tables
from edgehub.uplink.api import sync_routes
from edgehub.uplink.cloudapi import CloudTopics, DownlinkDoc
from edgehub.uplink.downlink import Downlink
from edgehub.uplink.service import Uplink
from edgehub.uplink.tables import TABLES
from edgehub.uplink.telemetry import TelemetrySampler

__all__ = ["Cloud", "CloudTopics", "Downlink", "DownlinkDoc", "Outbox", "TelemetrySampler", "Uplink",
           "outbox_policy", "setup"]


def outbox_policy(cfg: CloudConfig) -> OutboxPolicy:
    return OutboxPolicy(telemetry_ttl_s=cfg.telemetry_ttl_h * 3600,
                        telemetry_quota_bytes=int(cfg.telemetry_quota_mib * 1024 * 1024),
                        disk_warn_free_mib=cfg.disk_warn_free_mib, disk_hard_free_mib=cfg.disk_hard_free_mib)


def setup(ctx: Context, cfg: CloudConfig, *, busy: Callable[[], bool], accepted: Callable[[], int]) -> Cloud:
    """``busy``: a terminal waits for its ack now (replay gives way); ``accepted``: orders taken
    so far (telemetry)."""
    outbox = Outbox(ctx.journal, ctx.journal.path.parent, outbox_policy(cfg))
    downlink = Downlink(ctx.journal, ctx.store_id)
    uplink = Uplink(cfg, ctx.store_id, ctx.journal, outbox, downlink) if cfg.enabled else None
    if uplink is not None:
        uplink.replay.give_way = busy
    telemetry = TelemetrySampler(outbox, ctx.store_id, ctx.journal.path.parent, cfg.telemetry_every_s, accepted)
    return Cloud(outbox, downlink, telemetry, uplink)


class Cloud(Component):
    """The outbox, the downlink, the telemetry sample and (when enabled) the cloud link, started
    in that order and stopped in reverse."""

    name = "uplink"

    def __init__(self, outbox: Outbox, downlink: Downlink, telemetry: TelemetrySampler, uplink: Uplink | None) -> None:
        self.outbox = outbox
        self.downlink = downlink
        self.telemetry = telemetry
        self.uplink = uplink
        self._stack = contextlib.AsyncExitStack()

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return sync_routes(self.uplink)

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"uplink": self.status}

    def tables(self) -> Sequence[Tables]:
        return [TABLES]

    async def __aenter__(self) -> Cloud:
        async with contextlib.AsyncExitStack() as stack:
            for part in (self.outbox, self.downlink, self.telemetry, self.uplink):
                if part is not None:
                    await stack.enter_async_context(part)
            self._stack = stack.pop_all()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def status(self) -> dict[str, Any]:
        samples = {"telemetry_samples": {"taken": self.telemetry.taken, "refused": self.telemetry.refused}}
        if self.uplink is not None:
            return {**await self.uplink.status(), **samples}
        return {"enabled": False, "link": {"state": "disabled"}, **await self.outbox.status(),
                "downlink": self.downlink.status(), **samples}

    def take_orders(self, take: Callable[[bytes, Callable[[], None]], None]) -> None:
        """Where orders placed online go: (the message, its acknowledgement to the cloud)."""
        if self.uplink is not None:
            self.uplink.take_order = take

    def sample(self, name: str, read: Callable[[], Any]) -> None:
        """``read()`` goes in each telemetry sample as ``name``."""
        self.telemetry.extras[name] = read

    def wan_down(self) -> str | None:
        """Why the cloud link says the WAN is down, or None (QR pay then probes its gateway)."""
        uplink = self.uplink
        if uplink is None or uplink.state == "online" or not uplink.last_error:
            return None
        return f"the cloud link is {uplink.state}: {uplink.last_error}"
