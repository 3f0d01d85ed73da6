"""Garbage collection tuned for a daemon whose heap grows with the day's tickets.

CPython's full (generation 2) collection walks every tracked object. The kitchen keeps hours of
tickets in memory, so at the rush each full collection stopped the event loop for 20 to 100 ms and
grew with the heap: that was the tail of the order→ack latency (bench/intake.py, docs/footprint.md).

After each full collection, the objects that survived it are moved to the permanent generation
(``gc.freeze()``): they were reachable a moment ago, later collections skip them, and reference
counting still frees them when they go. The one thing freezing could keep is a reference cycle
that survived a full collection and died later, so once every ``thaw_every_s`` the survivors are
thawed and the next full collection looks at everything again: at most one long pause an hour,
and nothing is kept for longer than that.
"""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FreezeSurvivors"]

FULL_EVERY = 3


class FreezeSurvivors:
    def __init__(self, thaw_every_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.thaw_every_s = thaw_every_s
        self.clock = clock
        self._thawed_at = clock()
        self.freezes = 0
        self.thaws = 0

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
            # With the old objects frozen, a full collection costs what was promoted since the
            # last one: run it after 3 young-generation passes instead of 10, so each is short.
            threshold0, threshold1, _ = gc.get_threshold()
            gc.set_threshold(threshold0, threshold1, FULL_EVERY)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
        gc.unfreeze()

    def _on_gc(self, phase: str, info: dict[str, Any]) -> None:
        if phase != "stop" or info.get("generation") != 2:
            return
        now = self.clock()
        if now - self._thawed_at >= self.thaw_every_s:
            gc.unfreeze()
            self._thawed_at = now
            self.thaws += 1
        else:
            # Right after a full collection every young generation is empty: this freezes
            # exactly the survivors.
            gc.freeze()  # (not gc.get_freeze_count(): that walks every frozen object)
            self.freezes += 1
