"""Shared test parts: real Mosquitto brokers on free loopback ports, real hubs, real terminals."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import edgehub.broker as broker_module
from edgehub.broker import MosquittoProcess, free_port
from edgehub.bus.message import Message
from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config, load_config
from edgehub.devices.tables import TABLES as DEVICE_TABLES
from edgehub.errors import MqttError
from edgehub.hub import Hub
from edgehub.kitchen.tables import TABLES as KITCHEN_TABLES
from edgehub.online.tables import TABLES as ONLINE_TABLES
from edgehub.reports.tables import TABLES as REPORT_TABLES
from edgehub.roles.tables import TABLES as ROLE_TABLES
from edgehub.uplink.tables import TABLES as UPLINK_TABLES

REPO = Path(__file__).resolve().parent.parent
# Every owner's journal tables, in the hub's order (tests/test_architecture.py holds the hub to
# it): for tests that open a journal without the components and write their rows themselves.
ALL_TABLES = (UPLINK_TABLES, DEVICE_TABLES, ROLE_TABLES, KITCHEN_TABLES, ONLINE_TABLES, REPORT_TABLES)

# Under pytest-xdist each worker walks its own slice of free_port's range, so two workers never
# name the same port at the same moment.
if (_worker := os.environ.get("PYTEST_XDIST_WORKER", "")).startswith("gw"):
    _workers = max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))
    broker_module._next_port = itertools.count(int(_worker[2:]) * broker_module._PORT_SPAN // _workers)  # noqa: SLF001

API_TOKEN = "test-token-0123456789abcdef"
# Drives every station's screen (kitchen.screen_token); never the API token (docs/security.md).
SCREEN_TOKEN = "test-screen-0123456789abcdef"


def write_config(directory: Path, *, store: str = "s1", terminals: tuple[str, ...] = ("pos-1", "pos-2"),
                 broker_port: int | None = None, api_port: int | None = None, mode: str = "external",
                 extra: str = "", lan_port: int | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    broker_port = broker_port or free_port()
    api_port = api_port or free_port()
    text = f"""
[store]
id = "{store}"
name = "Test store"

[paths]
data_dir = "data"
run_dir = "run"

[broker]
mode = "{mode}"
listen = "127.0.0.1:{broker_port}"
{f'lan_listen = "127.0.0.1:{lan_port}"' if lan_port else ""}
hub_password = "hub-secret-password"

[api]
listen = "127.0.0.1:{api_port}"
token = "{API_TOKEN}"
{_with_screen_token(extra)}
"""
    for terminal in terminals:
        kind = next((k for k in ("kds", "display", "pager", "kiosk") if terminal.startswith(k)), "pos")
        text += f'\n[[terminal]]\nid = "{terminal}"\nkind = "{kind}"\npassword = "pw-{terminal}"\n'
        if kind == "display":  # a customer display's page (/pickup) takes its own screen secret
            text += f'screen_token = "{display_secret(terminal)}"\n'
    path = directory / "edgehub.toml"
    path.write_text(text)
    return path


def display_secret(terminal: str) -> str:
    """The screen secret ``write_config`` gives a customer display (a terminal named display-…)."""
    return f"screen-{terminal}-0123456789"


def _with_screen_token(extra: str) -> str:
    """``extra`` with kitchen.screen_token set, unless it sets one itself."""
    if "screen_token" in extra:
        return extra
    line = f'screen_token = "{SCREEN_TOKEN}"'
    if re.search(r"(?m)^\[kitchen\]\s*$", extra):
        return re.sub(r"(?m)^\[kitchen\]\s*$", f"[kitchen]\n{line}", extra, count=1)
    return f"{extra}\n[kitchen]\n{line}\n"


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box")


@pytest.fixture
def config(config_path: Path) -> Config:
    return load_config(config_path)


@pytest.fixture
async def broker(config: Config) -> AsyncIterator[MosquittoProcess]:
    async with MosquittoProcess(config, die_with_parent=False) as process:
        yield process


@pytest.fixture
async def hub(config: Config, broker: MosquittoProcess) -> AsyncIterator[Hub]:
    async with Hub(config) as running:
        async with asyncio.timeout(10):
            await running.ready.wait()
        yield running


class Terminal:
    """A POS terminal as a test drives it: its own credentials, its own ack topic."""

    def __init__(self, config: Config, terminal_id: str, password: str | None = None) -> None:
        self.config = config
        self.id = terminal_id
        self.topics = Topics(config.store.id)
        self.password = password if password is not None else f"pw-{terminal_id}"
        self.client = MqttSession(config.broker.listen.host, config.broker.listen.port,
                                  username=terminal_id, password=self.password,
                                  client_id=f"test-{terminal_id}-{os.getpid()}-{time.monotonic_ns()}")
        self.acks: asyncio.Queue[Message] = asyncio.Queue()
        self._task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Terminal:
        await self.client.__aenter__()
        await self.client.subscribe(self.topics.ack(self.id), qos=1)
        self._task = asyncio.create_task(self._listen())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._task:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError, MqttError):
                await self._task
        with contextlib.suppress(Exception):
            await self.client.__aexit__(None, None, None)

    async def _listen(self) -> None:
        async for message in self.client.messages:
            await self.acks.put(message)

    async def send(self, payload: bytes | dict[str, Any], topic: str | None = None, **kwargs: Any) -> None:
        body = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        await self.client.publish(topic or self.topics.order(self.id), body, qos=1, **kwargs)

    async def message(self, timeout: float = 5.0) -> Message:
        async with asyncio.timeout(timeout):
            return await self.acks.get()

    async def ack(self, timeout: float = 5.0) -> dict[str, Any]:
        message = await self.message(timeout)
        doc: dict[str, Any] = json.loads(message.payload)
        return doc


def order(order_id: str, **fields: Any) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": "order/1", "order_id": order_id,
                           "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 1, "station": "grill"}]}
    doc.update(fields)
    return doc


class HubProcess:
    """``edgehub run`` as a real child process, to be killed with -9 and started again."""

    def __init__(self, config_path: Path, log_path: Path, extra_args: tuple[str, ...] = (),
                 env: dict[str, str] | None = None) -> None:
        self.config_path = config_path
        self.extra_args = extra_args
        self.env = env
        self.config = load_config(config_path)
        self.log_path = log_path
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        log = open(self.log_path, "ab")  # the child owns it
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "edgehub", "run", "--config", str(self.config_path), *self.extra_args],
            stdout=log, stderr=log, cwd=REPO, env={**os.environ, **(self.env or {})},
        )
        log.close()
        if wait:
            try:
                self.wait_healthy()
            except BaseException:
                self.stop()  # a hub that never became healthy is not left running after its test
                raise

    def wait_healthy(self, timeout: float = 15.0) -> None:
        url = f"http://127.0.0.1:{self.config.api.listen.port}/healthz"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise AssertionError(f"hub exited with {self.proc.returncode}: {self.log_path.read_text()[-2000:]}")
            with contextlib.suppress(OSError):
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            time.sleep(0.05)
        raise AssertionError(f"hub not healthy within {timeout}s: {self.log_path.read_text()[-2000:]}")

    def kill9(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def stop(self) -> int:
        if self.proc is None:
            return 0
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                return self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                return self.proc.wait()
        return self.proc.returncode


@pytest.fixture
def hub_process(config_path: Path, tmp_path: Path) -> Iterator[HubProcess]:
    process = HubProcess(config_path, tmp_path / "hub.log")
    yield process
    process.stop()
