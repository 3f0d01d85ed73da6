"""Property: whatever bytes reach the order topic, the hub acks, rejects with a reason, or
dead-letters them, and stays up. Runs against a real hub process and its real Mosquitto."""

from __future__ import annotations

import contextlib
import itertools
import json
import queue
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.conftest import HubProcess, write_config

VALID_ID = st.from_regex(r"\A[A-Za-z0-9][A-Za-z0-9._:-]{0,20}\Z")
ANY_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=12,
)
LINE = st.fixed_dictionaries(
    {"sku": st.one_of(st.text(max_size=12), ANY_JSON)},
    optional={
        "qty": st.one_of(st.integers(-3, 1200), st.floats(allow_nan=False), st.text(max_size=3), st.none()),
        "name": st.one_of(st.text(max_size=30), ANY_JSON),
        "station": st.one_of(st.sampled_from(["grill", "wok", "Bar!", ""]), ANY_JSON),
        "modifiers": st.one_of(st.lists(st.text(max_size=10), max_size=3), ANY_JSON),
    },
)
NEAR_VALID = st.fixed_dictionaries(
    {
        "schema": st.one_of(st.just("order/1"), st.just("order/1"), ANY_JSON),
        "order_id": st.one_of(VALID_ID, VALID_ID, VALID_ID, ANY_JSON),
        "lines": st.one_of(st.lists(LINE, min_size=1, max_size=4), st.lists(LINE, max_size=2), ANY_JSON),
    },
    optional={"rush": ANY_JSON, "covers": ANY_JSON, "table": ANY_JSON, "extra": ANY_JSON},
).map(lambda d: json.dumps(d).encode())
VALID = st.fixed_dictionaries(
    {
        "schema": st.just("order/1"),
        "order_id": VALID_ID,
        "lines": st.lists(st.fixed_dictionaries({"sku": st.from_regex(r"\A[A-Z0-9-]{1,10}\Z"),
                                                 "qty": st.integers(1, 20)},
                                                optional={"name": st.text(max_size=40)}), min_size=1, max_size=5),
    },
    optional={"table": st.text(max_size=10), "rush": st.booleans(), "covers": st.integers(1, 12)},
).map(lambda d: json.dumps(d, ensure_ascii=False).encode())
PAYLOADS = st.one_of(st.binary(max_size=300), NEAR_VALID, NEAR_VALID, VALID)


class Probe:
    """A terminal publishing on pos-1 and a support reader watching its acks and dead letters."""

    def __init__(self, port: int, store: str) -> None:
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.order_topic = f"edgehub/v1/{store}/pos/pos-1/order"
        self.pos = self._client("pos-1", "pw-pos-1", port)
        self.reader = self._client("edgehub-hub", "hub-secret-password", port, client_id="fuzz-reader")
        self.reader.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, msg.payload))
        self.reader.subscribe([(f"edgehub/v1/{store}/pos/pos-1/ack", 1), (f"edgehub/v1/{store}/hub/deadletter", 1)])

    @staticmethod
    def _client(user: str, password: str, port: int, client_id: str = "") -> mqtt.Client:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or f"fuzz-{user}")
        client.username_pw_set(user, password)
        client.connect("127.0.0.1", port)
        client.loop_start()
        return client

    def close(self) -> None:
        for client in (self.pos, self.reader):
            client.loop_stop()
            client.disconnect()


@pytest.fixture(scope="module")
def running_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[HubProcess, Probe]]:
    directory = tmp_path_factory.mktemp("fuzz")
    process = HubProcess(write_config(directory / "box", mode="managed"), directory / "hub.log")
    process.start()
    probe = Probe(process.config.broker.listen.port, process.config.store.id)
    import time

    time.sleep(0.3)  # let the reader's subscription settle before the first example
    yield process, probe
    probe.close()
    process.stop()


outcomes: dict[str, int] = {"accepted": 0, "rejected": 0, "deadletter": 0}


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                   HealthCheck.too_slow])
@given(payload=PAYLOADS)
def test_every_input_is_acked_rejected_or_deadlettered(running_hub: tuple[HubProcess, Probe], payload: bytes) -> None:
    _, probe = running_hub
    probe.pos.publish(probe.order_topic, payload, qos=1).wait_for_publish(5)
    topic, body = probe.inbox.get(timeout=5)
    answer: dict[str, Any] = json.loads(body)
    if topic.endswith("/deadletter"):
        assert answer["schema"] == "deadletter/1" and answer["reason"]
        outcomes["deadletter"] += 1
    else:
        assert answer["schema"] == "ack/1"
        assert answer["status"] in ("accepted", "rejected")
        if answer["status"] == "rejected":
            assert answer["error"] and ":" in answer["error"]  # "field: what is wrong"
        outcomes[answer["status"]] += 1
    assert probe.inbox.empty()


# --- poisoned orders mixed into batches with good orders of another terminal ---------------------
#
# Payloads are written by hand (``emit``): what json.dumps cannot write (a duplicate key, NaN, a
# number token beyond a double, a lone surrogate escape, a nest 5,000 deep) is exactly what a
# broken terminal sends. pos-1 sends the poisoned orders, pos-2 good ones, all at once, so they
# share batches; every good order must be accepted once and every poisoned one answered once,
# rejected naming a field when its order_id is usable, dead-lettered when it is not.


class Obj:
    """A JSON object as key/value pairs, so that a key may appear twice."""

    def __init__(self, pairs: list[tuple[str, Any]]) -> None:
        self.pairs = pairs


class Raw:
    """A token written as it is (a number JSON readers may not hold)."""

    def __init__(self, text: str) -> None:
        self.text = text


def emit(value: Any) -> str:
    if isinstance(value, Obj):
        return "{" + ",".join(f"{emit(k)}:{emit(v)}" for k, v in value.pairs) + "}"
    if isinstance(value, list):
        return "[" + ",".join(emit(v) for v in value) + "]"
    if isinstance(value, Raw):
        return value.text
    return json.dumps(value)  # strings ASCII-escaped: a lone surrogate becomes "\ud800"


TEXT = st.text(st.characters(codec="utf-8", exclude_categories=("Cc",)), max_size=12)
SAFE_NUMBER = st.integers(-(2**53) + 1, 2**53 - 1) | st.floats(allow_nan=False, allow_infinity=False)
EXTRA = st.recursive(st.none() | st.booleans() | SAFE_NUMBER | TEXT,
                     lambda kids: st.lists(kids, max_size=3) | st.dictionaries(TEXT, kids, max_size=3).map(
                         lambda d: Obj(list(d.items()))), max_leaves=8)
OUT_OF_RANGE = st.sampled_from(["NaN", "Infinity", "-Infinity", "1e400", "-2.5e999", "9007199254740993",
                                "-123456789012345678901234567890", "1" + "0" * 5000])


def good_order(draw: st.DrawFn, order_id: str) -> Obj:
    lines = [Obj([("sku", draw(st.from_regex(r"\A[A-Z0-9-]{1,10}\Z"))), ("qty", draw(st.integers(1, 20))),
                  ("name", draw(st.sampled_from(["牛肉面", "Pho 🍜", "Kaffee", "饺子 x2"]) | TEXT))])
             for _ in range(draw(st.integers(1, 3)))]
    pairs: list[tuple[str, Any]] = [("schema", "order/1"), ("order_id", order_id), ("lines", lines)]
    if draw(st.booleans()):
        pairs.append(("table", draw(TEXT)))
    if draw(st.booleans()):
        pairs.append(("ext", draw(EXTRA)))
    return Obj(pairs)


def strings_of(value: Any, found: list[tuple[Obj | list[Any], int, str]]) -> None:
    """Every string value and key of the document, as (container, index, "key"|"value")."""
    if isinstance(value, Obj):
        for i, (key, child) in enumerate(value.pairs):
            if key not in ("schema", "order_id"):
                found.append((value, i, "key"))
                if isinstance(child, str):
                    found.append((value, i, "value"))
            strings_of(child, found)
    elif isinstance(value, list):
        for i, child in enumerate(value):
            if isinstance(child, str):
                found.append((value, i, "value"))
            strings_of(child, found)


def poisoned(draw: st.DrawFn, order_id: str, other_id: str) -> tuple[bytes, str]:
    """A poisoned order and how it must be answered: "rejected" or "deadletter"."""
    doc = good_order(draw, order_id)
    kind = draw(st.sampled_from(["surrogate", "nul", "duplicate", "deep", "number", "encoding", "cesu"]))
    if kind in ("surrogate", "nul"):
        where: list[tuple[Obj | list[Any], int, str]] = []
        strings_of(doc, where)
        container, i, part = draw(st.sampled_from(where))
        bad = chr(draw(st.integers(0xD800, 0xDFFF))) if kind == "surrogate" else "\x00"
        if isinstance(container, Obj):
            key, value = container.pairs[i]
            at = draw(st.integers(0, len(key if part == "key" else value)))
            container.pairs[i] = ((key[:at] + bad + key[at:], value) if part == "key"
                                  else (key, value[:at] + bad + value[at:]))
        else:
            at = draw(st.integers(0, len(container[i])))
            container[i] = container[i][:at] + bad + container[i][at:]
        return emit(doc).encode(), "rejected"
    if kind == "duplicate":
        objects: list[Obj] = [doc, *doc.pairs[2][1]]
        target = draw(st.sampled_from(objects))
        key, value = draw(st.sampled_from(target.pairs))
        if target is doc and key == "order_id" and draw(st.booleans()):
            target.pairs.append(("order_id", other_id))  # two ids: no one id to answer under
            return emit(doc).encode(), "deadletter"
        same = key == "order_id" or draw(st.booleans())  # order_id again with its own value: still one id
        target.pairs.insert(draw(st.integers(0, len(target.pairs))), (key, value if same else 1))
        return emit(doc).encode(), "rejected"
    if kind == "deep":
        depth = draw(st.integers(33, 300) | st.integers(5000, 20000))
        doc.pairs.append(("ext", Raw("[" * depth + "]" * depth)))
        return emit(doc).encode(), "rejected" if depth <= 300 else "deadletter"
    if kind == "number":
        target = draw(st.sampled_from([doc, *doc.pairs[2][1]]))
        target.pairs.append((draw(st.sampled_from(["qty", "price", "ext"])), Raw(draw(OUT_OF_RANGE))))
        return emit(doc).encode(), "rejected"
    if kind == "encoding":
        text = json.dumps(json.loads(emit(doc)), ensure_ascii=False)
        codec = draw(st.sampled_from(["utf-8-sig", "utf-16", "utf-16-le", "utf-16-be", "utf-32"]))
        return text.encode(codec), "deadletter"
    # A surrogate encoded in UTF-8 bytes (CESU-8): not UTF-8.
    doc.pairs.append(("note", "NOTE"))
    return emit(doc).encode().replace(b"NOTE", b"\xed\xb0\x80"), "deadletter"


class Tills:
    """pos-1 (poison) and pos-2 (good orders) publishing at once, and a support reader."""

    def __init__(self, port: int, store: str) -> None:
        self.root = f"edgehub/v1/{store}"
        self.inbox: queue.Queue[tuple[str, bytes]] = queue.Queue()
        self.pos1 = Probe._client("pos-1", "pw-pos-1", port, client_id="fuzz-mix-pos-1")  # noqa: SLF001
        self.pos2 = Probe._client("pos-2", "pw-pos-2", port, client_id="fuzz-mix-pos-2")  # noqa: SLF001
        self.reader = Probe._client("edgehub-hub", "hub-secret-password", port, client_id="fuzz-mix-reader")  # noqa: SLF001
        self.reader.on_message = lambda _c, _u, msg: self.inbox.put((msg.topic, msg.payload))
        subscribed = self.reader.subscribe([(f"{self.root}/pos/+/ack", 1), (f"{self.root}/hub/deadletter", 1)])
        assert subscribed[0] == mqtt.MQTT_ERR_SUCCESS

    def close(self) -> None:
        for client in (self.pos1, self.pos2, self.reader):
            client.loop_stop()
            client.disconnect()


@pytest.fixture(scope="module")
def tills(running_hub: tuple[HubProcess, Probe]) -> Iterator[Tills]:
    process, _ = running_hub
    mix = Tills(process.config.broker.listen.port, process.config.store.id)
    import time

    time.sleep(0.3)
    yield mix
    mix.close()


examples = itertools.count()
mixed: dict[str, int] = {"accepted": 0, "rejected": 0, "deadletter": 0}


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(data=st.data())
def test_poisoned_orders_in_a_batch_fail_no_good_order(tills: Tills, data: st.DataObject) -> None:
    n = next(examples)
    good = [f"PZ{n}-G{i}" for i in range(data.draw(st.integers(1, 6)))]
    bad = [poisoned(data.draw, f"PZ{n}-B{i}", f"PZ{n}-X{i}") for i in range(data.draw(st.integers(1, 4)))]
    sends = [(tills.pos2, emit(good_order(data.draw, i)).encode()) for i in good]
    sends += [(tills.pos1, raw) for raw, _ in bad]
    order = data.draw(st.permutations(range(len(sends))))
    for k in order:
        client, raw = sends[k]
        topic = f"{tills.root}/pos/{'pos-2' if client is tills.pos2 else 'pos-1'}/order"
        client.publish(topic, raw, qos=1)
    expected = len(good) + len(bad)
    answers: list[tuple[str, dict[str, Any]]] = []
    while len(answers) < expected:
        topic, body = tills.inbox.get(timeout=10)
        answers.append((topic, json.loads(body)))
    with contextlib.suppress(queue.Empty):
        extra = tills.inbox.get(timeout=0.2)
        raise AssertionError(f"an answer too many: {extra}")
    acks = [doc for topic, doc in answers if topic.endswith("/ack")]
    dead = [doc for topic, doc in answers if topic.endswith("/deadletter")]
    accepted = sorted(a["order_id"] for a in acks if a["status"] == "accepted")
    assert accepted == sorted(good), (accepted, good)
    assert all(not a["duplicate"] for a in acks if a["status"] == "accepted")
    rejected = {a["order_id"]: a["error"] for a in acks if a["status"] == "rejected"}
    want_rejected = {f"PZ{n}-B{i}" for i, (_, how) in enumerate(bad) if how == "rejected"}
    assert set(rejected) == want_rejected, (rejected, bad)
    assert all(": " in error for error in rejected.values()), rejected  # "field: what is wrong"
    assert [d["topic"] for d in dead] == [f"{tills.root}/pos/pos-1/order"] * sum(how == "deadletter" for _, how in bad)
    mixed["accepted"] += len(accepted)
    mixed["rejected"] += len(rejected)
    mixed["deadletter"] += len(dead)


def test_the_hub_is_still_up_after_the_fuzzing(running_hub: tuple[HubProcess, Probe], tmp_path: Path) -> None:
    process, _ = running_hub
    assert process.proc is not None and process.proc.poll() is None
    url = f"http://127.0.0.1:{process.config.api.listen.port}/healthz"
    with urllib.request.urlopen(url, timeout=2) as response:
        assert response.status == 200
    # The strategies really reached all three outcomes, alone and mixed into batches.
    assert all(count > 0 for count in outcomes.values()), outcomes
    assert all(count > 0 for count in mixed.values()), mixed
    assert "Traceback" not in process.log_path.read_text()
