"""The cloud's menu served to every terminal (real Mosquitto, a real hub, a real cloud broker
behind a fault proxy, real HTTP): retained on ``…/menu`` and at ``/pos/v1/menu``, each new
version as it comes, a refused document changing nothing, and a till that starts during an
outage, after the box itself restarted, still getting the menu from the box."""

from __future__ import annotations

import asyncio
import base64
import json
import time
from pathlib import Path
from typing import Any

import aiohttp

from edgehub.bus.session import MqttSession
from edgehub.config import Config, load_config
from edgehub.hub import Hub
from tests.conftest import API_TOKEN, write_config
from tests.faultproxy import FaultProxy
from tests.uplink.cloudside import CloudRecorder
from tests.uplink.conftest import cloud_toml

MENU = {"items": [{"sku": "MAPO-01", "name": "麻婆豆腐", "price_cents": 2800, "category": "hot"},
                  {"sku": "TEA-02", "name": "菊花茶", "price_cents": 600, "category": "drinks"}]}


def down(version: int, body: Any) -> dict[str, Any]:
    return {"schema": "cloud-down/1", "kind": "menu", "version": version, "issued_at": time.time(), "body": body}


def basic(user: str, password: str) -> dict[str, str]:
    return {"Authorization": "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()}


async def retained_menu(config: Config, terminal: str = "pos-1", version: int | None = None,
                        timeout: float = 10.0) -> dict[str, Any]:
    """The menu a terminal gets on subscribing (retained), waiting for ``version`` if given."""
    async with MqttSession(config.broker.listen.host, config.broker.listen.port, username=terminal,
                              password=f"pw-{terminal}", client_id=f"menu-{terminal}-{time.monotonic_ns()}") as client:
        await client.subscribe(f"edgehub/v1/{config.store.id}/menu", qos=1)
        async with asyncio.timeout(timeout):
            async for message in client.messages:
                assert isinstance(message.payload, bytes)
                doc: dict[str, Any] = json.loads(message.payload)
                if version is None or doc["version"] == version:
                    return doc
    raise AssertionError("unreachable")


async def wait_version(hub: Hub, version: int) -> None:
    async with asyncio.timeout(10):
        while (hub.menu.doc.version if hub.menu.doc else None) != version:
            await asyncio.sleep(0.05)


async def test_terminals_get_the_menu_over_mqtt_and_http_and_keep_it_through_an_outage(
        tmp_path: Path, wan: FaultProxy, recorder: CloudRecorder) -> None:
    config = load_config(write_config(tmp_path / "box", mode="managed", extra=cloud_toml(wan.port),
                                      terminals=("pos-1", "pos-2", "kds-grill")))
    recorder.push_down("menu", down(3, MENU))  # retained in the cloud: the box gets it when it connects
    base = f"http://127.0.0.1:{config.api.listen.port}"
    async with Hub(config) as hub, aiohttp.ClientSession() as http:
        await asyncio.wait_for(hub.ready.wait(), 10)
        await wait_version(hub, 3)
        doc = await retained_menu(config, "pos-1", 3)
        assert doc["schema"] == "menu/1" and doc["menu"] == MENU and doc["version"] == 3
        assert (await retained_menu(config, "kds-grill", 3))["menu"] == MENU  # every terminal reads it

        async with http.get(base + "/pos/v1/menu", headers=basic("pos-2", "pw-pos-2")) as r:
            assert r.status == 200, await r.text()
            assert (await r.json())["menu"] == MENU
            etag = r.headers["ETag"]
        assert etag == '"menu-3"'
        async with http.get(base + "/pos/v1/menu", headers={**basic("pos-2", "pw-pos-2"),
                                                            "If-None-Match": etag}) as r:
            assert r.status == 304
        async with http.get(base + "/pos/v1/menu", headers=basic("pos-2", "pw-pos-1")) as r:
            assert r.status == 401 and "wrong terminal id or password" in (await r.json())["error"]
        async with http.get(base + "/pos/v1/menu") as r:
            assert r.status == 401 and r.headers["WWW-Authenticate"].startswith("Basic")
        async with http.get(base + "/pos/v1/menu", headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
            assert r.status == 401  # the box token is not a terminal's credential
        async with http.get(base + "/api/v1/menu", headers={"Authorization": f"Bearer {API_TOKEN}"}) as r:
            assert r.status == 200 and (await r.json())["version"] == 3
        async with http.get(base + "/api/v1/menu", headers=basic("pos-2", "pw-pos-2")) as r:
            assert r.status == 401  # and a terminal's password is not the box token

        # A new version reaches a till that is listening, at once.
        async with MqttSession(config.broker.listen.host, config.broker.listen.port, username="pos-1",
                                  password="pw-pos-1", client_id="menu-listener") as till:
            await till.subscribe(f"edgehub/v1/{config.store.id}/menu", qos=1)
            menu4 = {"items": [*MENU["items"], {"sku": "RICE-03", "name": "米饭", "price_cents": 200}]}
            recorder.push_down("menu", down(4, menu4))
            seen = []
            async with asyncio.timeout(10):
                async for message in till.messages:
                    assert isinstance(message.payload, bytes)
                    seen.append(json.loads(message.payload)["version"])
                    if seen[-1] == 4:
                        assert json.loads(message.payload)["menu"] == menu4
                        break
            assert seen in ([3, 4], [4])

        # A document that fails validation is refused and dead-lettered; terminals keep v4.
        recorder.push_down("menu", {"schema": "cloud-down/1", "kind": "menu", "version": "five", "body": {}})
        async with asyncio.timeout(10):
            while hub.downlink.rejected < 1:
                await asyncio.sleep(0.05)
        assert (await retained_menu(config, "pos-2"))["version"] == 4
        status = await hub.status()
        assert status["menu"]["version"] == 4 and status["menu"]["published"] is True

    # The WAN goes down, and the box restarts (its own Mosquitto with it: no retained message
    # survives that). A till that starts now gets the menu the box had, over MQTT and HTTP.
    wan.refuse()
    await wan.close_all()
    async with Hub(config) as hub, aiohttp.ClientSession() as http:
        await asyncio.wait_for(hub.ready.wait(), 10)
        assert hub.uplink is not None and hub.uplink.state != "online"
        doc = await retained_menu(config, "pos-2", 4)
        assert [item["sku"] for item in doc["menu"]["items"]] == ["MAPO-01", "TEA-02", "RICE-03"]
        async with http.get(base + "/pos/v1/menu", headers=basic("pos-1", "pw-pos-1")) as r:
            assert r.status == 200 and (await r.json())["version"] == 4


async def test_a_menu_too_large_for_the_broker_points_terminals_to_http(tmp_path: Path) -> None:
    path = write_config(tmp_path / "box", mode="managed", extra="[limits]\nmax_order_bytes = 4000\n")
    path.write_text(path.read_text().replace("[broker]\n", "[broker]\nmax_packet_kib = 8\n", 1))
    config = load_config(path)
    big = {"items": [{"sku": f"SKU-{i:04d}", "name": "红烧肉 " * 5, "price_cents": 1000 + i} for i in range(200)]}
    async with Hub(config) as hub, aiohttp.ClientSession() as http:
        await asyncio.wait_for(hub.ready.wait(), 10)
        raw = json.dumps(down(9, big)).encode()
        assert await hub.downlink.receive("menu", raw)
        doc = await retained_menu(config, "pos-1", 9)
        assert "menu" not in doc and doc["http"] == "/pos/v1/menu" and doc["bytes"] > 8 * 1024
        async with http.get(f"http://127.0.0.1:{config.api.listen.port}/pos/v1/menu",
                            headers=basic("pos-1", "pw-pos-1")) as r:
            assert r.status == 200 and (await r.json())["menu"] == big
        assert (await hub.status())["menu"]["over_mqtt"] is False
