"""Power cuts, not kill -9: writes the card had not been asked to keep (no flush yet) are lost.

One run of a store's minutes (orders, print jobs, payments through a real hub) on a recorded
ext4 disk (tests/powercut/disk.py), then hundreds of cuts at random moments of it: each cut's
card is what a real card may hold then; the box's boot recovers it (e2fsck), the file system
must check clean, the journal must pass SQLite's integrity check and open with the hub's own
code, and hold every order, print job and payment outcome a terminal had been told of before
the cut. On a few of the cuts a hub is started on what was left and every terminal sends again
all it had sent: nothing acknowledged is taken twice, and everything is taken once.

``make test`` runs ``EDGEHUB_POWERCUT_CUTS`` (300) cuts of a 12 s run; ``make soak`` a longer
run with thousands of cuts. A failure prints the seed (``EDGEHUB_POWERCUT_SEED`` repeats it).
"""

from __future__ import annotations

import os
import random
import shutil
import sqlite3
import tempfile
import time
from pathlib import Path

import pytest

from tests.conftest import HubProcess
from tests.powercut.disk import CardHistory, RecordedDisk, why_not_here
from tests.powercut.store import FINAL_PAYMENT, Tills, acked_before, check_journal, store_config

pytestmark = pytest.mark.skipif(bool(why_not_here()), reason=why_not_here() or "runs here")

SOAK = os.environ.get("EDGEHUB_SOAK") == "1"
CUTS = int(os.environ.get("EDGEHUB_POWERCUT_CUTS", "3000" if SOAK else "300"))
SECONDS = float(os.environ.get("EDGEHUB_POWERCUT_SECONDS", "120" if SOAK else "12"))
RESTARTS = int(os.environ.get("EDGEHUB_POWERCUT_RESTARTS", "20" if SOAK else "2"))


def _number(item_id: str) -> int:
    return int(item_id.rsplit("-", 1)[1])


async def restart_and_send_again(workdir: Path, data_dir: Path, tills: Tills, cut_ns: int) -> None:
    """A hub on what the cut left, and every terminal sending again everything it had sent."""
    orders = sorted(o for o, at in tills.orders.items() if at < cut_ns)
    jobs = sorted(j for j, at in tills.jobs.items() if at < cut_ns)
    payments = sorted(p for p, at in tills.payments.items() if at < cut_ns)
    acked_orders, queued_jobs, told = acked_before(tills, cut_ns)
    hub = HubProcess(store_config(workdir, data_dir), workdir / "hub.log", extra_args=("--simulate",))
    hub.start()
    try:
        async with Tills(hub.config) as again:
            for order_id in orders:
                await again.order(order_id, _number(order_id))
            for job_id in jobs:
                await again.print_job(job_id)
            for payment_id in payments:
                await again.pay(payment_id, _number(payment_id))
            await again.settle(60)
    finally:
        hub.stop()
    missing = sorted(set(orders) - set(again.accepted))
    assert not missing, f"{len(missing)} orders not taken after the restart: {missing[:5]}"
    for ack in again.order_acks:
        if ack["order_id"] in acked_orders:
            assert ack["duplicate"] is True, f"order {ack['order_id']} was acked before the cut and taken again: {ack}"
    for reply in again.job_replies:
        if reply["job_id"] in queued_jobs:
            assert reply.get("duplicate") is True, f"print job {reply['job_id']} queued before the cut, again: {reply}"
    for reply in again.payment_replies:
        before = told.get(reply["payment_id"])
        if before in FINAL_PAYMENT:
            assert reply.get("duplicate") is True and reply["status"] == before, (
                f"payment {reply['payment_id']} was {before} before the cut; after it: {reply}")
    conn = sqlite3.connect(data_dir / "journal.sqlite")
    try:
        (count,) = conn.execute("SELECT COUNT(*) FROM orders").fetchone()
    finally:
        conn.close()
    assert count == len(orders), f"{count} orders journaled for {len(orders)} distinct orders sent"


@pytest.mark.timeout(3600 if SOAK else 300)
async def test_power_cuts_keep_everything_acknowledged_and_take_nothing_twice(tmp_path: Path) -> None:
    seed = int(os.environ.get("EDGEHUB_POWERCUT_SEED", str(time.time_ns() % 2**32)))
    rng = random.Random(seed)
    disk = RecordedDisk(tmp_path / "card", size_mb=max(96, int(SECONDS * 2)))
    with disk as mount:
        data_dir = mount / "data"
        hub = HubProcess(store_config(tmp_path / "box", data_dir), tmp_path / "hub.log", extra_args=("--simulate",))
        hub.start()
        try:
            async with Tills(hub.config) as tills:
                started = time.monotonic_ns()
                await tills.run(SECONDS)
                ended = time.monotonic_ns()
                await tills.settle()
        finally:
            hub.stop()
    assert len(tills.accepted) > 10 * SECONDS and tills.queued and tills.payment_status, "the run took too little"
    scratch = Path(tempfile.mkdtemp(prefix="powercut-", dir="/dev/shm" if Path("/dev/shm").is_dir() else None))
    cut_times = sorted(rng.randrange(started, ended) for _ in range(CUTS))
    restarts = set(rng.sample(range(CUTS), min(RESTARTS, CUTS)))
    checked = 0
    try:
        history = CardHistory(disk.base, disk.log, scratch)
        for n, cut_ns in enumerate(cut_times):
            into = scratch / f"cut-{n}"
            with history.cut(cut_ns, rng) as image:
                history.recover(image, "/data", into)
            orders, jobs, payments = acked_before(tills, cut_ns)
            try:
                await check_journal(into / "data" / "journal.sqlite", orders, jobs, payments)
                if n in restarts:
                    await restart_and_send_again(scratch / f"restart-{n}", into / "data", tills, cut_ns)
            except AssertionError as exc:
                raise AssertionError(f"cut {n} at +{(cut_ns - started) / 1e9:.3f} s (seed {seed}): {exc}") from exc
            shutil.rmtree(into)
            checked += 1
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        disk.base.unlink(missing_ok=True)
        disk.log.unlink(missing_ok=True)
    assert checked == CUTS
    print(f"{CUTS} cuts over {SECONDS:g} s ({len(tills.accepted)} orders, {len(tills.queued)} print jobs, "
          f"{len(tills.payment_status)} payments; {history.flushes} flushes), {len(restarts)} restarts, seed {seed}")
