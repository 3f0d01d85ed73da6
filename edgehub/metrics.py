"""``/metrics``: the box in Prometheus text format, one ``CollectorRegistry`` per hub.

Two kinds of numbers. Events that happen between scrapes (ack latency, SQLite commit latency)
go into histograms through the intake's ``ACK_SENT`` signal and the journal's ``commit_observers``.
Everything else is read from the hub when scraped: ``refresh()`` gathers what needs awaiting
(outbox rows, status sections) and the collector turns that snapshot into metric families, so
no number is kept twice and none goes stale. No module-level registry: several hubs share a
test process, and each must count only its own.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING, Any, Protocol, cast, get_args

from drivers.base import HealthState
from edgehub import __version__

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from prometheus_client.core import Metric
    from prometheus_client.registry import Collector

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
# Acks are a few ms on a healthy box; the tail that matters to a cashier is 0.1-2 s.
ACK_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)
COMMIT_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
BATCH_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 512)
# Every state a device can be in (drivers.base.HealthState), each exported even at 0 so a
# dashboard or an alert on ``edgehub_devices{state="failed"} > 0`` always has its series.
DEVICE_STATES: tuple[str, ...] = get_args(HealthState)


class MetricsSource(Protocol):
    """What the metrics read from the hub (the hub itself in production)."""

    async def metrics_snapshot(self) -> dict[str, Any]: ...


class Buckets:
    """One histogram's counts (a Prometheus histogram's buckets, sum and count), by label value.
    Kept here rather than in prometheus_client's ``Histogram`` so the hub imports that library
    at the first scrape, not at start (docs/footprint.md, Start). Thread-safe: the journal's
    writer thread observes commits."""

    def __init__(self, name: str, documentation: str, bounds: tuple[float, ...], label: str | None = None) -> None:
        self.name, self.documentation, self.label = name, documentation, label
        self.bounds = bounds
        self._series: dict[str, tuple[list[int], list[float]]] = {}  # label value -> (counts, [sum])
        self._lock = threading.Lock()

    def observe(self, value: float, label_value: str = "") -> None:
        slot = bisect.bisect_left(self.bounds, value)  # the first bound >= value: "le"
        with self._lock:
            series = self._series.get(label_value)
            if series is None:
                series = self._series[label_value] = ([0] * (len(self.bounds) + 1), [0.0])
            series[0][slot] += 1
            series[1][0] += value

    def family(self) -> Metric:
        from prometheus_client.core import HistogramMetricFamily

        labels = [self.label] if self.label else []
        family = HistogramMetricFamily(self.name, self.documentation, labels=labels)
        with self._lock:
            series = [(key, list(counts), total[0]) for key, (counts, total) in sorted(self._series.items())]
        for key, counts, total in series:
            running, buckets = 0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                running += count
                # "le" as prometheus_client writes it: 0.005, 1.0, 512.0, +Inf.
                buckets.append((repr(float(bound)) if bound != float("inf") else "+Inf", running))
            family.add_metric([key] if self.label else [], buckets, total)
        return family


class HubMetrics:
    """``observe_ack``/``observe_commit`` are the hooks, ``render()`` the scrape; the registry
    (prometheus_client, imported then) is made at the first scrape."""

    def __init__(self, source: MetricsSource) -> None:
        self.source = source
        self.ack_latency = Buckets("edgehub_ack_latency_seconds", "Order received to ack published, by ack status.",
                                   ACK_BUCKETS, label="status")
        self.commit_latency = Buckets("edgehub_journal_commit_seconds",
                                      "Duration of one SQLite group commit (with fsync).", COMMIT_BUCKETS)
        self.commit_batch = Buckets("edgehub_journal_commit_batch_size", "Writes per SQLite group commit.",
                                    BATCH_BUCKETS)
        self._snapshot: dict[str, Any] = {}
        self._registry: CollectorRegistry | None = None

    @property
    def registry(self) -> CollectorRegistry:
        if self._registry is None:
            from prometheus_client import CollectorRegistry, ProcessCollector

            registry = CollectorRegistry(auto_describe=True)
            # process_resident_memory_bytes, process_cpu_seconds_total, ... of this process.
            ProcessCollector(registry=registry)
            # A collector by its methods: the library's base class would be imported at start.
            registry.register(cast("Collector", _SnapshotCollector(self)))
            self._registry = registry
        return self._registry

    def observe_ack(self, status: str, seconds: float) -> None:
        self.ack_latency.observe(seconds, status)

    def observe_commit(self, seconds: float, batch_size: int) -> None:
        # Called from the journal's writer thread.
        self.commit_latency.observe(seconds)
        self.commit_batch.observe(batch_size)

    async def render(self) -> bytes:
        from prometheus_client import generate_latest

        self._snapshot = await self.source.metrics_snapshot()
        return generate_latest(self.registry)


def _num(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


class _SnapshotCollector:
    def __init__(self, owner: HubMetrics) -> None:
        self.owner = owner

    def describe(self) -> list[Metric]:
        return []  # families depend on what is configured; describing none skips the dry run

    def collect(self) -> Iterator[Metric]:
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        owner = self.owner
        for histogram in (owner.ack_latency, owner.commit_latency, owner.commit_batch):
            yield histogram.family()
        snap = owner._snapshot  # noqa: SLF001
        if not snap:
            return
        info = GaugeMetricFamily("edgehub_info", "The hub's version and store.", labels=["version", "store"])
        info.add_metric([__version__, str(snap.get("store_id", ""))], 1)
        yield info
        yield GaugeMetricFamily("edgehub_uptime_seconds", "Seconds since the hub started.",
                                value=snap.get("uptime_s", 0.0))

        intake: Mapping[str, Any] = snap.get("intake", {})
        orders = CounterMetricFamily("edgehub_orders", "Orders by outcome.", labels=["result"])
        for result, key in (("accepted", "accepted"), ("rejected", "rejected"), ("duplicate", "duplicates"),
                            ("deadlettered", "deadlettered")):
            orders.add_metric([result], intake.get(key, 0))
        yield orders
        yield CounterMetricFamily("edgehub_ack_failures", "Acks that could not be published.",
                                  value=intake.get("ack_failures", 0))

        broker: Mapping[str, Any] = snap.get("broker", {})
        yield GaugeMetricFamily("edgehub_broker_connected", "1 when connected to the store broker.",
                                value=1 if broker.get("connected") else 0)
        yield CounterMetricFamily("edgehub_broker_connects", "Connections made to the store broker.",
                                  value=broker.get("connects", 0))

        outbox: list[Mapping[str, Any]] = snap.get("outbox", {}).get("streams", [])
        depth = GaugeMetricFamily("edgehub_outbox_depth", "Rows waiting for the cloud, by stream.",
                                  labels=["stream"])
        age = GaugeMetricFamily("edgehub_outbox_oldest_age_seconds", "Age of the oldest waiting row.",
                                labels=["stream"])
        produced = CounterMetricFamily("edgehub_outbox_produced", "Rows ever added, by stream.",
                                       labels=["stream"])
        acked = CounterMetricFamily("edgehub_outbox_acked", "Rows the cloud acknowledged, by stream.",
                                    labels=["stream"])
        for stream in outbox:
            depth.add_metric([stream["stream"]], stream["depth"])
            age.add_metric([stream["stream"]], stream["oldest_age_s"])
            if _num(stream.get("produced")) is not None:
                produced.add_metric([stream["stream"]], stream["produced"])
                acked.add_metric([stream["stream"]], stream.get("acked", 0))
        yield depth
        yield age
        yield produced
        yield acked

        # Replay rate and link: 0 with the uplink disabled (nothing is replayed, nothing connected).
        uplink: Mapping[str, Any] = snap.get("uplink") or {}
        replay: Mapping[str, Any] = uplink["replay"] if isinstance(uplink.get("replay"), dict) else {}
        rate = _num(uplink.get("replay_rate", replay.get("rate_per_s", replay.get("rate"))))
        yield GaugeMetricFamily("edgehub_outbox_replay_rate", "Rows per second replayed to the cloud.",
                                value=rate or 0.0)
        link: Mapping[str, Any] = uplink["link"] if isinstance(uplink.get("link"), dict) else {}
        online = bool(uplink.get("enabled")) and uplink.get("connected", link.get("state") in ("online", "suspect"))
        yield GaugeMetricFamily("edgehub_uplink_connected", "1 when the cloud broker is connected.",
                                value=1 if online else 0)
        # A connected link whose ping is overdue: the cloud may be gone (it is dropped at down_after_s).
        yield GaugeMetricFamily("edgehub_uplink_suspect", "1 while a ping to the cloud broker is overdue.",
                                value=1 if online and link.get("state") == "suspect" else 0)

        devices: list[Mapping[str, Any]] = snap.get("devices", [])
        if snap.get("devices_configured"):
            by_state = GaugeMetricFamily("edgehub_devices", "Devices by state.", labels=["state"])
            counts: dict[str, int] = {}
            for device in devices:
                state = str(device.get("state", "unknown"))
                counts[state] = counts.get(state, 0) + 1
            for state in sorted(set(counts) | set(DEVICE_STATES)):
                by_state.add_metric([state], counts.get(state, 0))
            yield by_state

        for name, what in (("failovers", "Times a role moved to a spare device, by role."),
                           ("failbacks", "Times a role moved back to its primary device, by role.")):
            moves: Mapping[str, Any] = snap.get(name) or {}
            if isinstance(moves, Mapping) and snap.get("roles") is not None:
                family = CounterMetricFamily(f"edgehub_{name}", what, labels=["role"])
                for role, count in sorted(moves.items()):
                    family.add_metric([role], count)
                yield family
        print_jobs: Mapping[str, Any] = snap.get("print_jobs") or {}
        if print_jobs:
            jobs = CounterMetricFamily("edgehub_print_jobs", "Print jobs by result.", labels=["result"])
            for result, count in sorted(print_jobs.items()):
                if _num(count) is not None:
                    jobs.add_metric([str(result)], count)
            yield jobs

        kitchen: Mapping[str, Any] = snap.get("kitchen") or {}
        if kitchen:
            yield CounterMetricFamily("edgehub_kitchen_tickets", "Kitchen tickets made.",
                                      value=kitchen.get("tickets", 0))
            yield CounterMetricFamily("edgehub_kitchen_alerts", "Tickets that went red (late).",
                                      value=kitchen.get("alerts", 0))
            open_now = GaugeMetricFamily("edgehub_kitchen_open_tickets", "Tickets on a station's screen.",
                                         labels=["station"])
            for station, count in sorted((kitchen.get("open") or {}).items()):
                open_now.add_metric([station], count)
            yield open_now
            screens = GaugeMetricFamily("edgehub_kitchen_screens", "Kitchen screens connected (web).",
                                        labels=["station"])
            for station, count in sorted((kitchen.get("screens") or {}).items()):
                screens.add_metric([station], count)
            yield screens

        system: Mapping[str, Any] = snap.get("system", {})
        disk = system.get("disk") or {}
        if disk:
            yield GaugeMetricFamily("edgehub_disk_free_bytes", "Free bytes on the data filesystem.",
                                    value=disk["free_bytes"])
            yield GaugeMetricFamily("edgehub_disk_total_bytes", "Size of the data filesystem.",
                                    value=disk["total_bytes"])
        memory = system.get("memory") or {}
        if memory:
            yield GaugeMetricFamily("edgehub_memory_available_bytes", "Memory available to new work.",
                                    value=memory["available_bytes"])
        temperature = _num((system.get("cpu") or {}).get("temperature_c"))
        if temperature is not None:  # absent sensor: not exported rather than a fake 0
            yield GaugeMetricFamily("edgehub_soc_temperature_celsius", "SoC temperature.", value=temperature)

