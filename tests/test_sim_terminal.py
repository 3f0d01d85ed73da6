"""`edgehub sim terminal` as a person runs it: what it says and how it exits."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from edgehub.broker import MosquittoProcess
from edgehub.config import Config
from edgehub.hub import Hub
from tests.conftest import REPO


def sim_terminal(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "edgehub", "sim", "terminal", *args],
                          capture_output=True, text=True, cwd=REPO, timeout=60)


async def test_orders_sent_and_acked_exit_0(hub: Hub, config_path: Path) -> None:
    done = await asyncio.to_thread(sim_terminal, "--config", str(config_path), "--orders", "5", "--rate", "50")
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("pos-1: sent 5, acked 5 (5 accepted, 0 rejected)")


async def test_a_wrong_password_is_said_at_once_and_exits_1(broker: MosquittoProcess, config: Config) -> None:
    done = await asyncio.to_thread(
        sim_terminal, "--broker", f"127.0.0.1:{config.broker.listen.port}", "--store", config.store.id,
        "--terminal", "pos-1", "--password", "not-the-password", "--orders", "3", "--timeout", "30")
    assert done.returncode == 1
    assert done.stdout.startswith("pos-1: sent 0, acked 0")
    assert f"pos-1: the broker at 127.0.0.1:{config.broker.listen.port} refused pos-1: " in done.stderr
    assert "Bad user name or password" in done.stderr or "Not authorized" in done.stderr


def test_flags_that_the_config_already_sets_are_refused(config_path: Path) -> None:
    done = sim_terminal("--config", str(config_path), "--store", "other-store", "--orders", "1")
    assert done.returncode == 2
    assert "--store and --password come from --config" in done.stderr


def on_a_terminal(*args: str) -> tuple[int, str]:
    """`edgehub sim terminal` with a pseudo-terminal for its output, as a person runs it."""
    import os
    import pty

    master, slave = pty.openpty()
    proc = subprocess.Popen([sys.executable, "-m", "edgehub", "sim", "terminal", *args], stdout=slave,
                            stderr=slave, cwd=REPO, env={**os.environ, "COLUMNS": "100"})
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 4096)
        except OSError:  # EIO: the child closed its end
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    return proc.wait(30), b"".join(chunks).decode(errors="replace")


async def test_on_a_terminal_it_shows_its_progress_while_it_runs(hub: Hub, config_path: Path) -> None:
    """The issue: `sim terminal` printed nothing while it ran, even on a terminal."""
    code, text = await asyncio.to_thread(on_a_terminal, "--config", str(config_path), "--orders", "30",
                                         "--rate", "30")
    assert code == 0, text
    assert f"sending 30 orders from pos-1 to mqtt://127.0.0.1:{hub.config.broker.listen.port} (30 orders/s each)" \
        in text, text
    redraws = [part for part in text.split("\r\x1b[K") if part.startswith("pos-1 ")]
    assert len(redraws) >= 3, text  # a second at 0.25 s a redraw, and the last
    assert redraws[-1].startswith("pos-1 30/30 sent, 30 acked"), redraws[-1]
    assert all(len(part.splitlines()[0]) < 100 for part in redraws)
    assert "pos-1: sent 30, acked 30 (30 accepted, 0 rejected)" in text
