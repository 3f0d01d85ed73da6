"""The hub dies or restarts while the WAN is out or the backlog is replaying, and a backlog of
100,000 rows: the cloud still ends with every row once after dedupe, in order per stream."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

from edgehub.config import load_config
from edgehub.hub import Hub
from tests.conftest import HubProcess, Terminal, order, write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudBroker, CloudRecorder, RecorderProcess
from tests.uplink.conftest import Rig, assert_cloud_has_everything, cloud_toml, pending_rows, seed_outbox


async def send_orders(config_path: Path, prefix: str, n: int) -> list[str]:
    """n orders from pos-1, each acked ``accepted`` before the next; their outbox msg_ids."""
    config = load_config(config_path)
    async with Terminal(config, "pos-1") as pos:
        for i in range(n):
            await pos.send(order(f"{prefix}-{i}"))
            ack = await pos.ack()
            assert ack["status"] == "accepted", ack
    return [f"order:{prefix}-{i}" for i in range(n)]


async def wait_until(condition: object, what: str, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, f"not within {timeout} s: {what}"
        await asyncio.sleep(0.05)


async def test_hub_killed_mid_replay_loses_nothing(tmp_path: Path, wan: FaultProxy,
                                                  recorder: CloudRecorder) -> None:
    path = write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port, replay_rate=3000))
    journal = load_config(path).journal.path
    seeded = await seed_outbox(journal, {"orders": 6000, "payments": 2000, "kitchen": 4000})
    hub = HubProcess(path, tmp_path / "hub.log")
    hub.start()
    try:
        live = await send_orders(path, "before-kill", 10)
        await recorder.wait_for(2500)
        # Acknowledged rows are deleted by later (lazy) commits: on a loaded machine the cloud can
        # see 2,500 before the first delete lands, and the kill would not be mid-replay yet.
        total = len(seeded) + len(live)
        await wait_until(lambda: pending_rows(journal) < total, "the first acknowledged rows deleted")
        hub.kill9()  # mid-replay: rows sent, rows acknowledged and not yet deleted, rows not sent
        left = pending_rows(journal)
        assert 0 < left < total
        hub.start()
        live += await send_orders(path, "after-restart", 10)
        await wait_until(lambda: pending_rows(journal) == 0, "the outbox drained after the restart")
    finally:
        hub.stop()
    await recorder.wait_for_ids(seeded + live)
    assert_cloud_has_everything(recorder, journal, seeded + live)
    # Rows the cloud acknowledged but the killed hub had not yet deleted are sent again: the
    # cloud sees them twice, and the oracle above proves they are dropped by message id.


async def test_hub_restarted_while_offline_keeps_its_backlog(tmp_path: Path, wan: FaultProxy,
                                                            recorder: CloudRecorder) -> None:
    wan.refuse()
    path = write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port))
    config = load_config(path)
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        ids = await send_orders(path, "first-run", 15)
        status = (await hub.status())["uplink"]
        assert status["link"]["state"] != "online"
        assert status["streams"]["orders"]["count"] == 15
    async with Hub(config) as hub:  # restarted, the WAN still down
        await asyncio.wait_for(hub.ready.wait(), 10)
        ids += await send_orders(path, "second-run", 15)
        status = (await hub.status())["uplink"]
        assert status["streams"]["orders"]["count"] == 30
        assert status["streams"]["orders"]["oldest_age_s"] is not None
        assert recorder.count() == 0
        wan.heal()
        await wait_until(lambda: pending_rows(config.journal.path) == 0, "the outbox drained once the WAN was back")
        status = (await hub.status())["uplink"]
        assert status["streams"]["orders"]["acked"] == 30 and status["last_cloud_ack_at"]
    await recorder.wait_for_ids(ids)
    assert_cloud_has_everything(recorder, config.journal.path, ids)
    assert recorder.stream_seqs("orders") == list(range(1, 31))


async def test_backlog_of_100000_rows_drains_once_in_order(tmp_path: Path, cloud: CloudBroker) -> None:
    # Straight to the cloud broker: the fault proxy (in this process) would cost more than the hub.
    config = load_config(write_config(tmp_path / "box", extra=cloud_toml(cloud.port, replay_rate=0)))
    expected = await seed_outbox(config.journal.path, {"orders": 50_000, "kitchen": 30_000,
                                                       "payments": 15_000, "devices": 5_000})
    with RecorderProcess(cloud.port, tmp_path / "cloud.jsonl") as cloud_service:
        async with Rig(config) as rig:
            await rig.wait_drained(timeout=150)
            status = await rig.uplink.status()
        seen = await asyncio.to_thread(cloud_service.wait, len(expected))
    report = seen.check(expected)
    assert report.ok, report
    assert report.unique == 100_000
    assert seen.stream_seqs("orders") == list(range(1, 50_001))
    assert seen.stream_seqs("devices") == list(range(1, 5_001))
    assert status["streams"]["kitchen"]["acked"] == 30_000 and status["backlog"] == 0
