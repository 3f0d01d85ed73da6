"""The kitchen in a real hub with a real Mosquitto: a POS order reaches the station topic and
its screens, amend and cancel are acked like orders, a native KDS app commands over MQTT, and
a screen that reconnects over the websocket gets the full current state."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp

from edgehub.hub import Hub
from tests.conftest import SCREEN_TOKEN, Terminal, order
from tests.kitchen.conftest import Screen


def ws_url(hub: Hub, station: str, token: str = SCREEN_TOKEN) -> str:
    return f"ws://127.0.0.1:{hub.api.port}/kds/{station}/ws?token={token}"


async def receive(ws: aiohttp.ClientWebSocketResponse, schema: str, timeout: float = 5.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            doc: dict[str, Any] = json.loads((await ws.receive()).data)
            if doc["schema"] == schema:
                return doc


TWO_STATIONS = [
    {"sku": "BURG-01", "name": "Cheeseburger", "qty": 1, "station": "grill"},
    {"sku": "COLA-33", "name": "Cola", "qty": 2},
]


async def test_order_to_station_topic_amend_and_cancel_acked(hub: Hub) -> None:
    async with (
        Screen(hub.config, "grill") as grill,
        Screen(hub.config, "bar") as bar,
        Terminal(hub.config, "pos-1") as pos,
    ):
        await pos.send(order("o1", table="T9", lines=TWO_STATIONS))
        assert (await pos.ack())["status"] == "accepted"
        created = await grill.next("event")
        assert (created["event"], created["ticket"]["ticket_id"], created["ticket"]["table"]) == (
            "created",
            "o1/grill/1",
            "T9",
        )
        assert (await bar.next("event"))["ticket"]["lines"][0]["name"] == "Cola"

        amend = {
            "schema": "amend/1",
            "order_id": "o1",
            "amend_id": "a1",
            "lines": [{**TWO_STATIONS[0], "qty": 2}],
        }
        await pos.send(amend, topic=hub.topics.amend("pos-1"))
        ack = await pos.ack()
        assert (ack["kind"], ack["status"], ack["amend_id"], ack["duplicate"]) == (
            "amend",
            "accepted",
            "a1",
            False,
        )
        assert (await grill.next("event"))["event"] == "amended"
        assert (await bar.next("event"))["event"] == "voided"
        await pos.send(amend, topic=hub.topics.amend("pos-1"))
        assert (await pos.ack())["duplicate"] is True

        await pos.send(
            {"schema": "cancel/1", "order_id": "o1", "reason": "guest left"}, topic=hub.topics.cancel("pos-1")
        )
        ack = await pos.ack()
        assert (ack["kind"], ack["status"]) == ("cancel", "accepted")
        voided = await grill.next("event")
        assert (
            voided["event"] == "voided" and voided["ticket"]["void_reason"] == "order cancelled: guest left"
        )

        # Bad input: a clear rejection, nothing changes.
        await pos.send(
            {"schema": "amend/1", "order_id": "nope", "amend_id": "x", "rush": True},
            topic=hub.topics.amend("pos-1"),
        )
        ack = await pos.ack()
        assert ack["status"] == "rejected" and ack["error"] == "order_id: no accepted order 'nope' to amend"
        await pos.send({"schema": "amend/1", "order_id": "o1", "lines": []}, topic=hub.topics.amend("pos-1"))
        assert (await pos.ack())["error"] == "amend_id: missing"


async def test_native_screen_commands_and_snapshot_over_mqtt(hub: Hub) -> None:
    async with Screen(hub.config, "grill") as grill, Terminal(hub.config, "pos-1") as pos:
        await pos.send(order("o1"))
        await pos.ack()
        await grill.next("event")
        topics = hub.topics
        await grill.client.publish(
            topics.kds_command("grill"),
            json.dumps(
                {"schema": "kds-command/1", "command_id": "k1", "action": "serve", "ticket_id": "o1/grill/1"}
            ),
            qos=1,
        )
        refused = await grill.next("reply")
        assert refused == {
            "schema": "kds-reply/1",
            "command_id": "k1",
            "ok": False,
            "error": "the ticket is new, not ready; bump it first",
        }
        await grill.client.publish(
            topics.kds_command("grill"),
            json.dumps(
                {"schema": "kds-command/1", "command_id": "k2", "action": "start", "ticket_id": "o1/grill/1"}
            ),
            qos=1,
        )
        reply = await grill.next("reply")
        assert reply["ok"] and reply["ticket"]["state"] == "in_progress"
        event = await grill.next("event")
        await grill.client.publish(
            topics.kds_snapshot_request("grill"), b'{"schema":"kds-snapshot-request/1"}', qos=1
        )
        snapshot = await grill.next("snapshot")
        assert snapshot["seq"] == event["seq"] and snapshot["tickets"][0]["state"] == "in_progress"


async def test_reconnecting_screen_gets_the_full_state(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http, Terminal(hub.config, "pos-1") as pos:
        async with http.ws_connect(ws_url(hub, "grill")) as ws:
            empty = await receive(ws, "kds-snapshot/1")
            assert empty["tickets"] == [] and empty["station"] == "grill"
            for n in range(3):
                await pos.send(order(f"o{n}"))
                await pos.ack()
            seen = [(await receive(ws, "kds-event/1"))["ticket"]["ticket_id"] for _ in range(3)]
            assert seen == ["o0/grill/1", "o1/grill/1", "o2/grill/1"]
            await ws.send_str(
                json.dumps(
                    {
                        "schema": "kds-command/1",
                        "command_id": "w1",
                        "action": "bump",
                        "ticket_id": "o1/grill/1",
                    }
                )
            )
            assert (await receive(ws, "kds-reply/1"))["ok"] is True
        # Away: more happens while the screen is off.
        await pos.send(order("o3"))
        await pos.ack()
        # The ack follows the order's commit; its ticket follows in the next one.
        async with asyncio.timeout(5):
            while len(hub.kitchen.snapshot("grill")["tickets"]) < 3:
                await asyncio.sleep(0.01)
        async with http.ws_connect(ws_url(hub, "grill")) as ws:
            snap = await receive(ws, "kds-snapshot/1")
            assert [t["ticket_id"] for t in snap["tickets"]] == ["o0/grill/1", "o2/grill/1", "o3/grill/1"]
            assert [t["ticket_id"] for t in snap["recent"]] == ["o1/grill/1"]
            assert snap["all_day"] == {"Cheeseburger": 3} and snap["seq"] == 5
        # The page is open; the data needs the screen token.
        async with http.get(f"http://127.0.0.1:{hub.api.port}/kds/grill") as page:
            assert page.status == 200 and "kds-command/1" in await page.text()
        async with http.ws_connect(ws_url(hub, "grill", token="wrong-token-0123456789")) as ws:
            refusal = json.loads((await ws.receive()).data)
            assert refusal["schema"] == "screen-refused/1" and refusal["code"] == 4401
            msg = await ws.receive()
            assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 4401
