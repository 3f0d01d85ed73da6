"""The data disk runs full while the WAN is out: telemetry is refused and evicted, orders are
still taken, and an order the journal has no room for is refused *to the terminal*, never
dropped in silence. The cloud ends with every order once."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edgehub.hub import Hub
from edgehub.intake import DISK_FULL
from tests.conftest import Terminal, order
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import assert_cloud_has_everything, box_config, pending_rows, seed_outbox


def fill_the_disk(conn: sqlite3.Connection) -> None:
    """The journal may not grow by one page more, and has (almost) no free page left inside:
    what a full data disk is to SQLite (SQLITE_FULL on the next pages it needs). A failing
    statement here would undo the whole group, so the free pages are counted, not hit."""
    (pages,) = conn.execute("PRAGMA page_count").fetchone()
    conn.execute(f"PRAGMA max_page_count = {pages}")
    conn.execute("CREATE TABLE test_filler (b BLOB)")
    while conn.execute("PRAGMA freelist_count").fetchone()[0] > 2:
        conn.execute("INSERT INTO test_filler VALUES (zeroblob(100))")


def big_order(order_id: str) -> dict[str, object]:
    """An order of ~25 KB: it needs many new pages, more than a full journal has."""
    return order(order_id, lines=[{"sku": f"SKU-{i}", "name": "n" * 190, "qty": 1, "station": "grill"}
                                  for i in range(100)])


def make_room(conn: sqlite3.Connection) -> None:
    conn.execute("PRAGMA max_page_count = 1073741823")
    conn.execute("DROP TABLE test_filler")


async def test_disk_at_hard_limit_evicts_telemetry_and_loses_no_order(tmp_path: Path, wan: FaultProxy,
                                                                      recorder: CloudRecorder) -> None:
    wan.refuse()
    # Thresholds above the free space of any test machine: the guard really sees the hard limit.
    config = box_config(tmp_path, wan, disk_warn_free_mib=10_000_000, disk_hard_free_mib=10_000_000)
    journal = config.journal.path
    ids = [i for i in await seed_outbox(journal, {"orders": 40, "telemetry": 200}) if "-orders-" in i]
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        status = (await hub.status())["uplink"]
        assert status["disk"]["level"] == "hard"
        assert status["streams"]["telemetry"]["count"] == 0  # evicted to leave the room to orders
        assert status["streams"]["telemetry"]["dropped"] == 200
        assert status["streams"]["orders"]["count"] == 40
        sampler = hub.cloud.telemetry
        assert await sampler.sample_now() is False  # refused, counted
        assert (await hub.status())["uplink"]["telemetry_refused"] == 1

        async with Terminal(config, "pos-1") as pos:
            for i in range(10):
                await pos.send(order(f"near-full-{i}"))
                assert (await pos.ack())["status"] == "accepted"
            ids += [f"order:near-full-{i}" for i in range(10)]

            await hub.journal.write(fill_the_disk)
            await pos.send(big_order("no-room"))
            ack = await pos.ack()
            assert ack["status"] == "rejected" and ack["order_id"] == "no-room", ack
            assert ack["error"].startswith(DISK_FULL), ack
            assert (await hub.status())["uplink"]["streams"]["orders"]["count"] == 50

            await hub.journal.write(make_room)
            await pos.send(big_order("no-room"))  # the terminal sends it again: now it is taken, once
            ack = await pos.ack()
            assert ack["status"] == "accepted" and not ack["duplicate"], ack
            ids.append("order:no-room")

        wan.heal()
        deadline = asyncio.get_running_loop().time() + 30
        while pending_rows(journal):
            assert asyncio.get_running_loop().time() < deadline, "outbox not drained"
            await asyncio.sleep(0.05)
    await recorder.wait_for_ids(ids)
    assert_cloud_has_everything(recorder, journal, ids)
    assert recorder.stream_seqs("orders") == list(range(1, 52))
    assert recorder.stream_seqs("telemetry") == []
