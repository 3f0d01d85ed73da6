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
from tests.conftest import API_TOKEN, REPO, write_config


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
    assert checks["cloud"]["message"].endswith("(and its journal keeps everything: retention deletes only what "
                                              "a cloud has)")
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
    assert checks["device prn-front"].message.startswith("printer TM-T20III is not usable: ")
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
    checks = by_name(doctor._roles({"devices": devices, "roles": roles}))  # noqa: SLF001
    assert checks["role receipt-printer"] == Check("role receipt-printer", "ok",
                                                   "served by prn-b; ready to take over: prn-a")
    assert checks["role pinpad"].status == "fail"
    assert checks["role scanner"].status == "warn"
    assert checks["role scanner"].message == ("not served right now (scanner: waiting for the first check of "
                                              "scn-1); healthy and bound: scn-1")


# --- the daemon check tells "not running" from "running but refusing the CLI" ------------------


def config_with_token_file(box: Box, token: str, name: str = "other.toml") -> Path:
    """A config next to the box's (same data folder, same ports) whose token, in a token file, is
    ``token``: what an installer has when the CLI's config is not the daemon's."""
    folder = box.config.source.parent
    (folder / "other-api-token").write_text(token + "\n")
    text = box.config.source.read_text().replace(f'token = "{API_TOKEN}"', 'token_file = "other-api-token"')
    assert "token_file" in text
    path = folder / name
    path.write_text(text)
    return path


async def test_cli_with_a_wrong_token_says_the_daemon_refuses_it(box: Box) -> None:
    await box.wait_device_ready()
    path = config_with_token_file(box, "not-the-hubs-token-0000")
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 1, out
    daemon = next(line for line in out.splitlines() if line.startswith("FAIL  daemon"))
    assert f"edgehub answers on 127.0.0.1:{box.hub.api.port} but refuses the token (HTTP 401)" in daemon
    assert f"the token in {path.parent.resolve() / 'other-api-token'} is not the hub's" in daemon
    assert "does not answer" not in out and "systemctl start edgehub" not in out
    assert "systemctl restart edgehub" in out  # the fix hint
    code, out = await run_cli("doctor", "--config", str(path), "--json")
    checks = {c["name"]: c for c in json.loads(out)["checks"]}
    assert checks["daemon"]["status"] == "fail" and "HTTP 401" in checks["daemon"]["message"]
    assert "did not give" in checks["devices"]["message"] and "start edgehub" not in checks["devices"]["action"]


async def test_cli_after_too_many_wrong_tokens_says_wait(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    wrong = {"Authorization": "Bearer not-the-hubs-token-0000"}
    for _ in range(10):  # the allowance of an address: then 429, even for the right token
        async with http.get(box.base + "/api/v1/status", headers=wrong) as response:
            assert response.status == 401
    async with http.get(box.base + "/api/v1/status", headers=AUTH) as response:
        assert response.status == 429
    code, out = await run_cli("doctor", "--config", str(box.config.source))
    assert code == 1, out
    daemon = next(line for line in out.splitlines() if line.startswith("FAIL  daemon"))
    assert f"edgehub answers on 127.0.0.1:{box.hub.api.port}" in daemon and "HTTP 429" in daemon
    assert "too many wrong tokens" in daemon
    assert "wait 60 s and run this again" in out
    assert "does not answer" not in out and "systemctl start edgehub" not in out


async def test_cli_names_the_address_it_tried_for_a_wildcard_listen(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    path = write_config(tmp_path / "box", api_port=port)
    path.write_text(path.read_text().replace(f'listen = "127.0.0.1:{port}"',
                                             f'listen = "0.0.0.0:{port}"\nplain_http = true'))
    assert load_config(path).api.listen.host == "0.0.0.0"
    code, out = await run_cli("doctor", "--config", str(path))
    assert code == 1
    daemon = next(line for line in out.splitlines() if line.startswith("FAIL  daemon"))
    assert f"edgehub does not answer on 127.0.0.1:{port} (connection refused)" in daemon, daemon
    assert "0.0.0.0" not in daemon and "systemctl start edgehub" in out


def test_daemon_check_for_an_inline_token_names_the_config(tmp_path: Path) -> None:
    from edgehub.doctor import DaemonUnreadable, daemon_check

    config = load_config(write_config(tmp_path))
    check = daemon_check(config, None, DaemonUnreadable("127.0.0.1:1", 401, "missing or wrong token"))
    assert check.status == "fail"
    assert f"the token in {config.source.resolve()} ([api] token) is not the hub's" in check.message
    other = daemon_check(config, None, DaemonUnreadable("127.0.0.1:1", 500, "boom"))
    assert other.message == "127.0.0.1:1 answers, but not with edgehub's status: HTTP 500 (boom)"


async def test_on_the_box_the_tools_find_its_config_and_elsewhere_ask_for_one() -> None:
    """`sudo edgehub doctor` on a box reads /etc/edgehub/edgehub.toml (where provisioning wrote
    it); on a machine that is not a box it says to give --config, and changes nothing."""
    from edgehub.cli import BOX_CONFIG

    if Path(BOX_CONFIG).exists():
        pytest.skip(f"{BOX_CONFIG} exists: this machine is a box")
    for command in ("doctor", "bundle"):
        code, out = await run_cli(command)
        assert code == 2, out
        assert out.strip() == (f"no box config at {BOX_CONFIG} (not a provisioned box?): give --config FILE, "
                               "the config edgehub runs with")
