"""``GET /api/v1/devices`` (every device, its state and address) and ``GET /api/v1/devices/{id}``."""

from __future__ import annotations

from collections.abc import Callable

from aiohttp import web

from edgehub.devices.registry import DeviceRegistry

__all__ = ["devices_routes"]


def devices_routes(registry: DeviceRegistry) -> Callable[[web.Application], None]:
    async def list_devices(request: web.Request) -> web.Response:
        return web.json_response(await registry.status())

    async def one_device(request: web.Request) -> web.Response:
        entry = registry.get(request.match_info["device_id"])
        if entry is None:
            return web.json_response({"error": "no such device"}, status=404)
        return web.json_response(entry.describe())

    def setup(app: web.Application) -> None:
        app.router.add_get("/api/v1/devices", list_devices)
        app.router.add_get("/api/v1/devices/{device_id}", one_device)

    return setup
