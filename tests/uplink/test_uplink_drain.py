"""The outbox drains to the cloud: every row once, in order, deleted only after its PUBACK."""

from __future__ import annotations

import asyncio
from pathlib import Path

from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import Rig, box_config


async def test_backlog_and_live_rows_reach_the_cloud_once(tmp_path: Path, wan: FaultProxy,
                                                          recorder: CloudRecorder) -> None:
    wan.refuse()
    config = box_config(tmp_path, wan)
    async with Rig(config) as rig:
        expected = await rig.add("orders", 300)
        expected += await rig.add("kitchen", 200)
        expected += await rig.add("telemetry", 100)
        await asyncio.sleep(0.3)
        assert await rig.backlog() == 600  # nothing leaves without the cloud
        wan.heal()
        await rig.wait_online()
        expected += await rig.add("orders", 50, prefix="live")
        await rig.wait_drained()
        status = await rig.uplink.status()
    await recorder.wait_for_ids(expected)
    report = recorder.check(expected)
    assert report.ok, report
    assert recorder.stream_seqs("orders") == list(range(1, 351))
    assert status["streams"]["orders"]["acked"] == 350
    assert status["link"]["state"] == "online" and status["last_cloud_ack_at"]
