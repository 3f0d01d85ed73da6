"""Issue 19 against the real HTTP server: HTTPS with the box's own certificate, Secure cookies,
slow and idle clients, the login limiter's memory and the PIN lockout, the kitchen screens'
secrets and content policy."""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import ssl
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from edgehub.api.auth import FailedLogins, client_key
from edgehub.api.server import ApiServer, ConnectionGuard, quiet_accept_errors
from edgehub.api.tls import client_context, fingerprint, make_certificate
from edgehub.broker import MosquittoProcess, free_port
from edgehub.config import load_config
from edgehub.hub import Hub
from tests.conftest import API_TOKEN, write_config

PIN = "482913"


class Status:
    def healthy(self) -> tuple[bool, str]:
        return True, ""

    async def status(self) -> dict[str, object]:
        return {}


@contextlib.asynccontextmanager
async def tls_hub(tmp_path: Path) -> AsyncIterator[Hub]:
    tls = tmp_path / "box" / "tls"
    make_certificate(tls / "box.crt", tls / "box.key", "s1", [])
    extra = f'installer_pin = "{PIN}"\ntls_cert_file = "tls/box.crt"\ntls_key_file = "tls/box.key"\n'
    path = write_config(tmp_path / "box")
    path.write_text(path.read_text().replace(f'token = "{API_TOKEN}"', f'token = "{API_TOKEN}"\n{extra}', 1))
    config = load_config(path)
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        yield hub


async def test_the_page_and_api_are_https_with_the_boxs_certificate(tmp_path: Path) -> None:
    async with tls_hub(tmp_path) as hub:
        config = hub.config
        assert hub.api.url.startswith("https://")
        printed = fingerprint(config.api.tls_cert_file)  # type: ignore[arg-type]
        connector = aiohttp.TCPConnector(ssl=client_context(config.api))
        async with aiohttp.ClientSession(connector=connector) as http:
            async with http.post(f"{hub.api.url}api/v1/login", json={"secret": PIN}) as response:
                assert response.status == 200
                cookie = response.headers["Set-Cookie"]
            assert "Secure" in cookie and "HttpOnly" in cookie
            async with http.get(f"{hub.api.url}api/v1/status",
                                headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
                status = await response.json()
            assert status["https"] == {"tls": True, "fingerprint": printed}
        # Plain HTTP to the same port gets nowhere; a client that does not trust the box neither.
        async with aiohttp.ClientSession() as http:
            with pytest.raises(aiohttp.ClientError):
                async with http.get(f"http://127.0.0.1:{hub.api.port}/healthz"):
                    pass
            with pytest.raises(aiohttp.ClientConnectorCertificateError):
                async with http.get(f"{hub.api.url}healthz"):
                    pass
        # edgehub doctor shows the fingerprint the browser must show.
        from edgehub.doctor import Doctor

        checks = {c.name: c for c in await Doctor(config).run()}
        assert checks["https"].status == "ok" and printed in checks["https"].message
        assert printed.startswith("SHA256 ") and len(printed) == len("SHA256 ") + 95


async def test_a_lan_listener_without_a_certificate_gets_one_made_by_the_hub(tmp_path: Path) -> None:
    """A config written before HTTPS (an upgraded box) names no certificate: it still loads, and
    the hub makes the box's certificate in its data directory and serves HTTPS with it."""
    path = write_config(tmp_path)
    lan = path.read_text().replace('listen = "127.0.0.1:', 'listen = "0.0.0.0:').replace(
        'listen = "0.0.0.0:', 'listen = "127.0.0.1:', 1)  # the broker's stays on loopback
    path.write_text(lan)
    api = load_config(path).api
    data_dir = load_config(path).paths.data_dir
    assert api.tls_made_by_hub and api.tls_cert_file == data_dir / "tls" / "box.crt"
    assert api.tls_key_file == data_dir / "tls" / "box.key" and not api.tls_cert_file.exists()
    path.write_text(lan.replace(f'token = "{API_TOKEN}"', f'token = "{API_TOKEN}"\nplain_http = true'))
    assert load_config(path).api.plain_http and not load_config(path).api.tls

    # The same rule on a loopback listener, so the test never listens beyond loopback.
    from dataclasses import replace

    from edgehub.doctor import Doctor

    config = load_config(write_config(tmp_path / "box"))
    tls = config.paths.data_dir / "tls"
    config = replace(config, api=replace(config.api, tls_cert_file=tls / "box.crt", tls_key_file=tls / "box.key",
                                         tls_made_by_hub=True))
    checks = {c.name: c for c in await Doctor(config).run()}
    assert checks["https"].status == "warn" and "next start" in checks["https"].message
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
        async with asyncio.timeout(10):
            await hub.ready.wait()
        assert hub.api.url.startswith("https://") and (tls / "box.key").stat().st_mode & 0o777 == 0o600
        connector = aiohttp.TCPConnector(ssl=client_context(config.api))
        async with aiohttp.ClientSession(connector=connector) as http, http.get(f"{hub.api.url}healthz") as response:
            assert response.status == 200
    made = fingerprint(tls / "box.crt")
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:  # kept, not made again
        async with asyncio.timeout(10):
            await hub.ready.wait()
    assert fingerprint(tls / "box.crt") == made


@contextlib.asynccontextmanager
async def server(guard: ConnectionGuard) -> AsyncIterator[ApiServer]:
    from edgehub.config import Address

    async with ApiServer(Address("127.0.0.1", 0), API_TOKEN, Status(), guard=guard) as api:
        yield api


async def test_an_unfinished_header_is_dropped(tmp_path: Path) -> None:
    async with server(ConnectionGuard(header_timeout=0.5)) as api:
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: box\r\nX-Slow: ")  # and then nothing more
        await writer.drain()
        async with asyncio.timeout(3):  # it was held 150 s
            assert await reader.read() == b""
        writer.close()
        assert api.guard.timed_out == 1
        # An answered keep-alive connection that then idles goes the same way.
        reader, writer = await asyncio.open_connection("127.0.0.1", api.port)
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: box\r\n\r\n")
        async with asyncio.timeout(3):
            assert (await reader.readuntil(b"\r\n\r\n")).startswith(b"HTTP/1.1 200")
            await reader.read()
        writer.close()


async def test_a_thousand_idle_connections_do_not_stop_healthz() -> None:
    """1,100 idle connections from one address (127.0.0.3 here) while a monitor (127.0.0.2) asks
    /healthz: the first address holds at most 32, the monitor is answered at once."""
    guard = ConnectionGuard(header_timeout=5.0, per_address=32)
    async with server(guard) as api:
        socks = []
        for _ in range(1100):
            sock = socket.socket()
            sock.setblocking(False)
            sock.bind(("127.0.0.3", 0))
            with contextlib.suppress(BlockingIOError):
                sock.connect(("127.0.0.1", api.port))
            socks.append(sock)
        try:
            async with asyncio.timeout(10):
                while guard.refused < 100:
                    await asyncio.sleep(0.05)
            assert guard.open_from("127.0.0.3") <= 32
            connector = aiohttp.TCPConnector(local_addr=("127.0.0.2", 0))
            async with aiohttp.ClientSession(connector=connector) as http, asyncio.timeout(2):
                async with http.get(f"http://127.0.0.1:{api.port}/healthz") as response:
                    assert response.status == 200
        finally:
            for sock in socks:
                sock.close()


def test_accept_errors_are_logged_once_a_minute(caplog: pytest.LogCaptureFixture) -> None:
    loop = asyncio.new_event_loop()
    try:
        quiet_accept_errors(loop)
        with caplog.at_level(logging.ERROR):
            for _ in range(1000):
                loop.call_exception_handler({"message": "socket.accept() out of system resource",
                                             "exception": OSError(24, "Too many open files")})
        assert len([r for r in caplog.records if "accept()" in r.getMessage()]) == 1
    finally:
        loop.close()


def test_the_login_limiter_forgets_the_oldest_not_everyone() -> None:
    failures = FailedLogins(burst=2, per_minute=0.0001, max_clients=4096)
    for _ in range(2):
        failures.record("192.0.2.7")
    assert failures.blocked("192.0.2.7")
    for n in range(5000):  # address churn used to clear every bucket at 4,096
        failures.record(f"10.{n // 65536}.{n // 256 % 256}.{n % 256}")
        if n % 100 == 0:
            failures.record("192.0.2.7")  # still guessing: still remembered
    assert failures.blocked("192.0.2.7")
    # A host takes any address of its /64: counted as one.
    assert client_key("2001:db8:1:2:aaaa::1") == client_key("2001:db8:1:2:bbbb::9") == "2001:db8:1:2::/64"
    for n in range(2):
        failures.record(f"2001:db8:1:2::{n + 100:x}")
    assert failures.blocked("2001:db8:1:2:ffff::1")


async def test_one_guesser_cannot_lock_the_installer_out(tmp_path: Path) -> None:
    """Wrong PINs lock the address that typed them; the installer at another address logs in."""
    from aiohttp import web
    from aiohttp.test_utils import make_mocked_request

    from edgehub.api.auth import LoginHandlers, Sessions

    failures, sessions = FailedLogins(), Sessions()
    logins = LoginHandlers(API_TOKEN, PIN, failures, sessions)

    async def login(address: str, secret: str) -> int:
        import json as _json

        request = make_mocked_request("POST", "/api/v1/login", headers={"Content-Type": "application/json"})
        request = request.clone(remote=address)
        request._read_bytes = _json.dumps({"secret": secret}).encode()  # noqa: SLF001
        try:
            return (await logins.login(request)).status
        except web.HTTPException as exc:
            return exc.status

    codes = [await login("192.0.2.66", f"{100000 + n}") for n in range(40)]
    assert codes[:5] == [401] * 5 and set(codes[5:]) == {429}
    assert await login("192.0.2.10", PIN) == 200


async def test_kitchen_screens_have_their_own_secrets(tmp_path: Path) -> None:
    extra = ('\n[[terminal]]\nid = "kds-grill"\nkind = "kds"\npassword = "pw-kds-grill"\nstations = ["grill"]\n'
             'screen_token = "grill-screen-secret-0123"\n')
    path = write_config(tmp_path / "box")
    path.write_text(path.read_text() + extra)
    config = load_config(path)
    async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub:
        base = f"ws://127.0.0.1:{hub.api.port}/kds"

        async def opens(station: str, token: str) -> bool:
            async with aiohttp.ClientSession() as http, http.ws_connect(f"{base}/{station}/ws?token={token}") as ws:
                message = await ws.receive(timeout=5)
                return message.type == aiohttp.WSMsgType.TEXT and json.loads(message.data)["schema"] == "kds-screen/1"

        assert await opens("grill", "grill-screen-secret-0123")
        assert not await opens("bar", "grill-screen-secret-0123")  # its own station only
        assert not await opens("grill", API_TOKEN)  # the admin token is no screen secret
        async with aiohttp.ClientSession() as http:
            async with http.get(f"http://127.0.0.1:{hub.api.port}/kds/grill") as response:
                csp = response.headers["Content-Security-Policy"]
            assert "frame-ancestors 'none'" in csp and "script-src 'sha256-" in csp
            assert response.headers["X-Frame-Options"] == "DENY"
            # The screen secret is no API credential either.
            async with http.get(f"http://127.0.0.1:{hub.api.port}/api/v1/status",
                                headers={"Authorization": "Bearer grill-screen-secret-0123"}) as response:
                assert response.status == 401


def test_tls_context_refuses_old_protocols(tmp_path: Path) -> None:
    from edgehub.api.tls import server_context

    make_certificate(tmp_path / "c.crt", tmp_path / "c.key", "s1", ["192.0.2.5"])
    assert (tmp_path / "c.key").stat().st_mode & 0o777 == 0o600
    path = write_config(tmp_path / "box")
    path.write_text(path.read_text().replace(
        f'token = "{API_TOKEN}"', f'token = "{API_TOKEN}"\ntls_cert_file = "../c.crt"\ntls_key_file = "../c.key"'))
    context = server_context(load_config(path).api)
    assert context is not None and context.minimum_version == ssl.TLSVersion.TLSv1_2
    assert free_port()  # the helper other tests use is importable here too
