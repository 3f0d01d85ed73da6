"""The WAN misbehaves (fault proxy between the hub and the cloud broker); the cloud still ends
up with every row exactly once after dedupe, in order per stream, and nothing is deleted from
the outbox before its PUBACK."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgehub.uplink.replay import PROBE_MAX_ROWS
from tests.faultproxy import PUBACK, PUBLISH, FaultProxy
from tests.uplink.cloudside import CloudBroker, CloudRecorder
from tests.uplink.conftest import Rig, box_config


async def drain_through(rig: Rig, recorder: CloudRecorder, expected: list[str], timeout: float = 40) -> None:
    await rig.wait_drained(timeout)
    await recorder.wait_for_ids(expected, timeout=10)
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
        assert (await rig.uplink.status())["replay"]["refused_streams"] == {}  # a cut link is not a refusal


async def test_black_hole_is_noticed_by_ping_and_replay_resumes(tmp_path: Path, wan: FaultProxy,
                                                                recorder: CloudRecorder) -> None:
    async with Rig(box_config(tmp_path, wan, replay_rate=1000)) as rig:
        expected = await rig.add("orders", 1200)
        await rig.wait_online()
        await asyncio.sleep(0.3)
        wan.blackhole()  # no FIN, no RST: only the silence tells
        expected += await rig.add("orders", 30, prefix="during")
        states = set()
        for _ in range(100):
            states.add(rig.uplink.state)
            if rig.uplink.state == "offline":
                break
            await asyncio.sleep(0.05)
        assert rig.uplink.state == "offline", "a silent link was not noticed"
        assert "suspect" in states  # a ping was overdue before the link was given up
        assert "nothing heard from the cloud broker" in rig.uplink.last_error
        backlog = await rig.backlog()
        assert backlog > 0
        wan.heal()
        await wan.reset_all()  # the silent connections die for good when the route comes back
        await drain_through(rig, recorder, expected)


async def test_slow_thin_link_drains_everything(tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    wan.slow(bytes_per_s=60_000, latency_s=0.002)
    async with Rig(box_config(tmp_path, wan, ping_timeout_s=4.0, down_after_s=8.0)) as rig:
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


# A cloud ACL that forgot telemetry.
NO_TELEMETRY_ACL = ["topic readwrite cloud/s1/hub/#", "topic read cloud/s1/down/#", "topic write cloud/s1/up/orders",
                    "topic write cloud/s1/reconcile/request", "topic read cloud/s1/reconcile/response/#"]
FIXED_ACL = [*NO_TELEMETRY_ACL, "topic write cloud/s1/up/telemetry"]


@contextlib.asynccontextmanager
async def no_telemetry_cloud(tmp_path: Path, wan: FaultProxy,
                             reset_after_refusal: bool = False) -> AsyncIterator[tuple[CloudBroker, CloudRecorder]]:
    """A cloud broker with NO_TELEMETRY_ACL behind the WAN proxy, and its recorder. Its PUBACKs
    say 0x87; Mosquitto 2.0.11 also resets the connection after one unless a queue limit is set."""
    extra = [] if reset_after_refusal else ["max_queued_messages 100000"]
    async with CloudBroker(tmp_path / "cloud2", box_acl=NO_TELEMETRY_ACL, extra_conf=extra) as strict:
        wan.target = ("127.0.0.1", strict.port)
        with CloudRecorder(strict.port) as rec:
            yield strict, rec


async def orders_around_telemetry(rig: Rig, rec: CloudRecorder) -> tuple[list[str], list[str], dict[str, Any]]:
    """50 orders, acknowledged; then 20 telemetry samples and 50 orders. Once the cloud has the
    orders: telemetry is still in the outbox, the orders are not. Returns the ids and the uplink's
    status. (Telemetry that goes out with orders still in flight: see
    test_a_cloud_that_hangs_up_behind_orders_in_flight.)"""
    orders = await rig.add("orders", 50)
    await rig.wait_drained()
    samples = await rig.add("telemetry", 20)
    orders += await rig.add("orders", 50, prefix="after")
    await rec.wait_for_ids(orders)
    await asyncio.sleep(0.3)
    status = await rig.uplink.status()
    assert status["streams"]["telemetry"]["count"] == 20
    assert status["streams"]["orders"]["count"] == 0
    return orders, samples, status


async def test_refused_puback_keeps_the_row_and_orders_still_flow(tmp_path: Path, wan: FaultProxy) -> None:
    async with no_telemetry_cloud(tmp_path, wan) as (strict, rec):
        async with Rig(box_config(tmp_path, wan)) as rig:
            orders, samples, status = await orders_around_telemetry(rig, rec)
            assert status["replay"]["refused_streams"] == {"telemetry": "0x87"}
            # The cloud fixes its ACL; "sync now" offers telemetry again on the same connection.
            await strict.change_acl(FIXED_ACL)
            job = await rig.uplink.sync()
            await asyncio.wait_for(job.done.wait(), 20)
            assert (await rig.uplink.status())["replay"]["refused_streams"] == {}
            assert rig.uplink.connects == 1
        report = rec.check(orders + samples)
        assert report.ok, report


async def test_a_held_stream_is_offered_again_when_its_hold_ends(tmp_path: Path, wan: FaultProxy) -> None:
    async with no_telemetry_cloud(tmp_path, wan) as (strict, rec):
        async with Rig(box_config(tmp_path, wan)) as rig:
            rig.uplink.replay.refused_hold_s = 1.0
            samples = await rig.add("telemetry", 10)
            for _ in range(100):
                if (await rig.uplink.status())["replay"]["refused_streams"]:
                    break
                await asyncio.sleep(0.05)
            await strict.change_acl(FIXED_ACL)
            await rig.wait_drained(10)  # no sync, no reconnect: the hold ran out
            assert rig.uplink.connects == 1
        report = rec.check(samples)
        assert report.ok, report


async def test_a_refusal_followed_by_a_reset_still_holds_the_stream_back(tmp_path: Path, wan: FaultProxy) -> None:
    # The reset may overtake the 0x87 PUBACK. Either way telemetry is held back and orders flow.
    async with no_telemetry_cloud(tmp_path, wan, reset_after_refusal=True) as (_, rec):
        async with Rig(box_config(tmp_path, wan)) as rig:
            orders, _, status = await orders_around_telemetry(rig, rec)
            assert status["replay"]["refused_streams"]["telemetry"] in ("0x87", "link dropped")
            assert rig.uplink.connects <= 3
        assert rec.check(orders).ok


async def test_a_cloud_that_hangs_up_on_a_stream_holds_that_stream_back(tmp_path: Path, wan: FaultProxy,
                                                                         recorder: CloudRecorder) -> None:
    # No PUBACK at all: the cloud closes the connection whenever a telemetry message arrives.
    wan.drop_on_topic("cloud/s1/up/telemetry")
    async with Rig(box_config(tmp_path, wan)) as rig:
        orders, samples, status = await orders_around_telemetry(rig, recorder)
        assert status["replay"]["refused_streams"] == {"telemetry": "link dropped"}
        assert wan.dropped == 2  # dropped twice, then held back: the link stays up
        assert rig.uplink.state == "online"
        # Once the cloud takes telemetry again, "sync now" sends it over the same connection.
        wan.heal()
        job = await rig.uplink.sync()
        await asyncio.wait_for(job.done.wait(), 20)
        assert rig.uplink.connects == 3
        assert (await rig.uplink.status())["replay"]["refused_streams"] == {}
    report = recorder.check(orders + samples)
    assert report.ok, report


async def test_a_cloud_that_hangs_up_behind_orders_in_flight(tmp_path: Path, wan: FaultProxy,
                                                             recorder: CloudRecorder) -> None:
    # The backlog goes out in one window when the WAN returns: 50 orders, then telemetry the cloud
    # hangs up on, then 50 orders. The hang-up loses the PUBACKs of orders still in flight, so the
    # oldest unacknowledged row is an order, not the telemetry. The next connection must send
    # those rows one at a time until the telemetry goes alone and is held back, not move one
    # order on per connection.
    wan.refuse()
    wan.drop_on_topic("cloud/s1/up/telemetry")
    async with Rig(box_config(tmp_path, wan)) as rig:
        orders = await rig.add("orders", 50)
        samples = await rig.add("telemetry", 20)
        orders += await rig.add("orders", 50, prefix="after")
        wan.refusing = False
        await recorder.wait_for_ids(orders)
        status = await rig.uplink.status()
        assert status["replay"]["refused_streams"] == {"telemetry": "link dropped"}
        assert status["streams"]["telemetry"]["count"] == 20
        # The window; probes of PROBE_MAX_ROWS rows one at a time until the telemetry goes alone, twice.
        assert 2 <= wan.dropped <= 2 + 50 // PROBE_MAX_ROWS + 1, wan.dropped
        wan.heal()
        job = await rig.uplink.sync()
        await asyncio.wait_for(job.done.wait(), 20)
    report = recorder.check(orders + samples)
    assert report.ok, report
