"""The watchdog: probes every present device on its own schedule and records its health.

Each device gets one task that calls ``driver.health()`` (printer: DLE EOT 1..4; scale: one
weight request; pinpad: its link, or a status enquiry where configured; scanner: is the reader
alive / does USB answer) inside a timeout, then ``registry.set_health``. The registry publishes,
alerts and logs only on a change, so a probe every 0.3 s costs the broker nothing while nothing
changes.

Printers are probed every ``printer_interval`` (0.3 s by default) so a dead or paper-out printer
is seen within about a second (one interval plus one status round trip), which is what moving a
kitchen role to a spare needs. The others are probed less often: a scale's serial line is shared
with sales. A driver may name its own interval (``probe_interval_s``, from its ``[[device]]``):
a ZVT terminal probed by status enquiry is asked at the pace its maker wants, since on some
terminals every enquiry may start a due end-of-day or update.

Failure means failure, not one late reply: a probe the device did not answer (the driver says
``unknown``, or the probe ran out of time) is a *missed* probe, and a printer is failed only after
``printer_missed`` of them in a row (``[discovery] printer_missed_probes``), a scanner or a scale
after two; meanwhile its state stays what it was. What the printer *says* (paper end, cover
open, connection refused) counts at once. A printer busy with a job is not probed at all: its
driver answers with what the job last saw, and the job reports a failure itself.

A probe that raised, or a failed health, makes the registry close a driver that cannot
reconnect by itself (serial scanners and scales: their port is gone), so the next probe opens
it afresh; the printer and pinpad drivers reconnect inside their own calls.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

from drivers.base import Health
from edgehub.devices.registry import DeviceEntry, DeviceEvent, DeviceRegistry
from edgehub.errors import DeviceError, DeviceUnavailable
from edgehub.tasks import cancel_and_wait, wait_to_tick

__all__ = ["Watchdog", "WatchdogTiming"]

log = logging.getLogger("edgehub.devices.watchdog")

# Drivers that reconnect inside their own calls: closing them on a failed probe would only
# interrupt a print job or a payment that another task is running.
_SELF_HEALING = frozenset({"escpos", "zvt"})


@dataclass(frozen=True)
class WatchdogTiming:
    """Probe intervals and limits per device kind, in seconds."""

    printer_interval: float = 0.3
    scanner_interval: float = 1.0
    scale_interval: float = 1.0
    pinpad_interval: float = 2.0
    printer_timeout: float = 1.5  # 4 status bytes take a few ms; 0.5 s is the driver's per-byte limit
    scanner_timeout: float = 1.0
    scale_timeout: float = 1.5
    pinpad_timeout: float = 6.0  # a status enquiry (or a re-registration) waits for the terminal's ack
    # Missed probes in a row before a printer is failed: 2 lets one late reply pass (a Wi-Fi
    # spike) and still fails a silent printer inside the failover target (bench/failover.py).
    printer_missed: int = 2
    # A scanner or scale that misses one probe on a busy box keeps its reader (and the scan in it).
    scanner_missed: int = 2
    scale_missed: int = 2

    def interval(self, kind: str) -> float:
        return float(getattr(self, f"{kind}_interval", 1.0))

    def missed(self, kind: str) -> int:
        """Missed probes in a row that fail a device of ``kind`` (1 for a pinpad)."""
        return max(1, int(getattr(self, f"{kind}_missed", 1)))

    def timeout(self, kind: str) -> float:
        return float(getattr(self, f"{kind}_timeout", 2.0))


class Watchdog:
    """One probe task per present device. Constructor does no I/O; ``async with`` owns the tasks."""

    def __init__(self, registry: DeviceRegistry, timing: WatchdogTiming | None = None) -> None:
        self.registry = registry
        self.timing = timing or WatchdogTiming()
        self.probes: dict[str, int] = {}  # probes finished per device (tests count these)
        self.misses: dict[str, int] = {}  # missed probes in a row per device
        self.missed_total: dict[str, int] = {}  # missed probes per device since start
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._wakeups: dict[str, asyncio.Event] = {}
        self._probed = asyncio.Condition()
        self._running = False

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Watchdog:
        self._running = True
        self.registry.subscribe(self._on_event)
        for entry in self.registry.all():
            if entry.present:
                self._start(entry.device_id)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self._running = False
        self.registry.unsubscribe(self._on_event)
        tasks = list(self._tasks.values())
        self._tasks.clear()
        await cancel_and_wait(*tasks)

    def _on_event(self, event: DeviceEvent) -> None:
        device_id = event.entry.device_id
        if event.kind in ("added", "moved"):
            self._start(device_id)
            self._wakeups.setdefault(device_id, asyncio.Event()).set()  # probe the new address now
        elif event.kind == "gone":
            task = self._tasks.pop(device_id, None)
            if task is not None:
                task.cancel()

    def _start(self, device_id: str) -> None:
        if not self._running:
            return
        task = self._tasks.get(device_id)
        if task is not None and not task.done():
            return
        task = asyncio.create_task(self._run(device_id), name=f"watchdog-{device_id}")
        self._tasks[device_id] = task

        def forget(done: asyncio.Task[None]) -> None:
            if self._tasks.get(device_id) is done:
                del self._tasks[device_id]

        task.add_done_callback(forget)

    # -- probing ---------------------------------------------------------------------------
    async def _run(self, device_id: str) -> None:
        wakeup = self._wakeups.setdefault(device_id, asyncio.Event())
        while True:
            entry = self.registry.get(device_id)
            if entry is None or not entry.present:
                return
            wakeup.clear()
            health = await self.probe(entry)
            entry = self.registry.get(device_id)
            if entry is None or not entry.present:
                return
            judged = self._judge(device_id, entry.info.kind, health)
            if judged is not None:
                await self.registry.set_health(device_id, judged)
            if judged is not None and not judged.usable and entry.info.driver not in _SELF_HEALING:
                await self.registry.reset_driver(device_id)
            async with self._probed:
                self.probes[device_id] = self.probes.get(device_id, 0) + 1
                self._probed.notify_all()
            # Probes on the grid of their interval: the printers' probes wake the loop together.
            await wait_to_tick(wakeup, self.interval(entry))

    def interval(self, entry: DeviceEntry) -> float:
        """Seconds between two probes of ``entry``: its driver's own, else its kind's."""
        own = getattr(entry.driver, "probe_interval_s", None)
        return float(own) if isinstance(own, int | float) and own > 0 else self.timing.interval(entry.info.kind)

    def _judge(self, device_id: str, kind: str, health: Health) -> Health | None:
        """The health to record after a probe, or None to leave the state as it is (a missed
        probe, fewer than the limit in a row)."""
        if health.state != "unknown":
            self.misses.pop(device_id, None)
            return health
        limit = self.timing.missed(kind)
        missed = self.misses[device_id] = self.misses.get(device_id, 0) + 1
        self.missed_total[device_id] = self.missed_total.get(device_id, 0) + 1
        if missed < limit:
            log.debug("%s missed probe %d of %d: %s", device_id, missed, limit, health.reason)
            return None
        if limit == 1:
            return Health("failed", health.reason)
        return Health("failed", f"{health.reason} to {limit} probes in a row")

    async def probe(self, entry: DeviceEntry) -> Health:
        """One bounded health check of ``entry``. Never raises (except when cancelled). A probe
        that got no answer is ``unknown`` (a missed probe)."""
        device_id, kind = entry.device_id, entry.info.kind
        limit = self.timing.timeout(kind)
        try:
            async with asyncio.timeout(limit):
                driver = await self.registry.open_driver(device_id)
                return await driver.health()
        except TimeoutError:
            return Health("unknown", f"no answer within {limit:g}s")
        except DeviceUnavailable as exc:
            return Health("failed", f"not reachable: {_message(exc, device_id)}")
        except DeviceError as exc:
            return Health("failed", _message(exc, device_id))
        except Exception as exc:  # a driver bug must not stop the watchdog for every device
            log.exception("probing %s failed unexpectedly", device_id)
            return Health("failed", f"driver error: {exc}")

    async def wait_probes(self, device_id: str, count: int) -> int:
        """Wait until ``device_id`` has had ``count`` probes in total; returns the count."""
        async with self._probed:
            await self._probed.wait_for(lambda: self.probes.get(device_id, 0) >= count)
            return self.probes[device_id]


def _message(exc: DeviceError, device_id: str) -> str:
    return str(exc).removeprefix(f"{device_id}: ")
