"""The WAN misbehaves (fault proxy between the hub and the cloud broker); the cloud still ends
up with every row exactly once after dedupe, in order per stream, and nothing is deleted from
the outbox before its PUBACK."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.faultproxy import PUBACK, PUBLISH, FaultProxy
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import Rig, box_config


async def drain_through(rig: Rig, recorder: CloudRecorder, expected: list[str], timeout: float = 40) -> None:
    await rig.wait_drained(timeout)
    await recorder.wait_for(len(expected), timeout=10)
    report = recorder.check(expected)
    assert report.ok, report


async def live_orders(rig: Rig, n: int, every: float = 0.01) -> list[str]:
    ids: list[str] = []
    for i in range(n):
        ids += await rig.add("orders", 1, prefix=f"live{i}")
        await asyncio.sleep(every)
    return ids


@pytest.mark.parametrize("fault", ["close", "reset"])
async def test_link_closed_or_reset_mid_replay(tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder,
                                               fault: str) -> None:
    async with Rig(box_config(tmp_path, wan, replay_rate=2000)) as rig:
        expected = await rig.add("orders", 1500) + await rig.add("kitchen", 500)
        live = asyncio.create_task(live_orders(rig, 40))
        for _ in range(3):
            await asyncio.sleep(0.25)
            await (wan.close_all() if fault == "close" else wan.reset_all())
        expected += await live
        await drain_through(rig, recorder, expected)
        assert rig.uplink.connects >= 2
        assert recorder.stream_seqs("orders") == list(range(1, 1541))


async def test_black_hole_is_noticed_by_ping_and_replay_resumes(tmp_path: Path, wan: FaultProxy,
                                                                recorder: CloudRecorder) -> None:
    async with Rig(box_config(tmp_path, wan, replay_rate=1000)) as rig:
        expected = await rig.add("orders", 1200)
        await rig.wait_online()
        await asyncio.sleep(0.3)
        wan.blackhole()  # no FIN, no RST: only the missing ping answer tells
        expected += await rig.add("orders", 30, prefix="during")
        for _ in range(100):
            if rig.uplink.state != "online":
                break
            await asyncio.sleep(0.05)
        assert rig.uplink.state != "online", "a silent link was not noticed"
        assert "ping" in rig.uplink.last_error or "answer" in rig.uplink.last_error
        backlog = await rig.backlog()
        assert backlog > 0
        wan.heal()
        await wan.reset_all()  # the silent connections die for good when the route comes back
        await drain_through(rig, recorder, expected)


async def test_slow_thin_link_drains_everything(tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    wan.slow(bytes_per_s=60_000, latency_s=0.002)
    async with Rig(box_config(tmp_path, wan, ping_timeout_s=4.0)) as rig:
        expected = await rig.add("orders", 300) + await rig.add("telemetry", 100)
        expected += await live_orders(rig, 10, every=0.05)
        await drain_through(rig, recorder, expected, timeout=60)
        assert rig.uplink.connects == 1  # slow is not dead


# Every step of a publish and its acknowledgement: the PUBLISH not sent, half sent, sent but the
# PUBACK lost, the PUBACK half delivered; early (the first message) and in the middle of a window.
STEPS = [
    pytest.param("up", PUBLISH, False, id="before-publish"),
    pytest.param("up", PUBLISH, True, id="mid-publish"),
    pytest.param("down", PUBACK, False, id="puback-lost"),
    pytest.param("down", PUBACK, True, id="mid-puback"),
]


@pytest.mark.parametrize("nth", [1, 57])
@pytest.mark.parametrize(("direction", "ptype", "mid"), STEPS)
async def test_cut_at_every_step_of_publish_and_puback(tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder,
                                                       direction: str, ptype: int, mid: bool, nth: int) -> None:
    wan.refuse()
    async with Rig(box_config(tmp_path, wan)) as rig:
        expected = await rig.add("orders", 200) + await rig.add("payments", 100)
        cut = wan.cut_at(direction, packet=nth + (1 if direction == "up" else 0), packet_type=ptype, mid_packet=mid)
        wan.refusing = False  # the WAN comes back with the cut armed
        async with asyncio.timeout(10):
            await cut.fired.wait()
        await drain_through(rig, recorder, expected)
        assert rig.uplink.connects >= 2


@pytest.mark.parametrize(("direction", "nth"), [("up", 1), ("down", 1), ("up", 2), ("down", 2)],
                         ids=["connect", "connack", "subscribe", "suback"])
async def test_cut_while_connecting(tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder,
                                    direction: str, nth: int) -> None:
    cut = wan.cut_at(direction, packet=nth)
    async with Rig(box_config(tmp_path, wan)) as rig:
        expected = await rig.add("orders", 100)
        async with asyncio.timeout(10):
            await cut.fired.wait()
        await drain_through(rig, recorder, expected)


async def test_refused_puback_keeps_the_row_and_orders_still_flow(tmp_path: Path, wan: FaultProxy) -> None:
    from tests.uplink.cloudside import CloudBroker

    # A cloud ACL that forgot telemetry: its PUBACKs say 0x87, so those rows must stay.
    acl = ["topic readwrite cloud/s1/hub/#", "topic read cloud/s1/down/#", "topic write cloud/s1/up/orders",
           "topic write cloud/s1/reconcile/request", "topic read cloud/s1/reconcile/response/#"]
    async with CloudBroker(tmp_path / "cloud2", box_acl=acl) as strict:
        wan.target = ("127.0.0.1", strict.port)
        with CloudRecorder(strict.port) as rec:
            async with Rig(box_config(tmp_path, wan)) as rig:
                orders = await rig.add("orders", 50)
                await rig.add("telemetry", 20)
                orders += await rig.add("orders", 50, prefix="after")
                await rec.wait_for(100)
                await asyncio.sleep(0.3)
                status = await rig.uplink.status()
                assert status["streams"]["telemetry"]["count"] == 20
                assert status["streams"]["orders"]["count"] == 0
                assert status["replay"]["refused_streams"] == {"telemetry": "0x87"}
            assert rec.check(orders).ok
