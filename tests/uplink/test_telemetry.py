"""The box's own telemetry sample: a small JSON row in the ``telemetry`` outbox stream, taken
on its interval, under the stream's quota like any other telemetry."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.errors import ConfigError
from edgehub.store import Journal
from edgehub.store.outbox import Outbox, OutboxPolicy, read_rows
from edgehub.uplink import TelemetrySampler
from tests.conftest import write_config


async def test_samples_go_into_the_telemetry_stream_under_its_quota(tmp_path: Path) -> None:
    data = tmp_path / "data"
    async with Journal(data / "journal.sqlite", "s1") as journal:
        # A quota of about three samples: older ones are evicted, oldest first, and counted.
        async with Outbox(journal, data, OutboxPolicy(telemetry_quota_bytes=900)) as outbox:
            async with TelemetrySampler(outbox, "s1", data, every_s=0.02, orders_accepted=lambda: 42) as sampler:
                deadline = time.monotonic() + 10
                while sampler.taken < 6:
                    assert time.monotonic() < deadline, f"only {sampler.taken} samples taken"
                    await asyncio.sleep(0.02)
            rows = await journal.read(lambda c: read_rows(c, 0, 100))
            counters = (await outbox.counters())["telemetry"]
    assert rows and all(r.stream == "telemetry" for r in rows)
    assert counters.produced == sampler.taken and counters.dropped == counters.produced - len(rows) > 0
    sample = json.loads(rows[-1].payload)
    assert sample["schema"] == "cloud-telemetry/1" and sample["store_id"] == "s1"
    assert sample["rss_bytes"] > 1_000_000 and sample["disk_free_bytes"] > 0 and sample["disk_total_bytes"] > 0
    assert sample["orders_accepted"] == 42 and sample["cpu_percent"] >= 0
    assert sample["soc_temperature_c"] is None or isinstance(sample["soc_temperature_c"], float)
    assert rows[-1].msg_id.startswith("telemetry:s1:")


def test_telemetry_interval_is_checked(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box", extra="[cloud]\ntelemetry_every_s = -5\n")
    with pytest.raises(ConfigError) as err:
        load_config(path)
    assert any("cloud.telemetry_every_s" in p and "must be 0 to 86400" in p for p in err.value.problems), err.value
    off = load_config(write_config(tmp_path / "ok", extra="[cloud]\ntelemetry_every_s = 0\n"))
    assert off.cloud.telemetry_every_s == 0
