"""``/metrics``: the numbers a Prometheus scrape sees, each hub with its own registry."""

from __future__ import annotations

import aiohttp
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from edgehub import sysinfo
from tests.api.conftest import AUTH, Box
from tests.conftest import Terminal, order

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
    assert m["edgehub_journal_commit_seconds_count"][()] >= 1
    assert m["edgehub_broker_connected"][()] == 1
    assert m["edgehub_devices"][(("state", "ready"),)] == 1
    assert m["edgehub_outbox_depth"][(("stream", "orders"),)] == 1
    assert m["edgehub_outbox_oldest_age_seconds"][(("stream", "orders"),)] >= 0
    assert m["edgehub_disk_free_bytes"][()] > 0
    assert m["process_resident_memory_bytes"][()] > 0
    assert "process_cpu_seconds_total" in m
    assert m["edgehub_print_jobs_total"][(("result", "printed"),)] == 0
    # The SoC temperature is exported exactly when the machine has a sensor.
    assert ("edgehub_soc_temperature_celsius" in m) == (sysinfo.soc_temperature_c() is not None)


async def test_each_hub_has_its_own_registry(box: Box) -> None:
    registry = box.hub.support.metrics.registry
    assert registry is not REGISTRY
    assert REGISTRY.get_sample_value("edgehub_orders_total", {"result": "accepted"}) is None


async def test_metrics_need_the_token(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.get(box.base + "/metrics") as response:
        assert response.status == 401
