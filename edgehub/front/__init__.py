"""The front of house through the box: what tills, handhelds and screens share while the WAN is
down — the cloud's menu (menu.py), the store's open checks (checks.py), which terminals are
connected now (presence.py) — and how terminals sign in to read them over HTTP (auth.py)."""

from edgehub.front.auth import TerminalLogin
from edgehub.front.checks import Checks
from edgehub.front.menu import MenuServer
from edgehub.front.presence import Presence

__all__ = ["Checks", "MenuServer", "Presence", "TerminalLogin"]
