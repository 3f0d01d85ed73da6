"""The broker's packet limit, as an MQTT 5 terminal meets it on the store's real Mosquitto.

The broker announces its limit in the CONNACK (Maximum Packet Size, MQTT 5.0 §3.2.2.3.6) and
closes the connection of a client that sends a larger packet with DISCONNECT 0x95 "Packet too
large" (§4.13): such a packet never reaches the hub, so it gets neither ack nor dead letter.
Below it, the hub's own order limit (``limits.max_order_bytes``) answers ``rejected`` with the
size. docs/asyncapi.yaml states both (tests/test_asyncapi.py holds it to the config's defaults).
"""

from __future__ import annotations

import asyncio
import json
import queue
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from edgehub.config import PUBLISH_HEADROOM, Config
from edgehub.hub import Hub
from tests.conftest import order


class Mqtt5Terminal:
    """pos-1 with paho, to see the CONNACK's properties and the DISCONNECT's reason code."""

    def __init__(self, config: Config) -> None:
        self.events: queue.Queue[tuple[str, Any]] = queue.Queue()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="pkt-pos-1", protocol=mqtt.MQTTv5)
        self.client.username_pw_set("pos-1", "pw-pos-1")
        self.client.on_connect = lambda _c, _u, _f, rc, props: self.events.put(("connack", (rc, props)))
        self.client.on_disconnect = lambda _c, _u, flags, rc, _p: self.events.put(("disconnect", (rc, flags)))
        self.client.on_message = lambda _c, _u, msg: self.events.put(("message", json.loads(msg.payload)))
        self.client.on_subscribe = lambda *_: self.events.put(("suback", None))
        self.client.connect("127.0.0.1", config.broker.listen.port)
        self.client.loop_start()

    def next(self, kind: str, timeout: float = 5.0) -> Any:
        while True:
            got, value = self.events.get(timeout=timeout)
            if got == kind:
                return value

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


async def test_the_packet_limit_is_announced_and_the_order_limit_answers_below_it(hub: Hub, config: Config) -> None:
    limit = config.broker.max_packet_kib * 1024
    assert config.limits.max_order_bytes <= limit - PUBLISH_HEADROOM
    pos = Mqtt5Terminal(config)
    try:
        rc, props = await asyncio.to_thread(pos.next, "connack")
        assert not rc.is_failure
        assert props.MaximumPacketSize == limit
        pos.client.subscribe(hub.topics.ack("pos-1"), qos=1)
        await asyncio.to_thread(pos.next, "suback")
        # Above the hub's order limit, below the broker's: rejected with the size.
        big = json.dumps(order("PKT-1", note="x" * (config.limits.max_order_bytes + 10))).encode()
        pos.client.publish(hub.topics.order("pos-1"), big, qos=1)
        ack = await asyncio.to_thread(pos.next, "message")
        assert ack["order_id"] == "PKT-1" and ack["status"] == "rejected"
        assert ack["error"] == f"payload: is {len(big)} bytes, the limit is {config.limits.max_order_bytes}"
        # Above the broker's: the broker closes the connection and says why; the hub never sees it.
        huge = json.dumps(order("PKT-2", note="x" * limit)).encode()
        pos.client.publish(hub.topics.order("pos-1"), huge, qos=1)
        reason, flags = await asyncio.to_thread(pos.next, "disconnect")
        assert reason.value == 0x95 and flags.is_disconnect_packet_from_server
    finally:
        pos.close()
    assert hub.intake.stats.deadlettered == 0 and hub.intake.stats.rejected == 1
