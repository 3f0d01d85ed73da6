"""``edgehub sync`` and ``POST /api/v1/sync``: the outbox drained now (past the replay rate
limit), then a reconciliation against what the cloud reports on the cloud topic."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import urllib.error
import urllib.request
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from edgehub.config import Config, load_config
from edgehub.hub import Hub
from edgehub.uplink.synccli import HubApi, run_sync
from tests.conftest import API_TOKEN, REPO, write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudBroker, CloudRecorder
from tests.uplink.conftest import assert_cloud_has_everything, cloud_toml, seed_outbox

# So slow that without "sync now" the backlog would take minutes; the cloud's answer to a
# reconciliation may take up to down_after_s (a busy test machine is slow to answer).
SLOW = {"replay_rate": 5, "reconcile_every_s": 0, "ping_timeout_s": 4.0, "down_after_s": 8.0}


async def run_cli(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(sys.executable, "-m", "edgehub", *args, cwd=REPO,
                                                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def call(config: Config, method: str, path: str) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(f"http://127.0.0.1:{config.api.listen.port}{path}", method=method,
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture
async def slow_hub(tmp_path: Path, wan: FaultProxy) -> AsyncIterator[tuple[Hub, Path, list[str]]]:
    """A hub with a backlog and the WAN down: each test brings the cloud service up, then the WAN."""
    wan.refuse()
    path = write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port, **SLOW))
    config = load_config(path)
    ids = await seed_outbox(config.journal.path, {"orders": 400, "payments": 100, "telemetry": 100})
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        yield hub, path, ids


async def test_sync_command_drains_now_and_the_cloud_agrees(slow_hub: tuple[Hub, Path, list[str]],
                                                           recorder: CloudRecorder, wan: FaultProxy) -> None:
    hub, path, ids = slow_hub
    wan.heal()
    code, out, err = await run_cli("sync", "--config", str(path), "--timeout", "60")
    assert code == 0, (out, err)
    assert "sync: done, " in out and "reconciliation: ok" in out, out
    assert "\r" not in out  # not a terminal: plain lines, no bar
    for stream in ("orders", "payments", "telemetry"):
        assert f"  {stream} " in out
    status = (await hub.status())["uplink"]
    assert status["backlog"] == 0 and status["reconcile"]["status"] == "ok"
    assert status["replay"]["replay_rate_limit"] == 5  # the drain went past it
    assert recorder.requests and recorder.requests[-1]["schema"] == "cloud-reconcile-request/1"
    assert recorder.requests[-1]["streams"]["orders"]["produced"] == 400
    await recorder.wait_for_ids(ids)
    assert_cloud_has_everything(recorder, hub.config.journal.path, ids)


async def test_sync_on_a_terminal_draws_a_bar_and_a_mismatch_fails(slow_hub: tuple[Hub, Path, list[str]],
                                                                  cloud: CloudBroker, wan: FaultProxy) -> None:
    hub, _, _ = slow_hub

    def lose_one_order(streams: dict[str, dict[str, int]]) -> None:
        if "orders" in streams:
            streams["orders"]["count"] -= 1  # a cloud consumer that lost a row

    with CloudRecorder(cloud.port, tamper=lose_one_order):
        wan.heal()
        out = io.StringIO()
        api = HubApi(f"http://127.0.0.1:{hub.config.api.listen.port}", API_TOKEN)
        code = await asyncio.to_thread(run_sync, api, 60, out, True)
    text = out.getvalue()
    assert code == 1, text
    assert "\r[" in text and "#" in text, text
    assert "reconciliation: mismatch" in text and "cloud_missing" in text, text
    result = (await hub.status())["uplink"]["reconcile"]
    assert result["streams"]["orders"]["status"] == "cloud_missing"
    assert result["streams"]["orders"]["missing"] == 1
    assert result["streams"]["payments"]["status"] == "ok"


async def test_sync_api_waits_reports_progress_and_checks_its_input(slow_hub: tuple[Hub, Path, list[str]],
                                                                   recorder: CloudRecorder, wan: FaultProxy) -> None:
    hub, _, ids = slow_hub
    config = hub.config
    wan.heal()
    assert await asyncio.to_thread(call, config, "POST", "/api/v1/sync?wait=lots") == (
        400, {"error": "wait: must be a number of seconds"})
    assert (await asyncio.to_thread(call, config, "POST", "/api/v1/sync?wait=301"))[0] == 400
    code, progress = await asyncio.to_thread(call, config, "POST", "/api/v1/sync?wait=60")
    assert code == 200, progress
    assert progress["state"] == "done" and progress["total"] == len(ids) and progress["remaining"] == 0
    assert progress["reconcile"]["status"] == "ok"
    code, again = await asyncio.to_thread(call, config, "GET", "/api/v1/sync")
    assert code == 200 and again["state"] == "done"


async def test_sync_with_the_uplink_disabled_or_the_hub_down(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box", mode="managed")
    config = load_config(path)
    code, _, err = await run_cli("sync", "--config", str(path), "--timeout", "5")
    assert code == 1 and "cannot reach the hub" in err and "edgehub run" in err, err
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        code, body = await asyncio.to_thread(call, config, "POST", "/api/v1/sync")
        assert code == 409 and "[cloud] enabled" in body["error"]
        code, _, err = await run_cli("sync", "--config", str(path))
        assert code == 1 and "HTTP 409" in err and "[cloud] enabled" in err, err
    code, _, err = await run_cli("sync", "--config", str(tmp_path / "missing.toml"))
    assert code == 2 and "missing.toml" in err, err


class FakeHub:
    """The hub's sync API as ``run_sync`` sees it: a script of progress answers, the last kept."""

    def __init__(self, answers: list[dict[str, Any]]) -> None:
        self.answers = answers
        self.calls = 0

    def call(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        self.calls += 1
        return 200, self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]


WAITING = {"state": "waiting_for_link", "link": "offline", "link_since": "2026-12-02T22:28:58Z",
           "link_error": "cloud link lost: the cloud broker closed the connection", "total": 560, "sent": 0,
           "remaining": 560, "rate_per_s": 0, "eta_s": None, "target_seq": 560, "reconcile": None}


@pytest.mark.parametrize("tty", [False, True], ids=["plain", "terminal"])
def test_sync_says_it_waits_for_the_cloud_link(tty: bool) -> None:
    out = io.StringIO()
    code = run_sync(FakeHub([WAITING]), 2.5, out, tty, poll_s=0.02)  # type: ignore[arg-type]
    text = out.getvalue()
    assert code == 1, text
    told = [line for line in text.splitlines() if line.startswith("sync: waiting for the cloud link:")]
    assert len(told) == 1, text
    assert "since 2026-12-02T22:28:58Z" in told[0] and "closed the connection" in told[0], told
    last = text.splitlines()[-1]
    assert last.startswith("sync: not finished within 2.5 s: 560 rows still waiting; the hub has no cloud link"), last
    if tty:
        assert "\r[" in text and "waiting for the cloud link (link offline)" in text, text
    else:
        lines = [line for line in text.splitlines() if line.startswith("sync: 0/560 rows sent")]
        # Not one a second (or a dozen a second): the first at once, then every 10 s.
        assert lines == ["sync: 0/560 rows sent, 560 to go, waiting for the cloud link (link offline)"], text


def test_sync_waits_for_the_link_then_finishes() -> None:
    running = {**WAITING, "state": "running", "link": "online", "link_error": "", "sent": 300, "remaining": 260,
               "rate_per_s": 500.0, "eta_s": 0.5}
    done = {**running, "state": "done", "sent": 560, "remaining": 0, "eta_s": 0,
            "reconcile": {"status": "ok", "streams": {}}}
    # A moment without the link ("sync now" skips the backoff): no "waiting" notice for that.
    out = io.StringIO()
    code = run_sync(FakeHub([WAITING, running, running, done]), 10, out, False, poll_s=0.02)  # type: ignore[arg-type]
    assert code == 0 and "waiting for the cloud link:" not in out.getvalue(), out.getvalue()
    out = io.StringIO()
    hub = FakeHub([WAITING] * 80 + [running, done])
    code = run_sync(hub, 10, out, False, poll_s=0.02)  # type: ignore[arg-type]
    text = out.getvalue()
    assert code == 0, text
    assert text.count("sync: waiting for the cloud link:") == 1, text
    assert "sync: done, 560 rows" in text and "reconciliation: ok" in text, text


async def test_sync_command_with_the_wan_down(slow_hub: tuple[Hub, Path, list[str]]) -> None:
    _, path, ids = slow_hub
    code, out, err = await run_cli("sync", "--config", str(path), "--timeout", "3")
    assert code == 1, (out, err)
    assert out.count("sync: waiting for the cloud link: the hub has no cloud link (link ") == 1, out
    assert f"sync: not finished within 3 s: {len(ids)} rows still waiting; the hub has no cloud link" in out, out


@pytest.mark.parametrize("columns", [40, 60, 80, 132])
def test_the_progress_bar_fits_the_terminal(columns: int) -> None:
    """The issue: the bar was 85-94 characters wide, so on an 80-column terminal each redraw
    wrapped and the screen scrolled."""
    running = {**WAITING, "state": "running", "link": "online", "total": 1_234_567, "sent": 345_678,
               "remaining": 888_889, "rate_per_s": 512.5, "eta_s": 1734.2}
    done = {**running, "state": "done", "sent": 1_234_567, "remaining": 0, "eta_s": 0,
            "reconcile": {"status": "ok", "streams": {}}}
    out = io.StringIO()
    code = run_sync(FakeHub([WAITING, running, done]), 10, out, True, poll_s=0.01, columns=columns)  # type: ignore[arg-type]
    assert code == 0
    bars = [draw.rstrip("\n") for line in out.getvalue().split("\n") for draw in line.split("\r")
            if draw.startswith("[")]
    assert len(bars) >= 3 and all(len(bar) < columns for bar in bars), bars
    if columns >= 80:
        assert any("512.5/s" in bar and "eta" in bar for bar in bars), bars
