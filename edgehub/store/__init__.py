"""The box's durable state: one SQLite journal (WAL, synchronous=FULL) with a single writer."""

from edgehub.store.journal import Journal, OrderCommit

__all__ = ["Journal", "OrderCommit"]
