"""The kitchen: accepted orders routed to stations as tickets, screens, slips and red alerts,
and "ready" back to the front (tills, pagers, the pickup board)."""

from edgehub.kitchen.kitchen import Kitchen, ScreenFeed
from edgehub.kitchen.pickup import PickupServer
from edgehub.kitchen.printing import KitchenPrinter, render_slip, slip_ticket
from edgehub.kitchen.progress import OrderProgress, Progress
from edgehub.kitchen.ready import ReadyBoard
from edgehub.kitchen.routing import Router
from edgehub.kitchen.screens import ScreenServer
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
    "slip_ticket",
]
