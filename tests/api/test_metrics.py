"""``/metrics``: the numbers a Prometheus scrape sees, each hub with its own registry. Every
metric the support page promises is asserted here: orders accepted and rejected, ack latency, devices by
state, failovers, print jobs by result, outbox depth and oldest age per stream, replay rate,
broker connection, SQLite commit latency, process RSS and CPU, disk free, SoC temperature."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edgehub import sysinfo
from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.sim.printer import PrinterSim
from tests.api.conftest import AUTH, Box, box_extra
from tests.conftest import Terminal, order, write_config

Samples = dict[str, dict[tuple[tuple[str, str], ...], float]]


async def scrape(box: Box, http: aiohttp.ClientSession) -> Samples:
    async with http.get(box.base + "/metrics", headers=AUTH) as response:
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        text = await response.text()
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples.setdefault(sample.name, {})[tuple(sorted(sample.labels.items()))] = sample.value
    return samples


async def test_metrics_count_orders_acks_commits_and_devices(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    async with Terminal(box.config, "pos-1") as pos:
        await pos.send(order("M-1"))
        assert (await pos.ack())["status"] == "accepted"
        await pos.send(order("M-1"))
        assert (await pos.ack())["duplicate"] is True
        await pos.send({"schema": "order/1", "order_id": "M-2", "lines": []})
        assert (await pos.ack())["status"] == "rejected"
    m = await scrape(box, http)
    assert m["edgehub_orders_total"][(("result", "accepted"),)] == 1
    assert m["edgehub_orders_total"][(("result", "duplicate"),)] == 1
    assert m["edgehub_orders_total"][(("result", "rejected"),)] == 1
    assert m["edgehub_orders_total"][(("result", "deadlettered"),)] == 0
    assert m["edgehub_ack_latency_seconds_count"][(("status", "accepted"),)] == 2
    assert m["edgehub_ack_latency_seconds_count"][(("status", "rejected"),)] == 1
    assert m["edgehub_ack_latency_seconds_bucket"][(("le", "+Inf"), ("status", "accepted"))] == 2
    assert m["edgehub_journal_commit_seconds_count"][()] >= 1
    assert m["edgehub_broker_connected"][()] == 1
    assert m["edgehub_devices"][(("state", "ready"),)] == 1
    assert m["edgehub_outbox_depth"][(("stream", "orders"),)] == 1
    assert m["edgehub_outbox_oldest_age_seconds"][(("stream", "orders"),)] >= 0
    assert m["edgehub_disk_free_bytes"][()] > 0
    assert m["process_resident_memory_bytes"][()] > 0
    assert "process_cpu_seconds_total" in m
    assert m["edgehub_print_jobs_total"][(("result", "printed"),)] == 0
    assert m["edgehub_failovers_total"][(("role", "receipt-printer"),)] == 0
    assert m["edgehub_outbox_replay_rate"][()] == 0
    assert m["edgehub_journal_commit_seconds_bucket"][(("le", "+Inf"),)] >= 1
    assert m["process_cpu_seconds_total"][()] > 0
    # The SoC temperature is exported exactly when the machine has a sensor.
    assert ("edgehub_soc_temperature_celsius" in m) == (sysinfo.soc_temperature_c() is not None)


async def test_each_hub_has_its_own_registry(box: Box) -> None:
    registry = box.hub.support.metrics.registry
    assert registry is not REGISTRY
    assert REGISTRY.get_sample_value("edgehub_orders_total", {"result": "accepted"}) is None


async def test_metrics_need_the_token(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.get(box.base + "/metrics") as response:
        assert response.status == 401


@pytest.fixture
async def two_printer_box(tmp_path: Path) -> AsyncIterator[Box]:
    """A box whose receipt-printer role has a spare, and whose grill prints its slips there."""
    async with PrinterSim() as front, PrinterSim() as spare:
        extra = box_extra(front.address).replace('devices = ["prn-front"]', 'devices = ["prn-front", "prn-spare"]')
        extra += f"""
[[device]]
id = "prn-spare"
driver = "escpos"
transport = "tcp"
address = "{spare.address}"
model = "TM-T88VI"

[kitchen.stations.grill]
printer_role = "receipt-printer"
"""
        config = load_config(write_config(tmp_path / "box", extra=extra))
        async with MosquittoProcess(config, die_with_parent=False) as broker, Hub(config) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            box = Box(config, hub, broker, front)
            await box.wait_device_ready("prn-front")
            await box.wait_device_ready("prn-spare")
            box.spare = spare  # type: ignore[attr-defined]
            yield box


async def test_failovers_and_print_jobs_are_counted(two_printer_box: Box, http: aiohttp.ClientSession) -> None:
    box = two_printer_box
    spare: PrinterSim = box.spare  # type: ignore[attr-defined]
    m = await scrape(box, http)
    assert m["edgehub_failovers_total"][(("role", "receipt-printer"),)] == 0
    assert m["edgehub_outbox_replay_rate"][()] == 0  # no cloud configured: nothing replays
    assert m["edgehub_uplink_connected"][()] == 0
    assert m["edgehub_uplink_suspect"][()] == 0
    async with Terminal(box.config, "pos-1") as pos:
        await pos.send(order("MF-1"))  # a cheeseburger for the grill: its slip prints on the role
        assert (await pos.ack())["status"] == "accepted"
    async with asyncio.timeout(15):
        while not box.printer.printed:
            await asyncio.sleep(0.05)
    await box.printer.kill()  # the primary dies: the role moves to the spare
    async with asyncio.timeout(15):
        while box.hub.roles.serving("receipt-printer") != "prn-spare":
            await asyncio.sleep(0.05)
    m = await scrape(box, http)
    assert m["edgehub_failovers_total"][(("role", "receipt-printer"),)] == 1
    assert m["edgehub_failbacks_total"][(("role", "receipt-printer"),)] == 0
    assert m["edgehub_print_jobs_total"][(("result", "printed"),)] == 1
    assert m["edgehub_devices"][(("state", "ready"),)] == 1
    assert m["edgehub_devices"][(("state", "failed"),)] + m["edgehub_devices"].get((("state", "gone"),), 0) == 1
    assert m["edgehub_kitchen_tickets_total"][()] == 1
    assert m["edgehub_kitchen_open_tickets"][(("station", "grill"),)] == 1
    assert m["edgehub_outbox_produced_total"][(("stream", "kitchen"),)] >= 1
    assert spare.printed == []  # the slip was printed once, on the primary, before it died


async def test_devices_are_counted_by_their_real_states_only(box: Box, http: aiohttp.ClientSession) -> None:
    """Every state a device can be in (drivers.base.HealthState) has its series, 0 when no device
    is in it, and nothing else: there is no "ok" state, so no ``edgehub_devices{state="ok"}``."""
    from typing import get_args

    from drivers.base import HealthState

    await box.wait_device_ready()
    m = await scrape(box, http)
    states = {dict(labels)["state"]: value for labels, value in m["edgehub_devices"].items()}
    assert set(states) == set(get_args(HealthState)) == {"ready", "degraded", "failed", "unknown"}
    assert states == {"ready": 1, "degraded": 0, "failed": 0, "unknown": 0}
    await box.printer.kill()
    async with asyncio.timeout(15):
        while box.hub.registry.get("prn-front").health.usable:  # type: ignore[union-attr]
            await asyncio.sleep(0.05)
    m = await scrape(box, http)
    states = {dict(labels)["state"]: value for labels, value in m["edgehub_devices"].items()}
    assert states == {"ready": 0, "degraded": 0, "failed": 1, "unknown": 0}
