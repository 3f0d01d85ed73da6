"""The worked example of docs/design.md ("Adding a component: the whole diff") really is the whole
diff: applied to a copy of the code it passes the architecture checks, and a real ``edgehub run``
from that copy counts an order a till sends in ``/api/v1/status``."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import Config
from tests.conftest import API_TOKEN, REPO, Terminal, order
from tests.test_architecture import cycles, import_graph, layers, wrong_way


def example_diff(design: str) -> str:
    block = re.search(r"<!-- example: .*?-->\s*```diff\n(.*?)```", design, re.S)
    assert block, "docs/design.md has no worked example of a component"
    return block.group(1)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The code and docs/design.md as they are, with the example's diff applied."""
    root = tmp_path / "tree"
    for part in ("edgehub", "drivers"):
        shutil.copytree(REPO / part, root / part, ignore=shutil.ignore_patterns("__pycache__"))
    (root / "docs").mkdir()
    shutil.copy(REPO / "docs" / "design.md", root / "docs" / "design.md")
    diff = example_diff((REPO / "docs" / "design.md").read_text())
    done = subprocess.run(["git", "apply", "-"], input=diff, text=True, cwd=root, capture_output=True)
    assert done.returncode == 0, f"the example's diff does not apply: {done.stderr}"
    return root


def test_the_example_keeps_the_graph_and_the_layers(copy: Path) -> None:
    graph = import_graph(copy)
    assert "edgehub.ordercount" in graph["edgehub.hub"]
    assert cycles(graph) == []
    assert wrong_way(graph, layers((copy / "docs" / "design.md").read_text())) == []


def status(config: Config) -> dict[str, object]:
    request = urllib.request.Request(config.api.listen.local_url("/api/v1/status"),
                                     headers={"Authorization": f"Bearer {API_TOKEN}"})
    with urllib.request.urlopen(request, timeout=5) as response:
        doc: dict[str, object] = json.load(response)
        return doc


def wait_up(proc: subprocess.Popen[bytes], config: Config, log: Path, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"the hub exited with {proc.returncode}: {log.read_text()[-2000:]}")
        try:
            if status(config)["broker"]["connected"]:  # type: ignore[index]
                return
        except OSError:
            pass
        time.sleep(0.1)
    raise AssertionError(f"the hub did not come up: {log.read_text()[-2000:]}")


def start_hub(copy: Path, config_path: Path, log: Path) -> subprocess.Popen[bytes]:
    with open(log, "wb") as out:
        # Run from the copy: ``-m`` puts the working directory first on the import path.
        return subprocess.Popen([sys.executable, "-m", "edgehub", "run", "--config", str(config_path)],
                                cwd=copy, stdout=out, stderr=out, env={**os.environ, "PYTHONPATH": str(copy)})


def stop_hub(proc: subprocess.Popen[bytes]) -> None:
    proc.terminate()
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


async def test_a_hub_with_the_example_counts_the_orders(copy: Path, broker: MosquittoProcess, config: Config,
                                                        config_path: Path, tmp_path: Path) -> None:
    log = tmp_path / "hub.log"
    proc = await asyncio.to_thread(start_hub, copy, config_path, log)
    try:
        await asyncio.to_thread(wait_up, proc, config, log)
        assert (await asyncio.to_thread(status, config))["order_count"] == {"accepted": 0}
        async with Terminal(config, "pos-1") as pos:
            for n in range(3):
                await pos.send(order(f"C-{n}"))
                assert (await pos.ack(timeout=10))["status"] == "accepted"
        assert (await asyncio.to_thread(status, config))["order_count"] == {"accepted": 3}
    finally:
        await asyncio.to_thread(stop_hub, proc)
