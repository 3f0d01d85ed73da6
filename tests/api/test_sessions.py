"""Sessions of the box's page outlive a hub restart (the issue: every restart logged the installer
out), kept in a file that holds no way in, and end when the box's credentials change."""

from __future__ import annotations

import dataclasses
import json
import stat
from pathlib import Path

import aiohttp

from edgehub.api.auth import SESSION_COOKIE
from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.hub import Hub
from tests.api.conftest import INSTALLER_PIN, box_extra
from tests.conftest import write_config


async def test_an_installer_stays_logged_in_across_a_hub_restart(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "box", extra=box_extra(None)))
    jar = aiohttp.CookieJar(unsafe=True)
    async with MosquittoProcess(config, die_with_parent=False), aiohttp.ClientSession(cookie_jar=jar) as http:
        async with Hub(config) as hub:
            base = f"http://127.0.0.1:{hub.api.port}"
            async with http.post(f"{base}/api/v1/login", json={"secret": INSTALLER_PIN}) as response:
                assert response.status == 200
        cookie = next(c.value for c in jar if c.key == SESSION_COOKIE)

        kept = config.paths.data_dir / "sessions.json"
        assert stat.S_IMODE(kept.stat().st_mode) == 0o600
        text = kept.read_text()
        assert cookie not in text and INSTALLER_PIN not in text and config.api.token not in text
        assert [s["via"] for s in json.loads(text)["sessions"]] == ["pin"]

        async with Hub(config) as hub:  # the hub restarted
            async with http.get(f"{base}/api/v1/status") as response:
                assert response.status == 200, await response.text()
            async with http.post(f"{base}/api/v1/logout") as response:
                assert response.status == 200
        assert json.loads(kept.read_text())["sessions"] == []

        # Logged in again; then the box gets a new token: the kept session is not a way in any more.
        async with Hub(config) as hub:
            async with http.post(f"{base}/api/v1/login", json={"secret": INSTALLER_PIN}) as response:
                assert response.status == 200
        rotated = dataclasses.replace(config, api=dataclasses.replace(config.api, token="a-new-token-0123456789xyz"))
        async with Hub(rotated) as hub:
            async with http.get(f"{base}/api/v1/status") as response:
                assert response.status == 401
