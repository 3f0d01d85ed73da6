"""Fixtures of the uplink tests: the cloud broker, the WAN (a fault proxy) in front of it, the
cloud recorder, and a box whose config points its [cloud] at the proxy."""

from __future__ import annotations

import contextlib
import sqlite3
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgehub.config import Config, load_config
from edgehub.store import Journal
from edgehub.store.outbox import Outbox
from edgehub.uplink import Downlink, Uplink, outbox_policy
from tests.conftest import write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import BOX_PASSWORD, BOX_USER, CloudBroker, CloudRecorder

# The box's own defaults for how the link is watched and tried again, as a test passes them to
# cloud_toml to run with them (the tests' quick timers otherwise).
WAN_DEFAULTS: dict[str, Any] = {key: None for key in (
    "keepalive_s", "connect_timeout_s", "ping_interval_s", "ping_timeout_s", "down_after_s", "probe_every_s",
    "reconnect_max_s")}


def cloud_toml(port: int, **overrides: Any) -> str:
    """The [cloud] table of a box whose cloud is at ``port``; an override of None leaves the key
    out (the box's default)."""
    settings: dict[str, Any] = {
        "enabled": True, "url": f"mqtt://127.0.0.1:{port}", "username": BOX_USER, "password": BOX_PASSWORD,
        "keepalive_s": 5, "connect_timeout_s": 2, "ping_interval_s": 0.5, "ping_timeout_s": 1.5,
        "down_after_s": 2.5, "probe_every_s": 0.2, "reconnect_max_s": 0.4, "replay_rate": 0, "max_inflight": 200,
        "live_slots": 32,
    }
    settings.update(overrides)
    lines = ["[cloud]"]
    for key, value in settings.items():
        if value is None:
            continue
        lines.append(f"{key} = {str(value).lower() if isinstance(value, bool) else repr(value)}"
                     .replace("'", '"'))
    return "\n".join(lines) + "\n"


@pytest.fixture
async def cloud(tmp_path: Path) -> AsyncIterator[CloudBroker]:
    async with CloudBroker(tmp_path / "cloud") as broker:
        yield broker


@pytest.fixture
async def wan(cloud: CloudBroker) -> AsyncIterator[FaultProxy]:
    async with FaultProxy(cloud.port) as proxy:
        yield proxy


@pytest.fixture
def recorder(cloud: CloudBroker) -> Iterator[CloudRecorder]:
    with CloudRecorder(cloud.port) as rec:
        yield rec


def box_config(tmp_path: Path, wan: FaultProxy, mode: str = "managed", **overrides: Any) -> Config:
    return load_config(write_config(tmp_path / "box", mode=mode, extra=cloud_toml(wan.port, **overrides)))


class Rig:
    """The uplink half of a hub without the store's LAN: journal, outbox, downlink, uplink."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.journal = Journal(config.journal.path, config.store.id, commit_window_ms=2.0)
        self.outbox = Outbox(self.journal, config.journal.path.parent, outbox_policy(config.cloud))
        self.downlink = Downlink(self.journal, config.store.id)
        self.uplink = Uplink(config.cloud, config.store.id, self.journal, self.outbox, self.downlink)
        self._stack = contextlib.AsyncExitStack()

    async def __aenter__(self) -> Rig:
        for part in (self.journal, self.outbox, self.downlink, self.uplink):
            await self._stack.enter_async_context(part)  # type: ignore[arg-type]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()

    async def add(self, stream: str, n: int, prefix: str = "m", size: int = 60) -> list[str]:
        ids = [f"{prefix}-{stream}-{i:06d}" for i in range(n)]
        filler = "x" * size

        def insert(conn: sqlite3.Connection) -> None:
            for msg_id in ids:
                self.outbox.add(conn, stream, msg_id, {"id": msg_id, "fill": filler})

        await self.journal.write(insert)
        return ids

    async def backlog(self) -> int:
        return int((await self.outbox.status())["backlog"])

    async def wait_online(self, timeout: float = 10.0) -> None:
        deadline = time.monotonic() + timeout
        while self.uplink.state != "online":
            assert time.monotonic() < deadline, f"uplink not online: {self.uplink.state} {self.uplink.last_error}"
            await _sleep()

    async def wait_drained(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while await self.backlog():
            assert time.monotonic() < deadline, (
                f"outbox still holds {await self.backlog()} rows; link {self.uplink.state} {self.uplink.last_error}")
            await _sleep()


async def _sleep() -> None:
    import asyncio

    await asyncio.sleep(0.05)


def bulk_insert(path: Path, stream: str, n: int, prefix: str = "bulk", size: int = 60) -> list[str]:
    """Rows straight into the journal file, as a week of WAN outage would leave them."""
    ids = [f"{prefix}-{i:07d}" for i in range(n)]
    body = b'{"fill":"' + b"x" * size + b'"}'
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("BEGIN")
        now = time.time()
        conn.executemany("INSERT INTO outbox(msg_id, stream, created_at, payload) VALUES (?,?,?,?)",
                         ((msg_id, stream, now, body) for msg_id in ids))
        conn.execute("COMMIT")
    finally:
        conn.close()
    return ids


async def seed_outbox(path: Path, streams: dict[str, int], prefix: str = "seed", chunk: int = 20_000) -> list[str]:
    """A backlog as a long WAN outage leaves it: rows of several streams, interleaved in store
    order, written through ``add_to_outbox`` straight into the journal file in big transactions
    (the hub is not running). Returns the msg_ids in store order."""
    from edgehub.store.outbox import add_to_outbox

    async with Journal(path, "s1"):
        pass  # create and migrate the journal
    left = dict(streams)
    ids: list[str] = []
    while any(left.values()):
        for stream in streams:
            if left[stream]:
                ids.append(f"{prefix}-{stream}-{streams[stream] - left[stream]:07d}")
                left[stream] -= 1
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        now = time.time()
        for start in range(0, len(ids), chunk):
            conn.execute("BEGIN")
            for msg_id in ids[start:start + chunk]:
                stream = msg_id.split("-")[1]
                add_to_outbox(conn, stream, msg_id, b'{"id":"' + msg_id.encode() + b'"}', created_at=now)
            conn.execute("COMMIT")
    finally:
        conn.close()
    return ids


def pending_rows(path: Path) -> int:
    """Rows still in the outbox, read from the journal file beside a running hub."""
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return int(conn.execute("SELECT COALESCE(SUM(pending), 0) FROM outbox_streams").fetchone()[0])
    finally:
        conn.close()


def assert_cloud_has_everything(recorder: Any, journal: Path, known: list[str]) -> None:
    """The counting oracle for a whole hub, whose kitchen adds rows of its own: the outbox is
    empty; every stream the store produced is in the cloud as stream_seq 1..produced, each once
    after dedupe, in order per lane, re-sends identical (telemetry the outbox dropped on purpose
    excepted: counted, never sent); and every id the test knows is there."""
    conn = sqlite3.connect(f"file:{journal}?mode=ro", uri=True)
    try:
        counters = conn.execute("SELECT stream, produced, dropped, pending FROM outbox_streams").fetchall()
    finally:
        conn.close()
    assert not [c for c in counters if c[3]], f"still in the outbox: {counters}"
    seen = recorder.seen()
    report = recorder.check(seen | set(known))
    assert report.ok, report
    for stream, produced, dropped, _ in counters:
        if dropped == 0:
            assert recorder.stream_seqs(stream) == list(range(1, produced + 1)), f"{stream}: not 1..{produced}"
        else:
            assert stream == "telemetry", f"{stream}: {dropped} rows dropped"
            assert len(recorder.stream_seqs(stream)) == produced - dropped
    assert report.unique == sum(c[1] - c[2] for c in counters), (report, counters)
