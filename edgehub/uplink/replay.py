"""Draining the outbox into the cloud link: live rows first, the backlog behind them, rate-limited.

Per connection, the rows that were waiting when the link came up (``seq <= head``) are the
*replay* lane, read in store order and sent at ``replay_rate`` with at most
``max_inflight - live_slots`` unacknowledged; rows committed after that are the *live* lane and
may use every slot, so a new order never waits behind a week of backlog. Each lane keeps store
order, hence stream order; a consumer orders a stream by ``stream_seq`` (docs/cloud.md).

A row leaves the outbox only after the cloud broker's PUBACK for it with a success reason code;
deletes are batched into group commits by the deleter. A row whose PUBACK never came (link cut)
is sent again on the next connection: the cloud drops the duplicate by ``msg_id``.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import functools
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from edgehub.config import CloudConfig
from edgehub.errors import EdgehubError, UplinkError
from edgehub.pair.tables import epoch_of, epoch_starts
from edgehub.store.outbox import TELEMETRY, OutboxRow, delete_acked, head_seq, read_rows
from edgehub.tasks import cancel_and_wait, wait_to_tick
from edgehub.uplink import cloudapi
from edgehub.uplink.cloudapi import LANE_LIVE, LANE_REPLAY, CloudTopics
from edgehub.uplink.link import RC_FAILURE, CloudLink

log = logging.getLogger("edgehub.uplink.replay")

REFUSED_HOLD_S = 60.0
# A cloud broker may answer a message it refuses by dropping the connection, with no PUBACK or
# with one that is lost with the connection (AWS IoT does the first; Mosquitto 2.0 sends 0x87 and
# closes at once, and the close can overtake it). When the link is lost within DROP_WINDOW_S of
# publishing the oldest unacknowledged row, the rows then in flight are suspect: the next
# connection sends one message at a time (a probe) until it has had a PUBACK for as many messages
# as were in flight (not just the first: the hang-up may have lost PUBACKs of rows ahead of the
# culprit), so the row the cloud hangs up on goes alone. When the link is lost again while one
# row is alone in flight, twice the same row, its stream is held back as refused: otherwise every
# new connection would send it and be dropped again, and no other stream would get through. A
# probe covers at most PROBE_MAX_ROWS rows (a round trip each; a culprit further back is reached
# by the next probe) and goes once the new link has held for PROBE_AFTER_S, so a WAN that merely
# flaps does not hold a stream back.
DROP_WINDOW_S = 1.0
DROP_STRIKES = 2
PROBE_MAX_ROWS = 32
PROBE_AFTER_S = 0.5
DROPPED = "link dropped"
# Before rows held back are offered again on the same connection, the messages in flight get
# this long to be acknowledged (those still unacknowledged are sent again: the cloud dedups).
REOFFER_WAIT_S = 5.0
# Rows the replay lane publishes before it lets the event loop run other work: a whole window per
# loop turn (and the PUBACKs that come back together) holds a live order's ack up at every hop;
# smaller steps drain slower (bench/uplink.py weighs the two).
REPLAY_STEP = 32
# While a backlog drains, acknowledged rows are deleted in commits of their own, at most one per
# DELETE_EVERY_S, instead of riding along with the next order's commit, which a drain's many
# deletes would make slower, and the terminal's ack with it.
DELETE_EVERY_S = 0.025
# While the hub takes an order (``Replay.give_way``), the replay lane stops publishing, for at
# most GIVE_WAY_MAX_S at a time and then for at least one step: an order's way through the hub is
# a handful of event-loop turns (MQTT read, journal commit, ack), each of which otherwise waits
# behind a step of replay and the PUBACKs it brought back.
GIVE_WAY_MAX_S = 0.02
GIVE_WAY_POLL_S = 0.001
# ``Replay.rate()``: acknowledged messages per second while they flow, over at most the last
# RATE_WINDOW_S. A flow starts with the first PUBACK after RATE_IDLE_S without one, and the rate
# is taken from there (the idle seconds before a drain must not dilute it), and RATE_IDLE_S
# without a PUBACK and the rate is 0. Below RATE_MIN_SPAN_S of flow
# there is too little to tell (a lone live order would read as hundreds per second).
RATE_WINDOW_S = 10.0
RATE_IDLE_S = 2.0
RATE_MIN_SPAN_S = 0.2
RATE_SAMPLE_EVERY_S = 0.5


class RateLimiter:
    """Token bucket over messages; ``rate <= 0`` means no limit."""

    def __init__(self, rate: float, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.burst = max(1.0, rate * 0.1)
        self.clock = clock
        self._tokens = self.burst
        self._at = clock()

    async def take(self) -> None:
        if self.rate <= 0:
            return
        while True:
            now = self.clock()
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now
            if self._tokens >= 1:
                self._tokens -= 1
                return
            # Sleep in steps of at least 10 ms: the bucket refills meanwhile, then a burst goes.
            await asyncio.sleep(max(0.01, (1 - self._tokens) / self.rate))


@dataclass
class _Inflight:
    seq: int
    stream: str
    stream_seq: int
    lane: str
    created_at: float
    sent_at: float


@dataclass
class ReplayStats:
    sent: int = 0
    acked: int = 0
    resent_after_reconnect: int = 0
    refused: int = 0
    skipped_expired: int = 0
    held: int = 0
    last_ack_at: float | None = None  # wall clock of the last successful PUBACK
    live_latency_ms: collections.deque[float] = field(default_factory=lambda: collections.deque(maxlen=2000))


class _Session:
    """The state of one connection's drain."""

    def __init__(self, link: CloudLink, head: int, window: int, replay_cap: int) -> None:
        self.link = link
        self.head = head
        self.window = window
        self.full_window = window  # ``window`` is 1 while probing (see DROP_WINDOW_S)
        self.replay_cap = replay_cap
        self.replay_pos = 0
        self.live_pos = head
        self.inflight: dict[int, _Inflight] = {}
        self.inflight_replay = 0
        self.skipped: set[str] = set()  # streams with rows refused or held back during this pass
        self.freed = asyncio.Event()
        self.failed: UplinkError | None = None
        self.replay_done = asyncio.Event()


class Replay:
    """The drain engine. ``run(link)`` drains until the link is lost; the deleter task (started
    by ``__aenter__``) turns PUBACKs into deleted rows."""

    def __init__(self, journal: Any, store_id: str, topics: CloudTopics, cfg: CloudConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.store_id = store_id
        self.topics = topics
        self.cfg = cfg
        self.clock = clock
        self.stats = ReplayStats()
        self.limiter = RateLimiter(cfg.replay_rate)
        self.telemetry_ttl_s = cfg.telemetry_ttl_h * 3600
        # Rows up to this seq go at full speed (``edgehub sync``); 0: none.
        self.boost_until = 0
        self.new_rows = asyncio.Event()
        # stream -> why the cloud refuses it: the PUBACK's reason code ("0x87") or DROPPED
        self.refused: dict[str, str] = {}
        # A refused stream is held back (all of it, to keep its order) so it cannot stop the
        # others: Mosquitto, for one, drops the connection right after a "not authorized" PUBACK.
        self.refused_hold_s = REFUSED_HOLD_S
        self._held_until: dict[str, float] = {}
        self._suspect: tuple[str, int] | None = None  # (stream, seq) that was oldest at the last loss
        self._strikes = 0
        self._probe_left = 0  # PUBACKs the next connection waits for one message at a time
        self._reoffer = asyncio.Event()  # rows held back in this pass are to be offered again
        self.session: _Session | None = None
        self._epochs: list[tuple[int, int]] = []
        self._acked: list[tuple[int, str, int]] = []
        self._ack_wake = asyncio.Event()
        self._deletes_idle = asyncio.Event()
        self._deletes_idle.set()
        self._deleter: asyncio.Task[None] | None = None
        # (monotonic time, stats.acked before that PUBACK), taken by PUBACKs at most every
        # RATE_SAMPLE_EVERY_S: the moving window, filled only while acks flow
        self._rate_samples: collections.deque[tuple[float, int]] = collections.deque(maxlen=64)
        self._last_ack_mono = float("-inf")
        self._flow_start: tuple[float, int] = (0.0, 0)  # (first PUBACK of this flow, acked before it)
        self.drained = asyncio.Event()  # set whenever a session's replay lane is done
        # True while something that a person waits on is being done (the hub: an order is being
        # taken); the replay lane gives way to it. The live lane never does.
        self.give_way: Callable[[], bool] = lambda: False

    async def __aenter__(self) -> Replay:
        self._deleter = asyncio.create_task(self._delete_loop(), name="uplink-deleter")
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._deleter is not None:
            # Rows already acknowledged are deleted before the hub stops (fewer duplicates).
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5):
                    await self.flush_deletes()
            await cancel_and_wait(self._deleter)

    # --- one connection ----------------------------------------------------------------------------

    async def run(self, link: CloudLink) -> None:
        """Drain over ``link`` until it is lost (raises UplinkError) or cancelled."""
        while True:
            await self._run_session(link)

    async def _run_session(self, link: CloudLink) -> None:
        """One pass over the outbox. Returns when rows it held back are to be offered again (a
        hold ended, or ``sync now``): the next pass starts from the oldest row, as a new
        connection would, once this one's messages are acknowledged."""
        await self.flush_deletes()
        head = int(await self.journal.read(head_seq))
        # Where each takeover epoch's rows start (a pair's; none on a single box): every message
        # says the epoch its row was numbered in (docs/cloud.md).
        self._epochs = await self.journal.read(epoch_starts)
        window = max(1, min(self.cfg.max_inflight, link.receive_maximum))
        replay_cap = max(1, window - min(self.cfg.live_slots, window - 1))
        session = _Session(link, head, window, replay_cap)
        if self._probe_left:
            session.window = 1  # a probe: one message at a time (see DROP_WINDOW_S)
            assert link.lost is not None
            await asyncio.wait({link.lost}, timeout=PROBE_AFTER_S)  # lost meanwhile: seen below
        self.session = session
        self.drained.clear()
        self._reoffer.clear()
        tasks = [asyncio.create_task(self._replay_lane(session), name="uplink-replay"),
                 asyncio.create_task(self._live_lane(session), name="uplink-live")]
        reoffer = asyncio.create_task(self._reoffer.wait(), name="uplink-reoffer")
        assert link.lost is not None
        pending: set[asyncio.Future[Any]] = {*tasks, reoffer, link.lost}
        try:
            while True:
                done, pending = await asyncio.wait(pending, return_when=asyncio.FIRST_COMPLETED)
                for fut in done:
                    if session.failed is not None:
                        raise session.failed
                    if fut is link.lost:
                        raise self._lost(session)
                    if fut is reoffer:
                        await self._end_session(session, tasks)
                        return
                    if (exc := fut.exception()) is not None:
                        raise exc
                # The replay lane finishing is no reason to stop: live rows keep coming.
        finally:
            reoffer.cancel()
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            if session.inflight:
                self.stats.resent_after_reconnect += len(session.inflight)
            self.session = None

    async def _end_session(self, s: _Session, lanes: list[asyncio.Task[None]]) -> None:
        """Stop publishing and wait (a while) for the PUBACKs of what is in flight."""
        await cancel_and_wait(*lanes)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(REOFFER_WAIT_S):
                while s.inflight and s.failed is None and not s.link.lost.done():  # type: ignore[union-attr]
                    await self._wait_freed(s)
        if s.link.lost is not None and s.link.lost.done():
            raise self._lost(s)

    async def _replay_lane(self, s: _Session) -> None:
        while s.replay_pos < s.head:
            rows = await self.journal.read(lambda c: read_rows(c, s.replay_pos, self.cfg.replay_batch, s.head))
            if not rows:
                break
            step = 0
            for row in rows:
                while s.inflight_replay >= s.replay_cap or len(s.inflight) >= s.window:
                    await self._wait_freed(s)
                    step = 0
                if step == 0 and self.give_way():
                    await self._give_way()
                if row.seq > self.boost_until:
                    await self.limiter.take()
                self._publish(s, row, LANE_REPLAY)
                s.replay_pos = row.seq
                step += 1
                if step >= REPLAY_STEP:
                    await asyncio.sleep(0)
                    step = 0
        # Wait for the last replayed PUBACKs before calling the backlog drained.
        while s.inflight_replay:
            await self._wait_freed(s)
        s.replay_done.set()
        self.drained.set()

    async def _live_lane(self, s: _Session) -> None:
        while True:
            rows = await self.journal.read(lambda c: read_rows(c, s.live_pos, self.cfg.replay_batch))
            if not rows:
                # The journal pokes new_rows on every commit; the tick (on the grid, with the
                # other periodic wakeups) covers writers in other processes (``edgehub sync``
                # while the daemon runs).
                await wait_to_tick(self.new_rows, 1.0)
                self.new_rows.clear()
                continue
            step = 0
            for row in rows:
                while len(s.inflight) >= s.window:
                    await self._wait_freed(s)
                    step = 0
                self._publish(s, row, LANE_LIVE)
                step += 1
                if step >= REPLAY_STEP:
                    # Live rows come in bursts too (a backlog of online orders taken at once makes
                    # thousands): the loop is handed back between steps, never to wait.
                    s.live_pos = row.seq
                    await asyncio.sleep(0)
                    step = 0
            s.live_pos = rows[-1].seq

    async def _give_way(self) -> None:
        until = time.monotonic() + GIVE_WAY_MAX_S
        # Polled: the signal is a plain counter of the intake's, which has no event to wait on.
        while self.give_way() and time.monotonic() < until:  # noqa: ASYNC110
            await asyncio.sleep(GIVE_WAY_POLL_S)

    async def _wait_freed(self, s: _Session) -> None:
        s.freed.clear()
        await s.freed.wait()
        if s.failed is not None:
            raise s.failed

    def _publish(self, s: _Session, row: OutboxRow, lane: str) -> None:
        if s.failed is not None:
            raise s.failed
        if row.stream == TELEMETRY and row.created_at < self.clock() - self.telemetry_ttl_s:
            # Expired on the way out: the outbox maintenance drops it (counted as dropped).
            self.stats.skipped_expired += 1
            return
        if self._held_until and (until := self._held_until.get(row.stream)) is not None:
            if time.monotonic() < until:
                self.stats.held += 1
                s.skipped.add(row.stream)
                return
            del self._held_until[row.stream]  # the hold is over: offer the stream again
        epoch = epoch_of(self._epochs, row.seq) if self._epochs else 0
        mid = s.link.publish(self.topics.up(row.stream), cloudapi.envelope(self.store_id, row, epoch),
                             cloudapi.envelope_properties(row, lane, epoch))
        s.inflight[mid] = _Inflight(row.seq, row.stream, row.stream_seq, lane, row.created_at, time.monotonic())
        if lane == LANE_REPLAY:
            s.inflight_replay += 1
        self.stats.sent += 1

    def on_puback(self, mid: int, code: int) -> None:
        s = self.session
        if s is None:
            return
        entry = s.inflight.pop(mid, None)
        if entry is None:
            return
        if entry.lane == LANE_REPLAY:
            s.inflight_replay -= 1
        if code >= RC_FAILURE:
            # Not a delivery: the row stays and is offered again when the hold ends (or on the
            # next connection). The link stays up, so one refused stream (an ACL mistake) does
            # not hold up orders.
            s.skipped.add(entry.stream)
            self._refuse(entry.stream, f"0x{code:02x}", f"reason 0x{code:02x}")
        else:
            now = self.clock()
            self._acked.append((entry.seq, entry.stream, entry.stream_seq))
            self._ack_wake.set()
            self._deletes_idle.clear()
            mono = time.monotonic()
            if mono - self._last_ack_mono > RATE_IDLE_S:
                self._flow_start = (mono, self.stats.acked)
            self._last_ack_mono = mono
            samples = self._rate_samples
            if not samples or mono - samples[-1][0] >= RATE_SAMPLE_EVERY_S:
                samples.append((mono, self.stats.acked))
            self.stats.acked += 1
            if entry.stream in self.refused and entry.stream not in self._held_until:
                del self.refused[entry.stream]
                log.info("cloud broker accepts %s messages again", entry.stream)
            self.stats.last_ack_at = now
            if entry.lane == LANE_LIVE:
                self.stats.live_latency_ms.append((now - entry.created_at) * 1000)
        if self._probe_left:  # a probe counts PUBACKs, whatever they say
            self._probe_left -= 1
        if not self._probe_left:
            s.window = s.full_window
        s.freed.set()

    def _refuse(self, stream: str, reason: str, detail: str) -> None:
        self.stats.refused += 1
        self._held_until[stream] = time.monotonic() + self.refused_hold_s
        asyncio.get_running_loop().call_later(self.refused_hold_s, self._hold_over, stream)
        if self.refused.get(stream) != reason:
            self.refused[stream] = reason
            log.error("cloud broker refuses %s messages (%s): they stay in the outbox, held back for "
                      "%.0f s at a time; check the cloud ACL for this store's client",
                      stream, detail, self.refused_hold_s)

    def _lost(self, s: _Session) -> UplinkError:
        """What ends a session whose link was lost (noted first: see ``_note_loss``)."""
        self._note_loss(s)
        assert s.link.lost is not None
        return UplinkError(f"cloud link lost: {s.link.lost.result()}")

    def _note_loss(self, s: _Session) -> None:
        """The link was lost: blame the oldest unacknowledged row if it keeps being the one."""
        oldest = next(iter(s.inflight.values()), None)
        if oldest is None or time.monotonic() - oldest.sent_at > DROP_WINDOW_S:
            self._suspect, self._strikes, self._probe_left = None, 0, 0
            return
        suspect = (oldest.stream, oldest.seq)
        probed = s.window == 1 and len(s.inflight) == 1  # it went alone, and the link went with it
        self._strikes = self._strikes + 1 if suspect == self._suspect and probed else 1
        self._suspect = suspect
        # The rows in flight go first on the next connection (oldest first): one at a time.
        self._probe_left = max(self._probe_left, min(len(s.inflight), PROBE_MAX_ROWS))
        if self._strikes >= DROP_STRIKES:
            self._suspect, self._strikes = None, 0
            self._refuse(oldest.stream, DROPPED, f"the link dropped {DROP_STRIKES} times in a row "
                         f"right after outbox row {oldest.seq} was sent")

    def _hold_over(self, stream: str) -> None:
        until = self._held_until.get(stream)
        if until is not None and until > time.monotonic() + 0.01:
            return  # refused again meanwhile: a later timer ends that hold
        self._held_until.pop(stream, None)
        if self.session is not None and stream in self.session.skipped:
            self._reoffer.set()

    def release_holds(self) -> None:
        """Offer refused streams again at once (``sync now``)."""
        self._held_until.clear()
        if self.session is not None and self.session.skipped:
            self._reoffer.set()

    # --- deleting what the cloud acknowledged ------------------------------------------------------

    async def flush_deletes(self) -> None:
        self._ack_wake.set()
        await self._deletes_idle.wait()

    async def _delete_loop(self) -> None:
        while True:
            await self._ack_wake.wait()
            self._ack_wake.clear()
            batch, self._acked = self._acked, []
            if batch:
                at = self.clock()
                s = self.session
                draining = s is not None and not s.replay_done.is_set()
                if draining and self.give_way():
                    # An order's commit should not queue behind (or carry) a group of deletes.
                    await self._give_way()
                    batch += self._acked
                    self._acked = []
                try:
                    # Lazy: deletes ride with the next order's commit (a row deleted late, or sent
                    # again after a crash, costs nothing: the cloud dedups by msg_id). Not while a
                    # backlog drains: then they would make each order's commit carry thousands.
                    await self.journal.write(functools.partial(delete_acked, acked=batch, at=at), lazy=not draining)
                except EdgehubError as exc:
                    # Keep them: deleted on the next try, or sent again (deduped) after a restart.
                    log.error("could not delete %d acknowledged outbox rows: %s", len(batch), exc)
                    self._acked[:0] = batch
                    await asyncio.sleep(1)
                    self._ack_wake.set()
                    continue
                if draining:
                    await asyncio.sleep(DELETE_EVERY_S)  # gather the next group meanwhile
            if not self._acked:
                self._deletes_idle.set()

    # --- figures for the status ----------------------------------------------------------------------

    def rate(self) -> float:
        """Acknowledged messages per second while PUBACKs flow (see RATE_WINDOW_S); cheap
        enough for every status poll."""
        now, acked = time.monotonic(), self.stats.acked
        if now - self._last_ack_mono > RATE_IDLE_S:
            return 0.0
        samples = self._rate_samples
        while samples and now - samples[0][0] > RATE_WINDOW_S:
            samples.popleft()
        t0, n0 = self._flow_start
        if samples and samples[0][0] > t0 and now - samples[0][0] >= RATE_WINDOW_S / 2:
            t0, n0 = samples[0]  # a long flow: its last few seconds, not its average
        span = now - t0
        return (acked - n0) / span if span >= RATE_MIN_SPAN_S else 0.0

    def figures(self) -> dict[str, Any]:
        s = self.session
        lat = sorted(self.stats.live_latency_ms)
        return {
            "replaying": bool(s and not s.replay_done.is_set()),
            "inflight": len(s.inflight) if s else 0,
            "window": s.window if s else 0,
            "replay_rate_limit": self.cfg.replay_rate,
            "sent": self.stats.sent,
            "acked": self.stats.acked,
            "refused": self.stats.refused,
            "refused_streams": dict(self.refused),
            "held_back": self.stats.held,
            "resent_after_reconnect": self.stats.resent_after_reconnect,
            "live_to_cloud_p50_ms": round(lat[len(lat) // 2], 1) if lat else None,
            "live_to_cloud_p99_ms": round(lat[min(len(lat) - 1, int(len(lat) * 0.99))], 1) if lat else None,
        }

