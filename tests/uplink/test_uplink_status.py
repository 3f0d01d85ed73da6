"""What ``/api/v1/status`` → ``uplink`` tells a person: since when the link is down, the replay
rate and ETA while a backlog drains, and why the cloud broker dropped the box."""

from __future__ import annotations

import asyncio
import logging
import time
from pathlib import Path

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.reasoncodes import ReasonCode

from edgehub.bus.session import disconnect_words
from edgehub.uplink.link import BROKER, CLOSED_BY_BROKER
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudBroker
from tests.uplink.conftest import Rig, box_config


async def test_since_stays_at_the_start_of_an_outage(tmp_path: Path, wan: FaultProxy) -> None:
    async with Rig(box_config(tmp_path, wan)) as rig:
        uplink = rig.uplink
        await rig.wait_online()
        states: list[str] = []
        set_state = uplink._set_state  # noqa: SLF001

        def spy(state: str, detail: str = "") -> None:
            set_state(state, detail)
            states.append(state)

        uplink._set_state = spy  # type: ignore[method-assign]  # noqa: SLF001
        await asyncio.sleep(1.2)  # so that "since" of the outage cannot be the start of the hub
        went_down = time.time()
        wan.refuse()
        await wan.close_all()
        for _ in range(100):
            if uplink.state != "online":
                break
            await asyncio.sleep(0.02)
        assert uplink.state != "online"
        since = uplink.state_since
        assert went_down - 0.01 <= since <= went_down + 1.0
        # Reconnects back off at most reconnect_max_s (0.4 s): several tries meanwhile.
        seen: set[str] = set()
        for _ in range(40):
            status = (await uplink.status())["link"]
            seen.add(status["state"])
            assert status["state"] in ("connecting", "offline"), status
            assert uplink.state_since == since, (states, uplink.state_since, since)
            await asyncio.sleep(0.05)
        assert states.count("connecting") >= 3 and states.count("offline") >= 3, states
        assert status["since"] == time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(since))
        # Back online: "since" is when it came up.
        came_up = time.time()
        wan.heal()
        await rig.wait_online()
        assert uplink.state_since >= came_up


async def test_since_of_a_hub_that_never_got_online_is_its_start(tmp_path: Path, wan: FaultProxy) -> None:
    wan.refuse()
    started = time.time()
    async with Rig(box_config(tmp_path, wan)) as rig:
        await asyncio.sleep(1.5)
        assert rig.uplink.connects == 0 and rig.uplink.state in ("connecting", "offline")
        assert started - 0.01 <= rig.uplink.state_since <= started + 0.5


async def test_rate_and_eta_follow_the_drain_not_the_idle_time_before_it(tmp_path: Path, wan: FaultProxy) -> None:
    # The cloud came back after an outage: 1500 rows at replay_rate 500/s take about 3 s. The rate
    # the status shows is that of the drain from its first second (averaged over 10 s with the
    # idle time before it, it read 43/s and an ETA of 185 s for a 16 s drain), and 0 soon after.
    wan.refuse()
    async with Rig(box_config(tmp_path, wan, replay_rate=500)) as rig:
        await rig.add("orders", 1500)
        await asyncio.sleep(3.5)  # the hub samples the rate meanwhile: nothing acknowledged
        assert (await rig.uplink.status())["replay"]["rate_per_s"] == 0
        wan.heal()
        await rig.wait_online()
        await asyncio.sleep(1.0)
        status = await rig.uplink.status()
        rate, eta, backlog = status["replay"]["rate_per_s"], status["replay"]["eta_s"], status["backlog"]
        assert 300 <= rate <= 800, status["replay"]
        assert backlog > 0 and eta is not None and eta <= 2 * backlog / 500 + 0.5, (backlog, status["replay"])
        await rig.wait_drained(20)
        assert (await rig.uplink.status())["replay"]["eta_s"] == 0
        await asyncio.sleep(2.6)
        replay = (await rig.uplink.status())["replay"]
        assert replay["rate_per_s"] == 0, replay


async def test_a_cloud_broker_that_stops_is_said_in_words(tmp_path: Path, cloud: CloudBroker, wan: FaultProxy,
                                                         caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.WARNING, logger="edgehub.uplink")
    async with Rig(box_config(tmp_path, wan)) as rig:
        await rig.wait_online()
        cloud.stop()
        for _ in range(100):
            if len([r for r in caplog.records if "offline" in r.getMessage()]) >= 2:
                break
            await asyncio.sleep(0.05)
        status = (await rig.uplink.status())["link"]
    messages = [r.getMessage() for r in caplog.records if r.name == "edgehub.uplink"]
    assert any(m.endswith(f"offline: cloud link lost: {CLOSED_BY_BROKER}") for m in messages), messages
    assert not [m for m in messages if "Unspecified" in m], messages
    assert "Unspecified" not in status["last_error"] and f"127.0.0.1:{wan.port}" in status["last_error"], status


def test_disconnect_reason_words() -> None:
    # Mosquitto 2.0.11 just closes the socket (stopped, or a second client with the box's id);
    # other brokers send DISCONNECT with a reason ("Session taken over", "Server shutting down").
    unspecified = ReasonCode(PacketTypes.DISCONNECT, "Unspecified error")
    assert disconnect_words(BROKER, unspecified, False) == CLOSED_BY_BROKER
    assert disconnect_words(BROKER, unspecified, True).startswith(CLOSED_BY_BROKER)
    assert disconnect_words(BROKER, ReasonCode(PacketTypes.DISCONNECT, "Session taken over"), True) == (
        "the cloud broker disconnected the box: Session taken over")
    assert disconnect_words(BROKER, ReasonCode(PacketTypes.DISCONNECT, "Server shutting down"), True) == (
        "the cloud broker disconnected the box: Server shutting down")
    assert disconnect_words(BROKER, ReasonCode(PacketTypes.DISCONNECT, "Keep alive timeout"), False) == (
        "Keep alive timeout")
