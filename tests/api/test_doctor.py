"""``edgehub doctor`` and ``POST /api/v1/doctor``: a healthy box passes; each thing broken for
real (broker stopped, wrong password, journal corrupted, data folder read-only or full, clock
wrong, cloud unreachable, printer dead) fails that check with words an installer can act on."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgehub.broker import free_port
from edgehub.config import load_config
from edgehub.doctor import Check, Doctor, failed
from tests.api.conftest import AUTH, Box
from tests.conftest import REPO, write_config


def by_name(checks: list[Check]) -> dict[str, Check]:
    return {c.name: c for c in checks}


async def run_cli(*args: str) -> tuple[int, str]:
    # A child process, awaited without blocking the loop: the hub under test must keep answering.
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode()


@contextlib.contextmanager
def mounted_tmpfs(path: Path, options: str) -> Iterator[Path]:
    """A real small or read-only filesystem (root with mount rights); else the test is skipped."""
    path.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {result.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


async def test_healthy_box_passes_from_the_api_and_the_cli(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    async with http.post(box.base + "/api/v1/doctor", headers=AUTH) as response:
        doc = await response.json()
    checks = {c["name"]: c for c in doc["checks"]}
    assert doc["ok"] is True, doc
    for name in ("broker", "journal", "disk-space", "disk-write", "clock", "cloud", "device prn-front",
                 "role receipt-printer"):
        assert checks[name]["status"] in ("ok", "warn"), checks[name]
    assert checks["broker"]["status"] == "ok" and checks["device prn-front"]["status"] == "ok"
    code, out = await run_cli("doctor", "--config", str(box.config.source), "--json")
    assert code == 0, out
    cli = {c["name"]: c for c in json.loads(out)["checks"]}
    assert cli["daemon"]["status"] == "ok" and cli["role receipt-printer"]["status"] == "ok"
    code, out = await run_cli("doctor", "--config", str(box.config.source))
    assert code == 0 and "all checks passed" in out


async def test_stopped_broker_fails_with_what_to_do(box: Box) -> None:
    await box.broker.stop()
    checks = by_name(await box.hub.support.make_doctor().run())
    assert checks["broker"].status == "fail"
    assert "nothing answers" in checks["broker"].message
    assert "systemctl" in checks["broker"].action


async def test_wrong_broker_password_fails(box: Box) -> None:
    wrong = replace(box.config, broker=replace(box.config.broker, hub_password="not-the-password"))
    checks = by_name(await Doctor(wrong).run())
    assert checks["broker"].status == "fail"
    assert "refuses the hub's password" in checks["broker"].message


async def test_dead_printer_fails_its_device_and_role(box: Box) -> None:
    await box.wait_device_ready()
    await box.printer.kill()
    checks = by_name(await box.hub.support.make_doctor().run())
    assert checks["device prn-front"].status == "fail"
    assert "power" in checks["device prn-front"].action
    async with asyncio.timeout(15):
        # The watchdog owns the device's health; polling it is how an outside observer waits.
        while box.hub.registry.get("prn-front").health.usable:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
    checks = by_name(await box.hub.support.make_doctor().run())
    assert checks["role receipt-printer"].status == "fail"
    assert failed(checks.values())


async def test_cli_without_a_running_daemon_exits_1(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box")
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 1
    assert "FAIL  daemon" in out and "systemctl start edgehub" in out
    assert "FAIL  broker" in out


async def test_corrupt_journal_fails(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "box"))
    config.journal.path.parent.mkdir(parents=True)
    config.journal.path.write_bytes(b"SQLite format 3\x00" + os.urandom(8192))
    checks = by_name(await Doctor(config).run())
    assert checks["journal"].status == "fail"
    assert "damaged" in checks["journal"].message and "bundle" in checks["journal"].action


async def test_read_only_data_folder_fails_the_write_test(tmp_path: Path) -> None:
    data = tmp_path / "ro-data"
    if os.geteuid() == 0:
        ctx = mounted_tmpfs(data, "ro,size=4m")
    else:
        data.mkdir()
        data.chmod(0o555)
        ctx = contextlib.nullcontext(data)
    with ctx:
        path = write_config(tmp_path / "box", extra="")
        text = path.read_text().replace('data_dir = "data"', f'data_dir = "{data}"')
        path.write_text(text)
        checks = by_name(await Doctor(load_config(path)).run())
    assert checks["disk-write"].status == "fail"
    assert "cannot write" in checks["disk-write"].message


async def test_full_disk_fails(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to mount a tiny tmpfs")
    with mounted_tmpfs(tmp_path / "tiny", "size=2m") as data:
        path = write_config(tmp_path / "box")
        path.write_text(path.read_text().replace('data_dir = "data"', f'data_dir = "{data}"'))
        with contextlib.suppress(OSError):
            (data / "filler").write_bytes(b"\0" * 2 * 1024 * 1024)
        checks = by_name(await Doctor(load_config(path)).run())
    assert checks["disk-space"].status == "fail"
    assert "nearly full" in checks["disk-space"].message


async def test_clock_in_the_past_fails(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "box"))
    checks = by_name(await Doctor(config, clock=lambda: 1_000_000_000.0).run())  # 2001
    assert checks["clock"].status == "fail"
    assert "2001" in checks["clock"].message and "NTP" in checks["clock"].action


async def test_clock_behind_the_last_order_fails(box: Box) -> None:
    from tests.conftest import Terminal, order

    async with Terminal(box.config, "pos-1") as pos:
        await pos.send(order("CLK-1"))
        await pos.ack()
    import time

    doctor = Doctor(box.config, clock=lambda: time.time() - 86_400)
    checks = by_name(await doctor.run())
    assert checks["clock"].status == "fail" and "behind the last order" in checks["clock"].message


async def test_unreachable_cloud_warns_but_does_not_fail(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path = write_config(tmp_path / "box", extra="")
    path.write_text(path.read_text() + f'\n[cloud]\nenabled = true\nurl = "mqtt://127.0.0.1:{port}"\n')
    checks = by_name(await Doctor(load_config(path)).run())
    assert checks["cloud"].status == "warn"
    assert "outbox" in checks["cloud"].action
    assert checks["wan"].status == "ok"


async def test_unresolvable_cloud_host_warns_about_the_wan(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box")
    # .invalid never resolves (RFC 6761): the WAN or its DNS is what the installer must look at.
    path.write_text(path.read_text() + '\n[cloud]\nenabled = true\nurl = "mqtts://cloud.invalid:8883"\n')
    checks = by_name(await Doctor(load_config(path)).run())
    assert checks["wan"].status == "warn"
    assert "cannot resolve cloud.invalid" in checks["wan"].message
    assert "DNS" in checks["wan"].action and "outbox" in checks["wan"].action
    assert checks["cloud"].status == "warn"  # a warning, never a failure: the store works without its WAN


@pytest.mark.parametrize("password", ["wrong-cloud-password", "right"])
async def test_cloud_broker_that_refuses_the_box_warns(tmp_path: Path, password: str) -> None:
    """The cloud answers on TCP either way; only the uplink (the real one, on a real cloud
    Mosquitto with password auth) knows whether the box may sign in, and the doctor asks it."""
    from tests.uplink.cloudside import BOX_PASSWORD, BOX_USER, CloudBroker
    from tests.uplink.conftest import Rig

    async with CloudBroker(tmp_path / "cloud") as cloud:
        secret = BOX_PASSWORD if password == "right" else password
        extra = (f'\n[cloud]\nenabled = true\nurl = "mqtt://127.0.0.1:{cloud.port}"\nusername = "{BOX_USER}"\n'
                 f'password = "{secret}"\nconnect_timeout_s = 2\nreconnect_max_s = 0.5\n')
        path = write_config(tmp_path / "box")
        path.write_text(path.read_text() + extra)
        config = load_config(path)
        async with Rig(config) as rig:
            async with asyncio.timeout(15):
                # The uplink is another component with its own loop; wait until it has an answer.
                while rig.uplink.state != "online" and not rig.uplink.last_error:
                    await asyncio.sleep(0.05)

            async def read_status() -> dict[str, Any]:
                return {"uplink": await rig.uplink.status()}

            checks = by_name(await Doctor(config, read_status=read_status).run())
    assert checks["wan"].status == "ok"
    if password == "right":
        assert checks["cloud"].status == "ok" and "connected" in checks["cloud"].message, checks["cloud"]
    else:
        assert checks["cloud"].status == "warn", checks["cloud"]
        assert "cannot connect" in checks["cloud"].message and "Not authorized" in checks["cloud"].message
        assert "password" in checks["cloud"].action


def test_role_checks_name_the_serving_device_and_the_ready_spares(tmp_path: Path) -> None:
    doctor = Doctor(load_config(write_config(tmp_path)))
    devices = {"devices": [{"device_id": d, "state": s} for d, s in
                           [("prn-a", "ready"), ("prn-b", "ready"), ("pp-1", "failed"), ("scn-1", "ready")]]}
    roles = {"roles": [
        {"role": "receipt-printer", "devices": ["prn-a", "prn-b"], "device": "prn-b", "state": "serving"},
        {"role": "pinpad", "devices": ["pp-1"], "device": None, "state": "down", "reason": "pinpad: no healthy"},
        {"role": "scanner", "devices": ["scn-1"], "device": None, "state": "down",
         "reason": "scanner: waiting for the first check of scn-1"},
    ]}
    checks = by_name(doctor._roles({"devices": devices, "roles": roles}))
    assert checks["role receipt-printer"] == Check("role receipt-printer", "ok",
                                                   "served by prn-b; ready to take over: prn-a")
    assert checks["role pinpad"].status == "fail"
    assert checks["role scanner"].status == "warn"
    assert checks["role scanner"].message == ("not served right now (scanner: waiting for the first check of "
                                              "scn-1); healthy and bound: scn-1")
