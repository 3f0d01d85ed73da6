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

Returning memory to the system: after a burst of work (a rush, a backlog draining) most of what
the process allocated for it is free again, but glibc's malloc keeps the freed pages (RSS stayed at
the burst's high-water mark: docs/footprint.md, Memory). After a full collection, at most once every
``trim_every_s`` and only when RSS has grown by ``trim_above_mb`` since the last trim, ``malloc_trim(0)``
hands the free pages back (a few milliseconds on a heap of tens of MB). Python's own small-object
allocator keeps its 1 MiB arenas until they are entirely empty; that part of a high-water mark stays.
"""

from __future__ import annotations

import ctypes
import gc
import os
import sys
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FreezeSurvivors", "malloc_trim", "rss_mb"]

FULL_EVERY = 3


def _find_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (not Linux, musl, no ctypes)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        trim = ctypes.CDLL(None).malloc_trim  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


malloc_trim = _find_malloc_trim()


def rss_mb() -> float:
    """Resident set size of this process in MB (0.0 where /proc is not there)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError, IndexError):
        return 0.0


class FreezeSurvivors:
    def __init__(self, thaw_every_s: float = 3600.0, clock: Callable[[], float] = time.monotonic,
                 trim_every_s: float = 15.0, trim_above_mb: float = 4.0,
                 trim: Callable[[], object] | None = malloc_trim, rss: Callable[[], float] = rss_mb) -> None:
        self.thaw_every_s = thaw_every_s
        self.clock = clock
        self._thawed_at = clock()
        self.freezes = 0
        self.thaws = 0
        self.trim_every_s = trim_every_s
        self.trim_above_mb = trim_above_mb
        self.trim = trim
        self.rss = rss
        self._trimmed_at = clock()
        self._rss_after_trim = rss()
        self.trims = 0

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
        self._maybe_trim(now)

    def _maybe_trim(self, now: float) -> None:
        if self.trim is None or now - self._trimmed_at < self.trim_every_s:
            return
        self._trimmed_at = now
        if self.rss() - self._rss_after_trim < self.trim_above_mb:
            return  # nothing piled up since the last trim: spare the walk over the free lists
        self.trim()
        self.trims += 1
        self._rss_after_trim = self.rss()
