"""Roles: which device serves ``kitchen-printer.grill`` or ``pinpad.till-1`` now, and failover.

Terminals address roles, never devices. ``Roles`` is the hub component (``setup`` builds it);
the print queue, the payments and the failover rule live in their own small modules beside it.
"""

from edgehub.roles.failover import RoleSeat, choose_serving
from edgehub.roles.printqueue import KitchenSlips
from edgehub.roles.roles import Roles, setup

__all__ = ["KitchenSlips", "RoleSeat", "Roles", "choose_serving", "setup"]
