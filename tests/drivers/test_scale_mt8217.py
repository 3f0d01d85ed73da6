"""Mettler Toledo 8217 driver against the pty scale simulator: every state, probe, bad bytes."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.scale_mt8217 import MT8217Scale, Weight, parse_mt8217_frame
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.sim.scale import EchoPortSim, ScaleSim


def _info(port: str) -> DeviceInfo:
    return DeviceInfo(device_id="scale-1", kind="scale", transport="serial", address=port, driver="mt8217")


async def test_stable_weight_round_trip() -> None:
    async with ScaleSim("mt8217", weight_g=1234) as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        assert await scale.read_weight() == Weight("stable", 1234)
        sim.weight_g = 7
        assert await scale.read_weight() == Weight("stable", 7)
        assert sim.commands == [b"W", b"W"]
        assert sim.parity_errors == 0  # the driver really speaks 7E1


async def test_the_port_opens_again_after_a_probe_and_a_close() -> None:
    # Discovery probes the port, then the watchdog opens it, closes it after a failure and opens
    # it again: a pty (like some USB adapters) refuses 7E1 after the first change; the driver
    # falls back to software parity instead of failing the scale.
    async with ScaleSim("mt8217", weight_g=500) as sim:
        assert await MT8217Scale.probe_serial(sim.port) is not None
        for grams in (500, 600, 700):
            sim.weight_g = grams
            async with MT8217Scale(_info(sim.port)) as scale:
                assert isinstance(scale, MT8217Scale)
                assert await scale.read_weight() == Weight("stable", grams)
        assert sim.parity_errors == 0


async def test_empty_platter_is_zero() -> None:
    async with ScaleSim("mt8217") as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        weight = await scale.read_weight()
        assert weight.state == "zero" and weight.grams == 0 and weight.sellable


@pytest.mark.parametrize(
    ("knob", "state"),
    [("motion", "unstable"), ("overload", "overload"), ("under_zero", "negative")],
)
async def test_status_knobs(knob: str, state: str) -> None:
    async with ScaleSim("mt8217", weight_g=500) as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        setattr(sim, knob, True)
        weight = await scale.read_weight()
        assert weight.state == state
        assert weight.grams is None
        assert not weight.sellable


async def test_over_capacity_without_knob() -> None:
    async with (
        ScaleSim("mt8217", weight_g=20_000, capacity_g=15_000) as sim,
        MT8217Scale(_info(sim.port)) as scale,
    ):
        assert isinstance(scale, MT8217Scale)
        assert (await scale.read_weight()).state == "overload"


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        (0x41, Weight("unstable", None)),
        (0x42, Weight("overload", None)),
        (0x44, Weight("negative", None)),
        (0x48, Weight("unstable", None, outside_zero_range=True)),
        (0x50, Weight("zero", 0, centre_of_zero=True)),
        (0x51, Weight("unstable", None, centre_of_zero=True)),
        (0x60, Weight("unstable", None, net=True)),
        (0x63, Weight("overload", None, net=True)),
        (0x7F, Weight("overload", None, net=True, centre_of_zero=True, outside_zero_range=True)),
    ],
)
async def test_every_status_bit_over_the_wire(status: int, expected: Weight) -> None:
    async with ScaleSim("mt8217") as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        sim.reply_override = b"\x02?" + bytes([status]) + b"\r"
        assert await scale.read_weight() == expected


async def test_zero_and_tare() -> None:
    async with ScaleSim("mt8217", weight_g=120) as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        assert (await scale.zero()).state == "zero"
        sim.weight_g = 620
        assert await scale.read_weight() == Weight("stable", 500)
        assert (await scale.tare()).state == "zero"
        sim.weight_g = 920
        assert await scale.read_weight() == Weight("stable", 300)
        sim.motion = True
        assert (await scale.read_weight()).net  # tare shows in the status bits


async def test_zero_refused_outside_zero_range() -> None:
    async with ScaleSim("mt8217", weight_g=5_000) as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        with pytest.raises(DeviceError, match="empty the platter"):
            await scale.zero()
        assert sim.zero_offset_g == 0


async def test_health_states() -> None:
    async with ScaleSim("mt8217", weight_g=100) as sim:
        scale = MT8217Scale(_info(sim.port), reply_timeout=0.2)
        assert (await scale.health()).state == "failed"  # not open yet, and no I/O in __init__
        await scale.open()
        try:
            assert (await scale.health()).state == "ready"
            sim.overload = True
            health = await scale.health()
            assert health.state == "degraded" and "overload" in health.reason
            sim.overload = False
            sim.silent = True
            assert await scale.health() == await scale.health()
            health = await scale.health()
            assert health.state == "failed" and health.reason == "no answer"
            sim.silent = False
            assert (await scale.health()).state == "ready"
            sim.unplug()
            health = await scale.health()
            assert health.state == "failed" and health.reason
            with pytest.raises(DeviceUnavailable):
                await scale.read_weight()
        finally:
            await scale.close()


async def test_silent_scale_times_out_quickly() -> None:
    async with ScaleSim("mt8217") as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        scale.reply_timeout = 0.1
        sim.silent = True
        with pytest.raises(DeviceTimeout, match="no answer"):
            await scale.read_weight()


async def test_probe_finds_mt8217() -> None:
    async with ScaleSim("mt8217", weight_g=10) as sim:
        info = await MT8217Scale.probe_serial(sim.port)
        assert info is not None
        assert info.kind == "scale" and info.driver == "mt8217" and info.address == sim.port
        assert sim.commands[0].startswith(b"E") and sim.commands[1] == b"W"


async def test_probe_refuses_cas_echo_and_silence() -> None:
    async with ScaleSim("cas", weight_g=10) as cas, EchoPortSim() as echo, ScaleSim("mt8217") as mute:
        mute.silent = True
        assert await MT8217Scale.probe_serial(cas.port, timeout=0.2) is None
        assert await MT8217Scale.probe_serial(echo.port, timeout=0.2) is None
        assert await MT8217Scale.probe_serial(mute.port, timeout=0.2) is None
        assert await MT8217Scale.probe_serial("/dev/does-not-exist", timeout=0.2) is None


async def test_probe_refuses_echo_reply_but_no_weight() -> None:
    async with ScaleSim("mt8217") as sim:
        sim.reply_override = None
        # A device that answers the echo but then garbles W is not taken for a scale.
        original = sim.mt8217_reply
        sim.mt8217_reply = lambda: b"\x02garbage\r"  # type: ignore[method-assign]
        assert await MT8217Scale.probe_serial(sim.port, timeout=0.2) is None
        sim.mt8217_reply = original  # type: ignore[method-assign]


async def test_truncated_reply_is_protocol_error() -> None:
    async with ScaleSim("mt8217") as sim, MT8217Scale(_info(sim.port)) as scale:
        assert isinstance(scale, MT8217Scale)
        scale.reply_timeout = 0.1
        sim.reply_override = b"\x0201.2"
        with pytest.raises(ProtocolError, match="truncated"):
            await scale.read_weight()


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=16))
def test_parser_never_crashes(frame: bytes) -> None:
    try:
        weight = parse_mt8217_frame(frame)
    except ProtocolError:
        return
    assert weight.state in ("stable", "unstable", "overload", "negative", "zero")


async def _one_bad_reply(payload: bytes) -> None:
    async with ScaleSim("mt8217") as sim, MT8217Scale(_info(sim.port), reply_timeout=0.05) as scale:
        assert isinstance(scale, MT8217Scale)
        sim.reply_override = payload
        try:
            async with asyncio.timeout(2):
                await scale.read_weight()
        except (ProtocolError, DeviceTimeout):
            pass


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=20) | st.sampled_from([b"\x02", b"\x02?", b"\x0212.345", b"\r\x02", b"\x02-\r"]))
def test_bad_bytes_over_the_wire_never_crash_or_hang(payload: bytes) -> None:
    asyncio.run(_one_bad_reply(payload))
