"""Property: whatever bytes reach the order topic, the hub acks, rejects with a reason, or
dead-letters them, and stays up. Runs against a real hub process and its real Mosquitto."""

from __future__ import annotations

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


def test_the_hub_is_still_up_after_the_fuzzing(running_hub: tuple[HubProcess, Probe], tmp_path: Path) -> None:
    process, _ = running_hub
    assert process.proc is not None and process.proc.poll() is None
    url = f"http://127.0.0.1:{process.config.api.listen.port}/healthz"
    with urllib.request.urlopen(url, timeout=2) as response:
        assert response.status == 200
    # The strategies really reached all three outcomes.
    assert all(count > 0 for count in outcomes.values()), outcomes
    assert "Traceback" not in process.log_path.read_text()
