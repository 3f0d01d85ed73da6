"""The box's HTTP API as remote support and the page use it: every endpoint with and without
credentials, sessions from the token or the installer PIN, CORS closed, the OpenAPI file true."""

from __future__ import annotations

import json
from typing import Any

import aiohttp
import pytest
from aiohttp import web

from edgehub.api.auth import CSRF_HEADER, SESSION_COOKIE
from edgehub.support import OPENAPI_FILE
from tests.api.conftest import AUTH, INSTALLER_PIN, Box
from tests.conftest import API_TOKEN

# (method, path, status with the token) for every guarded endpoint of the box.
GUARDED: list[tuple[str, str, dict[str, Any] | None, int]] = [
    ("GET", "/api/v1/status", None, 200),
    ("GET", "/api/v1/devices", None, 200),
    ("GET", "/api/v1/devices/prn-front", None, 200),
    ("GET", "/api/v1/roles", None, 200),
    ("PUT", "/api/v1/roles/receipt-printer", {"devices": ["prn-front"]}, 200),
    ("GET", "/api/v1/outbox", None, 200),
    ("POST", "/api/v1/doctor", None, 200),
    ("GET", "/api/v1/bundle", None, 200),
    ("GET", "/api/v1/openapi.json", None, 200),
    ("GET", "/metrics", None, 200),
    ("POST", "/api/v1/devices/nope/test-print", None, 404),
]


async def test_every_guarded_endpoint_needs_credentials(box: Box, http: aiohttp.ClientSession) -> None:
    for method, path, body, expected in GUARDED:
        async with http.request(method, box.base + path, json=body) as response:
            assert response.status == 401, (method, path)
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.request(method, box.base + path, json=body, headers=AUTH) as response:
            assert response.status == expected, (method, path, await response.text())
    # POST /api/v1/sync answers whatever the uplink says, but never without the token.
    async with http.post(box.base + "/api/v1/sync") as response:
        assert response.status == 401
    async with http.get(box.base + "/healthz") as response:
        assert response.status == 200
        assert await response.json() == {"status": "ok"}


async def test_status_tells_the_truth_about_the_box(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    async with http.get(box.base + "/api/v1/status", headers=AUTH) as response:
        status = await response.json()
    assert status["store_id"] == "s1"
    assert status["system"]["disk"]["free_bytes"] > 0
    assert status["system"]["memory"]["total_bytes"] > 0
    assert "temperature_c" in status["system"]["cpu"]
    assert status["outbox"] == {"streams": [], "total": 0} or status["outbox"]["total"] >= 0
    device = next(d for d in status["devices"]["devices"] if d["device_id"] == "prn-front")
    assert (device["kind"], device["model"], device["transport"], device["state"]) == (
        "printer", "TM-T20III", "tcp", "ready")
    role = next(r for r in status["roles"]["roles"] if r["role"] == "receipt-printer")
    assert role["devices"] == ["prn-front"] and role["device"] == "prn-front"


async def test_the_routers_own_errors_are_json_too(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.get(box.base + "/api/v1/nothing-here", headers=AUTH) as response:
        assert (response.status, await response.json()) == (404, {"error": "no such endpoint: /api/v1/nothing-here"})
    async with http.delete(box.base + "/api/v1/status", headers=AUTH) as response:
        assert response.status == 405 and response.headers["Allow"]
        assert (await response.json())["error"].startswith("DELETE is not allowed on /api/v1/status (allowed: GET")
    # A handler's own 404 is left as it said it.
    async with http.post(box.base + "/api/v1/devices/nope/test-print", headers=AUTH) as response:
        assert response.status == 404 and (await response.json())["error"] == "no device 'nope'"


async def test_test_print_comes_out_of_the_printer(box: Box, http: aiohttp.ClientSession) -> None:
    await box.wait_device_ready()
    async with http.post(box.base + "/api/v1/devices/prn-front/test-print", headers=AUTH) as response:
        assert response.status == 200, await response.text()
        body = await response.json()
    assert body["ok"] is True and body["device_id"] == "prn-front"
    assert len(box.printer.printed) == 1
    assert "edgehub test print" in str(box.printer.printed[0])
    box.printer.paper_out = True
    async with http.post(box.base + "/api/v1/devices/prn-front/test-print", headers=AUTH) as response:
        assert response.status == 502
        assert "paper" in (await response.json())["error"].lower()


async def test_login_with_pin_gives_a_strict_httponly_session(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.post(box.base + "/api/v1/login", json={"secret": INSTALLER_PIN}) as response:
        assert response.status == 200
        assert (await response.json())["via"] == "pin"
        cookie = response.headers["Set-Cookie"]
    assert cookie.startswith(f"{SESSION_COOKIE}=")
    assert "HttpOnly" in cookie and "SameSite=Strict" in cookie
    async with http.get(box.base + "/api/v1/status") as response:
        assert response.status == 200
    # A change with only the cookie must carry the header no other origin can add.
    async with http.post(box.base + "/api/v1/doctor") as response:
        assert response.status == 403
    async with http.post(box.base + "/api/v1/doctor", headers={CSRF_HEADER: "1"}) as response:
        assert response.status == 200
    async with http.post(box.base + "/api/v1/logout") as response:
        assert response.status == 200
    async with http.get(box.base + "/api/v1/status") as response:
        assert response.status == 401


async def test_login_with_the_token_and_refusals(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.post(box.base + "/api/v1/login", json={"secret": API_TOKEN}) as response:
        assert (await response.json())["via"] == "token"
    async with http.post(box.base + "/api/v1/login", json={"secret": f" {API_TOKEN}\n"}) as response:
        assert (await response.json())["via"] == "token"  # pasted with the spaces around it
    async with http.post(box.base + "/api/v1/login", json={"secret": "   "}) as response:
        assert response.status == 400
    async with http.post(box.base + "/api/v1/login", json={"nothing": 1}) as response:
        assert response.status == 400
    async with http.post(box.base + "/api/v1/login", json={"secret": API_TOKEN},
                         headers={"Origin": "http://evil.example"}) as response:
        assert response.status == 403
    async with http.get(box.base + "/api/v1/status") as response:
        assert response.status == 200
    async with aiohttp.ClientSession() as fresh:
        async with fresh.get(box.base + "/api/v1/status", cookies={SESSION_COOKIE: "forged"}) as response:
            assert response.status == 401


async def test_wrong_pins_are_rate_limited_like_tokens(box: Box, http: aiohttp.ClientSession) -> None:
    codes = []
    for guess in range(12):
        async with http.post(box.base + "/api/v1/login", json={"secret": f"{100000 + guess}"}) as response:
            codes.append(response.status)
    # A PIN is short: the address that guesses it is stopped after 5, before the token's 10.
    assert codes[:5] == [401] * 5
    assert set(codes[5:]) == {429}
    async with http.post(box.base + "/api/v1/login", json={"secret": INSTALLER_PIN}) as response:
        assert response.status == 429  # blocked even with the right PIN, like the token path


async def test_cors_is_closed(box: Box, http: aiohttp.ClientSession) -> None:
    origin = {"Origin": "http://evil.example"}
    async with http.get(box.base + "/api/v1/status", headers={**AUTH, **origin}) as response:
        assert response.status == 200
        assert "Access-Control-Allow-Origin" not in response.headers
    async with http.options(box.base + "/api/v1/status", headers={
            **origin, "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization"}) as response:
        assert "Access-Control-Allow-Origin" not in response.headers
        assert "Access-Control-Allow-Headers" not in response.headers


async def test_page_is_served_with_a_strict_content_policy(box: Box, http: aiohttp.ClientSession) -> None:
    async with http.get(box.base + "/") as response:
        assert response.status == 200
        assert "<title>" in await response.text()
        assert "frame-ancestors 'none'" in response.headers["Content-Security-Policy"]
    for asset in ("app.js", "style.css"):
        async with http.get(f"{box.base}/static/{asset}") as response:
            assert response.status == 200
    async with http.get(f"{box.base}/static/../openapi.json") as response:
        assert response.status in (403, 404)


def _app_routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        path = route.resource.canonical if route.resource is not None else ""
        documented_kind = path.startswith(("/api/", "/pos/")) or path in ("/healthz", "/metrics")
        if route.method in ("HEAD", "OPTIONS") or not documented_kind:
            continue
        routes.add((route.method, path))
    return routes


async def test_openapi_documents_exactly_the_apps_routes(box: Box, http: aiohttp.ClientSession) -> None:
    spec = json.loads(OPENAPI_FILE.read_text())
    assert spec["openapi"].startswith("3.1")
    documented = {(method.upper(), path) for path, item in spec["paths"].items() for method in item}
    assert documented == _app_routes(box.hub.api.make_app())
    async with http.get(box.base + "/api/v1/openapi.json", headers=AUTH) as response:
        assert await response.json() == spec


async def test_open_paths_in_the_spec_are_exactly_the_open_ones(box: Box) -> None:
    spec = json.loads(OPENAPI_FILE.read_text())
    open_paths = {path for path, item in spec["paths"].items()
                  for op in item.values() if op.get("security") == []}
    assert open_paths == {"/healthz", "/api/v1/login", "/api/v1/logout"}


@pytest.mark.parametrize("path", ["/api/v1/devices/prn-front/test-print", "/api/v1/sync"])
async def test_fallbacks_say_not_configured_without_the_component(path: str, http: aiohttp.ClientSession) -> None:
    from edgehub.api import ApiServer
    from edgehub.config import Address

    class Bare:  # a box built without the devices and cloud components
        def healthy(self) -> tuple[bool, str]:
            return True, ""

        async def status(self) -> dict[str, Any]:
            return {}

    async with ApiServer(Address("127.0.0.1", 0), API_TOKEN, Bare()) as api:
        async with http.post(f"http://127.0.0.1:{api.port}{path}", headers=AUTH) as response:
            assert response.status == 501
            assert "configured" in (await response.json())["error"]
