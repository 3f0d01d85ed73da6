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

Young collections: CPython starts one when the tracked objects allocated since the last one
outnumber those freed by 700. Nearly everything the hub allocates for an order (its message, its
dicts, its kitchen events) is freed by reference counting within a turn of the loop, but a batch of
orders or a commit's rows holds more than 700 at once, so at the rush a young collection ran every
few orders and every tenth was a middle one walking thousands of survivors (a ticket, an order in
flight): 380 young, 34 middle and 9 full collections per 6,000 orders, ~300 ms of a burst in all
and middle pauses of ~4 ms (bench/intake.py, docs/footprint.md), finding 11 garbage objects. At
``YOUNG_EVERY`` = 10,000 a collection comes only for what really piles up: 1-4 per 6,000 orders.
The cyclic garbage it can leave waiting is at most 10,000 small objects (a few MB at worst).

Returning memory to the system (``Trimmer``): after a burst of work (a rush, a backlog draining)
most of what the process allocated for it is free again, but glibc's malloc keeps the freed pages
(RSS stayed at the burst's high-water mark: docs/footprint.md, Memory). A thread of its own looks
every ``every_s`` and, when malloc holds more than ``above_mb`` free (``mallinfo2``), calls
``malloc_trim(0)`` to hand the free pages back (a few milliseconds on a heap of tens of MB, with
the GIL released: the event loop goes on). A quiet box is where this matters, and a quiet box
makes no full collections, so it is a timer, not a collection hook. Python's own small-object
allocator keeps its 1 MiB arenas until they are entirely empty; that part of a high-water mark
stays.
"""

from __future__ import annotations

import ctypes
import gc
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

__all__ = ["FreezeSurvivors", "Trimmer", "malloc_free_mb", "malloc_trim"]

FULL_EVERY = 3
YOUNG_EVERY = 10_000


def _libc(name: str) -> Any:
    """A function of the C library the interpreter runs on, or None (not Linux, not glibc)."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):
        return None


def _find_malloc_trim() -> Callable[[], object] | None:
    """glibc's ``malloc_trim(0)``, or None where there is none (not Linux, musl, no ctypes)."""
    trim = _libc("malloc_trim")
    if trim is None:
        return None
    trim.argtypes = [ctypes.c_size_t]
    trim.restype = ctypes.c_int
    return lambda: trim(0)


malloc_trim = _find_malloc_trim()


class _MallInfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in (
        "arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]


def _find_malloc_free() -> Callable[[], float] | None:
    """MB that glibc's malloc holds free (``mallinfo2().fordblks``), or None without glibc >= 2.33."""
    info = _libc("mallinfo2")
    if info is None:
        return None
    info.argtypes = []
    info.restype = _MallInfo2
    return lambda: info().fordblks / 2**20


malloc_free_mb = _find_malloc_free()


class FreezeSurvivors:
    def __init__(self, thaw_every_s: float = 3600.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.thaw_every_s = thaw_every_s
        self.clock = clock
        self._thawed_at = clock()
        self.freezes = 0
        self.thaws = 0
        self._previous = gc.get_threshold()

    def install(self) -> None:
        if self._on_gc not in gc.callbacks:
            gc.callbacks.append(self._on_gc)
            # With the old objects frozen, a full collection costs what was promoted since the
            # last one: run it after 3 middle-generation passes instead of 10, so each is short.
            self._previous = gc.get_threshold()
            gc.set_threshold(YOUNG_EVERY, self._previous[1], FULL_EVERY)

    def uninstall(self) -> None:
        if self._on_gc in gc.callbacks:
            gc.callbacks.remove(self._on_gc)
            gc.set_threshold(*self._previous)
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


class Trimmer:
    def __init__(self, every_s: float = 30.0, above_mb: float = 4.0,
                 trim: Callable[[], object] | None = malloc_trim,
                 free_mb: Callable[[], float] | None = malloc_free_mb) -> None:
        self.every_s = every_s
        self.above_mb = above_mb
        self.trim = trim
        self.free_mb = free_mb
        self.trims = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def install(self) -> None:
        if self.trim is not None and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()

    def uninstall(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def _run(self) -> None:
        while not self._stop.wait(self.every_s):
            self.maybe_trim()

    def maybe_trim(self) -> bool:
        """Trim when malloc holds ``above_mb`` free (always, where that cannot be asked); whether it did."""
        if self.trim is None:
            return False
        if self.free_mb is not None and self.free_mb() < self.above_mb:
            return False  # nothing worth handing back: spare the walk over the free lists
        self.trim()
        self.trims += 1
        return True
