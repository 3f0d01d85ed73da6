"""Every simulated scale profile (a real unit's habit) read by the drivers: the weight in grams,
the unit the scale weighs in, the number as it showed it. Each profile here failed before the
drivers read padded 8217 numbers, a trailing N, an 8217 set to lb and CAS frames in g, lb, 斤."""

from __future__ import annotations

import pytest

from drivers.base import DeviceInfo
from drivers.scale_cas import CasScale, parse_cas_continuous, parse_cas_ecr_frame
from drivers.scale_mt8217 import MT8217Scale, Weight, decimals_shown, parse_mt8217_frame
from drivers.scale_units import to_grams, unit_from_token
from edgehub.errors import ProtocolError
from edgehub.sim.scale import SCALE_PROFILES, ScaleSim

# profile -> (driver, [[device]] settings, what 1234 g reads as: unit, shown, grams back)
EXPECTED: dict[str, tuple[str, dict[str, str], str, str, int]] = {
    "mt8217": ("mt8217", {}, "kg", "01.234", 1234),
    "mt8217-padded-n": ("mt8217", {}, "kg", "1.234", 1234),
    "mt8217-lb": ("mt8217", {"unit": "lb"}, "lb", "02.72", 1234),  # 2.72 lb = 1233.77 g
    "cas": ("cas", {}, "kg", "1.234", 1234),
    "cas-g": ("cas", {}, "g", "1234", 1234),
    "cas-lb": ("cas", {}, "lb", "2.72", 1234),
    "cas-jin": ("cas", {}, "jin", "2.468", 1234),
    "cas-continuous": ("cas", {"mode": "continuous"}, "kg", "001.234", 1234),
    "cas-continuous-jin": ("cas", {"mode": "continuous"}, "jin", "002.468", 1234),
}


def test_every_profile_is_covered() -> None:
    assert set(EXPECTED) == set(SCALE_PROFILES)


def _info(port: str, driver: str, extra: dict[str, str]) -> DeviceInfo:
    return DeviceInfo(device_id="scale-p", kind="scale", transport="serial", address=port, driver=driver,
                      extra=extra)


@pytest.mark.parametrize("profile", sorted(EXPECTED))
async def test_profile_weighs_right(profile: str) -> None:
    driver, extra, unit, shown, grams = EXPECTED[profile]
    async with ScaleSim.from_profile(profile, weight_g=1234) as sim:
        cls = MT8217Scale if driver == "mt8217" else CasScale
        async with cls(_info(sim.port, driver, extra)) as scale:
            weight = await scale.read_weight()  # type: ignore[attr-defined]
            assert weight == Weight("stable", grams, unit=unit)  # type: ignore[arg-type]
            assert weight.shown == shown
            sim.weight_g = 0
            zero = await scale.read_weight()  # type: ignore[attr-defined]
            assert (zero.state, zero.grams, zero.unit) == ("zero", 0, unit)
            sim.motion = True
            sim.weight_g = 500
            moving = await scale.read_weight()  # type: ignore[attr-defined]
            assert moving.state == "unstable" and not moving.sellable


async def test_an_8217_set_to_lb_read_as_kg_is_caught_by_its_decimals() -> None:
    # Without the profile the number is taken for kilograms: 2.72 lb would sell as 2720 g.
    async with ScaleSim.from_profile("mt8217-lb", weight_g=1234) as sim, MT8217Scale(
        _info(sim.port, "mt8217", {})
    ) as scale:
        assert isinstance(scale, MT8217Scale)
        weight = await scale.read_weight()
        assert (weight.grams, weight.unit, decimals_shown(weight)) == (2720, "kg", 2)


def test_8217_frames_real_units_send() -> None:
    assert parse_mt8217_frame(b"\x02 1.234\r") == Weight("stable", 1234)
    assert parse_mt8217_frame(b"\x0201.234N\r") == Weight("stable", 1234)
    assert parse_mt8217_frame(b"\x02   .050N\r") == Weight("stable", 50)
    assert parse_mt8217_frame(b"\x02 ?D\r") == Weight("negative", None)  # blank before the status too
    assert parse_mt8217_frame(b"\x0202.72\r", "lb") == Weight("stable", 1234, unit="lb")
    assert parse_mt8217_frame(b"\x02 0.000N\r").state == "zero"
    for bad in (b"\x021.2.3\r", b"\x02N\r", b"\x021.234NN\r", b"\x02 \r", b"\x02?\r", b"\x02 ?DD\r"):
        with pytest.raises(ProtocolError):
            parse_mt8217_frame(bad)


def _ecr(body: bytes) -> bytes:
    bcc = 0
    for b in body:
        bcc ^= b
    return b"\x01\x02" + body + bytes([bcc]) + b"\x03\x04"


def test_cas_frames_in_every_unit() -> None:
    assert parse_cas_ecr_frame(_ecr(b"S  1.234kg")) == Weight("stable", 1234)
    assert parse_cas_ecr_frame(_ecr(b"S  1.234KG")) == Weight("stable", 1234)
    assert parse_cas_ecr_frame(_ecr(b"S   1234G")) == Weight("stable", 1234, unit="g")
    assert parse_cas_ecr_frame(_ecr(b"U   2.72LB")) == Weight("unstable", 1234, unit="lb")
    assert parse_cas_ecr_frame(_ecr(b"S  2.468SJ")) == Weight("stable", 1234, unit="jin")
    assert parse_cas_ecr_frame(_ecr(b"S- 0.010SJ")) == Weight("negative", -5, unit="jin")
    assert parse_cas_ecr_frame(_ecr(b"F  0.000kg")).grams is None  # "weight is abnormal"
    assert parse_cas_continuous(b"ST,GS,10,+001.234  g\r\n") == Weight("stable", 1, unit="g")
    assert parse_cas_continuous(b"ST,NT,10,+002.468 SJ\r\n") == Weight("stable", 1234, net=True, unit="jin")
    with pytest.raises(ProtocolError, match="Taiwan catty"):
        parse_cas_ecr_frame(_ecr(b"S  2.057TJ"))
    with pytest.raises(ProtocolError, match="not kg, g, lb"):
        parse_cas_ecr_frame(_ecr(b"S  2.057XY"))


def test_unit_conversions() -> None:
    assert to_grams(b"1", "lb") == 454 and to_grams(b"0.001", "lb") == 0 and to_grams(b"2.5", "jin") == 1250
    assert unit_from_token(b" sj") == "jin" and unit_from_token(b"g ") == "g"
    for bad in (b"NaN", b"inf", b"1e3x", b""):
        with pytest.raises(ProtocolError):
            to_grams(bad, "kg")


async def test_scale_field_checks() -> None:
    async with ScaleSim.from_profile("mt8217-padded-n", weight_g=1234) as sim, MT8217Scale(
        _info(sim.port, "mt8217", {}), reply_timeout=0.2
    ) as scale:
        check = await scale.field_check(1.0)
        assert check.ok and check.profile == {"unit": "kg"}
        assert check.steps[0].raw == b"\x02 1.234N\r" and "1.234 kg = 1234 g, stable" in check.steps[0].detail
        sim.overload = True
        check = await scale.field_check(1.0)
        assert not check.ok and "take the weight off" in check.steps[0].detail and len(check.steps) == 1
        sim.overload, sim.silent = False, True
        check = await scale.field_check(1.0)
        assert not check.ok and "no answer" in check.steps[0].detail and "9600 baud" in check.steps[0].detail
        sim.silent, sim.reply_override = False, b"\x02garbage\r"
        check = await scale.field_check(1.0)
        assert not check.ok and check.steps[0].raw == b"\x02garbage\r"
    async with ScaleSim.from_profile("cas-continuous-jin", weight_g=500) as sim, CasScale(
        _info(sim.port, "cas", {"mode": "continuous"})
    ) as cas:
        check = await cas.field_check(1.0)  # type: ignore[attr-defined]
        assert check.ok and check.profile == {"mode": "continuous", "unit": "jin"}
        assert check.steps[0].raw.endswith(b" SJ\r\n") and "1.000 jin = 500 g" in check.steps[0].detail
    with pytest.raises(ValueError, match="kg or lb"):
        MT8217Scale(_info("/dev/null", "mt8217", {"unit": "jin"}))
