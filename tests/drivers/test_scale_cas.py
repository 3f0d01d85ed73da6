"""CAS driver (ECR and continuous) against the pty scale simulator: states, probe, bad bytes."""

from __future__ import annotations

import asyncio
import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from drivers.base import DeviceInfo
from drivers.scale_cas import CasMode, CasScale, parse_cas_continuous, parse_cas_ecr_frame
from drivers.scale_mt8217 import MT8217Scale, Weight
from edgehub.errors import DeviceTimeout, DeviceUnavailable, ProtocolError
from edgehub.sim.scale import EchoPortSim, ScaleSim


def _info(port: str) -> DeviceInfo:
    return DeviceInfo(device_id="scale-2", kind="scale", transport="serial", address=port, driver="cas")


@pytest.mark.parametrize("protocol", ["cas", "cas-continuous"])
async def test_every_state(protocol: str) -> None:
    async with ScaleSim(protocol, weight_g=1234) as sim:  # type: ignore[arg-type]
        mode: CasMode = "continuous" if protocol == "cas-continuous" else "ecr"
        async with CasScale(_info(sim.port), mode=mode) as scale:
            assert isinstance(scale, CasScale)
            assert await scale.read_weight() == Weight("stable", 1234)
            sim.motion = True
            assert await scale.read_weight() == Weight("unstable", 1234)
            sim.motion = False
            sim.overload = True
            assert (await scale.read_weight()).state == "overload"
            assert (await scale.health()).state == "degraded"
            sim.overload = False
            sim.under_zero = True
            weight = await scale.read_weight()
            assert weight.state == "negative" and weight.grams is not None and weight.grams < 0
            sim.under_zero = False
            sim.weight_g = 0
            weight = await scale.read_weight()
            assert weight.state == "zero" and weight.grams == 0
            assert (await scale.health()).state == "ready"


async def test_ecr_exchange_is_enq_then_dc1() -> None:
    async with ScaleSim("cas", weight_g=50) as sim, CasScale(_info(sim.port)) as scale:
        assert isinstance(scale, CasScale)
        await scale.read_weight()
        assert sim.commands == [b"ENQ", b"DC1"]


async def test_health_no_answer_and_unplug() -> None:
    async with ScaleSim("cas", weight_g=50) as sim:
        scale = CasScale(_info(sim.port), reply_timeout=0.1)
        await scale.open()
        try:
            sim.silent = True
            assert await scale.health() == type(await scale.health())("failed", "no answer")
            sim.silent = False
            assert (await scale.health()).state == "ready"
            sim.unplug()
            assert (await scale.health()).state == "failed"
            with pytest.raises(DeviceUnavailable):
                await scale.read_weight()
        finally:
            await scale.close()


async def test_probe_finds_cas_modes() -> None:
    async with ScaleSim("cas", weight_g=5) as ecr, ScaleSim("cas-continuous", weight_g=5) as cont:
        info = await CasScale.probe_serial(ecr.port, timeout=0.3)
        assert info is not None and info.driver == "cas" and info.extra["mode"] == "ecr"
        info = await CasScale.probe_serial(cont.port, timeout=0.3)
        assert info is not None and info.extra["mode"] == "continuous"
        async with CasScale(info) as scale:
            assert isinstance(scale, CasScale) and scale.mode == "continuous"
            assert (await scale.read_weight()).grams == 5


async def test_probe_refuses_mt8217_echo_and_silence() -> None:
    async with ScaleSim("mt8217", weight_g=5) as mt, EchoPortSim() as echo, ScaleSim("cas") as mute:
        mute.silent = True
        assert await CasScale.probe_serial(mt.port, timeout=0.2) is None
        assert await CasScale.probe_serial(echo.port, timeout=0.2) is None
        assert await CasScale.probe_serial(mute.port, timeout=0.2) is None
        # and the other way round: the 8217 probe on a CAS scale
        async with ScaleSim("cas") as cas:
            assert await MT8217Scale.probe_serial(cas.port, timeout=0.2) is None
        assert mt.commands == []  # nothing the CAS probe sent looked like an 8217 command


async def test_bad_bcc_is_protocol_error() -> None:
    async with ScaleSim("cas", weight_g=50) as sim, CasScale(_info(sim.port)) as scale:
        assert isinstance(scale, CasScale)
        good = sim.cas_ecr_frame()
        sim.reply_override = None
        bad = good[:12] + bytes([good[12] ^ 0x20]) + good[13:]
        original = sim.cas_ecr_frame
        sim.cas_ecr_frame = lambda: bad  # type: ignore[method-assign]
        with pytest.raises(ProtocolError, match="BCC"):
            await scale.read_weight()
        sim.cas_ecr_frame = original  # type: ignore[method-assign]


async def test_truncated_frame() -> None:
    async with ScaleSim("cas", weight_g=50) as sim, CasScale(_info(sim.port), reply_timeout=0.1) as scale:
        assert isinstance(scale, CasScale)
        frame = sim.cas_ecr_frame()
        sim.cas_ecr_frame = lambda: frame[:9]  # type: ignore[method-assign]
        with pytest.raises(ProtocolError, match="truncated"):
            await scale.read_weight()


def test_parsers_on_known_frames() -> None:
    body = b"S 01.500kg"
    bcc = 0
    for b in body:
        bcc ^= b
    assert parse_cas_ecr_frame(b"\x01\x02" + body + bytes([bcc]) + b"\x03\x04") == Weight("stable", 1500)
    assert parse_cas_continuous(b"ST,NT,10,+001.234 kg\r\n") == Weight("stable", 1234, net=True)
    assert parse_cas_continuous(b"OL,GS,10,+099.999 kg\r\n").state == "overload"
    assert parse_cas_continuous(b"US,GS,10,-000.020 kg\r\n") == Weight("negative", -20)


@settings(max_examples=300)
@given(st.binary(min_size=15, max_size=15) | st.binary(max_size=30))
def test_parsers_never_crash(data: bytes) -> None:
    for parse in (parse_cas_ecr_frame, parse_cas_continuous):
        with contextlib.suppress(ProtocolError):
            parse(data)


async def _one_bad(payload: bytes) -> None:
    async with ScaleSim("cas") as sim, CasScale(_info(sim.port), reply_timeout=0.05) as scale:
        assert isinstance(scale, CasScale)
        sim.reply_override = payload
        try:
            async with asyncio.timeout(2):
                await scale.read_weight()
        except (ProtocolError, DeviceTimeout):
            pass


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=20) | st.just(b"\x06"))
def test_bad_bytes_over_the_wire_never_crash_or_hang(payload: bytes) -> None:
    asyncio.run(_one_bad(payload))
