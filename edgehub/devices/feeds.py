"""Device feeds: barcode scans and scale weights published as events for the terminals.

For each present scanner, a task takes scans from its driver and publishes them QoS 1 on
``…/dev/{id}/evt/scan``; for each present scale, a task asks for the weight every
``weight_interval`` and publishes ``…/dev/{id}/evt/weight`` when it changed (a scale's serial
line is shared with the watchdog's probes; the driver serialises requests). A feed whose device
fails waits for the watchdog to see it healthy again and then starts over.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable
from typing import Any

from edgehub.bus import payloads
from edgehub.devices.registry import DeviceEvent, DeviceRegistry, Publish
from edgehub.errors import DeviceError, DeviceTimeout, EdgehubError
from edgehub.tasks import cancel_and_wait, sleep_to_tick

__all__ = ["DeviceFeeds"]

log = logging.getLogger("edgehub.devices.feeds")


class DeviceFeeds:
    """Constructor does no I/O; ``async with`` owns one task per scanner and scale."""

    def __init__(
        self,
        registry: DeviceRegistry,
        publish: Publish | None,
        *,
        weight_interval: float = 0.5,
        retry_interval: float = 1.0,
        wall_clock: Callable[[], float] = time.time,
    ) -> None:
        self.registry = registry
        self._publish = publish
        self.weight_interval = weight_interval
        self.retry_interval = retry_interval
        self._wall = wall_clock
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._running = False

    async def __aenter__(self) -> DeviceFeeds:
        self._running = True
        self.registry.subscribe(self._on_event)
        for entry in self.registry.all():
            if entry.present:
                self._start(entry.device_id, entry.info.kind)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        self.registry.unsubscribe(self._on_event)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)

    def _on_event(self, event: DeviceEvent) -> None:
        if event.kind in ("added", "moved"):
            self._start(event.entry.device_id, event.entry.info.kind)

    def _start(self, device_id: str, kind: str) -> None:
        if not self._running or kind not in ("scanner", "scale"):
            return
        task = self._tasks.get(device_id)
        if task is not None and not task.done():
            return
        run = self._scans if kind == "scanner" else self._weights
        self._tasks[device_id] = asyncio.create_task(run(device_id), name=f"feed-{device_id}")

    async def _send(self, topic: str, payload: bytes) -> None:
        if self._publish is None:
            return
        try:
            async with asyncio.timeout(5.0):
                await self._publish(topic, payload, False)
        except (EdgehubError, TimeoutError) as exc:
            log.debug("event on %s not published: %s", topic, exc)

    async def _scans(self, device_id: str) -> None:
        topics = self.registry.topics
        while (entry := self.registry.get(device_id)) is not None and entry.present:
            try:
                driver: Any = await self.registry.open_driver(device_id)
                async for code in driver.scans():
                    await self._send(
                        topics.device_event(device_id, "scan"), payloads.scan(device_id, code, self._wall())
                    )
            except DeviceError:
                pass  # the watchdog reports it; we try again when it has reopened the driver
            await asyncio.sleep(self.retry_interval)

    async def _weights(self, device_id: str) -> None:
        topics = self.registry.topics
        last: tuple[Any, ...] | None = None
        while (entry := self.registry.get(device_id)) is not None and entry.present:
            try:
                driver: Any = await self.registry.open_driver(device_id)
                weight = await driver.read_weight()
            except DeviceTimeout:
                await sleep_to_tick(self.weight_interval)
                continue
            except DeviceError:
                last = None
                await asyncio.sleep(self.retry_interval)
                continue
            now = (weight.grams, weight.state, weight.net, weight.unit)
            if now != last:
                last = now
                await self._send(
                    topics.device_event(device_id, "weight"),
                    payloads.weight(device_id, weight.grams, weight.state, weight.net, self._wall(),
                                    weight.unit, weight.shown),
                )
            await sleep_to_tick(self.weight_interval)  # on the grid: with the other periodic wakeups
