"""cancel_and_wait: how the hub ends its background tasks."""

from __future__ import annotations

import asyncio
import logging

import pytest

from edgehub.tasks import cancel_and_wait


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
