"""The uplink component: keeps one link to the cloud, drains the outbox over it, takes what the
cloud pushes down, reconciles, and answers "sync now".

States (logged once per change, shown at ``/api/v1/status`` → ``uplink.link``):
``connecting`` → ``online`` (a ping went through the cloud broker and back; replay starts at
once) ⇄ ``suspect`` (still up, but a ping is ``ping_timeout_s`` overdue) → ``offline`` (lost,
refused or silent). ``since`` is when the link last came up or went down: the retries of an
outage (``offline`` → ``connecting`` → ``offline`` …) leave it at the moment the link stopped
being up (or the hub started), so the status says how long the cloud has been out of reach.

WAN truth (docs/cloud.md, "Connection"): a link from which nothing came for ``down_after_s`` is
dropped, however quiet it is otherwise (a black-holed route: TCP looks fine, bytes vanish); a
ping goes out after ``ping_interval_s`` without a byte. How it is tried again depends on how it
failed. Silence (no SYN-ACK, no CONNACK, no ping answer) is a route that is gone: a TCP connect
every ``probe_every_s`` (``route.RouteProbe``) finds it back within about a second of its
return, and the real connect follows at once. A refusal (RST, TLS or CONNACK refused, the broker
closing the connection) is a cloud broker saying no: tries back off, doubling up to
``reconnect_max_s``, or go at once on ``sync``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgehub.bus.message import Message
from edgehub.config import CloudConfig
from edgehub.errors import CloudSilent, EdgehubError, PayloadError, UplinkError
from edgehub.store.outbox import Outbox, head_seq, waiting_up_to
from edgehub.tasks import cancel_and_wait, next_tick
from edgehub.uplink.cloudapi import CloudTopics
from edgehub.uplink.downlink import Downlink
from edgehub.uplink.link import CloudLink
from edgehub.uplink.reconcile import Reconciler
from edgehub.uplink.replay import Replay
from edgehub.uplink.route import RouteProbe

log = logging.getLogger("edgehub.uplink")

UP = ("online", "suspect")  # the link is connected and serving
BACKOFF_FIRST_S = 0.2  # the first wait after a refusal; it doubles up to reconnect_max_s
WATCH_TICK_S = 0.5  # the watchdog looks at least this often


def _eta(remaining: int, rate: float) -> float | None:
    """Seconds until ``remaining`` rows are sent at ``rate``: 0 when none are left, None while
    nothing moves (no rate to tell by)."""
    if not remaining:
        return 0
    return round(remaining / rate, 1) if rate > 0 else None


def _iso(at: float | None) -> str | None:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(at)) if at else None


@dataclass
class SyncJob:
    """One "sync now": everything in the outbox when it was asked for, sent and acknowledged."""

    target_seq: int
    total: int
    started_at: float
    remaining: int = -1
    done: asyncio.Event = field(default_factory=asyncio.Event)
    finished_at: float | None = None
    reconcile: dict[str, Any] | None = None


class Uplink:
    def __init__(self, cfg: CloudConfig, store_id: str, journal: Any, outbox: Outbox, downlink: Downlink,
                 clock: Callable[[], float] = time.time) -> None:
        self.cfg = cfg
        self.store_id = store_id
        self.journal = journal
        self.outbox = outbox
        self.downlink = downlink
        self.clock = clock
        self.topics = CloudTopics(store_id, cfg.client_id)
        self.replay = Replay(journal, store_id, self.topics, cfg, clock)
        # The cloud's answer may take as long as a link may stay silent.
        self.reconciler = Reconciler(journal, store_id, self.topics, max(2.0, cfg.down_after_s), clock)
        self.route = RouteProbe(cfg.host, cfg.port, cfg.probe_every_s, cfg.connect_timeout_s)
        self.state = "offline"
        self.state_since = clock()
        self.last_error = ""
        self._logged_error = ""
        self.connects = 0
        self.rtt_ms: float | None = None
        self.link: CloudLink | None = None
        # How the next connection is tried: "probe" (the route went silent) or "backoff"
        # (refused), and when the back-off's wait ends (loop time).
        self.retry = ""
        self.retry_at: float | None = None
        self.sync_job: SyncJob | None = None
        self._wake = asyncio.Event()
        self._reconcile_now = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self._message_tasks: set[asyncio.Task[None]] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        # Where orders placed online go (edgehub/online/): (the message, its acknowledgement).
        self.take_order: Callable[[bytes, Callable[[], None]], None] | None = None

    # --- lifecycle -----------------------------------------------------------------------------

    async def __aenter__(self) -> Uplink:
        self._loop = asyncio.get_running_loop()
        self.journal.commit_observers.append(self._on_commit)
        await self.replay.__aenter__()
        self._tasks = [asyncio.create_task(self._run(), name="uplink")]
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(*self._tasks, *self._message_tasks)
        self.route.close()
        await self.replay.__aexit__(None, None, None)
        with contextlib.suppress(ValueError):
            self.journal.commit_observers.remove(self._on_commit)

    def _on_commit(self, elapsed: float, writes: int) -> None:
        # Called by the journal's writer thread after each group commit: new rows may be live.
        if self._loop is not None:
            with contextlib.suppress(RuntimeError):
                self._loop.call_soon_threadsafe(self.replay.new_rows.set)

    def _set_state(self, state: str, detail: str = "") -> None:
        if state == self.state:
            return
        previous, self.state = self.state, state
        if (state in UP) != (previous in UP):
            # Only coming up and going down move ``since``: a reconnect attempt during an outage
            # (connecting, then offline again) is not news (support reads "WAN down since ...").
            self.state_since = self.clock()
        if state == "suspect":
            log.warning("cloud %s suspect: %s", self.cfg.url, detail)
        elif state == "online":
            log.info("cloud %s %s%s", self.cfg.url, "answers again" if previous == "suspect" else "online",
                     f" ({detail})" if detail else "")

    # --- the connection loop -----------------------------------------------------------------------

    async def _run(self) -> None:
        backoff = BACKOFF_FIRST_S
        silent = False  # the last connection ended in silence: probe the route, do not back off
        loop = asyncio.get_running_loop()
        tried_at = float("-inf")
        while True:
            error = ""
            link: CloudLink | None = None
            try:
                if silent:
                    self.retry, self.retry_at = "probe", None
                    await self.route.wait_open()  # raises UplinkError if the route refuses
                    # A connect that fails at once although the route answers (a name that does
                    # not resolve for paho) is tried at most every probe_every_s.
                    await asyncio.sleep(max(0.0, tried_at + self.cfg.probe_every_s - loop.time()))
                self.retry = ""
                tried_at = loop.time()
                self._set_state("connecting")
                connecting = CloudLink(
                    self.cfg, self.topics,
                    subscriptions=((self.topics.ping, 0), (self.topics.all_down, 1),
                                   (self.topics.reconcile_response, 1)),
                    on_puback=self.replay.on_puback,
                )
                # What the broker kept for the box comes right after CONNACK, before the link is
                # this uplink's ``link``: each message is answered on the connection it came by.
                connecting.on_message = functools.partial(self._on_message, connecting)
                async with connecting as link:
                    self.link = link
                    self.connects += 1
                    rtt = await link.ping(self.cfg.down_after_s)
                    self.rtt_ms = round(rtt * 1000, 1)
                    self.last_error = self._logged_error = ""
                    self._set_state("online", f"ping {self.rtt_ms} ms")
                    backoff = BACKOFF_FIRST_S
                    await self._serve(link)
            except UplinkError as exc:
                error = str(exc)
                silent = isinstance(exc, CloudSilent) or bool(link is not None and link.silent)
                if link is not None and link.silent:
                    error = f"cloud link lost: {link.silent}"
            finally:
                self.link = None
            # Logged once per distinct failure, not once per retry.
            if error and error != self._logged_error:
                log.warning("cloud %s offline: %s", self.cfg.url, error)
                self._logged_error = error
            self._set_state("offline")
            self.last_error = error or self.last_error
            if silent:
                continue  # the probe paces itself (probe_every_s)
            wait = backoff * (0.5 + random.random())
            self.retry, self.retry_at = "backoff", loop.time() + wait
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(wait):
                    await self._wake.wait()
            self._wake.clear()
            backoff = min(backoff * 2, self.cfg.reconnect_max_s)

    async def _serve(self, link: CloudLink) -> None:
        tasks = [asyncio.create_task(self.replay.run(link), name="uplink-drain"),
                 asyncio.create_task(self._watch(link), name="uplink-watch"),
                 asyncio.create_task(self._reconcile_loop(link), name="uplink-reconcile")]
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                if (exc := task.exception()) is not None:
                    raise exc
            raise UplinkError("cloud link ended")
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, link: CloudLink) -> None:
        """Liveness of an established link, from what the cloud sends: any byte (a PUBACK while a
        backlog drains) proves it; after ``ping_interval_s`` without one a ping goes out (and
        again every ping_interval_s while none is answered); a ping ``ping_timeout_s`` overdue
        makes the link ``suspect``; ``down_after_s`` without a byte drops it as silent."""
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            quiet = now - link.last_heard
            if quiet >= cfg.down_after_s:
                reason = (f"nothing heard from the cloud broker for {quiet:.1f} s "
                          f"(down_after_s {cfg.down_after_s:g}): the route is silent")
                link.force_close(reason, silent=True)
                raise CloudSilent(reason)
            last_ping = link.last_ping_at
            if quiet >= cfg.ping_interval_s and (last_ping is None or now - last_ping >= cfg.ping_interval_s):
                link.send_ping()
                last_ping = now
            if link.rtt is not None:
                self.rtt_ms = round(link.rtt * 1000, 1)
            overdue = link.ping_overdue_s(now)
            if overdue >= cfg.ping_timeout_s:
                self._set_state("suspect", f"a ping unanswered for {overdue:.1f} s, nothing heard for {quiet:.1f} s")
            else:
                self._set_state("online")
            # Wake for the next thing due: a ping, a ping becoming overdue, the link going down.
            due = [link.last_heard + cfg.down_after_s, link.last_heard + cfg.ping_interval_s]
            if last_ping is not None:
                due += [last_ping + cfg.ping_interval_s, now - overdue + cfg.ping_timeout_s]
            # At the latest on the WATCH_TICK_S grid, with the other periodic wakeups.
            wake = min([d for d in due if d > now] or [now + WATCH_TICK_S])
            await asyncio.sleep(max(min(wake, next_tick(now, WATCH_TICK_S)) - now, 0.01))

    async def _reconcile_loop(self, link: CloudLink) -> None:
        # Once the backlog of this connection is drained (or on "sync now"), then every
        # reconcile_every_s and after each later sync.
        first = [asyncio.ensure_future(self.replay.drained.wait()), asyncio.ensure_future(self._reconcile_now.wait())]
        try:
            await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in first:
                waiter.cancel()
        every = self.cfg.reconcile_every_s
        while True:
            self._reconcile_now.clear()
            # Deleting acknowledged rows is lazy; the counters the cloud is compared with must
            # include every PUBACK already seen, or a lost row would hide below a stale count.
            await self.replay.flush_deletes()
            await self.reconciler.run_once(link)
            job = self.sync_job
            if job is not None and job.done.is_set() and job.reconcile is None:
                job.reconcile = self.reconciler.last
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(every if every > 0 else None):
                    await self._reconcile_now.wait()

    # --- incoming --------------------------------------------------------------------------------

    def _on_message(self, link: CloudLink, message: Message) -> None:
        if message.topic == self.topics.down_orders:
            # An order placed online: acknowledged to the cloud once the box journaled it (after a
            # reconnect the cloud sends one not acknowledged again, and it is taken once).
            if self.take_order is not None:
                self.take_order(bytes(message.payload), functools.partial(link.ack, message))
            return
        kind = self.topics.kind_of(message.topic)
        if kind is not None:
            task = asyncio.create_task(self._take_downlink(link, kind, message))
            self._message_tasks.add(task)
            task.add_done_callback(self._message_tasks.discard)
            return
        if message.topic == self.topics.reconcile_response:
            self.reconciler.on_response(message)
        link.ack(message)

    async def _take_downlink(self, link: CloudLink, kind: str, message: Message) -> None:
        try:
            await self.downlink.receive(kind, bytes(message.payload))
        except PayloadError as exc:
            await self.downlink.reject(message.topic, bytes(message.payload), str(exc))
        except EdgehubError as exc:
            # Not durable, so not acked: the broker sends it again on the next connection.
            log.error("downlink %s not stored: %s", kind, exc)
            return
        link.ack(message)

    # --- sync now --------------------------------------------------------------------------------

    async def sync(self) -> SyncJob:
        """Send everything in the outbox now, ignoring the replay rate; returns the job to watch."""
        job = self.sync_job
        if job is not None and not job.done.is_set():
            return job
        target = int(await self.journal.read(head_seq))
        total = await self._count_upto(target)
        job = SyncJob(target_seq=target, total=total, started_at=self.clock(), remaining=total)
        self.sync_job = job
        self.replay.boost_until = max(self.replay.boost_until, target)
        self.replay.release_holds()
        self._wake.set()  # skip the reconnect backoff
        log.info("sync now: %d outbox rows up to seq %d", total, target)
        task = asyncio.create_task(self._watch_sync(job), name="uplink-sync")
        self._message_tasks.add(task)
        task.add_done_callback(self._message_tasks.discard)
        return job

    async def _count_upto(self, seq: int) -> int:
        return int(await self.journal.read(lambda conn: waiting_up_to(conn, seq)))

    async def _watch_sync(self, job: SyncJob) -> None:
        while True:
            job.remaining = await self._count_upto(job.target_seq)
            if job.remaining == 0:
                break
            await asyncio.sleep(0.2)
        job.finished_at = self.clock()
        job.done.set()
        log.info("sync now: done, %d rows in %.1f s", job.total, job.finished_at - job.started_at)
        self._reconcile_now.set()

    def sync_progress(self) -> dict[str, Any]:
        job = self.sync_job
        if job is None:
            return {"state": "idle", "link": self.state}
        rate = self.replay.rate()
        sent = job.total - job.remaining
        return {
            "state": "done" if job.done.is_set() else ("running" if self.state in UP else "waiting_for_link"),
            "link": self.state, "link_since": _iso(self.state_since),
            "link_error": self.last_error if self.state not in UP else "",
            "target_seq": job.target_seq, "total": job.total, "sent": sent,
            "remaining": job.remaining, "rate_per_s": round(rate, 1),
            "eta_s": _eta(job.remaining, rate),
            "started_at": _iso(job.started_at), "finished_at": _iso(job.finished_at),
            "reconcile": job.reconcile,
        }

    # --- status ----------------------------------------------------------------------------------

    def _link_status(self) -> dict[str, Any]:
        link: dict[str, Any] = {"state": self.state, "since": _iso(self.state_since), "url": self.cfg.url,
                "last_error": self.last_error, "connects": self.connects, "ping_ms": self.rtt_ms}
        now = asyncio.get_running_loop().time()
        current = self.link
        if current is not None and self.state in UP:
            # Seconds since the cloud last sent a byte, and since an unanswered ping went out.
            link["quiet_s"] = round(now - current.last_heard, 1)
            link["ping_overdue_s"] = round(current.ping_overdue_s(now), 1)
        elif self.retry == "probe":
            link["retry"] = {"how": "probe", "every_s": self.cfg.probe_every_s, "probes": self.route.attempts,
                             "last": self.route.last_outcome}
        elif self.retry == "backoff" and self.retry_at is not None:
            link["retry"] = {"how": "backoff", "in_s": round(max(0.0, self.retry_at - now), 1)}
        return link

    async def status(self) -> dict[str, Any]:
        out = await self.outbox.status()
        rate = self.replay.rate()
        backlog = out["backlog"]
        replay = self.replay.figures()
        replay["rate_per_s"] = round(rate, 1)
        replay["eta_s"] = _eta(backlog, rate)
        return {
            "enabled": True,
            "link": self._link_status(),
            "last_cloud_ack_at": _iso(self.replay.stats.last_ack_at),
            **out,
            "replay": replay,
            "sync": self.sync_progress(),
            "reconcile": self.reconciler.last,
            "downlink": self.downlink.status(),
        }
