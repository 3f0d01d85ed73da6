"""FastPaho decodes PUBLISH and PUBACK packets by hand where it can: what a handler receives
must be what stock paho gives it, with and without properties, at QoS 0, 1 and 2, over a real
Mosquitto."""

from __future__ import annotations

import threading
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.broker import MosquittoProcess
from edgehub.bus.fastpaho import FastPaho
from edgehub.config import Config

HUB = ("edgehub-hub", "hub-secret-password")


def _subscriber(config: Config, client: mqtt.Client, got: list[mqtt.MQTTMessage], done: threading.Event,
                expect: int) -> mqtt.Client:
    client.username_pw_set(*HUB)

    def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
        got.append(message)
        if len(got) == expect:
            done.set()

    subscribed = threading.Event()
    client.on_message = on_message
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", config.broker.listen.port)
    client.loop_start()
    client.subscribe("edgehub/v1/s1/#", qos=2)
    assert subscribed.wait(5)
    return client


def _sent() -> list[tuple[str, bytes, int, bool, Properties | None]]:
    props = Properties(PacketTypes.PUBLISH)
    props.ResponseTopic = "edgehub/v1/s1/pos/pos-1/reply"
    props.CorrelationData = b"\x00\x01corr"
    big = bytes(range(256)) * 300  # several reads' worth: crosses the read buffer
    return [
        ("edgehub/v1/s1/pos/pos-1/order", b'{"order_id":"a"}', 1, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"", 1, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"qos0", 0, False, None),
        ("edgehub/v1/s1/kds/grill/event", b"qos2", 2, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"with properties", 1, False, props),
        ("edgehub/v1/s1/hub/état", "ünïcode".encode(), 1, True, None),
        ("edgehub/v1/s1/pos/pos-2/order", big, 1, False, None),
    ]


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fastpaho"])
async def test_messages_arrive_as_paho_gives_them(broker: MosquittoProcess, config: Config, fast: bool) -> None:
    sent = _sent()
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    client = (FastPaho if fast else mqtt.Client)(mqtt.CallbackAPIVersion.VERSION2, client_id=f"sub-{fast}",
                                                 protocol=mqtt.MQTTv5)
    sub = _subscriber(config, client, got, done, len(sent))
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{fast}", protocol=mqtt.MQTTv5)
    pub.username_pw_set(*HUB)
    pub.connect("127.0.0.1", config.broker.listen.port)
    pub.loop_start()
    try:
        for topic, payload, qos, retain, props in sent:
            pub.publish(topic, payload, qos=qos, retain=retain, properties=props).wait_for_publish(5)
        assert done.wait(10), f"{len(got)} of {len(sent)} arrived"
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
    # MQTT orders deliveries per QoS level, not across them: compare by payload.
    by_payload = {m.payload: m for m in got}
    assert sorted((m.topic, m.payload, m.qos) for m in got) == sorted((t, p, q) for t, p, q, _, _ in sent)
    assert [m.retain for m in got] == [False] * len(sent)  # live deliveries are not retained
    with_props = by_payload[b"with properties"].properties
    assert with_props is not None
    assert with_props.ResponseTopic == "edgehub/v1/s1/pos/pos-1/reply"
    assert with_props.CorrelationData == b"\x00\x01corr"
    # The hand decoding ran (paho gives an empty Properties object; FastPaho gives None).
    assert (by_payload[b"qos0"].properties is None) is fast
    assert by_payload[b"qos2"].properties is not None  # QoS 2 goes the paho way
    for m in got:
        assert getattr(m.properties, "ResponseTopic", None) in (None, "edgehub/v1/s1/pos/pos-1/reply")
    assert all(m.timestamp <= time.monotonic() for m in got)


async def test_pubacks_are_told_once_each_and_joined_writes_arrive_whole(
        broker: MosquittoProcess, config: Config) -> None:
    """500 messages queued at once (QoS 1, with QoS 0 among them, which paho must send itself):
    each arrives once, in order per QoS, and each QoS 1 one is told acked exactly once."""
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub-plain", protocol=mqtt.MQTTv5)
    sub = _subscriber(config, plain, got, done, 500)
    acked: list[tuple[int, int]] = []
    client = FastPaho(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-fast", protocol=mqtt.MQTTv5)
    client.fast_puback = lambda mid, code: acked.append((mid, code))
    client.max_inflight_messages_set(0)
    client.username_pw_set(*HUB)
    client.connect("127.0.0.1", config.broker.listen.port)
    payload = b"x" * 700  # an event's size: 256 of them fill more than one socket write
    infos = [client.publish("edgehub/v1/s1/hub/x", b"%d:" % n + payload, qos=0 if n % 7 == 0 else 1)
             for n in range(500)]
    sends: list[int] = []
    send = client._sock_send
    client._sock_send = lambda data: (sends.append(len(data)), send(data))[1]  # type: ignore[method-assign]
    client.loop_start()  # everything is queued before the first write
    try:
        for info in infos:
            info.wait_for_publish(10)
        assert done.wait(10), f"{len(got)} of 500 arrived"
    finally:
        for c in (client, sub):
            c.loop_stop()
            c.disconnect()
    numbers = [int(m.payload.split(b":")[0]) for m in got]
    assert sorted(numbers) == list(range(500))
    assert [n for n in numbers if n % 7] == [n for n in range(500) if n % 7]
    assert [n for n in numbers if n % 7 == 0] == [n for n in range(500) if n % 7 == 0]
    assert all(m.payload.endswith(payload) for m in got)
    qos1 = [info.mid for n, info in enumerate(infos) if n % 7]
    assert sorted(mid for mid, _ in acked) == sorted(qos1)
    assert all(code < 0x80 for _, code in acked)
    assert all(info.is_published() for info in infos)
    assert len(sends) < 100, f"{len(sends)} writes for 500 messages: not joined"


async def test_messages_published_unwaited_arrive_and_stay_in_the_session_until_acked(
        broker: MosquittoProcess, config: Config) -> None:
    """``publish_unwaited`` (acks and kitchen events) skips paho's per-message Condition, not its
    session: each QoS 1 message is kept for a re-send until its PUBACK, then told once."""
    got: list[mqtt.MQTTMessage] = []
    done = threading.Event()
    plain = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="sub-unwaited", protocol=mqtt.MQTTv5)
    sub = _subscriber(config, plain, got, done, 300)
    acked: list[int] = []
    client = FastPaho(mqtt.CallbackAPIVersion.VERSION2, client_id="pub-unwaited", protocol=mqtt.MQTTv5)
    client.fast_puback = lambda mid, code: acked.append(mid)
    client.max_inflight_messages_set(0)
    client.username_pw_set(*HUB)
    client.connect("127.0.0.1", config.broker.listen.port)
    rcs = [client.publish_unwaited("edgehub/v1/s1/kds/grill/event", b"%d" % n, qos=0 if n % 10 == 0 else 1)[0]
           for n in range(300)]
    assert set(rcs) == {0}
    kept = {m.mid for m in client._out_messages.values()}
    assert len(kept) == 270  # QoS 1 ones, kept until their PUBACK
    client.loop_start()
    try:
        assert done.wait(10), f"{len(got)} of 300 arrived"
        for _ in range(500):
            if len(acked) == 270:
                break
            threading.Event().wait(0.01)  # paho's thread delivers the PUBACKs
    finally:
        for c in (client, sub):
            c.loop_stop()
            c.disconnect()
    assert sorted(int(m.payload) for m in got) == list(range(300))
    assert sorted(acked) == sorted(kept) and not client._out_messages
    with pytest.raises(ValueError):
        client.publish_unwaited("edgehub/v1/s1/kds/+/event", b"x")  # as paho: no wildcards


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fastpaho"])
async def test_with_manual_acks_the_broker_sends_again_what_was_not_acked(
        broker: MosquittoProcess, config: Config, fast: bool) -> None:
    """The hub acknowledges a message once it was handled: what it never acknowledged comes again
    on its next connection, and what it did does not."""
    session = Properties(PacketTypes.CONNECT)
    session.SessionExpiryInterval = 60

    def connect(got: list[mqtt.MQTTMessage], expect: int) -> tuple[mqtt.Client, threading.Event]:
        client = (FastPaho if fast else mqtt.Client)(mqtt.CallbackAPIVersion.VERSION2, client_id=f"manual-{fast}",
                                                     protocol=mqtt.MQTTv5)
        client.manual_ack_set(True)
        client.username_pw_set(*HUB)
        done, subscribed = threading.Event(), threading.Event()

        def on_message(_c: mqtt.Client, _u: object, message: mqtt.MQTTMessage) -> None:
            got.append(message)
            if int(message.payload) % 2 == 0:
                client.ack(message.mid, message.qos)
            if len(got) == expect:
                done.set()

        client.on_message = on_message
        client.on_subscribe = lambda *a: subscribed.set()
        client.connect("127.0.0.1", config.broker.listen.port, clean_start=False, properties=session)
        client.loop_start()
        client.subscribe("edgehub/v1/s1/pos/+/order", qos=1)
        assert subscribed.wait(5)
        return client, done

    first: list[mqtt.MQTTMessage] = []
    sub, done = connect(first, 20)
    pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"manual-pub-{fast}", protocol=mqtt.MQTTv5)
    pub.username_pw_set(*HUB)
    pub.connect("127.0.0.1", config.broker.listen.port)
    pub.loop_start()
    try:
        for n in range(20):
            pub.publish("edgehub/v1/s1/pos/pos-1/order", b"%d" % n, qos=1).wait_for_publish(5)
        assert done.wait(10), f"{len(first)} of 20 arrived"
        sub.loop_stop()
        sub.disconnect()
        again: list[mqtt.MQTTMessage] = []
        sub, done = connect(again, 10)
        assert done.wait(10), f"{len(again)} of 10 came again"
        threading.Event().wait(0.3)  # nothing more comes
    finally:
        for c in (pub, sub):
            c.loop_stop()
            c.disconnect()
    assert sorted(int(m.payload) for m in first) == list(range(20))
    assert sorted(int(m.payload) for m in again) == list(range(1, 20, 2))
    assert all(m.dup for m in again)


@pytest.mark.parametrize("protocol", [mqtt.MQTTv5, mqtt.MQTTv311], ids=["v5", "v311"])
def test_publish_packets_are_the_bytes_paho_makes(protocol: int) -> None:
    """FastPaho packs a QoS 1 PUBLISH without properties itself: byte for byte paho's packet, for
    every length of the remaining-length field, dup and retain set or not; the rest is paho's."""
    def packets(client: mqtt.Client) -> list[bytes]:
        queued: list[bytes] = []
        client._sock = object()  # type: ignore[assignment]  # "connected": _send_publish checks only this
        client._packet_queue = lambda command, packet, mid, qos, info=None: queued.append(bytes(packet))  # type: ignore[method-assign]
        for topic, payload, qos, retain, props in _sent():
            for length in (1, 121, 122, 16_380, 16_390, 2_097_200):
                body = (payload * (length // max(len(payload), 1) + 1))[:length] if payload else payload
                for dup in (False, True):
                    client._send_publish(4660, topic.encode(), body, qos, retain, dup, None, props)
        client._sock = None  # nothing to close
        return queued

    stock = packets(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol))
    fast = packets(FastPaho(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol))
    assert len(stock) == len(fast) == 7 * 6 * 2
    assert fast == stock
