"""How many orders one terminal may send: a token bucket per terminal, consulted per message.

One terminal flooding the box (8,000 orders in 2 s) made every other till wait for its acks. A
terminal over its quota is acked ``rejected`` with an error that starts with ``slow down`` and a
``retry_after_s``: nothing is journaled, so nothing acked is ever dropped, and the terminal sends
the order again after that time (docs/asyncapi.yaml, ack/1). Re-sends count like new orders:
they cost the box the same. ``limits.orders_per_s`` 0 turns the quota off.
"""

from __future__ import annotations

import time
from collections.abc import Callable

SLOW_DOWN = "slow down"  # the start of the error of an order refused by the quota


class TerminalQuota:
    """``rate`` orders a second per terminal, ``burst`` at once."""

    def __init__(self, rate: float, burst: int, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # terminal -> (tokens, when)
        self.refused = 0

    def take(self, terminal: str) -> float | None:
        """Take one order from ``terminal``'s allowance: None when it may go on, else the seconds
        until it may send again."""
        if self.rate <= 0:
            return None
        now = self.clock()
        tokens, at = self._buckets.get(terminal, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1.0:
            self._buckets[terminal] = (tokens, now)
            self.refused += 1
            return (1.0 - tokens) / self.rate
        self._buckets[terminal] = (tokens - 1.0, now)
        return None

    def error(self, terminal: str, wait_s: float) -> str:
        return (f"{SLOW_DOWN}: terminal {terminal} sends more than {self.rate:g} orders a second "
                f"({self.burst:g} at once); nothing was taken, send it again in {wait_s:.1f} s")
