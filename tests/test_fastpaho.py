"""FastPaho, the one module that reaches into paho's private names, held to paho.

- Fingerprints: every private name edgehub/bus/fastpaho.py reaches (reads, calls, overrides) and
  the paho code it repeats by hand has a fingerprint recorded here; a paho whose code behind one
  of them differs fails with the names to review (paho is pinned exactly in pyproject.toml).
- Taken: over a real Mosquitto, paho still calls every override, and each shortcut applies
  (a shortcut that silently fell back to paho would pass every test of behaviour).
- Differential: what a handler receives, the packets sent and the acks are what stock paho gives,
  with and without properties, at QoS 0, 1 and 2, through FastPaho and through MqttSession.
"""

from __future__ import annotations

import ast
import asyncio
import collections
import hashlib
import inspect
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt import _packet, matcher
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

import edgehub.bus.fastpaho as fastpaho
from edgehub.broker import MosquittoProcess
from edgehub.bus.fastpaho import FastPaho
from edgehub.bus.message import Message
from edgehub.bus.session import MqttSession
from edgehub.config import Config

REPO = Path(__file__).resolve().parent.parent
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


async def test_pubacks_are_told_once_each_and_messages_arrive_whole(
        broker: MosquittoProcess, config: Config) -> None:
    """500 messages (QoS 1, with QoS 0 among them, which paho must send itself): each arrives
    once, in order per QoS, and each QoS 1 one is told acked exactly once. (Writes joined into
    one ``send``: test_paho_calls_every_override_and_every_shortcut_applies.)"""
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
    client.loop_start()
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
    kept = {m.mid for m in client._out_messages.values()}  # noqa: SLF001
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
    assert sorted(acked) == sorted(kept) and not client._out_messages  # noqa: SLF001
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
        # "Connected" (_send_publish checks only this), and each packet kept instead of queued.
        client._sock = object()  # type: ignore[assignment]  # noqa: SLF001
        client._packet_queue = lambda command, packet, mid, qos, info=None: queued.append(  # type: ignore[method-assign]  # noqa: SLF001
            bytes(packet))
        for topic, payload, qos, retain, props in _sent():
            for length in (1, 121, 122, 16_380, 16_390, 2_097_200):
                body = (payload * (length // max(len(payload), 1) + 1))[:length] if payload else payload
                for dup in (False, True):
                    client._send_publish(4660, topic.encode(), body, qos, retain, dup, None, props)  # noqa: SLF001
        client._sock = None  # noqa: SLF001 - nothing to close
        return queued

    stock = packets(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol))
    fast = packets(FastPaho(mqtt.CallbackAPIVersion.VERSION2, protocol=protocol))
    assert len(stock) == len(fast) == 7 * 6 * 2
    assert fast == stock


# --- every private name reached, fingerprinted ---------------------------------------------------

# For paho-mqtt 2.2.0 (pinned exactly in pyproject.toml): each private name fastpaho.py reaches,
# each paho method it overrides, and the paho code it repeats by hand (``fastpaho.MIRRORED``),
# with a fingerprint of what paho does behind it: a method's source, or every line of paho that
# uses an attribute. A paho that differs in one fails below with its name: read how fastpaho.py
# relies on it (and the paho change), adapt fastpaho.py, then record the new fingerprint.
FINGERPRINTS = {
    "Client._do_on_publish": "def:5bbcad6f9447",
    "Client.publish": "def:5c00cd3dcebc",
    "MQTTMessage.__init__": "def:af92f9a50f5f",
    "MQTTMessageInfo.__init__": "def:517706c942bd",
    "_children": "uses:12:1f47fcc540bf",
    "_condition": "uses:6:f87d4f2a7683",
    "_easy_log": "def:02c7afc1854c",
    "_handle_on_message": "def:8ccc46fdb090",
    "_handle_pubackcomp": "def:04d39ba283b1",
    "_handle_publish": "def:1bbaa3ef0e3a",
    "_in_callback_mutex": "uses:18:44821718d9ab",
    "_in_packet": "uses:30:31574ab70d45",
    "_inflight_messages": "uses:12:87d9640c402e",
    "_iterpos": "uses:6:547170ab7093",
    "_last_bytes_received": "uses:6:767fbded48a2",
    "_last_msg_out": "uses:6:ec5093823809",
    "_manual_ack": "uses:5:3a825110f98a",
    "_max_inflight_messages": "uses:8:51127ffba958",
    "_max_queued_messages": "uses:4:37d8a6894165",
    "_mid_generate": "def:55fc1e4a5f15",
    "_msgtime_mutex": "uses:8:ed5bda5e57b8",
    "_on_message_filtered": "uses:4:435ac1b8bb05",
    "_out_message_mutex": "uses:8:245d9e002f43",
    "_out_messages": "uses:15:fc37abc5eb36",
    "_out_packet": "uses:11:74f50eeb7790",
    "_packet.decode_puback": "def:d4c48976c255",
    "_packet.decode_publish": "def:50c158487fa3",
    "_packet_handle": "def:ac4c129ed409",
    "_packet_queue": "def:e298fa9ab31e",
    "_packet_read": "def:bbe32d8af1e3",
    "_packet_write": "def:d097b7b51bed",
    "_protocol": "uses:45:fa2e71a2d994",
    "_published": "uses:4:5a4637284245",
    "_raise_for_invalid_topic": "def:985dad9e15a6",
    "_root": "uses:5:22ad3db93d3a",
    "_send_puback": "def:bb015cefb632",
    "_send_publish": "def:4edd21dd50f5",
    "_set_as_published": "def:6e546f718e97",
    "_sock": "uses:40:d4063615fb9a",
    "_sock_recv": "def:c3b9043a46dd",
    "_sock_send": "def:300d9f1031bd",
    "_topic": "uses:3:d9903017fafc",
    "_userdata": "uses:29:a36c5f7a9e65",
    "loop_read": "def:4fa11ca2d451",
}

PAHO_OWNERS: dict[str, object] = {
    "Client": mqtt.Client, "MQTTMessage": mqtt.MQTTMessage, "MQTTMessageInfo": mqtt.MQTTMessageInfo,
    "MQTTMatcher": matcher.MQTTMatcher, "MQTTMatcher.Node": matcher.MQTTMatcher.Node, "_packet": _packet,
}


def _overrides() -> list[str]:
    """FastPaho's methods that replace one of paho's Client (private or not)."""
    return sorted(name for name, value in vars(FastPaho).items()
                  if inspect.isfunction(value) and hasattr(mqtt.Client, name))


def _reached() -> set[str]:
    """Every private name fastpaho.py writes as an attribute (``self._x``, ``obj._x``), every
    override, and the paho code it mirrors; less the names it defines itself."""
    tree = ast.parse(Path(fastpaho.__file__).read_text())
    own = {item.target.id for node in ast.walk(tree) if isinstance(node, ast.ClassDef) for item in node.body
           if isinstance(item, ast.AnnAssign) and isinstance(item.target, ast.Name)}
    private = {node.attr for node in ast.walk(tree)
               if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")}
    return (private - own) | set(_overrides()) | set(fastpaho.MIRRORED)


def _fingerprint(name: str) -> str:
    owner_name, _, attr = name.rpartition(".")
    owners = [PAHO_OWNERS[owner_name]] if owner_name else list(PAHO_OWNERS.values())
    for owner in owners:
        found = inspect.getattr_static(owner, attr, None)
        if isinstance(found, staticmethod | classmethod):
            found = found.__func__
        if inspect.isfunction(found):
            return "def:" + hashlib.sha256(inspect.getsource(inspect.unwrap(found)).encode()).hexdigest()[:12]
    uses = re.compile(rf"\.{re.escape(attr)}\b")
    lines = [line.strip() for module in (mqtt, _packet, matcher) for line in Path(str(module.__file__)).read_text()
             .splitlines() if uses.search(line)]
    return f"uses:{len(lines)}:" + hashlib.sha256("\n".join(lines).encode()).hexdigest()[:12] if lines else "gone"


def test_every_paho_name_fastpaho_reaches_is_fingerprinted_and_unchanged() -> None:
    reached = _reached()
    assert sorted(reached) == sorted(FINGERPRINTS), (
        f"fastpaho.py now reaches {sorted(reached - set(FINGERPRINTS))} (fingerprint them here) and no longer "
        f"{sorted(set(FINGERPRINTS) - reached)}")
    changed = {name: f"{FINGERPRINTS[name]} -> {now}" for name in sorted(reached)
               if (now := _fingerprint(name)) != FINGERPRINTS[name]}
    assert not changed, f"paho changed behind names fastpaho.py relies on (review each): {changed}"


def test_no_other_module_reaches_into_paho() -> None:
    """ruff's SLF001 flags ``obj._private`` everywhere; it cannot see ``self._private`` in a
    subclass of paho's, nor ``getattr(obj, "_private")``: neither may appear outside fastpaho.py."""
    paho_private = {name for owner in (mqtt.Client, mqtt.MQTTMessage, mqtt.MQTTMessageInfo) for name in
                    [*dir(owner), *vars(mqtt.Client(mqtt.CallbackAPIVersion.VERSION2))]
                    if name.startswith("_") and not name.startswith("__")}
    found = []
    for path in sorted(p for folder in ("edgehub", "drivers", "bench", "tests") for p in (REPO / folder).rglob("*.py")):
        if path.name in ("fastpaho.py", "test_fastpaho.py"):
            continue
        tree = ast.parse(path.read_text())
        paho_names = {alias.asname or alias.name for node in ast.walk(tree)
                      if isinstance(node, ast.Import | ast.ImportFrom) for alias in node.names
                      if (isinstance(node, ast.ImportFrom) and (node.module or "").startswith("paho"))
                      or alias.name.startswith("paho")}
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(ast.unparse(base).split(".")[0] in paho_names
                                                      for base in node.bases):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: class {node.name} subclasses paho")
            if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "getattr"
                    and len(node.args) >= 2 and isinstance(node.args[1], ast.Constant)
                    and node.args[1].value in paho_private):
                found.append(f"{path.relative_to(REPO)}:{node.lineno}: getattr(..., {node.args[1].value!r})")
    assert not found, found


# --- every override called, every shortcut taken ------------------------------------------------


def _count(monkeypatch: pytest.MonkeyPatch, owner: type, name: str, calls: collections.Counter[str],
           key: str) -> None:
    original: Callable[..., Any] = vars(owner)[name]

    def counted(self: Any, *args: Any, **kwargs: Any) -> Any:
        calls[key] += 1
        return original(self, *args, **kwargs)

    monkeypatch.setattr(owner, name, counted)


async def test_paho_calls_every_override_and_every_shortcut_applies(
        broker: MosquittoProcess, config: Config, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two FastPaho sessions over Mosquitto, as the hub's bus uses them (manual acks, no inflight
    limit). Each override is called by paho, and paho's own code (the fallback) runs only where a
    shortcut is not meant to apply: a message with properties, QoS 0, a packet still arriving.
    A shortcut that silently stopped applying (a renamed paho attribute read with a default, a
    method paho no longer calls) fails here, though every message would still arrive."""
    calls: collections.Counter[str] = collections.Counter()
    for name in _overrides():
        _count(monkeypatch, FastPaho, name, calls, f"fast.{name}")
        _count(monkeypatch, mqtt.Client, name, calls, f"paho.{name}")
    _count(monkeypatch, mqtt.Client, "_sock_send", calls, "paho._sock_send")
    plain, with_props = 360, 20
    got: list[Message] = []
    acked: list[tuple[int, int]] = []
    arrived = asyncio.Event()
    port = config.broker.listen.port

    def on_message(message: Message) -> None:
        got.append(message)
        sub.ack(message)
        if len(got) == plain + with_props + 20:
            arrived.set()

    sub = MqttSession("127.0.0.1", port, client_id="taken-sub", username=HUB[0], password=HUB[1], fast=True,
                      manual_ack=True, max_inflight=0, on_message=on_message)
    pub = MqttSession("127.0.0.1", port, client_id="taken-pub", username=HUB[0], password=HUB[1], fast=True,
                      max_inflight=0, on_puback=lambda mid, code: acked.append((mid, code)))
    props = Properties(PacketTypes.PUBLISH)
    props.CorrelationData = b"c"
    async with sub, pub:
        await sub.subscribe("edgehub/v1/s1/taken/#", qos=1)
        calls.clear()
        # One turn of the loop: queued together, written together.
        for n in range(plain + with_props):
            pub.publish_nowait("edgehub/v1/s1/taken/x", b"%d" % n, qos=1, properties=props if n % 19 == 0 else None)
        await asyncio.sleep(0)
        for n in range(20):  # QoS 0, one turn each: paho sends them itself (it tells on_publish)
            pub.publish_nowait("edgehub/v1/s1/taken/x", b"q%d" % n, qos=0)
            await asyncio.sleep(0)
        async with asyncio.timeout(10):
            await arrived.wait()
            while len(acked) < plain + with_props + 20:  # QoS 0: told once written
                await asyncio.sleep(0.01)
    published, qos1 = plain + with_props + 20, plain + with_props
    assert len(got) == published and len(acked) == published and all(code < 0x80 for _, code in acked)
    for name in _overrides():
        assert calls[f"fast.{name}"] > 0, f"paho no longer calls FastPaho.{name}"
    # Decoded by hand unless it has properties (the correlation data): paho's way only for those.
    assert calls["paho._handle_publish"] == with_props
    assert calls["fast._handle_publish"] == published
    # Straight to on_message: paho's topic tree is never walked.
    assert calls["fast._handle_on_message"] == published and calls["paho._handle_on_message"] == 0
    # Every PUBACK (plain, as Mosquitto sends them) decoded by hand and told once.
    assert calls["fast._handle_pubackcomp"] == qos1 and calls["paho._handle_pubackcomp"] == 0
    # A QoS 1 PUBLISH without properties packed by hand; with properties or at QoS 0, paho's.
    assert calls["paho._send_publish"] == with_props + 20
    # Reads buffered: whole packets cut out of one recv, not three recv calls each.
    packets_in = published + qos1
    assert calls["paho._sock_recv"] * 4 < packets_in, calls
    assert calls["paho._packet_read"] * 4 < packets_in, calls
    # Writes joined: the messages of one turn (and the acks of one read) in a few sends.
    packets_out = published + qos1
    assert calls["paho._sock_send"] * 4 < packets_out, calls


# --- MqttSession on FastPaho and on stock paho: the same messages, the same answers --------------


def _fields(message: Message) -> tuple[object, ...]:
    return (message.topic, message.payload, message.qos, message.retain, message.response_topic,
            message.correlation_data, message.user_properties, message.message_expiry)


@pytest.mark.parametrize("fast", [False, True], ids=["paho", "fastpaho"])
async def test_a_handler_gets_the_same_message_through_either(broker: MosquittoProcess, config: Config,
                                                               fast: bool) -> None:
    """What MqttSession hands a handler, every property a handler may use included, and the
    PUBACK reason codes it reports, through FastPaho as through stock paho (the oracle)."""
    port = config.broker.listen.port
    full = Properties(PacketTypes.PUBLISH)
    full.ResponseTopic = "edgehub/v1/s1/pos/pos-1/replies"
    full.CorrelationData = b"\x00\xffcorr"
    full.UserProperty = [("lane", "live"), ("seq", "7")]
    full.MessageExpiryInterval = 3600
    sent: list[tuple[str, bytes, int, bool, Properties | None]] = [
        ("edgehub/v1/s1/pos/pos-1/order", b'{"order_id":"a"}', 1, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"", 1, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"qos0", 0, False, None),
        ("edgehub/v1/s1/pos/pos-1/order", b"all properties", 1, False, full),
        ("edgehub/v1/s1/kds/grill/event", "牛肉面".encode(), 1, True, None),
        ("edgehub/v1/s1/pos/pos-2/order", bytes(range(256)) * 300, 1, False, None),  # crosses the read buffer
    ]
    expected = [(t, p, q, False, *((full.ResponseTopic, full.CorrelationData, tuple(full.UserProperty),
                                    full.MessageExpiryInterval) if props else (None, None, (), None)))
                for t, p, q, _, props in sent]
    got: list[Message] = []
    sub = MqttSession("127.0.0.1", port, client_id=f"same-{fast}", username=HUB[0], password=HUB[1], fast=fast,
                      manual_ack=True, max_inflight=0 if fast else None)
    async with sub, MqttSession("127.0.0.1", port, client_id=f"same-pub-{fast}", username=HUB[0],
                                password=HUB[1]) as pub, \
            MqttSession("127.0.0.1", port, client_id=f"same-pos-{fast}", username="pos-1", password="pw-pos-1",
                        fast=fast) as till:
        await sub.subscribe("edgehub/v1/s1/pos/+/order", qos=1)
        await sub.subscribe("edgehub/v1/s1/kds/#", qos=1)
        for topic, payload, qos, retain, props in sent:
            await pub.publish(topic, payload, qos=qos, retain=retain, properties=props)
        async with asyncio.timeout(10):
            async for message in sub.messages:
                got.append(message)
                sub.ack(message)
                if len(got) == len(sent):
                    break
        # The broker's answers, as the session reports them: delivered, nobody subscribed, refused.
        codes = [await till.publish("edgehub/v1/s1/pos/pos-1/order", b"{}"),
                 await till.publish("edgehub/v1/s1/pos/pos-1/nobody", b"{}"),
                 await till.publish("edgehub/v1/s1/pos/pos-2/order", b"{}")]
    # MQTT orders deliveries per QoS level, not across them.
    assert sorted(map(_fields, got), key=repr) == sorted(expected, key=repr)
    assert all(type(m.payload) is bytes for m in got)
    assert codes == [0x00, 0x10, 0x87]
