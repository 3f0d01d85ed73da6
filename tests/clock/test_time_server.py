"""The box serves time to the store (a real chronyd on loopback, configured from edgehub.toml
by edgehub, asked over NTP as a till asks it, its state read by a real hub): with the WAN down
from the start, with an upstream that then goes away; what the page, the status and
``edgehub doctor`` say; and what chrony would serve without the box's settings."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest

from edgehub.broker import free_port
from edgehub.clock import conf_text, write_config
from edgehub.clock.ntp import query
from edgehub.config import Config, load_config
from edgehub.doctor import Doctor
from edgehub.hub import Hub
from tests.clock.conftest import Chronyd, needs_chrony
from tests.conftest import write_config as write_box_config

pytestmark = needs_chrony


def box_config(folder: Path, upstream_port: int, ntp_port: int, cmd_port: int) -> Config:
    clock = f"""
[clock]
servers = ["127.0.0.1:{upstream_port}"]
pools = []
allow = ["127.0.0.0/8"]
port = {ntp_port}
command_port = {cmd_port}
check_every_s = 1
"""
    return load_config(write_box_config(folder, mode="managed", extra=clock))


def box_lines(config: Config) -> list[str]:
    """The box's chronyd: Debian's chrony.conf reads conf.d, where edgehub's file is; here the
    same file is included, and NTP is bound to loopback (the test's only network)."""
    path = write_config(config)
    return [f"include {path}", "bindaddress 127.0.0.1"]


async def until_synchronised(hub: Hub, timeout: float = 20.0) -> dict[str, object]:
    deadline = time.monotonic() + timeout
    while True:
        state = await hub.clock_watch.check()
        if state.synchronised:
            return await hub.clock_watch.status()
        assert time.monotonic() < deadline, f"not synchronised: {state}"
        await asyncio.sleep(0.5)


def test_the_chrony_file_says_what_edgehub_toml_says(tmp_path: Path) -> None:
    config = box_config(tmp_path / "box", 11999, 12123, 12323)
    text = conf_text(config)
    assert "server 127.0.0.1 iburst port 11999" in text.splitlines()
    assert "allow 127.0.0.0/8" in text and "local stratum 10" in text and "port 12123" in text
    assert "cmdport 12323" in text and "pool " not in text
    assert config.clock.config_file == tmp_path / "box" / "chrony" / "edgehub.conf"
    assert write_config(config).read_text() == text


def test_clock_settings_that_would_break_chrony_s_file_are_refused(tmp_path: Path) -> None:
    from edgehub.cli import main
    from edgehub.errors import ConfigError

    path = write_box_config(tmp_path / "box", extra='[clock]\nservers = ["ntp.example.com\\nallow all"]\n'
                                                   'allow = ["the whole internet"]\nlocal_stratum = 16\n')
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    problems = "\n".join(caught.value.problems)
    assert "clock.servers: 'ntp.example.com\\nallow all' is not a host name or address" in problems
    assert "clock.allow: 'the whole internet' is not a subnet" in problems
    assert "clock.local_stratum: must be 1 to 15, got 16" in problems
    good = box_config(tmp_path / "good", 11999, 12123, 12323)
    assert main(["clock", "write-config", "--config", str(good.source)]) == 0
    assert good.clock.config_file.read_text() == conf_text(good)


async def test_with_the_wan_down_the_box_serves_its_own_clock(tmp_path: Path) -> None:
    ntp, cmd, dead_upstream = free_port(), free_port(), free_port()
    config = box_config(tmp_path / "box", dead_upstream, ntp, cmd)
    # Without the box's settings (no local stratum), chrony answers as unsynchronised: tills refuse it.
    bare = [line for line in conf_text(config).splitlines() if not line.startswith("local ")]
    async with Chronyd(tmp_path / "bare", "bare", [*bare, "bindaddress 127.0.0.1"], ntp):
        answer = await query("127.0.0.1", ntp)
        assert answer.leap == 3 and not answer.usable
    async with Chronyd(tmp_path / "chrony", "box", box_lines(config), ntp):
        answer = await query("127.0.0.1", ntp)
        assert answer.usable and answer.stratum == 10 and answer.reference == "127.127.1.1"
        assert abs(answer.offset_s) < 0.5
        async with Hub(config) as hub:
            await asyncio.wait_for(hub.ready.wait(), 10)
            await hub.clock_watch.check()
            clock = (await hub.status())["clock"]
            assert clock["running"] is True and clock["serving_own_clock"] is True and clock["stratum"] == 10
            assert clock["summary"] == f"no upstream reachable: serving its own clock at stratum 10; serving the " \
                                       f"store on UDP {ntp}"
            assert [s["state"] for s in clock["sources"]] == ["unreachable"]
        checks = {c.name: c for c in await Doctor(config).run()}
        assert checks["time-server"].status == "warn"
        assert "serving its own clock" in checks["time-server"].message
    # chrony gone: the doctor says the store gets no time from the box.
    checks = {c.name: c for c in await Doctor(config).run()}
    assert checks["time-server"].status == "warn" and "no answer from chronyd" in checks["time-server"].message


@pytest.mark.slow
async def test_synchronised_while_the_wan_is_up_and_still_serving_when_it_goes(tmp_path: Path) -> None:
    upstream_port, ntp, cmd = free_port(), free_port(), free_port()
    config = box_config(tmp_path / "box", upstream_port, ntp, cmd)
    # The internet's time server, as far as this test goes: a chronyd at stratum 2 on loopback.
    upstream = Chronyd(tmp_path / "up", "upstream", ["allow 127.0.0.1", f"port {upstream_port}",
                                                     "bindaddress 127.0.0.1", "cmdport 0", "local stratum 2"],
                       upstream_port)
    async with upstream, Chronyd(tmp_path / "chrony", "box", box_lines(config), ntp):
        async with Hub(config) as hub:
            await asyncio.wait_for(hub.ready.wait(), 10)
            clock = await until_synchronised(hub)
            assert clock["reference"] == "127.0.0.1" and clock["stratum"] == 3
            assert clock["summary"].startswith("synchronised to 127.0.0.1 (stratum 3)")
            answer = await query("127.0.0.1", ntp)
            assert answer.usable and answer.stratum == 3
            checks = {c.name: c for c in await Doctor(config).run()}
            assert checks["time-server"].status == "ok", checks["time-server"]
            assert checks["time-server"].message.endswith("tills get stratum 3")
            upstream.stop()  # the WAN goes down: the box keeps serving the time it was steering
            for _ in range(3):
                await asyncio.sleep(1)
                answer = await query("127.0.0.1", ntp)
                assert answer.usable and answer.stratum in (3, 10)
