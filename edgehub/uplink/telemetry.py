"""The box's periodic telemetry sample for the cloud: a small JSON row in the ``telemetry``
outbox stream every ``[cloud] telemetry_every_s``.

A periodic sample does not open a commit of its own: it rides with the next one (an order, a
tap) within ten sampling periods (``PATIENCE_PERIODS``, at most ``MAX_WAIT_S``), and a quiet box
commits its samples in groups. One commit a minute with its fsync, its cloud acknowledgement's
delete and ext4's own journal was most of what an idle box wrote to its card (docs/footprint.md,
"Card life"); a sample nobody has to wait for can wait.

Telemetry is the one stream the outbox may drop (TTL, byte quota, disk nearly full), so a
sample is taken whether or not the WAN is up and simply waits, or ages out, like any other.
At the disk's hard limit the outbox refuses it (``OutboxFull``): that is counted, logged once,
and the next sample tries again.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from edgehub.errors import EdgehubError, OutboxFull
from edgehub.store.outbox import TELEMETRY, Outbox
from edgehub.sysinfo import disk_usage, soc_temperature_c
from edgehub.tasks import cancel_and_wait

if TYPE_CHECKING:
    import psutil

log = logging.getLogger("edgehub.uplink.telemetry")

SCHEMA = "cloud-telemetry/1"
PATIENCE_PERIODS = 10
MAX_WAIT_S = 600.0


class TelemetrySampler:
    """``async with`` owns the sampling task; ``sample_now()`` takes one at once (tests, sync)."""

    def __init__(self, outbox: Outbox, store_id: str, data_dir: Path, every_s: float,
                 orders_accepted: Callable[[], int], clock: Callable[[], float] = time.time) -> None:
        self.outbox = outbox
        self.store_id = store_id
        self.data_dir = data_dir
        self.every_s = every_s
        self.orders_accepted = orders_accepted
        self.clock = clock
        self.taken = 0
        self.refused = 0
        self._process: psutil.Process | None = None
        self._refusing = False
        self._task: asyncio.Task[None] | None = None
        self._waiting: set[asyncio.Task[bool]] = set()  # samples waiting for a commit
        # More of the box's state in each sample, read on the event loop: name -> reader.
        self.extras: dict[str, Callable[[], Any]] = {}

    async def __aenter__(self) -> TelemetrySampler:
        if self.every_s > 0:
            self._task = asyncio.create_task(self._run(), name="telemetry")
        return self

    @property
    def waiting(self) -> int:
        """Samples taken whose commit has not come yet."""
        return len(self._waiting)

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        # Their rows are queued in the journal, which commits them as it closes.
        for task in list(self._waiting):
            await cancel_and_wait(task)

    def measure(self) -> dict[str, Any]:
        """One sample (blocking: /proc and statvfs reads; run it in a thread)."""
        import psutil  # at the first sample, in its thread: psutil is not needed on the start path

        try:
            if self._process is None:
                self._process = psutil.Process(os.getpid())
                self._process.cpu_percent(None)  # the first reading only starts the clock
            process = self._process
            with process.oneshot():
                rss = process.memory_info().rss
                cpu = process.cpu_percent(None)
        except psutil.Error as exc:
            raise OSError(f"reading the hub's own memory and CPU: {exc}") from exc
        disk = disk_usage(self.data_dir)
        return {"schema": SCHEMA, "store_id": self.store_id, "at": round(self.clock(), 3),
                "rss_bytes": rss, "cpu_percent": round(cpu, 1), "disk_free_bytes": disk.free_bytes,
                "disk_total_bytes": disk.total_bytes, "soc_temperature_c": soc_temperature_c(),
                "orders_accepted": self.orders_accepted()}

    async def sample_now(self, within_s: float | None = None) -> bool:
        """Take a sample into the outbox; False when the outbox refused it (disk nearly full).
        ``within_s``: it may wait that long for another write's commit."""
        doc = await asyncio.to_thread(self.measure)
        doc.update({name: read() for name, read in self.extras.items()})
        msg_id = f"telemetry:{self.store_id}:{int(doc['at'] * 1000)}"
        try:
            await self.outbox.add_now(TELEMETRY, msg_id, doc, within_s=within_s)
        except OutboxFull as exc:
            self.refused += 1
            if not self._refusing:
                log.warning("telemetry samples refused until the data disk has room: %s", exc)
                self._refusing = True
            return False
        if self._refusing:
            log.info("telemetry samples taken again")
            self._refusing = False
        self.taken += 1
        return True

    async def _run(self) -> None:
        wait_s = min(MAX_WAIT_S, PATIENCE_PERIODS * self.every_s)
        while True:
            await asyncio.sleep(self.every_s)
            task = asyncio.create_task(self._sample(wait_s), name="telemetry-sample")
            self._waiting.add(task)
            task.add_done_callback(self._waiting.discard)

    async def _sample(self, wait_s: float) -> bool:
        try:
            return await self.sample_now(within_s=wait_s)
        except (EdgehubError, OSError) as exc:  # measure() says psutil's errors as OSError
            log.warning("telemetry sample failed: %s", exc)
            return False
