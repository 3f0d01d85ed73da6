"""The box's page and remote support: ``/``, ``/metrics`` and the support endpoints of /api/v1.

``Support(hub)`` is one hub component. Its constructor only registers hooks (ack and commit
latency into the metrics, the ``system`` and ``outbox`` status sections, the routes). It holds
the ring of recent log lines that bundles fall back on without journald; the hub attaches that
ring first thing at its start (before the journal and discovery), not when this component starts.

Devices, roles and the uplink are other components. Where one of them registers its own route
(``GET /api/v1/devices``, ``PUT /api/v1/roles/{role}``, ``POST /api/v1/sync`` …) that route
serves; where none did, a fallback here answers from the status sections, or says clearly
(501) that the part is not configured — so the documented API is always the app's API.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from aiohttp import web

from edgehub.config import Address
from edgehub.errors import DeviceError, EdgehubError
from edgehub.logs import RecentLines
from edgehub.metrics import CONTENT_TYPE, HubMetrics

if TYPE_CHECKING:
    from edgehub.doctor import Doctor
    from edgehub.hub import Hub

log = logging.getLogger("edgehub.support")

STATIC_DIR = Path(__file__).resolve().parent / "static"
OPENAPI_FILE = Path(__file__).resolve().parent / "openapi.json"
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
            "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'self'")


def test_slip(store_id: str, info: Any, profile: Any = None) -> bytes:
    """The ESC/POS bytes of the installer's test slip: which box, which printer, when; laid out
    for the printer's profile (drivers/escpos_profile.py) when given."""
    from drivers.escpos_profile import PrinterProfile
    from drivers.escpos_render import Cut, Rule, Text, Ticket, render

    ticket = Ticket()
    for block in (Text("edgehub test print", bold=True, double_height=True, align="center"), Rule(),
                  Text(f"store    {store_id}"), Text(f"printer  {info.device_id}"),
                  Text(f"model    {info.model or info.driver}"), Text(f"via      {info.transport}"),
                  Text(time.strftime("time     %Y-%m-%d %H:%M:%S")), Rule(),
                  Text("If you can read this, the printer works.", align="center"), Cut()):
        ticket.blocks.append(block)
    return render(ticket, profile if isinstance(profile, PrinterProfile) else None)


def _error(status: type[web.HTTPException], message: str, **extra: Any) -> web.HTTPException:
    return status(text=json.dumps({"error": message, **extra}), content_type="application/json")


class Support:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub
        self.metrics = HubMetrics(self)
        self.recent = RecentLines()
        self._openapi: bytes | None = None
        # Role moves seen so far, by role: to a spare (failover) and back to the primary (failback).
        self.failovers: dict[str, int] = {}
        self.failbacks: dict[str, int] = {}
        self._serving: dict[str, str] = {}  # role -> the device last seen serving it
        self._bound: dict[str, tuple[str, ...]] = {}  # role -> its devices when last seen
        hub.intake.on_ack.append(self.metrics.observe_ack)
        hub.journal.commit_observers.append(self.metrics.observe_commit)
        hub.status_sections["system"] = self.system_section
        hub.status_sections["outbox"] = self.outbox_section
        hub.api.route_setups.append(self.setup_routes)
        hub.api.fallback_route_setups.append(self.setup_fallbacks)

    async def __aenter__(self) -> Support:
        self.hub.registry.subscribe(self._on_device_event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.hub.registry.unsubscribe(self._on_device_event)

    # --- failovers -------------------------------------------------------------------------

    def _on_device_event(self, event: object) -> None:
        # Roles re-decide who serves in their own listener of the same event; look right after.
        asyncio.get_running_loop().call_soon(self.note_role_moves)

    def note_role_moves(self) -> None:
        """Count each role's move from one device to another since the last look: a move to
        the primary is a failback, any other a failover. A rebind by the installer is neither.
        Called after every device event and at every scrape (failback waits on a timer)."""
        roles = getattr(self.hub, "roles", None)  # built after this component in the hub
        for name, seat in (getattr(roles, "seats", None) or {}).items():
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

        return await asyncio.to_thread(sysinfo.snapshot, self.hub.config.paths.data_dir)

    async def outbox_section(self) -> dict[str, Any]:
        """Rows waiting for the cloud per stream, with each stream's life so far (produced,
        acked by the cloud, dropped by policy). Read from the outbox's per-stream counters,
        not by counting rows: after a week offline a status poll must not scan a million."""
        now = time.time()
        counters = await self.hub.outbox.counters()
        streams = [{"stream": name, "depth": c.pending,
                    "oldest_age_s": round(max(0.0, now - c.oldest_at), 1) if c.oldest_at is not None else 0.0,
                    "produced": c.produced, "acked": c.acked, "dropped": c.dropped}
                   for name, c in sorted(counters.items())]
        return {"streams": streams, "total": sum(s["depth"] for s in streams)}

    # --- what the metrics read -------------------------------------------------------------

    async def metrics_snapshot(self) -> dict[str, Any]:
        from edgehub.doctor import device_rows, role_rows  # the doctor's module: not needed at start

        status = dict(await self.hub.status())
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

    async def role_history(self) -> dict[str, Any]:
        """Who bound which devices to each role and when, and the role changes not yet sent to
        the cloud (the recent history while the WAN is down)."""

        def read(conn: Any) -> dict[str, Any]:
            tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            bindings = []
            if "role_bindings" in tables:
                bindings = [dict(zip(("role", "devices", "failback_after_s", "updated_at", "updated_by"), row,
                                     strict=True))
                            for row in conn.execute("SELECT role, devices, failback_after_s, updated_at, "
                                                    "updated_by FROM role_bindings ORDER BY role")]
            changes = []
            for (payload,) in conn.execute("SELECT payload FROM outbox WHERE msg_id LIKE 'role:%' "
                                           "ORDER BY seq DESC LIMIT 500"):
                try:
                    changes.append(json.loads(payload))
                except ValueError:
                    continue
            return {"bindings": bindings, "recent_changes": changes[::-1]}

        return await self.hub.journal.read(read)

    # --- routes ----------------------------------------------------------------------------

    def setup_routes(self, app: web.Application) -> None:
        app.router.add_get("/", self.page)
        app.router.add_static("/static/", STATIC_DIR, show_index=False, append_version=False)
        app.router.add_get("/metrics", self.prometheus)
        app.router.add_get("/api/v1/openapi.json", self.openapi)
        app.router.add_get("/api/v1/outbox", self.outbox)
        app.router.add_post("/api/v1/doctor", self.doctor)
        app.router.add_get("/api/v1/bundle", self.bundle)
        app.on_response_prepare.append(self._security_headers)

    def setup_fallbacks(self, app: web.Application) -> None:
        taken = {(r.method, r.resource.canonical) for r in app.router.routes() if r.resource is not None}
        fallbacks: list[tuple[str, str, Callable[[web.Request], Awaitable[web.StreamResponse]]]] = [
            ("GET", "/api/v1/devices", self.devices),
            ("POST", "/api/v1/devices/{device_id}/test-print", self.test_print),
            ("GET", "/api/v1/roles", self.roles),
            ("PUT", "/api/v1/roles/{role}", self.bind_role),
            ("POST", "/api/v1/sync", self.sync),
            ("GET", "/api/v1/sync", self.sync),
            ("POST", "/api/v1/pair/resync", self.no_pair),
        ]
        for method, path, handler in fallbacks:
            if (method, path) not in taken:
                app.router.add_route(method, path, handler)

    async def no_pair(self, request: web.Request) -> web.Response:
        """``/api/v1/pair/resync`` on a box that is not one of a pair (edgehub/pair/node.py has the real one)."""
        return web.json_response({"error": "this box is not one of a pair (no [pair] in its config)"}, status=409)

    async def _security_headers(self, request: web.Request, response: web.StreamResponse) -> None:
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        if request.path == "/" or request.path.startswith("/static/"):
            response.headers.setdefault("Content-Security-Policy", PAGE_CSP)
            response.headers.setdefault("X-Frame-Options", "DENY")
        if request.path.startswith("/api/") or request.path == "/metrics":
            response.headers.setdefault("Cache-Control", "no-store")

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
        status = await self.hub.status()
        return web.json_response({**await self.outbox_section(), "uplink": status.get("uplink")})

    def make_doctor(self) -> Doctor:
        from edgehub.doctor import Doctor  # with its own imports, first used when an installer asks

        hub = self.hub
        return Doctor(hub.config, broker_address=Address(hub.bus.host, hub.bus.port), read_status=hub.status,
                      probe_device=self._device_probe())

    def registry(self) -> Any | None:
        """The hub's device registry, if the devices component is wired in."""
        for name in ("devices", "registry", "device_registry"):
            candidate = getattr(self.hub, name, None)
            if candidate is not None and hasattr(candidate, "open_driver") and hasattr(candidate, "get"):
                return candidate
        return None

    def _device_probe(self) -> Callable[[str], Awaitable[tuple[bool, str]]] | None:
        """Asks a device's driver for its health, as the watchdog does (same driver, its lock)."""
        registry = self.registry()
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

        hub = self.hub
        status = await hub.status()
        doctor = as_json(await self.make_doctor().run())
        outbox = await self.outbox_section()
        history = await self.role_history()
        broker_log = list(hub.broker.log_tail) if hub.broker is not None else []

        field_checks = getattr(hub, "field_checks", None)
        checks = field_checks.all() if field_checks is not None else None

        def make() -> tuple[str, bytes]:
            files = bundle.collect(hub.config, status=status, doctor=doctor, outbox=outbox,
                                   recent_log=self.recent.text(), broker_log=broker_log, role_history=history,
                                   field_checks=checks)
            return bundle.build(hub.config, files)

        name, data = await asyncio.to_thread(make)
        log.info("support bundle %s made (%d bytes)", name, len(data))
        return web.Response(body=data, content_type="application/gzip",
                            headers={"Content-Disposition": f'attachment; filename="{name}"'})

    # --- fallbacks (used only where the owning component registered no route) --------------

    async def devices(self, request: web.Request) -> web.Response:
        from edgehub.doctor import device_rows  # the doctor's module: not needed at start

        section = (await self.hub.status()).get("devices")
        if section is None:
            return web.json_response({"configured": False, "devices": []})
        return web.json_response({"configured": True, "devices": device_rows(section)})

    async def roles(self, request: web.Request) -> web.Response:
        from edgehub.doctor import role_rows  # the doctor's module: not needed at start

        section = (await self.hub.status()).get("roles")
        if section is None:
            return web.json_response({"configured": False, "roles": []})
        return web.json_response({"configured": True, "roles": role_rows(section)})

    async def bind_role(self, request: web.Request) -> web.Response:
        raise _error(web.HTTPNotImplemented, "roles are not configured on this box: there is nothing to bind")

    async def test_print(self, request: web.Request) -> web.Response:
        """Print a short test slip straight on one printer (not through a role's queue)."""
        device_id = request.match_info["device_id"]
        registry = self.registry()
        if registry is None:
            raise _error(web.HTTPNotImplemented,
                         "test print is not available: no device registry is configured on this box")
        entry = registry.get(device_id)
        if entry is None:
            raise _error(web.HTTPNotFound, f"no device {device_id!r}")
        if entry.info.kind != "printer":
            raise _error(web.HTTPConflict, f"{device_id} is a {entry.info.kind}, not a printer")
        job_id = f"test-{uuid.uuid4().hex[:12]}"
        try:
            driver = await registry.open_driver(device_id)
            print_job = getattr(driver, "print_job", None)
            if print_job is None:
                raise _error(web.HTTPNotImplemented, f"the {entry.info.driver} driver cannot print")
            slip = test_slip(self.hub.config.store.id, entry.info, getattr(driver, "profile", None))
            result = await print_job(job_id, slip)
        except DeviceError as exc:
            message = str(exc).removeprefix(f"{device_id}: ")
            raise _error(web.HTTPBadGateway, f"the printer did not print: {message}",
                         device_id=device_id) from exc
        log.info("test print on %s (job %s)", device_id, job_id)
        return web.json_response({"ok": True, "device_id": device_id, "job_id": job_id,
                                  "seconds": round(float(getattr(result, "seconds", 0.0)), 3)})

    async def sync(self, request: web.Request) -> web.Response:
        uplink = getattr(self.hub, "uplink", None)
        sync_now = getattr(uplink, "sync_now", None)
        if sync_now is None:
            raise _error(web.HTTPNotImplemented, "no uplink to the cloud is configured on this box")
        result = await sync_now()
        return web.json_response({"ok": True, **(result if isinstance(result, dict) else {})}, status=202)
