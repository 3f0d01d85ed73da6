"""The box's page and remote support: ``/``, ``/metrics`` and the support endpoints of /api/v1.

``Support`` is one hub component, built last: it reads the hub's whole status (for the metrics,
the self-check and bundles) and the ports the hub hands it (the device registry for probes, the
roles' seats for failover counts, the outbox's counters, the roles' history, the broker's log).
It holds the ring of recent log lines that bundles fall back on without journald; the hub
attaches that ring first thing at its start (before the journal and discovery).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgehub.api.server import OPENAPI_FILE
from edgehub.component import Component, Listener, StatusReader, on
from edgehub.config import Address, Config
from edgehub.context import Context
from edgehub.devices.registry import DEVICE_CHANGED, DeviceEvent, DeviceRegistry
from edgehub.errors import EdgehubError
from edgehub.intake import ACK_SENT
from edgehub.logs import RecentLines
from edgehub.metrics import CONTENT_TYPE, HubMetrics
from edgehub.roles.failover import RoleSeat
from edgehub.store import Journal
from edgehub.store.outbox import StreamCounters

if TYPE_CHECKING:
    from edgehub.doctor import Doctor

__all__ = ["OPENAPI_FILE", "STATIC_DIR", "Support", "SupportPorts", "setup"]

log = logging.getLogger("edgehub.support")

STATIC_DIR = Path(__file__).resolve().parent / "api" / "static"


@dataclass(frozen=True)
class SupportPorts:
    """What support reads of the rest of the hub."""

    status: StatusReader  # the hub's /api/v1/status
    broker_address: Callable[[], Address]  # where the bus connects now
    registry: DeviceRegistry | None = None
    seats: Mapping[str, RoleSeat] | None = None  # the roles' seats, for failover counts
    outbox_counters: Callable[[], Awaitable[dict[str, StreamCounters]]] | None = None
    role_history: Callable[[], Awaitable[dict[str, Any]]] | None = None
    field_checks: Callable[[], list[Any]] | None = None
    broker_log: Callable[[], list[str]] = list  # the private Mosquitto's last lines (managed mode)


def setup(ctx: Context, config: Config, ports: SupportPorts, recent: RecentLines) -> Support:
    """``config``: the whole of it (the self-check and bundles look at every part)."""
    return Support(config, ctx.journal, ports, recent)


class Support(Component):
    def __init__(self, config: Config, journal: Journal, ports: SupportPorts,
                 recent: RecentLines | None = None) -> None:
        self.config = config
        self.journal = journal
        self.ports = ports
        self.metrics = HubMetrics(self)
        self.recent = recent or RecentLines()
        self._openapi: bytes | None = None
        # Role moves seen so far, by role: to a spare (failover) and back to the primary (failback).
        self.failovers: dict[str, int] = {}
        self.failbacks: dict[str, int] = {}
        self._serving: dict[str, str] = {}  # role -> the device last seen serving it
        self._bound: dict[str, tuple[str, ...]] = {}  # role -> its devices when last seen

    name = "support"

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/", self.page),
                web.static("/static/", STATIC_DIR, show_index=False, append_version=False),
                web.get("/metrics", self.prometheus), web.get("/api/v1/openapi.json", self.openapi),
                web.get("/api/v1/outbox", self.outbox), web.post("/api/v1/doctor", self.doctor),
                web.get("/api/v1/bundle", self.bundle),
                # One of a pair: its node serves the real one (edgehub/pair/node.py).
                *([web.post("/api/v1/pair/resync", self.no_pair)] if self.config.pair is None else [])]

    async def no_pair(self, request: web.Request) -> web.Response:
        return web.json_response({"error": "this box is not one of a pair (no [pair] in its config)"}, status=409)

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"system": self.system_section, "outbox": self.outbox_section}

    def listens(self) -> Sequence[Listener]:
        return [on(ACK_SENT, self._observe_ack), on(DEVICE_CHANGED, self._on_device_event)]

    async def __aenter__(self) -> Support:
        self.journal.commit_observers.append(self.metrics.observe_commit)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.metrics.observe_commit in self.journal.commit_observers:
            self.journal.commit_observers.remove(self.metrics.observe_commit)

    def _observe_ack(self, ack: tuple[str, float]) -> None:
        self.metrics.observe_ack(*ack)

    # --- failovers -------------------------------------------------------------------------

    def _on_device_event(self, event: DeviceEvent) -> None:
        # Roles re-decide who serves in their own listener of the same event; look right after.
        asyncio.get_running_loop().call_soon(self.note_role_moves)

    def note_role_moves(self) -> None:
        """Count each role's move from one device to another since the last look: a move to
        the primary is a failback, any other a failover. A rebind by the installer is neither.
        Called after every device event and at every scrape (failback waits on a timer)."""
        for name, seat in (self.ports.seats or {}).items():
            devices = tuple(seat.devices)
            before, now = self._serving.get(name), seat.serving
            if self._bound.get(name, devices) == devices and before is not None and now not in (None, before):
                moves = self.failbacks if devices and now == devices[0] else self.failovers
                moves[name] = moves.get(name, 0) + 1
            self._bound[name] = devices
            if now is not None:
                self._serving[name] = now

    # --- status sections -------------------------------------------------------------------

    async def system_section(self) -> dict[str, Any]:
        from edgehub import sysinfo  # psutil: first asked for by a status read, not at start

        return await asyncio.to_thread(sysinfo.snapshot, self.config.paths.data_dir)

    async def outbox_section(self) -> dict[str, Any]:
        """Rows waiting for the cloud per stream, with each stream's life so far (produced,
        acked by the cloud, dropped by policy). Read from the outbox's per-stream counters,
        not by counting rows: after a week offline a status poll must not scan a million."""
        now = time.time()
        counters = await self.ports.outbox_counters() if self.ports.outbox_counters is not None else {}
        streams = [{"stream": name, "depth": c.pending,
                    "oldest_age_s": round(max(0.0, now - c.oldest_at), 1) if c.oldest_at is not None else 0.0,
                    "produced": c.produced, "acked": c.acked, "dropped": c.dropped}
                   for name, c in sorted(counters.items())]
        return {"streams": streams, "total": sum(s["depth"] for s in streams)}

    # --- what the metrics read -------------------------------------------------------------

    async def metrics_snapshot(self) -> dict[str, Any]:
        from edgehub.doctor import device_rows, role_rows  # the doctor's module: not needed at start

        status = dict(await self.ports.status())
        status["devices_configured"] = status.get("devices") is not None
        status["devices"] = device_rows(status.get("devices") or [])
        self.note_role_moves()
        if status.get("roles") is not None:
            names = [str(r["role"]) for r in role_rows(status["roles"])]
            status["failovers"] = {name: self.failovers.get(name, 0) for name in names}
            status["failbacks"] = {name: self.failbacks.get(name, 0) for name in names}
        for section in ("roles", "kitchen", "uplink"):
            part = status.get(section)
            if isinstance(part, dict):
                # Roles report their print queue's counters as "print" (printed, rejected ...).
                jobs = part.get("print_jobs", part.get("print"))
                if isinstance(jobs, dict):
                    status.setdefault("print_jobs", jobs)
        return status

    async def page(self, request: web.Request) -> web.FileResponse:
        return web.FileResponse(STATIC_DIR / "index.html")

    async def prometheus(self, request: web.Request) -> web.Response:
        body = await self.metrics.render()
        return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})

    async def openapi(self, request: web.Request) -> web.Response:
        if self._openapi is None:
            self._openapi = await asyncio.to_thread(OPENAPI_FILE.read_bytes)
        return web.Response(body=self._openapi, content_type="application/json")

    async def outbox(self, request: web.Request) -> web.Response:
        status = await self.ports.status()
        return web.json_response({**await self.outbox_section(), "uplink": status.get("uplink")})

    def make_doctor(self) -> Doctor:
        from edgehub.doctor import Doctor  # with its own imports, first used when an installer asks

        return Doctor(self.config, broker_address=self.ports.broker_address(), read_status=self.ports.status,
                      probe_device=self._device_probe())

    def _device_probe(self) -> Callable[[str], Awaitable[tuple[bool, str]]] | None:
        """Asks a device's driver for its health, as the watchdog does (same driver, its lock)."""
        registry = self.ports.registry
        if registry is None:
            return None

        async def probe(device_id: str) -> tuple[bool, str]:
            try:
                async with asyncio.timeout(5):
                    driver = await registry.open_driver(device_id)
                    health = await driver.health()
            except TimeoutError:
                return False, "no answer within 5 s"
            except EdgehubError as exc:
                return False, str(exc).removeprefix(f"{device_id}: ")
            return bool(health.usable), str(health.reason or health.state)

        return probe

    async def doctor(self, request: web.Request) -> web.Response:
        from edgehub.doctor import as_json

        checks = await self.make_doctor().run()
        return web.json_response(as_json(checks))

    async def bundle(self, request: web.Request) -> web.Response:
        from edgehub import bundle  # tarfile, gzip and the doctor: first used when support asks
        from edgehub.doctor import as_json

        status = await self.ports.status()
        doctor = as_json(await self.make_doctor().run())
        outbox = await self.outbox_section()
        history = await self.ports.role_history() if self.ports.role_history is not None else None
        broker_log = self.ports.broker_log()
        checks = self.ports.field_checks() if self.ports.field_checks is not None else None
        config = self.config

        def make() -> tuple[str, bytes]:
            files = bundle.collect(config, status=status, doctor=doctor, outbox=outbox,
                                   recent_log=self.recent.text(), broker_log=broker_log, role_history=history,
                                   field_checks=checks)
            return bundle.build(config, files)

        name, data = await asyncio.to_thread(make)
        log.info("support bundle %s made (%d bytes)", name, len(data))
        return web.Response(body=data, content_type="application/gzip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})
