"""One running hub per data directory, every port checked before anything is written, and a hub
that never logs in to a broker it did not start: as a newcomer meets it, with real `edgehub run`
processes (a second `make run` in another terminal, a port another program holds)."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from edgehub.broker import free_port
from edgehub.config import Config, load_config
from tests.conftest import REPO, HubProcess, Terminal, order, write_config


def run_edgehub(config_path: Path, *args: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgehub", "run", "--config", str(config_path), *args],
                          capture_output=True, text=True, timeout=timeout, cwd=REPO)


def said(result: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (result.stdout + result.stderr).splitlines() if line.strip()]


def files_under(directory: Path) -> dict[str, tuple[int, bytes]]:
    """Every file below ``directory`` with its mtime and bytes: what "nothing written" compares."""
    return {str(p.relative_to(directory)): (p.stat().st_mtime_ns, p.read_bytes())
            for p in sorted(directory.rglob("*")) if p.is_file()}


def outbox_rows(config: Config) -> set[str]:
    conn = sqlite3.connect(f"file:{config.journal.path}?mode=ro", uri=True)
    try:
        return {row[0] for row in conn.execute("SELECT msg_id FROM outbox")}
    finally:
        conn.close()


def status(config: Config) -> dict[str, object]:
    request = urllib.request.Request(config.api.listen.local_url("/api/v1/status"),
                                     headers={"Authorization": "Bearer test-token-0123456789abcdef"})
    with urllib.request.urlopen(request, timeout=5) as response:
        doc: dict[str, object] = json.load(response)
        return doc


def healthz(config: Config) -> tuple[int, dict[str, str]]:
    try:
        with urllib.request.urlopen(config.api.listen.local_url("/healthz"), timeout=5) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as exc:
        return exc.code, json.load(exc)


@pytest.fixture
def listener() -> Iterator[socket.socket]:
    """Another program's listening socket (this test process), nothing ever accepted from it."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.setblocking(False)
    yield sock
    sock.close()


def connected_to(sock: socket.socket) -> bool:
    """Did anybody connect to ``sock`` (the kernel completes a connection before accept)?"""
    try:
        conn, _ = sock.accept()
    except BlockingIOError:
        return False
    conn.close()
    return True


async def test_a_second_start_says_which_hub_runs_and_writes_nothing(tmp_path: Path) -> None:
    """The issue's first defect: a second `make run` beside a running one died with a traceback
    after writing 6 rows into the running hub's outbox and rewriting its broker files."""
    path = write_config(tmp_path / "box", mode="managed")
    first = HubProcess(path, tmp_path / "first.log")
    config = first.config
    try:
        await asyncio.to_thread(first.start)
        async with Terminal(config, "pos-1") as pos:
            await pos.send(order("BEFORE-1"))
            assert (await pos.ack())["status"] == "accepted"
        rows = outbox_rows(config)
        before = files_under(config.paths.run_dir)
        assert before, "the running hub's broker files"

        second = await asyncio.to_thread(run_edgehub, path)

        lines = said(second)
        assert second.returncode == 1, lines
        assert len(lines) == 1, lines
        assert "already running" in lines[0] and f"process {first.proc.pid}" in lines[0], lines  # type: ignore[union-attr]
        assert "Traceback" not in second.stderr
        # The first hub's own rows for its order's tickets ride along with its next commit; nothing else.
        assert all(msg_id.startswith("kitchen:BEFORE-1/") for msg_id in outbox_rows(config) - rows)
        assert files_under(config.paths.run_dir) == before
        # The first hub never noticed: still connected on its first connection.
        broker = status(config)["broker"]
        assert isinstance(broker, dict) and broker["connected"] and broker["connects"] == 1
    finally:
        first.stop()


def test_a_taken_api_port_stops_the_start_before_anything_is_written(
        tmp_path: Path, listener: socket.socket) -> None:
    api_port = free_port()
    listener.bind(("127.0.0.1", api_port))
    listener.listen()
    config = load_config(write_config(tmp_path / "box", mode="managed", api_port=api_port))

    result = run_edgehub(config.source)

    lines = said(result)
    assert result.returncode == 1 and len(lines) == 1, lines
    assert f"api.listen 127.0.0.1:{api_port}: port {api_port} is in use by process {os.getpid()}" in lines[0]
    assert "Traceback" not in result.stderr
    assert not config.paths.data_dir.exists() and not config.paths.run_dir.exists()


def test_a_hub_whose_broker_port_is_taken_never_says_ready_nor_logs_in_there(
        tmp_path: Path, listener: socket.socket) -> None:
    """The issue's second defect: with its broker's port taken the hub printed "ready" and its
    dashboard anyway, logged in to the other hub's broker and the two knocked each other off."""
    broker_port = free_port()
    listener.bind(("127.0.0.1", broker_port))
    listener.listen()
    config = load_config(write_config(tmp_path / "box", mode="managed", broker_port=broker_port))

    result = run_edgehub(config.source, "--simulate")

    lines = said(result)
    assert result.returncode == 1 and len(lines) == 1, lines
    assert f"broker.listen 127.0.0.1:{broker_port}: port {broker_port} is in use by process {os.getpid()}" \
        in lines[0]
    assert "ready" not in result.stdout and "dashboard" not in result.stdout
    assert not connected_to(listener)
    assert not config.paths.data_dir.exists() and not config.paths.run_dir.exists()


async def test_a_program_taking_the_port_of_the_hubs_own_dead_broker_gets_no_login(
        tmp_path: Path, listener: socket.socket) -> None:
    """Managed mode: the hub's own Mosquitto dies and another program takes its port before the
    hub starts it again. The hub does not connect there (another hub's broker would take its
    login); it says why, and connects again once its own broker is back."""
    process = HubProcess(write_config(tmp_path / "box", mode="managed"), tmp_path / "hub.log")
    config = process.config
    port = config.broker.listen.port
    try:
        await asyncio.to_thread(process.start)
        assert process.proc is not None
        mosquitto = next(p for p in psutil.Process(process.proc.pid).children() if p.name() == "mosquitto")
        mosquitto.kill()
        await asyncio.to_thread(mosquitto.wait, 5)  # its listening socket is gone with it
        listener.bind(("127.0.0.1", port))
        listener.listen()
        # Two restarts fall in this window (0.5 s, then 1 s later): neither may log in here.
        deadline = time.monotonic() + 1.8
        while time.monotonic() < deadline:
            assert not connected_to(listener), "the hub connected to a broker it did not start"
            await asyncio.sleep(0.05)
        code, health = await asyncio.to_thread(healthz, config)
        assert code == 503 and f"in use by process {os.getpid()}" in health["reason"], health
        listener.close()
        async with asyncio.timeout(15):
            while (await asyncio.to_thread(healthz, config))[0] != 200:
                await asyncio.sleep(0.1)
        async with Terminal(config, "pos-1") as pos:
            await pos.send(order("AFTER-1"))
            assert (await pos.ack())["status"] == "accepted"
    finally:
        process.stop()
    assert "Traceback" not in process.log_path.read_text()
