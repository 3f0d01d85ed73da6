"""Nobody gets in who does not belong: no anonymous MQTT, per-terminal ACLs, API tokens."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import aiohttp
import pytest

from edgehub.broker import acl_text
from edgehub.bus.session import V5, V311, MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config
from edgehub.errors import MqttRefused
from edgehub.hub import Hub
from tests.conftest import API_TOKEN, Terminal, order


async def test_anonymous_and_wrong_password_are_refused(hub: Hub, config: Config) -> None:
    port = config.broker.listen.port
    for protocol in (V311, V5):
        with pytest.raises(MqttRefused) as refused:
            async with MqttSession("127.0.0.1", port, client_id="anon", protocol=protocol):
                pass
        assert refused.value.reason_code == 0x87, refused.value  # not authorized
        with pytest.raises(MqttRefused) as refused:
            async with MqttSession("127.0.0.1", port, username="pos-1", password="guess", client_id="bad",
                                   protocol=protocol):
                pass
        assert refused.value.reason_code in (0x86, 0x87), refused.value  # bad password or not authorized


async def test_terminal_cannot_publish_as_another_nor_read_its_acks(hub: Hub, config: Config) -> None:
    async with Terminal(config, "pos-1") as a, Terminal(config, "pos-2") as b:
        # A subscribes to B's acks and publishes an order on B's topic: the broker drops both.
        await a.client.subscribe(a.topics.ack("pos-2"), qos=1)
        await a.send(order("FORGED-1"), topic=a.topics.order("pos-2"))
        await b.send(order("B-1"))
        assert (await b.ack())["order_id"] == "B-1"
        await asyncio.sleep(0.3)
        assert a.acks.empty(), "terminal A read terminal B's ack"
    with sqlite3.connect(config.journal.path) as conn:
        assert conn.execute("SELECT order_id, terminal FROM orders").fetchall() == [("B-1", "pos-2")]


def test_acl_limits_each_terminal_to_its_own_tree(config: Config) -> None:
    text = acl_text(config)
    block = text.split("user pos-1\n")[1].split("\n\n")[0].splitlines()
    assert block == [
        "topic write edgehub/v1/s1/pos/pos-1/#",
        "topic read edgehub/v1/s1/pos/pos-1/#",
        "topic read edgehub/v1/s1/hub/$state",
        "topic read edgehub/v1/s1/menu",
        "topic read edgehub/v1/s1/hub/$copies",  # a pair's "one copy since …" (docs/pair.md)
        # roles: commands name the terminal; print anywhere, pay and settle on any pinpad role
        "topic write edgehub/v1/s1/role/+/cmd/print/pos-1",
        "topic write edgehub/v1/s1/role/+/cmd/pay/pos-1",
        "topic write edgehub/v1/s1/role/+/cmd/settle/pos-1",
        "topic read edgehub/v1/s1/role/+/$binding",
        "topic read edgehub/v1/s1/role/+/$state",
        "topic read edgehub/v1/s1/role/+/evt/+",
        # "ready" for its own orders only, and the pickup board
        "topic read edgehub/v1/s1/ready/pos-1",
        "topic read edgehub/v1/s1/pickup/board",
        # staff terminals see the open checks and which terminals are connected
        "topic read edgehub/v1/s1/checks/event",
        "topic read edgehub/v1/s1/presence/+",
    ]


async def test_a_kitchen_screen_may_print_but_never_pay(tmp_path: Path) -> None:
    """A tablet on the pass has a terminal's credentials: they must not start a card payment,
    nor command another station's tickets, nor speak as another terminal, nor place or change
    orders (nor may a pager or a display)."""
    from edgehub.broker import MosquittoProcess
    from edgehub.config import load_config
    from tests.conftest import write_config

    path = write_config(tmp_path / "box", terminals=("pos-1", "kds-grill", "pager-1", "display-1"))
    path.write_text(path.read_text().replace('id = "kds-grill"\nkind = "kds"', 'id = "kds-grill"\nkind = "kds"\n'
                                             'stations = ["grill"]'))
    config = load_config(path)
    topics = Topics(config.store.id)
    async with MosquittoProcess(config, die_with_parent=False):
        async with MqttSession("127.0.0.1", config.broker.listen.port, username=config.broker.hub_user,
                               password=config.broker.hub_password, client_id="hub-spy", protocol=V311) as hub:
            await hub.subscribe(f"{topics.root}/role/#", qos=1)
            await hub.subscribe(f"{topics.root}/kds/#", qos=1)
            await hub.subscribe(f"{topics.root}/pos/#", qos=1)
            for terminal in ("kds-grill", "pos-1", "pager-1", "display-1"):
                async with MqttSession("127.0.0.1", config.broker.listen.port, username=terminal,
                                       password=f"pw-{terminal}", client_id=f"t-{terminal}", protocol=V311) as client:
                    for command in ("pay", "print"):
                        await client.publish(topics.role_command("pinpad", command, terminal),
                                             f"{terminal}/{command}", qos=1)
                    await client.publish(topics.role_command("pinpad", "print", "pos-2"), f"{terminal}/as-pos-2",
                                         qos=1)
                    for station in ("grill", "bar"):
                        await client.publish(topics.kds_command(station), f"{terminal}/{station}", qos=1)
                    for topic in (topics.order(terminal), topics.amend(terminal), topics.cancel(terminal)):
                        await client.publish(topic, f"{terminal}/{topic.rpartition('/')[2]}", qos=1)
            seen: list[str] = []
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1.0):
                    async for message in hub.messages:
                        seen.append(str(message.payload, "utf-8"))
    assert sorted(seen) == ["kds-grill/grill", "kds-grill/print", "pos-1/amend", "pos-1/cancel", "pos-1/order",
                            "pos-1/pay", "pos-1/print"]


async def test_healthz_is_open_and_status_needs_the_token(hub: Hub, config: Config) -> None:
    base = f"http://127.0.0.1:{hub.api.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{base}/healthz") as response:
            assert response.status == 200
            assert await response.json() == {"status": "ok"}
        async with http.get(f"{base}/api/v1/status") as response:
            assert response.status == 401
            assert response.headers["WWW-Authenticate"].startswith("Bearer")
        async with http.get(f"{base}/api/v1/status", headers={"Authorization": "Bearer wrong"}) as response:
            assert response.status == 401
        async with http.get(f"{base}/api/v1/status", headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
            assert response.status == 200
            status = await response.json()
    assert status["store_id"] == "s1"
    assert status["broker"]["connected"] is True
    assert status["journal"]["orders"] == 0
    assert status["journal"]["retention"]["keep_days"] == 90 and status["journal"]["retention"]["passes"] == 0
    assert status["version"] and status["uptime_s"] >= 0


async def test_failed_logins_are_rate_limited(hub: Hub) -> None:
    base = f"http://127.0.0.1:{hub.api.port}"
    codes = []
    async with aiohttp.ClientSession() as http:
        for _ in range(15):
            async with http.get(f"{base}/api/v1/status", headers={"Authorization": "Bearer nope"}) as response:
                codes.append(response.status)
        async with http.get(f"{base}/api/v1/status", headers={"Authorization": f"Bearer {API_TOKEN}"}) as response:
            blocked_even_with_token = response.status
    assert codes[:10] == [401] * 10
    assert set(codes[10:]) == {429}
    assert blocked_even_with_token == 429


async def test_healthz_says_503_when_the_broker_is_gone(hub: Hub, broker: object) -> None:
    from edgehub.broker import MosquittoProcess

    assert isinstance(broker, MosquittoProcess)
    await broker.stop()
    async with asyncio.timeout(20):
        while hub.healthy()[0]:
            await asyncio.sleep(0.05)
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://127.0.0.1:{hub.api.port}/healthz") as response:
            assert response.status == 503
            body = await response.json()
    assert body["status"] == "unavailable"
    assert body["reason"].startswith("broker not connected")


def test_the_hubs_listener_is_loopback_and_its_own(tmp_path: Path) -> None:
    """Client ids are free on the hub's listener (the hub, edgehub doctor, an installer's
    mosquitto_sub) and bound to the user on the LAN listener: the two are never one."""
    from edgehub.config import load_config
    from edgehub.errors import ConfigError
    from tests.conftest import write_config

    path = write_config(tmp_path)
    text = path.read_text()
    port = text.split('listen = "127.0.0.1:')[1].split('"')[0]
    for broker, problem in ((f'listen = "127.0.0.1:{port}"\nlan_listen = "0.0.0.0:{port}"', "broker.lan_listen"),
                            (f'listen = "0.0.0.0:{port}"', "broker.listen")):
        path.write_text(text.replace(f'listen = "127.0.0.1:{port}"', broker, 1))
        with pytest.raises(ConfigError) as caught:
            load_config(path)
        assert f"{problem}:" in str(caught.value)
