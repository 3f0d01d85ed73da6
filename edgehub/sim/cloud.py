"""A simulated chain cloud for ``make run`` (``edgehub run --sim-cloud``): the outbox has somewhere to go.

A private Mosquitto (MQTT 5) on a free loopback port with password login and the ACL a box gets
in the real cloud (docs/cloud.md, "Connection" and "Topics"), and beside it a small cloud
service that does what docs/cloud.md asks of the chain's consumers: keep each uplink message
once (a re-send is a duplicate: same stream, same ``stream_seq``), count per stream, and
answer ``cloud-reconcile-request/1`` with ``cloud-reconcile-response/1`` on the request's
response topic (correlation data echoed). So the page's outbox drains, "Sync now" and
``edgehub sync`` finish with a reconciliation, all without a WAN.

Its files live in a temporary folder removed at exit; the broker dies with the hub (even kill -9).
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import getpass
import json
import logging
import secrets
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.broker import free_port, launch, mosquitto_binary, terminate, until_listening
from edgehub.bus.message import Message
from edgehub.bus.session import MqttSession
from edgehub.config import Address, Config
from edgehub.errors import BrokerError, MqttError
from edgehub.files import atomic_write
from edgehub.tasks import cancel_and_wait
from edgehub.uplink.cloudapi import CloudTopics

__all__ = ["SimCloud", "with_sim_cloud"]

log = logging.getLogger("edgehub.sim.cloud")

SERVICE_USER = "cloud-service"
SAVE_EVERY_S = 5.0  # holdings written to the state file at most this often (and at exit)


@dataclass
class StreamHoldings:
    """What the cloud keeps of one stream: the ``stream_seq`` numbers it holds, as intervals
    (a stream's numbers are contiguous from 1 and arrive mostly in order, so a day of orders is
    one or two intervals), which is also how it drops a re-send."""

    spans: list[list[int]] = field(default_factory=list)  # sorted, disjoint [first, last]
    received: int = 0  # with duplicates

    def add(self, seq: int) -> bool:
        """Keep ``seq``; False when it was held already (a duplicate)."""
        self.received += 1
        spans = self.spans
        i = bisect.bisect_right(spans, [seq, float("inf")]) - 1  # the span starting at or before seq
        if i >= 0 and spans[i][0] <= seq <= spans[i][1]:
            return False
        if i >= 0 and spans[i][1] == seq - 1:
            spans[i][1] = seq
        else:
            i += 1
            spans.insert(i, [seq, seq])
        if i + 1 < len(spans) and spans[i + 1][0] == spans[i][1] + 1:
            spans[i][1] = spans.pop(i + 1)[1]
        return True

    @property
    def count(self) -> int:
        return sum(last - first + 1 for first, last in self.spans)

    @property
    def last_stream_seq(self) -> int:
        return self.spans[-1][1] if self.spans else 0


class SimCloud:
    """``async with SimCloud(store_id, client_id) as cloud``: the broker and the service run;
    ``cloud.port``, ``cloud.box_user``, ``cloud.box_password`` are what the box logs in with."""

    def __init__(self, store_id: str, client_id: str, state_file: Path | None = None) -> None:
        self.store_id = store_id
        # What the cloud holds, kept across runs beside the store's journal: the journal
        # remembers what the cloud acknowledged, so a cloud that forgot would fail reconciliation.
        self.state_file = state_file
        self.client_id = client_id
        self.topics = CloudTopics(store_id, client_id)
        self.box_user = f"{store_id}-box"
        self.box_password = secrets.token_urlsafe(18)
        self._service_password = secrets.token_urlsafe(18)
        self.port = 0
        self.streams: dict[str, StreamHoldings] = {}
        self.reconcile_requests = 0
        self.log_tail: list[str] = []
        self._dir: Path | None = None
        self._proc: asyncio.subprocess.Process | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._subscribed = asyncio.Event()

    @property
    def url(self) -> str:
        return f"mqtt://127.0.0.1:{self.port}"

    def held(self) -> int:
        """Messages the cloud keeps (each once)."""
        return sum(s.count for s in self.streams.values())

    async def __aenter__(self) -> SimCloud:
        binary = mosquitto_binary()
        if binary is None or shutil.which("mosquitto_passwd") is None:
            raise BrokerError("mosquitto not found: install the mosquitto package (apt-get install mosquitto)")
        self._dir = Path(tempfile.mkdtemp(prefix="edgehub-sim-cloud-"))
        try:
            await asyncio.to_thread(self._load)
            self.port = free_port()
            conf = await asyncio.to_thread(self._write_files)
            self._proc = await launch(binary, conf, die_with_parent=True)
            self._tasks.append(asyncio.create_task(self._collect_log(), name="sim-cloud-log"))
            await until_listening(self._proc, Address("127.0.0.1", self.port), self.log_tail)
            self._tasks.append(asyncio.create_task(self._service(), name="sim-cloud-service"))
            self._tasks.append(asyncio.create_task(self._keep_saving(), name="sim-cloud-save"))
            async with asyncio.timeout(5):
                await self._subscribed.wait()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(*self._tasks)
        await asyncio.to_thread(self._save)
        await terminate(self._proc)
        if self._dir is not None:
            shutil.rmtree(self._dir, ignore_errors=True)

    def _load(self) -> None:
        if self.state_file is None or not self.state_file.exists():
            return
        try:
            doc = json.loads(self.state_file.read_text(encoding="utf-8"))
            self.streams = {str(name): StreamHoldings(spans=[[int(a), int(b)] for a, b in spans])
                            for name, spans in doc["streams"].items()}
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("simulated cloud: %s unreadable (%s); starting empty", self.state_file, exc)

    def _save(self) -> None:
        if self.state_file is None:
            return
        doc = {"schema": "sim-cloud-holdings/1", "streams": {n: h.spans for n, h in self.streams.items()}}
        try:
            atomic_write(self.state_file, json.dumps(doc), 0o644)
        except OSError as exc:
            log.warning("simulated cloud: cannot keep its holdings in %s: %s", self.state_file, exc)

    async def _keep_saving(self) -> None:
        saved = -1
        while True:
            await asyncio.sleep(SAVE_EVERY_S)
            received = sum(h.received for h in self.streams.values())
            if received != saved:
                await asyncio.to_thread(self._save)
                saved = received

    def _write_files(self) -> Path:
        assert self._dir is not None
        d, t = self._dir, self.topics
        passwd = d / "passwd"
        passwd.write_text(f"{self.box_user}:{self.box_password}\n{SERVICE_USER}:{self._service_password}\n")
        passwd.chmod(0o600)
        result = subprocess.run(["mosquitto_passwd", "-U", str(passwd)], capture_output=True, text=True)
        if result.returncode != 0:
            raise BrokerError(f"mosquitto_passwd failed: {result.stderr.strip() or result.stdout.strip()}")
        # The box's ACL as docs/cloud.md states it: write up/# and reconcile/request, read down/# and
        # its own reconcile response, read-write its own ping topic.
        (d / "acl").write_text("\n".join([
            f"user {self.box_user}",
            f"topic write {t.root}/up/#",
            f"topic write {t.reconcile_request}",
            f"topic read {t.all_down}",
            f"topic read {t.reconcile_response}",
            f"topic readwrite {t.ping}",
            "",
            f"user {SERVICE_USER}",
            f"topic readwrite {t.root}/#",
            "",
        ]))
        conf = d / "mosquitto.conf"
        conf.write_text("\n".join([
            f"user {getpass.getuser()}",  # started as root, Mosquitto would drop to "mosquitto"
            f"listener {self.port} 127.0.0.1",
            "allow_anonymous false",
            f"password_file {passwd}",
            f"acl_file {d / 'acl'}",
            "persistence false",
            "max_queued_messages 0",
            "log_dest stderr",
            "log_timestamp_format %Y-%m-%dT%H:%M:%S",
            "log_type error",
            "log_type warning",
            "",
        ]))
        return conf

    async def _collect_log(self) -> None:
        assert self._proc is not None and self._proc.stderr is not None
        async for line in self._proc.stderr:
            self.log_tail.append(line.decode(errors="replace").rstrip())
            del self.log_tail[:-100]

    async def _service(self) -> None:
        t = self.topics
        while True:
            try:
                async with MqttSession("127.0.0.1", self.port, username=SERVICE_USER,
                                       password=self._service_password,
                                       client_id=f"sim-cloud-service-{secrets.token_hex(4)}") as client:
                    await client.subscribe(t.all_up, qos=1)
                    await client.subscribe(t.reconcile_request, qos=1)
                    self._subscribed.set()
                    async for message in client.messages:
                        if message.topic == t.reconcile_request:
                            await self._answer(client, message, message.payload)
                        else:
                            self._keep(message.payload)
            except MqttError as exc:
                log.warning("simulated cloud service lost its broker: %s", exc)
                await asyncio.sleep(0.5)

    def _keep(self, payload: bytes) -> None:
        """One uplink message (``cloud-envelope/1``), kept once: a re-send has the same stream and
        ``stream_seq`` as the first copy (docs/cloud.md, the dedupe rule)."""
        try:
            doc = json.loads(payload)
            stream, stream_seq = str(doc["stream"]), int(doc["stream_seq"])
        except (ValueError, KeyError, TypeError):
            log.warning("simulated cloud: an uplink message that is not a cloud-envelope/1: %.80r", payload)
            return
        self.streams.setdefault(stream, StreamHoldings()).add(stream_seq)

    async def _answer(self, client: MqttSession, message: Message, payload: bytes) -> None:
        self.reconcile_requests += 1
        try:
            request: Any = json.loads(payload)
            request_id = str(request["request_id"])
        except (ValueError, KeyError, TypeError):
            log.warning("simulated cloud: a reconcile request without a request_id: %.80r", payload)
            return
        answer = {"schema": "cloud-reconcile-response/1", "request_id": request_id,
                  "streams": {name: {"count": h.count, "last_stream_seq": h.last_stream_seq}
                              for name, h in self.streams.items()}}
        topic = message.response_topic or self.topics.reconcile_response
        reply = Properties(PacketTypes.PUBLISH)
        if message.correlation_data:
            reply.CorrelationData = message.correlation_data
        with contextlib.suppress(MqttError):
            await client.publish(topic, json.dumps(answer).encode(), qos=1, properties=reply)


def with_sim_cloud(config: Config, cloud: SimCloud) -> Config:
    """``config`` with its uplink pointed at the simulated cloud (plain MQTT on loopback, password
    login); the outbox policy ([cloud] quotas, disk thresholds) stays the config's own."""
    return replace(config, cloud=replace(
        config.cloud, enabled=True, url=cloud.url, tls=False, host="127.0.0.1", port=cloud.port,
        ca_file=None, cert_file=None, key_file=None, username=cloud.box_user, password=cloud.box_password,
        client_id=cloud.client_id,
    ))
