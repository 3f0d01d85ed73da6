"""Ending the hub's background tasks, and waking its periodic ones together."""

from __future__ import annotations

import asyncio
import logging
import math
from typing import Any

log = logging.getLogger("edgehub")


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel ``tasks`` (``None`` is skipped) and wait until every one has ended.

    What a task raised is logged, not raised here: this runs on the way out (a device closed, a
    service stopped), and one task's failure must not cut short the cleanup that follows it. A
    cancellation of the caller itself is not swallowed (``contextlib.suppress(CancelledError)``
    around ``await task`` would swallow it).
    """
    live = [task for task in tasks if task is not None]
    for task in live:
        task.cancel()
    if not live:
        return
    for task, outcome in zip(live, await asyncio.gather(*live, return_exceptions=True), strict=True):
        if isinstance(outcome, Exception):
            name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
            log.error("task %s had failed: %s", name, outcome, exc_info=outcome)


# --- periodic wakeups -------------------------------------------------------------------------
# An idle box spends most of its CPU waking up, not working: each turn of the event loop out of
# epoll costs about as much as the probe it runs (docs/footprint.md, "Idle CPU"). Periodic work
# therefore wakes on a grid of the loop's clock, the multiples of its period: loops with the same
# or commensurate periods (three printers' probes, the 1 s housekeeping ticks) wake in one turn
# of the loop instead of each on its own, and each still runs once a period.


def next_tick(now: float, period: float) -> float:
    """The first multiple of ``period`` after ``now`` (both in the loop's clock)."""
    return (math.floor(now / period) + 1) * period


async def sleep_to_tick(period: float) -> None:
    """Sleep until the next multiple of ``period`` on the running loop's clock."""
    loop = asyncio.get_running_loop()
    future = loop.create_future()
    handle = loop.call_at(next_tick(loop.time(), period), _resolve, future)
    try:
        await future
    finally:
        handle.cancel()


async def wait_to_tick(event: asyncio.Event, period: float) -> None:
    """Wait for ``event`` until the next multiple of ``period`` on the running loop's clock, for
    loops that do the same whether the event came or the time ran out: the time running out
    sets the event (the caller clears it). A timer, not ``asyncio.timeout()``, which ends every
    wait that runs out by throwing a cancellation into the task."""
    if event.is_set():
        return
    loop = asyncio.get_running_loop()
    handle = loop.call_at(next_tick(loop.time(), period), event.set)
    try:
        await event.wait()
    finally:
        handle.cancel()


def _resolve(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)
