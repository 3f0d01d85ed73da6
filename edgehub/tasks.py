"""Ending the hub's background tasks."""

from __future__ import annotations

import asyncio
import logging
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
