"""The chain's cloud as the uplink tests see it: a private MQTT 5 Mosquitto, a recorder that
keeps every uplink message (and answers reconciliation requests), and the counting oracle."""

from __future__ import annotations

import asyncio
import getpass
import json
import signal
import subprocess
import sys
import threading
import time
import zlib
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.broker import free_port, mosquitto_binary

BOX_USER, BOX_PASSWORD = "s1-box", "cloud-box-secret"
CLOUD_USER, CLOUD_PASSWORD = "cloud", "cloud-service-secret"


class CloudBroker:
    """Mosquitto as the cloud broker: password auth, ACL, queues big enough for a backlog."""

    def __init__(self, directory: Path, store: str = "s1", box_acl: Iterable[str] | None = None,
                 extra_conf: Iterable[str] = ()) -> None:
        self.directory = directory
        self.store = store
        self.extra_conf = list(extra_conf)  # appended to mosquitto.conf (another listener, say)
        self.box_acl = list(box_acl) if box_acl is not None else [f"topic readwrite cloud/{store}/#"]
        self.port = 0
        self._proc: subprocess.Popen[bytes] | None = None

    async def __aenter__(self) -> CloudBroker:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    async def start(self) -> None:
        self._launch()
        d = self.directory
        for _ in range(200):
            try:
                _, writer = await asyncio.open_connection("127.0.0.1", self.port)
            except OSError:
                await asyncio.sleep(0.025)
                continue
            writer.close()
            return
        raise RuntimeError(f"cloud mosquitto did not start: {(d / 'mosquitto.log').read_text()[-500:]}")

    def _launch(self) -> None:
        """Writes the broker's files and starts it (a second's work, before any test traffic)."""
        d = self.directory
        d.mkdir(parents=True, exist_ok=True)
        if not self.port:
            self.port = free_port()
        passwd = d / "passwd"
        passwd.write_text(f"{BOX_USER}:{BOX_PASSWORD}\n{CLOUD_USER}:{CLOUD_PASSWORD}\n")
        subprocess.run(["mosquitto_passwd", "-U", str(passwd)], check=True, capture_output=True)
        self._write_acl()
        (d / "mosquitto.conf").write_text("\n".join([
            # Started as root, Mosquitto would drop to "mosquitto" and lose the files here.
            f"user {getpass.getuser()}", f"listener {self.port} 127.0.0.1", "allow_anonymous false",
            f"password_file {passwd}", f"acl_file {d / 'acl'}", "persistence false", "max_queued_messages 0",
            "max_queued_bytes 0", "max_inflight_messages 1000", "set_tcp_nodelay true", "log_dest stderr",
            "log_type error", "log_type warning", *self.extra_conf, "",
        ]))
        self._proc = subprocess.Popen([mosquitto_binary() or "mosquitto", "-c", str(d / "mosquitto.conf")],
                                      stdout=subprocess.DEVNULL, stderr=open(d / "mosquitto.log", "ab"))

    def _write_acl(self) -> None:
        (self.directory / "acl").write_text("\n".join([f"user {BOX_USER}", *self.box_acl, "", f"user {CLOUD_USER}",
                                                       "topic readwrite cloud/#", ""]))

    async def change_acl(self, box_acl: Iterable[str]) -> None:
        """The cloud's operators fix the box's ACL: Mosquitto reads it again on SIGHUP."""
        self.box_acl = list(box_acl)
        self._write_acl()
        assert self._proc is not None
        self._proc.send_signal(signal.SIGHUP)
        await asyncio.sleep(0.3)

    def stop(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()
            self._proc.wait(5)


@dataclass
class Received:
    stream: str
    msg_id: str
    seq: int
    stream_seq: int
    lane: str
    payload: bytes


@dataclass
class Report:
    received: int
    unique: int
    duplicates: int
    missing: set[str] = field(default_factory=set)
    unexpected: set[str] = field(default_factory=set)
    out_of_order: list[str] = field(default_factory=list)
    inconsistent: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.out_of_order or self.inconsistent)

    def __str__(self) -> str:
        return (f"received {self.received}, unique {self.unique}, duplicates {self.duplicates}, "
                f"missing {len(self.missing)} {sorted(self.missing)[:5]}, unexpected {len(self.unexpected)}, "
                f"out of order {self.out_of_order[:5]}, inconsistent {self.inconsistent[:5]}")


class CloudRecorder:
    """The cloud service: records every uplink message as it arrives (paho, own thread) and
    answers reconciliation requests from what it holds (deduped by msg_id)."""

    def __init__(self, port: int, store: str = "s1", answer_reconcile: bool = True,
                 tamper: Callable[[dict[str, Any]], None] | None = None) -> None:
        self.port = port
        self.store = store
        self.answer_reconcile = answer_reconcile
        self.tamper = tamper
        self.messages: list[Received] = []
        self.requests: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cloud-recorder-{time.time_ns()}",
                                  protocol=mqtt.MQTTv5)
        self.client.username_pw_set(CLOUD_USER, CLOUD_PASSWORD)
        self.client.on_message = self._on_message
        self._subscribed = threading.Event()
        self.client.on_subscribe = lambda *a: self._subscribed.set()

    def __enter__(self) -> CloudRecorder:
        self.client.connect("127.0.0.1", self.port)
        self.client.loop_start()
        self.client.subscribe([(f"cloud/{self.store}/up/+", 1), (f"cloud/{self.store}/reconcile/request", 1)])
        if not self._subscribed.wait(5):
            raise RuntimeError("recorder did not subscribe")
        return self

    def __exit__(self, *exc: object) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def _on_message(self, client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        if msg.topic.endswith("/reconcile/request"):
            self._answer(msg)
            return
        props = dict(getattr(msg.properties, "UserProperty", []) or [])
        doc = json.loads(msg.payload)
        # Both places must agree: user properties and envelope.
        assert props["msg_id"] == doc["msg_id"] and int(props["seq"]) == doc["seq"], (props, doc)
        assert int(props["stream_seq"]) == doc["stream_seq"] and props["stream"] == doc["stream"]
        assert msg.topic == f"cloud/{self.store}/up/{doc['stream']}"
        with self.lock:
            self.messages.append(Received(doc["stream"], doc["msg_id"], doc["seq"], doc["stream_seq"],
                                          props.get("lane", ""), bytes(msg.payload)))

    def holdings(self) -> dict[str, dict[str, int]]:
        with self.lock:
            seen: dict[str, set[str]] = {}
            last: dict[str, int] = {}
            for m in self.messages:
                seen.setdefault(m.stream, set()).add(m.msg_id)
                last[m.stream] = max(last.get(m.stream, 0), m.stream_seq)
        return {s: {"count": len(ids), "last_stream_seq": last[s]} for s, ids in seen.items()}

    def _answer(self, msg: mqtt.MQTTMessage) -> None:
        request = json.loads(msg.payload)
        self.requests.append(request)
        if not self.answer_reconcile:
            return
        streams = self.holdings()
        if self.tamper is not None:
            self.tamper(streams)
        body = json.dumps({"schema": "cloud-reconcile-response/1", "request_id": request["request_id"],
                           "streams": streams}).encode()
        props = Properties(PacketTypes.PUBLISH)
        correlation = getattr(msg.properties, "CorrelationData", None)
        if correlation:
            props.CorrelationData = correlation
        topic = getattr(msg.properties, "ResponseTopic", None)
        self.client.publish(topic, body, qos=1, properties=props)

    def push_down(self, kind: str, doc: dict[str, Any] | bytes) -> None:
        """The cloud pushes a document to the store: retained, QoS 1, on ``cloud/{store}/down/{kind}``."""
        body = doc if isinstance(doc, bytes) else json.dumps(doc).encode()
        info = self.client.publish(f"cloud/{self.store}/down/{kind}", body, qos=1, retain=True)
        info.wait_for_publish(5)

    def seen(self) -> set[str]:
        """The msg_ids received so far (each once)."""
        with self.lock:
            return {m.msg_id for m in self.messages}

    def count(self) -> int:
        return len(self.seen())

    async def wait_for(self, n: int, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while self.count() < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"cloud has {self.count()} of {n} messages after {timeout} s")
            await asyncio.sleep(0.05)

    async def wait_for_ids(self, ids: Iterable[str], timeout: float = 30.0) -> None:
        """Until every one of ``ids`` arrived. Counting is not enough where the store adds rows of
        its own (a hub's kitchen events): the count can be reached while known rows, acknowledged
        by the cloud broker already, are still on their way to this subscriber."""
        wanted = set(ids)
        deadline = time.monotonic() + timeout
        while True:
            missing = wanted - self.seen()
            if not missing:
                return
            if time.monotonic() > deadline:
                raise AssertionError(f"cloud lacks {len(missing)} of {len(wanted)} messages after {timeout} s: "
                                     f"{sorted(missing)[:5]}")
            await asyncio.sleep(0.05)

    def check(self, expected: Iterable[str]) -> Report:
        """The oracle: every expected msg_id once (after dedupe), nothing else, per-stream order
        kept within each lane, stream_seq contiguous and a re-send identical to the first."""
        expected = set(expected)
        with self.lock:
            messages = list(self.messages)
        first: dict[str, Received] = {}
        report = Report(received=len(messages), unique=0, duplicates=0)
        last_in_lane: dict[tuple[str, str], int] = {}
        for m in messages:
            if m.msg_id in first:
                report.duplicates += 1
                if first[m.msg_id].payload != m.payload:
                    report.inconsistent.append(m.msg_id)
                continue
            first[m.msg_id] = m
            key = (m.stream, m.lane)
            if m.stream_seq <= last_in_lane.get(key, 0):
                report.out_of_order.append(f"{m.stream}/{m.lane}: {m.stream_seq} after {last_in_lane[key]}")
            last_in_lane[key] = max(last_in_lane.get(key, 0), m.stream_seq)
        report.unique = len(first)
        report.missing = expected - set(first)
        report.unexpected = set(first) - expected
        return report

    def stream_seqs(self, stream: str) -> list[int]:
        with self.lock:
            return sorted({m.stream_seq for m in self.messages if m.stream == stream})


class RecorderProcess:
    """The recorder in a process of its own, for backlogs too big to record beside the hub in one
    interpreter: ``wait(n)`` returns a CloudRecorder holding what it saw (payloads as CRC-32, no
    lane: see ``_record``), ready for ``check``. Started before the hub, like the cloud service."""

    def __init__(self, port: int, out: Path, store: str = "s1") -> None:
        self.port, self.out, self.store = port, out, store
        self.proc: subprocess.Popen[str] | None = None

    def __enter__(self) -> RecorderProcess:
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.uplink.cloudside", str(self.port), self.store,
                                      str(self.out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
                                     cwd=Path(__file__).resolve().parents[2])
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline().strip()
        if line != "ready":
            raise RuntimeError(f"recorder process did not start: {line!r}")
        return self

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def wait(self, n: int, timeout: float = 60.0) -> CloudRecorder:
        """Wait until it has n unique messages (or ``timeout``), then read what it recorded."""
        assert self.proc is not None and self.proc.stdin is not None
        self.proc.stdin.write(f"{n} {timeout}\n")
        self.proc.stdin.flush()
        self.proc.wait(timeout + 30)
        rec = CloudRecorder(self.port, self.store)
        with open(self.out) as f:
            for line in f:
                stream, msg_id, seq, stream_seq, lane, crc = json.loads(line)
                rec.messages.append(Received(stream, msg_id, seq, stream_seq, lane, str(crc).encode()))
        return rec


def _record(port: int, store: str, out: str) -> None:
    # MQTT 3.1.1 and the envelope, not MQTT 5 user properties: paho decoding the properties of
    # every message made this recorder slower than the hub it records. So no lane here: use it
    # where all rows are in one lane (a backlog), and the order check is then per stream.
    lock = threading.Lock()
    rows: list[tuple[str, str, int, int, str, int]] = []
    unique: set[str] = set()
    enough = threading.Event()
    want = [1 << 62]

    def on_message(client: mqtt.Client, userdata: Any, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        with lock:
            rows.append((doc["stream"], doc["msg_id"], doc["seq"], doc["stream_seq"], "", zlib.crc32(msg.payload)))
            unique.add(doc["msg_id"])
            if len(unique) >= want[0]:
                enough.set()

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"cloud-recorder-{time.time_ns()}",
                         protocol=mqtt.MQTTv311)
    client.username_pw_set(CLOUD_USER, CLOUD_PASSWORD)
    client.on_message = on_message
    subscribed = threading.Event()
    client.on_subscribe = lambda *a: subscribed.set()
    client.connect("127.0.0.1", port)
    client.loop_start()
    client.subscribe(f"cloud/{store}/up/+", 1)
    if not subscribed.wait(5):
        raise SystemExit("recorder did not subscribe")
    print("ready", flush=True)
    n, timeout = sys.stdin.readline().split()
    with lock:
        want[0] = int(n)
        if len(unique) >= want[0]:
            enough.set()
    enough.wait(float(timeout))
    client.disconnect()
    client.loop_stop()
    with open(out, "w") as f, lock:
        for row in rows:
            f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    _record(int(sys.argv[1]), sys.argv[2], sys.argv[3])
