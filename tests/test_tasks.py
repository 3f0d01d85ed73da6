"""cancel_and_wait: how the hub ends its background tasks; sleep_to_tick and wait_to_tick: how
its periodic ones wake together."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgehub.tasks import cancel_and_wait, next_tick, sleep_to_tick, wait_to_tick


async def test_every_task_is_cancelled_and_has_ended_on_return() -> None:
    ended: list[str] = []

    async def worker(name: str) -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.01)  # cleanup that takes a moment
            ended.append(name)

    tasks = [asyncio.create_task(worker(n)) for n in "ab"]
    await asyncio.sleep(0)
    await cancel_and_wait(tasks[0], None, tasks[1])
    assert sorted(ended) == ["a", "b"] and all(t.cancelled() for t in tasks)
    await cancel_and_wait()  # nothing to do
    await cancel_and_wait(*tasks)  # ended already: nothing happens


async def test_a_failing_cleanup_is_logged_and_does_not_cut_the_others_short(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ended: list[str] = []

    async def broken() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            raise OSError("port gone")

    async def fine() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            ended.append("fine")

    tasks = [asyncio.create_task(broken(), name="scanner-reader"), asyncio.create_task(fine())]
    await asyncio.sleep(0)
    with caplog.at_level(logging.ERROR, logger="edgehub"):
        await cancel_and_wait(*tasks)
    assert ended == ["fine"]
    assert [r.getMessage() for r in caplog.records] == ["task scanner-reader had failed: port gone"]


async def test_the_callers_own_cancellation_is_not_swallowed() -> None:
    release = asyncio.Event()

    async def slow_to_stop() -> None:
        try:
            await asyncio.Event().wait()
        finally:
            await release.wait()

    worker = asyncio.create_task(slow_to_stop())
    await asyncio.sleep(0)
    stopper = asyncio.create_task(cancel_and_wait(worker))
    await asyncio.sleep(0.01)
    stopper.cancel()  # e.g. the hub's own shutdown gives up on this one
    with pytest.raises(asyncio.CancelledError):
        await stopper
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await worker


async def test_periodic_loops_started_apart_wake_in_the_same_turn_of_the_loop() -> None:
    """Three probes' loops with one period (and a housekeeping loop with twice that period)
    started at different moments run in the same turns of the event loop, once a period each:
    an idle box pays for one wakeup where it paid for four."""
    loop = asyncio.get_running_loop()
    turn = [0]
    done = asyncio.Event()

    def count() -> None:  # runs once per turn of the loop
        turn[0] += 1
        if not done.is_set():
            loop.call_soon(count)

    end = loop.time() + 0.6
    starts: list[float] = []
    woke: dict[str, dict[float, int]] = {}  # loop -> {the tick it slept to: the turn it woke in}

    async def every(name: str, period: float, start_after: float) -> None:
        await asyncio.sleep(start_after)
        starts.append(loop.time())
        while loop.time() < end:
            tick = next_tick(loop.time(), period)
            await sleep_to_tick(period)
            woke.setdefault(name, {})[round(tick, 6)] = turn[0]

    count()
    await asyncio.gather(every("a", 0.1, 0.0), every("b", 0.1, 0.013), every("c", 0.1, 0.047),
                         every("slow", 0.2, 0.021))
    done.set()
    # The ticks after every loop had started, before the end.
    ticks = {name: {t: n for t, n in seen.items() if max(starts) < t < end} for name, seen in woke.items()}
    assert ticks["a"] == ticks["b"] == ticks["c"], ticks
    assert len(ticks["a"]) >= 2 and len(set(ticks["a"].values())) == len(ticks["a"])  # each tick its own turn
    # The slower loop wakes in turns the others wake in (a loop woken late may skip a tick).
    assert ticks["slow"] and set(ticks["slow"].values()) <= set(ticks["a"].values()), ticks


def test_the_next_tick_is_the_next_multiple_of_the_period() -> None:
    assert next_tick(10.0, 0.3) == pytest.approx(10.2)
    assert next_tick(10.2000001, 0.3) == pytest.approx(10.5)
    assert next_tick(12.0, 1.0) == 13.0  # a loop on the grid waits a whole period, never zero


async def test_wait_to_tick_returns_on_the_event_or_at_the_tick() -> None:
    loop = asyncio.get_running_loop()
    event = asyncio.Event()
    loop.call_later(0.02, event.set)
    started = loop.time()
    await wait_to_tick(event, 10.0)
    assert loop.time() - started < 5.0 and event.is_set()
    event.clear()
    await wait_to_tick(event, 0.05)  # nothing sets it: the tick does
    assert event.is_set()
    assert loop.time() >= next_tick(started, 0.05)
