"""Orders placed online (delivery platforms, the mini-program, the cloud's kiosks), sent down by
the chain's cloud and cooked like a till's order: orders.py, docs/cloud.md."""

from collections.abc import Callable

from edgehub.config import LimitsConfig
from edgehub.context import Context
from edgehub.online.orders import OnlineOrders
from edgehub.uplink import Cloud

__all__ = ["OnlineOrders", "setup"]


def setup(ctx: Context, limits: LimitsConfig, *, keep_days: float, busy: Callable[[], bool],
          cloud: Cloud) -> OnlineOrders:
    """``busy``: a till waits for its ack now (a backlog gives way); ``cloud``: the link the
    orders come down by."""
    orders = OnlineOrders(ctx.journal, ctx.store_id, limits, ctx.signals, busy, keep_days=keep_days, clock=ctx.clock)
    cloud.take_orders(orders.take)
    return orders
