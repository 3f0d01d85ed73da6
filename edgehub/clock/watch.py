"""The clock's state for the page, the status and ``edgehub doctor``: chrony asked every
``[clock] check_every_s`` (edgehub/clock/chrony.py)."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgehub.clock.chrony import ClockState, read_state
from edgehub.component import Component, StatusReader
from edgehub.config import ClockConfig
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.clock")


def summary(clock: ClockConfig, state: ClockState) -> str:
    """One line an installer reads: where the box's time comes from, and what the store gets."""
    if not state.running:
        return f"chrony is not running here: {state.error}"
    serving = f"; serving the store on UDP {clock.port}" if clock.serve else "; not serving the store (serve = false)"
    if state.synchronised:
        return f"synchronised to {state.reference} (stratum {state.stratum}){serving}"
    if state.serving_own_clock:
        return f"no upstream reachable: serving its own clock at stratum {state.stratum}{serving}"
    return f"not synchronised yet ({state.leap or 'no source'}){serving}"


class ClockWatch(Component):
    """``async with`` owns the task that asks chrony; ``state`` is the last answer."""

    name = "clock"

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"clock": self.status}

    def __init__(self, clock: ClockConfig, wall: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self.wall = wall
        self.state: ClockState | None = None
        self.checked_at: float | None = None
        self._task: asyncio.Task[None] | None = None
        self._logged = ""

    async def __aenter__(self) -> ClockWatch:
        self._task = asyncio.create_task(self._run(), name="clock-watch")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    async def check(self) -> ClockState:
        state = await read_state(self.clock, self.wall())
        self.state, self.checked_at = state, self.wall()
        line = summary(self.clock, state)
        kind = (state.running, state.synchronised, state.serving_own_clock)
        if repr(kind) != self._logged:  # once per change, not once per check
            (log.info if state.running else log.warning)("clock: %s", line)
            self._logged = repr(kind)
        return state

    async def _run(self) -> None:
        while True:
            await self.check()
            await asyncio.sleep(self.clock.check_every_s)

    async def status(self) -> dict[str, Any]:
        state = self.state
        base = {"serve": self.clock.serve, "port": self.clock.port, "allow": list(self.clock.allow),
                "checked_at": self.checked_at}
        if state is None:
            return {**base, "running": None, "summary": "not checked yet"}
        return {**base, **state.doc(), "summary": summary(self.clock, state)}
