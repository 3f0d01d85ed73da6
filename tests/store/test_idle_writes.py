"""What a quiet box writes to its card: telemetry samples and the outbox's maintenance do not
each open a commit (an fsync, ext4's journal commit behind it, the cloud ack's delete after it)
but wait for one, so an idle box commits a few times an hour, not twice a minute."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgehub.store import Journal
from edgehub.store.outbox import TELEMETRY, DiskUsage, Outbox, OutboxPolicy, stream_counters
from edgehub.uplink import TelemetrySampler


async def test_a_quiet_box_commits_its_telemetry_samples_in_groups(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Journal(data / "journal.sqlite", "s1") as journal:
        async with Outbox(journal, data, OutboxPolicy(maintain_every_s=0.05)) as outbox:
            before = journal.stats.commits
            # 40 sampling periods (and 40 maintenance runs); a sample waits up to 10 periods.
            async with TelemetrySampler(outbox, "s1", data, every_s=0.05, orders_accepted=lambda: 0) as sampler:
                await asyncio.sleep(2.0)
            commits = journal.stats.commits - before
            counters = (await journal.read(stream_counters))[TELEMETRY]
    assert sampler.taken >= 25, f"only {sampler.taken} samples taken"
    assert counters.produced == sampler.taken
    # One commit per sample and per maintenance run before: about 80.
    assert commits <= 8, f"{commits} commits for {sampler.taken} samples on a quiet box"


async def test_waiting_samples_ride_with_the_next_order_commit(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Journal(data / "journal.sqlite", "s1") as journal, Outbox(journal, data, OutboxPolicy()) as outbox:
        # A sample waits up to 5 s here; two are waiting after 1 s.
        async with TelemetrySampler(outbox, "s1", data, every_s=0.5, orders_accepted=lambda: 0) as sampler:
            deadline = time.monotonic() + 4
            while sampler.waiting < 2:
                assert time.monotonic() < deadline, "no sample waiting"
                await asyncio.sleep(0.01)
            assert sampler.taken == 0
            commits = journal.stats.commits
            await journal.write(lambda conn: None)  # a write someone waits on, as an order
            while sampler.taken < 2:
                assert time.monotonic() < deadline, "the waiting samples did not ride with the commit"
                await asyncio.sleep(0.005)
            assert journal.stats.commits == commits + 1


async def test_a_disk_running_short_on_a_quiet_box_is_seen_at_the_next_maintenance(tmp_path: Path) -> None:
    """The patient maintenance write waits for a commit; the disk check does not: the data disk
    reaching its hard limit evicts telemetry at once, not when some commit comes."""
    data = tmp_path / "data"
    free = [10 * 2**30]
    async with Journal(data / "journal.sqlite", "s1") as journal:
        async with Outbox(journal, data, OutboxPolicy(maintain_every_s=0.05)) as outbox:
            outbox.guard._usage = lambda p: DiskUsage(20 * 2**30, 20 * 2**30 - free[0], free[0])  # noqa: SLF001
            for n in range(5):
                await outbox.add_now(TELEMETRY, f"telemetry:s1:{n}", {"schema": "cloud-telemetry/1", "n": n})
            await asyncio.sleep(0.2)  # quiet: a patient maintenance write waits for a commit
            free[0] = 10 * 2**20  # 10 MiB left: under the hard limit
            deadline = time.monotonic() + 2
            while (await journal.read(stream_counters))[TELEMETRY].pending:
                assert time.monotonic() < deadline, "telemetry not evicted with the disk at its hard limit"
                await asyncio.sleep(0.02)
            assert outbox.guard.level == "hard"
