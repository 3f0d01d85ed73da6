"""Orders placed online (delivery platforms, the mini-program, the cloud's kiosks), sent down by
the chain's cloud and cooked like a till's order: orders.py, docs/cloud.md."""

from edgehub.online.orders import OnlineOrders

__all__ = ["OnlineOrders"]
