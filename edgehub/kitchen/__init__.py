"""The kitchen: accepted orders routed to stations as tickets, screens, slips and red alerts,
and "ready" back to the front (tills, pagers, the pickup board).

``setup`` builds the kitchen component (``Kitchen``), ``setup_screens`` the screens' web side
(``ScreenServer``), ``setup_ready`` the ready signal and pickup board (``ReadyBoard``) and
``setup_pickup`` the customers' pickup page (``PickupServer``), each from the hub's context and
the ports it needs.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Mapping, Sequence

from edgehub.api.auth import FailedLogins
from edgehub.config import KitchenConfig, LimitsConfig
from edgehub.context import Context
from edgehub.kitchen.cloudrouting import DownlinkFeed, follow_cloud_routing
from edgehub.kitchen.kitchen import ORDER_CHANGED, Kitchen, ScreenFeed
from edgehub.kitchen.logins import ScreenLogins
from edgehub.kitchen.pickup import PickupServer
from edgehub.kitchen.printing import KitchenPrinter, render_slip, slip_ticket
from edgehub.kitchen.progress import ORDER_PROGRESS, OrderProgress, Progress
from edgehub.kitchen.ready import ReadyBoard
from edgehub.kitchen.routing import Router
from edgehub.kitchen.screens import ScreenServer, StatusBeat
from edgehub.kitchen.tickets import TRANSITIONS, Ticket, next_state

__all__ = [
    "TRANSITIONS",
    "Kitchen",
    "KitchenPrinter",
    "OrderProgress",
    "PickupServer",
    "Progress",
    "ReadyBoard",
    "Router",
    "ScreenFeed",
    "ScreenServer",
    "Ticket",
    "next_state",
    "render_slip",
    "setup",
    "setup_pickup",
    "setup_ready",
    "setup_screens",
    "slip_ticket",
]


def setup(ctx: Context, cfg: KitchenConfig, limits: LimitsConfig, *, terminal_kinds: Mapping[str, str],
          screen_stations: Sequence[str] = (), printer: KitchenPrinter | None,
          downlink: DownlinkFeed | None) -> Kitchen:
    """``terminal_kinds``: who may change another till's order; ``screen_stations``: the stations
    kitchen screens are set up for (known stations); ``printer``: where station slips print (the
    roles' queues); ``downlink``: the routing rules the cloud pushes (cached across restarts),
    which route new tickets."""
    kitchen = Kitchen(cfg, ctx.topics, ctx.journal, ctx.store_id, limits, bus=ctx.bus, clock=ctx.clock,
                      printer=printer, terminal_kinds=terminal_kinds)
    kitchen.screen_stations = tuple(screen_stations)
    kitchen.progress.listeners.append(functools.partial(ctx.signals.emit, ORDER_PROGRESS))
    kitchen.on_order_change.append(functools.partial(ctx.signals.emit, ORDER_CHANGED))
    if downlink is not None:
        follow_cloud_routing(downlink, kitchen)
    return kitchen


def setup_screens(kitchen: Kitchen, logins: ScreenLogins, failures: FailedLogins,
                  broker_link: Callable[[], tuple[bool, str]]) -> ScreenServer:
    """``logins``: the screen secrets and the stations each drives; ``failures``: the API's
    record of failed logins; ``broker_link``: whether the hub's bus is connected, and why not."""
    return ScreenServer(kitchen, logins, failures, broker_link=broker_link)


def setup_ready(ctx: Context, kitchen: Kitchen, cfg: KitchenConfig) -> ReadyBoard:
    """Fed by the kitchen's order progress."""
    return ReadyBoard(kitchen.progress, ctx.topics, ctx.bus, cfg, clock=ctx.clock)


def setup_pickup(board: ReadyBoard, logins: ScreenLogins, failures: FailedLogins, status: StatusBeat) -> PickupServer:
    """``status``: the screens' word on the box's broker link, which the pickup page shows too."""
    return PickupServer(board, logins, failures, status)
