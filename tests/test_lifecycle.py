"""Start, stop, crash and restart: retained state with Last Will, persistent session, systemd
notification, a corrupt journal moved aside, schema migrations."""

from __future__ import annotations

import asyncio
import json
import socket
import sqlite3
from pathlib import Path

import pytest

from edgehub.broker import MosquittoProcess
from edgehub.bus.session import V311, MqttSession
from edgehub.config import Config
from edgehub.hub import Hub
from edgehub.sdnotify import Notifier
from edgehub.store import Journal
from edgehub.store.schema import SCHEMA_VERSION
from tests.conftest import HubProcess, Terminal, order


async def retained_state(config: Config) -> dict[str, str]:
    async with MqttSession("127.0.0.1", config.broker.listen.port, username="pos-1", password="pw-pos-1",
                           client_id="state-reader", protocol=V311) as client:
        await client.subscribe(f"edgehub/v1/{config.store.id}/hub/$state", qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                assert message.retain
                doc: dict[str, str] = json.loads(message.payload)
                return doc
    raise AssertionError("no retained state")


async def test_hub_state_is_retained_ready_and_the_will_says_lost(
    broker: MosquittoProcess, config: Config, hub_process: HubProcess
) -> None:
    await asyncio.to_thread(hub_process.start)
    state = await retained_state(config)
    assert state["schema"] == "state/1" and state["state"] == "ready"
    hub_process.kill9()
    # Mosquitto sends the will once keepalive * 1.5 passes or at once on a broken socket.
    async with asyncio.timeout(30):
        while (await retained_state(config))["state"] != "lost":
            await asyncio.sleep(0.2)


async def test_orders_sent_while_the_hub_is_down_arrive_when_it_returns(
    broker: MosquittoProcess, config: Config
) -> None:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
    # The hub is gone; its persistent session keeps collecting the terminal's orders.
    async with Terminal(config, "pos-1") as pos:
        for n in range(20):
            await pos.send(order(f"W-{n}"))
        async with Hub(config) as hub:
            acks = [await pos.ack() for _ in range(20)]
    assert sorted(a["order_id"] for a in acks) == sorted(f"W-{n}" for n in range(20))
    assert all(a["status"] == "accepted" and not a["duplicate"] for a in acks)


async def test_ready_and_watchdog_go_to_systemd(broker: MosquittoProcess, config: Config, tmp_path: Path) -> None:
    path = tmp_path / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.setblocking(False)
    notifier = Notifier({"NOTIFY_SOCKET": str(path), "WATCHDOG_USEC": "200000"})
    loop = asyncio.get_running_loop()
    async with Hub(config, notifier) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        messages = []
        async with asyncio.timeout(5):
            while sum(m == "WATCHDOG=1" for m in messages) < 3 or not any("READY=1" in m for m in messages):
                messages.append((await loop.sock_recv(sock, 4096)).decode())
    sock.close()
    ready = next(m for m in messages if "READY=1" in m)
    assert "STATUS=serving store s1" in ready
    assert hub.bus is not None and hub.bus.connects == 1  # READY came after the broker connected


async def test_no_notification_without_notify_socket() -> None:
    notifier = Notifier({})
    assert not notifier.enabled and notifier.send("READY=1") is False
    await asyncio.wait_for(notifier.keep_alive(), 1)  # returns at once


async def test_corrupt_journal_is_moved_aside_and_a_new_one_started(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    path.write_bytes(b"this is not a database, it is a broken SD card sector" * 100)
    async with Journal(path, "s1") as journal:
        assert (await journal.counts())["orders"] == 0
        moved = Path(journal.stats.moved_aside)
    assert moved.exists() and moved.read_bytes().startswith(b"this is not a database")
    assert moved.name.startswith("journal.sqlite.corrupt-")


async def test_schema_is_migrated_and_rows_survive_a_reopen(tmp_path: Path) -> None:
    from edgehub.bus.payloads import Order

    path = tmp_path / "journal.sqlite"
    async with Journal(path, "s1") as journal:
        await journal.accept_order(Order("M-1", "pos-1", order("M-1")))
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert conn.execute("PRAGMA page_size").fetchone()[0] == 1024
    async with Journal(path, "s1") as journal:
        assert (await journal.counts())["orders"] == 1
        commit = await journal.accept_order(Order("M-1", "pos-1", order("M-1")))
        assert commit.duplicate


async def test_a_failing_write_does_not_spoil_its_group(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1", commit_window_ms=20) as journal:
        from edgehub.bus.payloads import Order

        def broken(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO no_such_table VALUES (1)")

        results = await asyncio.gather(
            journal.accept_order(Order("G-1", "pos-1", order("G-1"))),
            journal.write(broken),
            journal.accept_order(Order("G-2", "pos-1", order("G-2"))),
            return_exceptions=True,
        )
        assert isinstance(results[1], sqlite3.OperationalError)
        assert (await journal.counts())["orders"] == 2
        assert journal.stats.max_batch == 3  # one group, one fsync


async def test_a_broker_gone_before_the_hub_stops_is_no_error_at_the_stop(
    broker: MosquittoProcess, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """Ctrl-C on `make run` stops the hub's own Mosquitto first: the lost connection is not an
    asyncio "Future exception was never retrieved" error once the hub has stopped."""
    import gc

    async with Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        gone = asyncio.create_task(broker.stop())  # as Ctrl-C does: both at once
    await gone
    del hub
    gc.collect()
    await asyncio.sleep(0.1)
    assert "never retrieved" not in caplog.text


async def test_the_hubs_own_mosquitto_is_started_again_when_it_dies(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`make run`'s hub runs its own Mosquitto (broker.mode = "managed"); nobody else would
    start it again after a crash, and the hub would wait for it forever."""
    import os
    import signal

    from edgehub.config import load_config
    from tests.conftest import write_config

    config = load_config(write_config(tmp_path / "box", mode="managed"))
    async with Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        assert hub.broker is not None and hub.broker.pid is not None
        os.kill(hub.broker.pid, signal.SIGKILL)
        async with asyncio.timeout(15):
            while hub.broker.restarts < 1 or not hub.bus.connected.is_set():
                await asyncio.sleep(0.05)
        async with Terminal(config, "pos-1") as pos:
            await pos.send(order("after-restart"))
            assert (await pos.ack())["status"] == "accepted"
    assert "mosquitto stopped (killed by signal 9)" in caplog.text


@pytest.mark.parametrize("simulate", [False, True], ids=["devices", "simulated-store"])
async def test_edgehub_run_prints_where_its_dashboard_is(
    broker: MosquittoProcess, config_path: Path, tmp_path: Path, simulate: bool
) -> None:
    """`make run` (``edgehub run --simulate``) says where the dashboard is once the hub is ready."""
    process = HubProcess(config_path, tmp_path / "hub.log", extra_args=("--simulate",) if simulate else ())
    try:
        await asyncio.to_thread(process.start)
        async with asyncio.timeout(10):
            while "dashboard" not in process.log_path.read_text():
                await asyncio.sleep(0.05)
    finally:
        process.stop()
    port = process.config.api.listen.port
    assert f"  dashboard  http://127.0.0.1:{port}/" in process.log_path.read_text()
