"""Reconciliation: does the cloud hold what the store sent?

The hub publishes a ``cloud-reconcile-request/1`` to ``cloud/{store}/reconcile/request`` (MQTT 5
response topic + correlation data, and the ``request_id`` in the payload for clients without
them) with its per-stream counters; the cloud answers on the response topic with what it holds
per stream: distinct ``msg_id`` count and highest ``stream_seq``. docs/cloud.md has both shapes.

Per stream the answer is ``ok`` when ``acked <= cloud count <= produced - dropped`` (the cloud
may hold rows whose PUBACK the hub never saw; it may not hold fewer than it acknowledged) and
the cloud's last ``stream_seq`` is at least the last one it acknowledged. ``cloud_missing`` means
the cloud lost acknowledged rows (a cloud-side bug or restore: the orders are still in the
journal for support); ``cloud_excess`` means it holds rows this store never produced (two boxes
with one store id, or a journal moved aside after corruption).
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any

from edgehub.bus.message import Message
from edgehub.errors import PayloadError, UplinkError
from edgehub.store.outbox import StreamCounters, stream_counters
from edgehub.uplink import cloudapi
from edgehub.uplink.cloudapi import CloudStreamView, CloudTopics
from edgehub.uplink.link import CloudLink, reconcile_properties

log = logging.getLogger("edgehub.uplink.reconcile")


def compare(before: dict[str, StreamCounters], after: dict[str, StreamCounters],
            cloud: dict[str, CloudStreamView]) -> dict[str, Any]:
    streams: dict[str, Any] = {}
    for name in sorted(set(before) | set(after) | set(cloud)):
        b, a = before.get(name), after.get(name)
        view = cloud.get(name, CloudStreamView(0, 0))
        low = b.acked if b else 0
        high = (a.produced if a else 0) - (b.dropped if b else 0)
        last_acked = b.last_acked_stream_seq if b else 0
        if view.count < low or view.last_stream_seq < last_acked:
            status = "cloud_missing"
        elif view.count > high:
            status = "cloud_excess"
        else:
            status = "ok"
        streams[name] = {"status": status, "store_acked": low, "store_pending": a.pending if a else 0,
                         "store_last_acked_stream_seq": last_acked, "cloud_count": view.count,
                         "cloud_last_stream_seq": view.last_stream_seq,
                         "missing": max(0, low - view.count), "excess": max(0, view.count - high)}
    overall = "ok" if all(s["status"] == "ok" for s in streams.values()) else "mismatch"
    return {"status": overall, "streams": streams}


class Reconciler:
    def __init__(self, journal: Any, store_id: str, topics: CloudTopics, timeout_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.store_id = store_id
        self.topics = topics
        self.timeout_s = timeout_s
        self.clock = clock
        self.last: dict[str, Any] | None = None
        self._pending: dict[str, asyncio.Future[dict[str, CloudStreamView]]] = {}

    async def run_once(self, link: CloudLink) -> dict[str, Any]:
        """One request/response; the result is kept in ``last`` and logged when it changes."""
        before: dict[str, StreamCounters] = await self.journal.read(stream_counters)
        now = self.clock()
        request_id = uuid.uuid4().hex
        fut: asyncio.Future[dict[str, CloudStreamView]] = asyncio.get_running_loop().create_future()
        self._pending[request_id] = fut
        try:
            payload = cloudapi.reconcile_request(self.store_id, request_id,
                                                 {n: c.as_dict(now) for n, c in before.items()})
            await link.publish_wait(self.topics.reconcile_request, payload,
                                    reconcile_properties(self.topics, request_id), timeout=self.timeout_s)
            async with asyncio.timeout(self.timeout_s):
                views = await fut
        except TimeoutError:
            result: dict[str, Any] = {"status": "no_answer", "streams": {}}
        except UplinkError as exc:
            result = {"status": "failed", "error": str(exc), "streams": {}}
        else:
            after: dict[str, StreamCounters] = await self.journal.read(stream_counters)
            result = compare(before, after, views)
        finally:
            self._pending.pop(request_id, None)
        result["at"] = self.clock()
        result["request_id"] = request_id
        self._record(result)
        return result

    def _record(self, result: dict[str, Any]) -> None:
        previous = self.last["status"] if self.last else None
        self.last = result
        if result["status"] == previous:
            return
        if result["status"] == "ok":
            log.info("reconciliation: the cloud holds everything acknowledged")
        elif result["status"] == "mismatch":
            bad = {n: s for n, s in result["streams"].items() if s["status"] != "ok"}
            log.warning("reconciliation mismatch: %s", "; ".join(
                f"{n}: {s['status']} (cloud {s['cloud_count']}, acked {s['store_acked']}, "
                f"pending {s['store_pending']})" for n, s in bad.items()))
        else:
            log.info("reconciliation: %s", result.get("error") or "the cloud did not answer")

    def on_response(self, message: Message) -> None:
        try:
            request_id, views = cloudapi.parse_reconcile_response(bytes(message.payload))
        except PayloadError as exc:
            log.warning("reconciliation response on %s rejected: %s", message.topic, exc)
            return
        correlation = message.correlation_data
        if correlation is not None and correlation.decode(errors="replace") in self._pending:
            request_id = correlation.decode()
        fut = self._pending.get(request_id)
        if fut is not None and not fut.done():
            fut.set_result(views)
