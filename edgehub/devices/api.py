"""``GET /api/v1/devices`` (every device, its state and address), ``GET /api/v1/devices/{id}`` and
``POST /api/v1/devices/{id}/test-print`` (a short slip straight on one printer)."""

from __future__ import annotations

import json
import logging
import time
import uuid
from typing import Any

from aiohttp import web

from drivers.base import DeviceInfo
from drivers.escpos_profile import PrinterProfile
from drivers.escpos_render import Cut, Rule, Text, Ticket, render
from edgehub.devices.registry import DeviceRegistry
from edgehub.errors import DeviceError

__all__ = ["devices_routes", "test_slip"]

log = logging.getLogger("edgehub.devices")


def test_slip(store_id: str, info: DeviceInfo, profile: Any = None) -> bytes:
    """The ESC/POS bytes of the installer's test slip: which box, which printer, when; laid out
    for the printer's profile (drivers/escpos_profile.py) when given."""
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


def devices_routes(registry: DeviceRegistry, store_id: str) -> list[web.AbstractRouteDef]:
    async def list_devices(request: web.Request) -> web.Response:
        return web.json_response(await registry.status())

    async def one_device(request: web.Request) -> web.Response:
        entry = registry.get(request.match_info["device_id"])
        if entry is None:
            return web.json_response({"error": "no such device"}, status=404)
        return web.json_response(entry.describe())

    async def test_print(request: web.Request) -> web.Response:
        """Print a short test slip straight on one printer (not through a role's queue)."""
        device_id = request.match_info["device_id"]
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
            slip = test_slip(store_id, entry.info, getattr(driver, "profile", None))
            result = await print_job(job_id, slip)
        except DeviceError as exc:
            message = str(exc).removeprefix(f"{device_id}: ")
            raise _error(web.HTTPBadGateway, f"the printer did not print: {message}",
                         device_id=device_id) from exc
        log.info("test print on %s (job %s)", device_id, job_id)
        return web.json_response({"ok": True, "device_id": device_id, "job_id": job_id,
                                  "seconds": round(float(getattr(result, "seconds", 0.0)), 3)})

    return [web.get("/api/v1/devices", list_devices), web.get("/api/v1/devices/{device_id}", one_device),
            web.post("/api/v1/devices/{device_id}/test-print", test_print)]
