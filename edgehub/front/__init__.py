"""The front of house through the box: what tills, handhelds and screens share while the WAN is
down — the cloud's menu (menu.py), the store's open checks (checks.py), which terminals are
connected now (presence.py) — and how terminals sign in to read them over HTTP (auth.py)."""

from collections.abc import Callable, Iterable, Mapping

from edgehub.bus.connection import BusConnection
from edgehub.config import LimitsConfig, TerminalConfig
from edgehub.context import Context
from edgehub.front.auth import TerminalLogin
from edgehub.front.checks import Checks
from edgehub.front.menu import MenuServer
from edgehub.front.presence import Presence
from edgehub.uplink import Cloud, Downlink

__all__ = ["Checks", "MenuServer", "Presence", "TerminalLogin", "setup_checks", "setup_menu", "setup_presence"]


def setup_menu(ctx: Context, downlink: Downlink, bus: BusConnection, login: TerminalLogin,
               max_packet_bytes: int) -> MenuServer:
    """``downlink``: where the cloud's menu comes from; ``bus``: the hub's connection (the menu
    is published again when it connects); ``max_packet_bytes``: what the broker carries."""
    return MenuServer(ctx.topics, downlink, bus, login, max_packet_bytes)


def setup_checks(ctx: Context, login: TerminalLogin, terminals: Iterable[TerminalConfig],
                 limits: LimitsConfig) -> Checks:
    """Added before the kitchen: a check opens before its order's tickets are made."""
    return Checks(ctx.topics, ctx.journal, ctx.bus, login, terminals, limits, clock=ctx.clock)


def setup_presence(ctx: Context, terminals: Iterable[TerminalConfig], bus: BusConnection,
                   web_screens: Callable[[], Mapping[str, int]], cloud: Cloud) -> Presence:
    """``bus``: the hub's connection (whether the broker kept its session); ``web_screens``: the
    kitchen's browser screens; who is connected goes in each telemetry sample of ``cloud``."""
    presence = Presence(ctx.topics, terminals, bus, clock=ctx.clock, web_screens=web_screens)
    cloud.sample("terminals", presence.summary)
    return presence
