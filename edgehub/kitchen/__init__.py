"""The kitchen: accepted orders routed to stations as tickets, screens, slips and red alerts.

``setup`` builds the kitchen component (``Kitchen``) and ``setup_screens`` the screens' web
side (``ScreenServer``), each from the hub's context and the ports it needs.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

from edgehub.api.auth import FailedLogins
from edgehub.config import KitchenConfig, LimitsConfig
from edgehub.context import Context
from edgehub.kitchen.cloudrouting import DownlinkFeed, follow_cloud_routing
from edgehub.kitchen.kitchen import Kitchen, ScreenFeed
from edgehub.kitchen.printing import KitchenPrinter, render_slip, slip_ticket
from edgehub.kitchen.routing import Router
from edgehub.kitchen.screens import ScreenServer
from edgehub.kitchen.tickets import TRANSITIONS, Ticket, next_state

__all__ = [
    "TRANSITIONS",
    "Kitchen",
    "KitchenPrinter",
    "Router",
    "ScreenFeed",
    "ScreenServer",
    "Ticket",
    "next_state",
    "render_slip",
    "setup",
    "setup_screens",
    "slip_ticket",
]


def setup(ctx: Context, cfg: KitchenConfig, limits: LimitsConfig, *, terminal_kinds: Mapping[str, str],
          printer: KitchenPrinter | None, downlink: DownlinkFeed | None) -> Kitchen:
    """``terminal_kinds``: who may change another till's order; ``printer``: where station slips
    print (the roles' queues); ``downlink``: the routing rules the cloud pushes (cached across
    restarts), which route new tickets."""
    kitchen = Kitchen(cfg, ctx.topics, ctx.journal, ctx.store_id, limits, bus=ctx.bus, clock=ctx.clock,
                      printer=printer, terminal_kinds=terminal_kinds)
    if downlink is not None:
        follow_cloud_routing(downlink, kitchen)
    return kitchen


def setup_screens(kitchen: Kitchen, secrets: Mapping[str, tuple[str, ...] | None], failures: FailedLogins,
                  broker_link: Callable[[], tuple[bool, str]]) -> ScreenServer:
    """``secrets``: each screen secret and the stations it drives; ``failures``: the API's record
    of failed logins; ``broker_link``: whether the hub's bus is connected, and why not."""
    return ScreenServer(kitchen, secrets, failures, broker_link=broker_link)
