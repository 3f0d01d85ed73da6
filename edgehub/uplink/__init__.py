"""The WAN half of the box: the outbox drained to the chain's cloud, and what the cloud pushes down.

``attach_uplink(hub)`` wires it into a hub: the outbox policy (quota, TTL, disk guard), the
downlink registry and the telemetry sample always, the cloud link when ``[cloud] enabled``; the
``uplink`` status section; ``POST /api/v1/sync``. ``follow_cloud_routing(downlink, kitchen)``
routes the kitchen by the rules the cloud pushes. Topics and payloads: docs/cloud.md.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgehub.store.outbox import Outbox, OutboxPolicy
from edgehub.uplink.api import sync_routes
from edgehub.uplink.cloudapi import CloudTopics, DownlinkDoc
from edgehub.uplink.downlink import Downlink
from edgehub.uplink.routing import follow_cloud_routing
from edgehub.uplink.service import Uplink
from edgehub.uplink.telemetry import TelemetrySampler

if TYPE_CHECKING:
    from edgehub.config import CloudConfig
    from edgehub.hub import Hub

__all__ = ["CloudTopics", "Downlink", "DownlinkDoc", "Outbox", "TelemetrySampler", "Uplink", "attach_uplink",
           "follow_cloud_routing", "outbox_policy"]


def outbox_policy(cfg: CloudConfig) -> OutboxPolicy:
    return OutboxPolicy(telemetry_ttl_s=cfg.telemetry_ttl_h * 3600,
                        telemetry_quota_bytes=int(cfg.telemetry_quota_mib * 1024 * 1024),
                        disk_warn_free_mib=cfg.disk_warn_free_mib, disk_hard_free_mib=cfg.disk_hard_free_mib)


def attach_uplink(hub: Hub) -> tuple[Outbox, Downlink, Uplink | None, TelemetrySampler]:
    cfg = hub.config.cloud
    store_id = hub.config.store.id
    outbox = Outbox(hub.journal, hub.journal.path.parent, outbox_policy(cfg))
    downlink = Downlink(hub.journal, store_id)
    uplink = Uplink(cfg, store_id, hub.journal, outbox, downlink) if cfg.enabled else None
    if uplink is not None:
        intake = hub.intake
        uplink.replay.give_way = lambda: intake.in_progress > 0  # a terminal waits for its ack
    telemetry = TelemetrySampler(outbox, store_id, hub.journal.path.parent, cfg.telemetry_every_s,
                                 lambda: hub.intake.stats.accepted)
    hub.components += [outbox, downlink, telemetry, *([uplink] if uplink else [])]

    async def status() -> dict[str, Any]:
        samples = {"telemetry_samples": {"taken": telemetry.taken, "refused": telemetry.refused}}
        if uplink is not None:
            return {**await uplink.status(), **samples}
        return {"enabled": False, "link": {"state": "disabled"}, **await outbox.status(),
                "downlink": downlink.status(), **samples}

    hub.status_sections["uplink"] = status
    hub.api.route_setups.append(sync_routes(uplink))
    return outbox, downlink, uplink, telemetry
