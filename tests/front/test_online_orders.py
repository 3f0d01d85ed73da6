"""Orders placed online come down from the cloud to the kitchen through the box (a real cloud
Mosquitto behind a fault proxy, a real hub, a simulated kitchen printer on a loopback port):
kept before the cloud hears it was taken, taken once however often it comes, cooked and printed
like a till's order, its state sent back up; a bad one refused with the reason; and a box killed
-9 in the middle of a burst loses none the cloud was told it had."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edgehub.config import Config, load_config
from edgehub.hub import Hub
from edgehub.sim.printer import PrinterSim
from tests.conftest import HubProcess, write_config
from tests.faultproxy import FaultProxy
from tests.kitchen.conftest import Screen
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import cloud_toml

KITCHEN = """
[kitchen]
default_station = "wok"

[kitchen.stations.wok]
printer_role = "kitchen-printer"

[discovery]
usb = false
serial = false
lan = false
advertise = false
"""


def printer_toml(address: str) -> str:
    return f"""
[[device]]
id = "prn-wok"
driver = "escpos"
transport = "tcp"
address = "{address}"

[[role]]
name = "kitchen-printer"
devices = ["prn-wok"]
"""


def online(order_id: str, channel: str = "meituan", pickup: str | None = "42", **order: Any) -> dict[str, Any]:
    body = {"lines": [{"sku": "KUNG-07", "name": "宫保鸡丁", "qty": 1, "price_cents": 3200}],
            "total_cents": 3200, "currency": "CNY", **order}
    return {"schema": "cloud-down-order/1", "order_id": order_id, "channel": channel,
            "placed_at": time.time(), **({"pickup_code": pickup} if pickup else {}), "order": body}


def send_down(recorder: CloudRecorder, doc: dict[str, Any] | bytes) -> None:
    """The cloud sends one order to the store: QoS 1, not retained."""
    body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
    recorder.client.publish(f"cloud/{recorder.store}/down/orders", body, qos=1).wait_for_publish(5)


def states_up(recorder: CloudRecorder, order_id: str) -> list[tuple[int, str]]:
    """The cloud-order-state/1 updates the cloud holds for ``order_id``: (update, state)."""
    found = set()
    with recorder.lock:
        messages = list(recorder.messages)
    for m in messages:
        body = json.loads(m.payload)["body"]
        if body.get("schema") == "cloud-order-state/1" and body["order_id"] == order_id:
            found.add((body["update"], body["state"], body.get("reason", "")))
    return [(n, state) for n, state, _ in sorted(found)]


async def until(predicate: Any, what: str, timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


def journal_rows(path: Path, sql: str) -> list[tuple[Any, ...]]:
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        return conn.execute(sql).fetchall()
    finally:
        conn.close()


async def test_an_online_order_is_kept_cooked_printed_and_followed_back_up(
        tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    async with PrinterSim() as printer:
        config = load_config(write_config(tmp_path / "box", mode="managed", terminals=("pos-1", "kds-1"),
                                          extra=cloud_toml(wan.port) + KITCHEN + printer_toml(printer.address)))
        async with Hub(config) as hub, Screen(config, "wok") as wok:
            await asyncio.wait_for(hub.ready.wait(), 10)
            assert hub.uplink is not None
            await until(lambda: hub.uplink is not None and hub.uplink.state == "online", "link not online")

            send_down(recorder, online("MT-0001", pickup="42"))
            send_down(recorder, online("MT-0001", pickup="42"))  # the cloud sends it again
            created = await wok.next("event", timeout=10)
            ticket = created["ticket"]
            assert ticket["order_id"] == "MT-0001" and ticket["table"] == "meituan 42"
            assert ticket["terminal"] == "cloud:meituan"
            # Printed like a till's order: the wok's slip on the kitchen printer.
            await until(lambda: any("MT-0001" in t.text for t in printer.printed), "no slip printed")
            assert "meituan 42" in next(t.text for t in printer.printed if "MT-0001" in t.text)
            await until(lambda: states_up(recorder, "MT-0001") == [(1, "accepted")], "accepted not sent up")

            # The cook starts, then bumps it: the cloud hears in_kitchen, then ready.
            await hub.kitchen.command("wok", _command("start", ticket["ticket_id"]), "screen:test")
            await hub.kitchen.command("wok", _command("bump", ticket["ticket_id"]), "screen:test")
            await until(lambda: states_up(recorder, "MT-0001") == [(1, "accepted"), (2, "in_kitchen"), (3, "ready")],
                        f"states up: {states_up(recorder, 'MT-0001')}")
            # Taken once although it came twice; the cloud also has it in the orders stream.
            assert journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders WHERE order_id='MT-0001'") == [(1,)]
            assert "order:MT-0001" in recorder.seen()
            status = (await hub.status())["online_orders"]
            assert (status["received"], status["accepted"], status["duplicates"]) == (2, 1, 1)

            # A bad one is refused with the reason, a nameless one dead-lettered; a till's cancel is told.
            send_down(recorder, online("MT-0002", lines=[]))
            send_down(recorder, b'{"schema": "cloud-down-order/1", "channel": "eleme"}')
            await until(lambda: states_up(recorder, "MT-0002") == [(1, "rejected")], "rejected not sent up")
            reason = next(json.loads(m.payload)["body"]["reason"] for m in recorder.messages
                          if b"MT-0002" in m.payload and b"order-state" in m.payload)
            assert reason == "order.lines: must have at least one line"
            send_down(recorder, online("EL-0003", channel="eleme", pickup=None))
            await until(lambda: states_up(recorder, "EL-0003") == [(1, "accepted")], "EL-0003 not accepted")
            await hub.kitchen.cancel(_cancel("EL-0003"))
            await until(lambda: states_up(recorder, "EL-0003") == [(1, "accepted"), (2, "cancelled")],
                        "cancel not sent up")
            assert (await hub.status())["online_orders"]["deadlettered"] == 1


def _command(action: str, ticket_id: str) -> Any:
    from edgehub.bus.payloads import KdsCommand

    return KdsCommand(command_id=action, action=action, ticket_id=ticket_id, priority=None)


def _cancel(order_id: str) -> Any:
    from edgehub.bus.payloads import Cancel

    return Cancel(order_id=order_id, terminal="pos-1", reason="guest cancelled on the app",
                  doc={"schema": "cancel/1", "order_id": order_id})


async def test_a_box_killed_mid_burst_keeps_every_order_the_cloud_was_told_it_had(
        tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    config: Config = load_config(write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port) + KITCHEN))
    box = HubProcess(tmp_path / "box" / "edgehub.toml", tmp_path / "hub.log")
    box.start()
    try:
        # The box has subscribed (its session exists at the cloud broker); then the WAN goes.
        deadline = time.monotonic() + 15
        while not await asyncio.to_thread(_online, config):
            assert time.monotonic() < deadline, "box not online"
            await asyncio.sleep(0.1)
        wan.refuse()
        await wan.close_all()
        ids = [f"MP-{i:04d}" for i in range(600)]
        for order_id in ids:  # an hour of mini-program orders waits at the cloud broker
            send_down(recorder, online(order_id, channel="miniprogram", pickup=order_id[-3:]))
        wan.heal()
        # Killed -9 while the burst comes in: some orders taken and acknowledged, some not.
        await until(lambda: _count(config) >= 40, "the burst did not start", timeout=30)
        box.kill9()
        taken_before = _count(config)
        box.start()
        await until(lambda: _count(config) == len(ids), f"{_count(config)} of {len(ids)} orders", timeout=60)
        rows = journal_rows(config.journal.path, "SELECT order_id, COUNT(*) FROM orders GROUP BY order_id")
        assert sorted(order_id for order_id, _ in rows) == ids and all(n == 1 for _, n in rows)
        states = journal_rows(config.journal.path, "SELECT COUNT(*) FROM online_orders WHERE state='accepted'")
        assert states == [(len(ids),)]
        assert 40 <= taken_before < len(ids)
    finally:
        box.stop()


def _online(config: Config) -> bool:
    import urllib.request

    request = urllib.request.Request(f"http://127.0.0.1:{config.api.listen.port}/api/v1/status",
                                     headers={"Authorization": "Bearer test-token-0123456789abcdef"})
    try:
        with urllib.request.urlopen(request, timeout=2) as response:
            return bool(json.loads(response.read())["uplink"]["link"]["state"] == "online")
    except OSError:
        return False


def _count(config: Config) -> int:
    try:
        return int(journal_rows(config.journal.path, "SELECT COUNT(*) FROM orders")[0][0])
    except sqlite3.Error:
        return 0

