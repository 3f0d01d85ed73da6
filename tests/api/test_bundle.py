"""Support bundles: everything support needs, and not one secret of the config, even one that
leaked into a log line (byte search of every extracted file)."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import tarfile
from pathlib import Path

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess, free_port
from edgehub.bundle import REDACTED, config_secrets, redact_config_text
from edgehub.config import load_config
from edgehub.hub import Hub
from tests.api.conftest import AUTH, INSTALLER_PIN, Box
from tests.conftest import API_TOKEN, REPO, write_config


def extract(data: bytes) -> dict[str, bytes]:
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            handle = tar.extractfile(member)
            if handle is not None:
                files[member.name.partition("/")[2]] = handle.read()
    return files


def assert_no_secret(files: dict[str, bytes], secrets: set[str]) -> None:
    assert secrets, "the test config must hold secrets"
    for name, data in files.items():
        for secret in secrets:
            assert secret.encode() not in data, f"{secret!r} found in {name}"


def test_config_text_is_redacted_by_key_name() -> None:
    text = '[api]\ntoken = "abc"  # the box token\ninstaller_pin = "123456"\nlisten = "127.0.0.1:1"\n'
    out = redact_config_text(text)
    assert 'token = "[REDACTED]"  # the box token' in out
    assert 'installer_pin = "[REDACTED]"' in out and 'listen = "127.0.0.1:1"' in out


async def test_bundle_from_the_api_holds_no_secret(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    secrets = config_secrets(box.config)
    assert {API_TOKEN, INSTALLER_PIN, "hub-secret-password", "pw-pos-1", "pw-pos-2"} <= secrets
    # A careless log line with secrets in it lands in the ring buffer; the bundle must still be clean.
    logging.getLogger("edgehub.test").warning("oops token=%s pin=%s pw=%s", API_TOKEN, INSTALLER_PIN,
                                              "hub-secret-password")
    async with http.get(box.base + "/api/v1/bundle", headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"] == "application/gzip"
        assert "attachment" in response.headers["Content-Disposition"]
        data = await response.read()
    files = extract(data)
    for name in ("README.txt", "config/edgehub.toml", "status.json", "devices.json", "roles.json",
                 "outbox.json", "doctor.json", "logs/recent.log"):
        assert name in files, sorted(files)
    assert b"prn-front" in files["devices.json"]
    assert b"receipt-printer" in files["roles.json"]
    assert b"oops token=" + REDACTED.encode() in files["logs/recent.log"]
    assert REDACTED.encode() in files["config/edgehub.toml"]
    assert_no_secret(files, secrets)


async def test_cli_bundle_with_and_without_the_daemon(box: Box, tmp_path: Path) -> None:
    import asyncio
    import sys

    out = tmp_path / "b.tar.gz"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", "bundle", "--config",
                                                str(box.config.source), "-o", str(out), cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    text, _ = await proc.communicate()
    assert proc.returncode == 0, text
    assert b"running edgehub" in text
    files = extract(out.read_bytes())
    assert "logs/recent.log" in files
    assert_no_secret(files, config_secrets(box.config))

    await box.hub.__aexit__(None, None, None)  # the daemon is gone: the CLI makes the bundle itself
    out2 = tmp_path / "b2.tar.gz"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", "bundle", "--config",
                                                str(box.config.source), "-o", str(out2), cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    text, _ = await proc.communicate()
    assert proc.returncode == 0, text
    assert b"not answering" in text
    files = extract(out2.read_bytes())
    assert {"config/edgehub.toml", "doctor.json", "outbox.json"} <= set(files)
    assert_no_secret(files, config_secrets(box.config))


# A box signed in to the cloud one way or the other: a password, or the enrollment token the
# cloud console gave (edgehub provision). The cloud is unreachable (nothing listens):
# the uplink's error messages land in the log and the status, and must not carry the secrets.
CLOUD_PASSWORD = "cloud-pw-7f3a9c2e1d"
ENROLLMENT_TOKEN = "enroll-tok-55aa66bb77cc"
SCREEN_TOKEN = "screen-tok-0a1b2c3d4e"


def cloud_extra(kind: str, port: int) -> str:
    text = f'\n[kitchen]\nscreen_token = "{SCREEN_TOKEN}"\n\n[cloud]\nenabled = true\nconnect_timeout_s = 1\n'
    if kind == "password":
        return text + f'url = "mqtt://127.0.0.1:{port}"\nusername = "box-s1"\npassword = "{CLOUD_PASSWORD}"\n'
    return text + f'url = "mqtt://127.0.0.1:{port}"\nenrollment_token = "{ENROLLMENT_TOKEN}"\n'


@pytest.mark.parametrize("kind", ["password", "enrollment_token"])
async def test_cloud_credentials_and_terminal_passwords_never_reach_the_bundle(
        tmp_path: Path, http: aiohttp.ClientSession, kind: str) -> None:
    config = load_config(write_config(tmp_path / "box", terminals=("pos-1", "kds-1"),
                                      extra=cloud_extra(kind, free_port())))
    secrets = config_secrets(config)
    cloud_secret = CLOUD_PASSWORD if kind == "password" else ENROLLMENT_TOKEN
    expected = {API_TOKEN, "hub-secret-password", "pw-pos-1", "pw-kds-1", SCREEN_TOKEN, cloud_secret}
    assert expected <= secrets, expected - secrets
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        assert hub.uplink is not None
        async with asyncio.timeout(15):
            while not hub.uplink.last_error:
                await asyncio.sleep(0.05)
        logging.getLogger("edgehub.test").warning(
            "careless: cloud=%s screen=%s pos=%s", cloud_secret, SCREEN_TOKEN, "pw-pos-1")
        async with http.get(f"{hub.api.url}api/v1/bundle", headers=AUTH) as response:
            assert response.status == 200
            files = extract(await response.read())
    assert b"careless: cloud=" + REDACTED.encode() in files["logs/recent.log"]
    config_text = files["config/edgehub.toml"].decode()
    assert "[cloud]" in config_text and "127.0.0.1" in config_text  # the config is there, minus secrets
    assert json.loads(files["outbox.json"])["uplink"]["link"]["last_error"]  # why the cloud is offline
    assert_no_secret(files, expected | secrets)


async def test_cli_bundle_with_a_wrong_token_says_the_daemon_refuses_it(box: Box, tmp_path: Path) -> None:
    import sys

    folder = box.config.source.parent
    (folder / "other-api-token").write_text("not-the-hubs-token-0000\n")
    other = folder / "other.toml"
    other.write_text(box.config.source.read_text().replace(f'token = "{API_TOKEN}"',
                                                           'token_file = "other-api-token"'))
    box.hub.api.failures.clock = lambda: 1000.0  # no refill while the test runs: count exactly
    out = tmp_path / "b.tar.gz"
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", "bundle", "--config", str(other),
                                                "-o", str(out), cwd=REPO, stdout=asyncio.subprocess.PIPE,
                                                stderr=asyncio.subprocess.STDOUT)
    raw, _ = await proc.communicate()
    text = raw.decode()
    assert proc.returncode == 0, text
    assert f"edgehub answers on 127.0.0.1:{box.hub.api.port} but refuses the token (HTTP 401)" in text, text
    assert f"the token in {folder.resolve() / 'other-api-token'} is not the hub's" in text
    assert "not answering" not in text and "systemctl restart edgehub" in text
    files = extract(out.read_bytes())
    assert "refuses the token" in json.loads(files["status.json"])["note"]
    assert b"hub: edgehub answers on" in files["README.txt"]
    daemon = next(c for c in json.loads(files["doctor.json"])["checks"] if c["name"] == "daemon")
    assert "HTTP 401" in daemon["message"]
    # The bundle asked once and its self-check did not ask again: one wrong token, not two.
    assert box.hub.api.failures._level("127.0.0.1") == 9.0  # noqa: SLF001


async def test_recent_log_starts_before_the_journal_and_discovery(
        tmp_path: Path, http: aiohttp.ClientSession, caplog: pytest.LogCaptureFixture) -> None:
    """On a box without journald the ring is all support has: it must hold the start-up, from the
    journal's migration and the devices found on, not only what came after the API started."""
    from edgehub.sim.printer import PrinterSim
    from tests.api.conftest import box_extra

    caplog.set_level(logging.INFO, logger="edgehub")  # what `edgehub run` logs at its default level
    async with PrinterSim() as printer:
        config = load_config(write_config(tmp_path / "box", extra=box_extra(printer.address)))
        async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            async with http.get(f"{hub.api.url}api/v1/bundle", headers=AUTH) as response:
                assert response.status == 200
                recent = extract(await response.read())["logs/recent.log"].decode()
            ring = hub.support.recent
            assert ring.lines.maxlen == 2000  # still bounded
    lines = recent.splitlines()

    def first(text: str) -> int:
        at = [i for i, line in enumerate(lines) if text in line]
        assert at, f"{text!r} is not in logs/recent.log:\n{recent}"
        return at[0]

    assert first("created (schema") < first("device prn-front found") < first("ready: store s1"), recent
    # Detached once the hub has stopped: hubs in one process leak no handlers.
    assert all(ring not in logging.getLogger(name).handlers for name in ("edgehub", "drivers"))


async def test_cli_bundle_goes_to_a_stated_place_not_the_current_folder(tmp_path: Path) -> None:
    """The issue: `edgehub bundle` wrote into the current folder (an untracked file in the repo),
    and its mosquitto.log had raw epoch times."""
    import re
    import sys

    config = load_config(write_config(tmp_path / "box", mode="managed"))
    here = tmp_path / "checkout"
    here.mkdir()
    async with Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", "bundle", "--config",
                                                    str(config.source), cwd=here, stdout=asyncio.subprocess.PIPE,
                                                    stderr=asyncio.subprocess.STDOUT)
        text = (await proc.communicate())[0].decode()
    assert proc.returncode == 0, text
    assert list(here.iterdir()) == []
    written = list((config.paths.data_dir / "bundles").glob("edgehub-s1-*.tar.gz"))
    assert len(written) == 1 and f"wrote {written[0]} (" in text, text
    broker_log = extract(written[0].read_bytes())["logs/mosquitto.log"].decode().splitlines()
    assert broker_log and all(re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d: ", line) for line in broker_log), broker_log
