"""What the cloud pushes down (menu, routing rules, config): kept durably, applied (routing
rules really route the kitchen), and still in force after a restart with the WAN down."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

from edgehub.config import load_config
from edgehub.hub import Hub
from tests.conftest import Terminal, order, write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import cloud_toml

KITCHEN = """
[kitchen]
default_station = "kitchen"
[kitchen.rules]
sku = { "FRIES-01" = "grill" }
"""


def down(kind: str, version: int, body: dict[str, Any]) -> dict[str, Any]:
    return {"schema": "cloud-down/1", "kind": kind, "version": version, "issued_at": time.time(), "body": body}


def untargeted(order_id: str, *skus: str) -> dict[str, Any]:
    """An order whose lines name no station: the routing rules decide."""
    return order(order_id, lines=[{"sku": sku, "name": sku, "qty": 1} for sku in skus])


async def stations_of(hub: Hub, order_id: str, stations: tuple[str, ...]) -> set[str]:
    deadline = time.monotonic() + 10
    while True:
        found = {s for s in stations
                 if any(t["order_id"] == order_id for t in hub.kitchen.snapshot(s)["tickets"])}
        if found or time.monotonic() > deadline:
            return found
        await asyncio.sleep(0.05)


async def wait_for(predicate: Any, what: str) -> None:
    deadline = time.monotonic() + 10
    while not predicate():
        assert time.monotonic() < deadline, what
        await asyncio.sleep(0.05)


async def test_cloud_pushes_documents_the_hub_keeps_applies_and_runs_on_offline(
        tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    config = load_config(write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port) + KITCHEN))
    stations = ("kitchen", "grill", "fryer", "bar")
    routing = {"default_station": "bar", "rules": {"sku": {"FRIES-01": "fryer"}}}
    # Pushed while the store is offline: retained, it reaches the hub when it connects.
    recorder.push_down("menu", down("menu", 3, {"items": [{"sku": "FRIES-01", "price_cents": 350}]}))
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        async with Terminal(config, "pos-1") as pos:
            await pos.send(untargeted("before", "FRIES-01", "SODA-02"))
            assert (await pos.ack())["status"] == "accepted"
            assert await stations_of(hub, "before", stations) == {"grill", "kitchen"}  # the box's own rules

            recorder.push_down("routing", down("routing", 7, routing))
            recorder.push_down("config", down("config", 1, {"receipt_footer": "Thank you"}))
            await wait_for(lambda: hub.downlink.versions() == {"config": 1, "menu": 3, "routing": 7},
                           f"documents not all taken: {hub.downlink.versions()}")
            await pos.send(untargeted("after", "FRIES-01", "SODA-02"))
            assert (await pos.ack())["status"] == "accepted"
            assert await stations_of(hub, "after", stations) == {"fryer", "bar"}  # the cloud's rules

            # A bad or stale document changes nothing; the bad one is kept for support.
            recorder.push_down("routing", down("routing", 8, {"rules": {"sku": {"FRIES-01": "Deep Fryer!"}}}))
            recorder.push_down("menu", down("menu", 2, {"items": []}))
            await wait_for(lambda: hub.downlink.rejected == 1, "the bad routing document was not rejected")
            assert hub.downlink.versions() == {"config": 1, "menu": 3, "routing": 7}
            reasons = await hub.journal.read(lambda c: [r[0] for r in c.execute("SELECT reason FROM deadletters")])
            assert any("body.rules.sku.FRIES-01" in r and "station name" in r for r in reasons), reasons
            assert hub.downlink.current("menu").body["items"][0]["price_cents"] == 350  # type: ignore[union-attr]
            status = (await hub.status())["uplink"]["downlink"]
            assert status["routing"]["version"] == 7 and status["rejected"] == 1
        # Each stored version is receipted to the cloud (stream "audit").
        # By id, not by count: the hub's other cloud rows (devices, kitchen) would reach a count early.
        await recorder.wait_for_ids({"down:menu:3", "down:routing:7", "down:config:1"})
        audit = {m.msg_id for m in recorder.messages if m.stream == "audit"}
        assert audit == {"down:menu:3", "down:routing:7", "down:config:1"}

    wan.refuse()  # the WAN goes down; the store restarts and runs on what it had
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        assert hub.uplink is not None and hub.uplink.state != "online"
        assert hub.downlink.versions() == {"config": 1, "menu": 3, "routing": 7}
        async with Terminal(config, "pos-1") as pos:
            await pos.send(untargeted("offline", "FRIES-01", "SODA-02"))
            assert (await pos.ack())["status"] == "accepted"
            assert await stations_of(hub, "offline", stations) == {"fryer", "bar"}
