"""The outbox: everything bound for the chain's cloud, durable in the journal until the cloud
broker acknowledged it.

A component adds its row *inside its own journal write*, so the row exists exactly when the
thing it describes does::

    def save(conn):
        save_ticket(conn, ticket)
        hub.outbox.add(conn, "kitchen", f"kitchen:{ticket.id}:{ticket.version}", doc)
    await hub.journal.write(save)

``add_to_outbox(conn, ...)`` is the same without the policy object (quota, disk guard); prefer
``hub.outbox.add`` where the hub is at hand. The schema (migration 4) numbers every row twice:
``seq``, the store's sequence over all streams, and ``stream_seq``, contiguous within its stream,
so the cloud drops duplicates by ``msg_id`` and sees a gap in any stream. Per-stream counters
(``outbox_streams``) are kept by triggers, so a backlog of a week is measured in O(1).

Rows of the per-order streams (``orders``, ``kitchen``) are stored deflated against a preset
dictionary of their JSON (``encode_payload``; ~530 → ~100 bytes for a kitchen event, so several
share a 1 KiB page instead of one each: docs/footprint.md) and inflated by ``read_rows``: what the
uplink sends is byte for byte what the component wrote. A stored payload that starts with ``{``
(or JSON whitespace) is plain JSON; anything else is a zlib stream whose header names its
dictionary, so rows written before (or by another version) stay readable.

Classes of streams: ``orders`` and ``payments`` (and ``kitchen``, ``devices``, ``audit``, ``reports``) are
durable: no quota, no TTL, never dropped. ``telemetry`` has a TTL and a byte quota, evicted
oldest first, and is the one thing refused when the data disk is nearly full.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import shutil
import sqlite3
import time
import zlib
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

from edgehub.errors import EdgehubError, OutboxError, OutboxFull
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.outbox")

DURABLE_STREAMS = ("orders", "payments", "kitchen", "devices", "audit", "reports")
TELEMETRY = "telemetry"
STREAMS = (*DURABLE_STREAMS, TELEMETRY)

DISK_OK, DISK_WARN, DISK_HARD = "ok", "warn", "hard"
# The periodic maintenance's write (telemetry TTL and quota) waits this long for another commit:
# on a quiet box it would otherwise be what ends every patient write's wait (docs/footprint.md).
MAINTAIN_WAIT_S = 600.0


# --- stored form of a payload ----------------------------------------------------------------------

# What a per-order row is made of, most frequent last (deflate finds the nearest match first). A
# dictionary is never changed once released: a new one is added to _ZDICTS under its Adler-32
# (which the zlib header carries), so every row ever written can be inflated.
_ZDICT_1 = (
    b'"terminal":"pos-1","table":"T1","covers":2,"note":"","course":1,"category":"drinks",'
    b'"modifiers":["no onions"],"line_id":"","currency":"EUR","price_cents":0,"customer":'
    b'{"schema":"cloud-order/1","store_id":"","terminal":"","received_at":1800000000.0,'
    b'"order":{"schema":"order/1","order_id":"","lines":[{"sku":"","name":"","qty":1,"station":"'
    b'"event":"amended","detail":{"reason":"","change_id":""},"void_reason":"","voided_at":'
    b'"started_at":1800000000.000,"ready_at":1800000000.000,"served_at":1800000000.000,'
    b'{"schema":"cloud-kitchen/1","store_id":"","event":{"schema":"kds-event/1","station":"'
    b'","seq":1,"event":"created","at":1800000000.000,"source":"pos:pos-1","ticket":'
    b'{"ticket_id":"","order_id":"","station":"grill","terminal":"pos-1","state":"new",'
    b'"priority":0,"rush":false,"created_at":1800000000.000,"updated_at":1800000000.000,'
    b'"version":1,"amended":false,"lines":[{"line":0,"sku":"","name":"","qty":1,"modifiers":[],'
    b'"key":"|"}],"table":"T1","covers":2}}}'
)
_ZDICTS = {zlib.adler32(_ZDICT_1): _ZDICT_1}
_ZDICT = _ZDICT_1  # the one new rows use
COMPRESSED_STREAMS = frozenset({"orders", "kitchen"})
_JSON_START = frozenset(b"{ \t\r\n")
# A compressor with the dictionary already loaded, copied for each row: half the CPU of a new one
# (the writer thread does this for every order and kitchen event). A 2 KiB window holds the
# dictionary and a row; any zlib inflater reads it (the header says the window size).
_PRIMED = zlib.compressobj(4, zlib.DEFLATED, 11, 2, zlib.Z_DEFAULT_STRATEGY, _ZDICT)


def encode_payload(stream: str, body: bytes) -> bytes:
    """The stored form of ``body``: deflated with the dictionary for the per-order streams when
    that is smaller, else ``body`` itself (other streams are read as plain JSON by support tools)."""
    if stream not in COMPRESSED_STREAMS:
        return body
    return deflate_json(body)


def deflate_json(body: bytes) -> bytes:
    """A JSON document of the order's family (an order, a ticket, their cloud envelopes) deflated
    against the dictionary when that is smaller, else ``body`` itself; ``decode_payload`` reads
    both. Also the stored form of a kitchen ticket's document (``tickets.doc``)."""
    packer = _PRIMED.copy()
    packed = packer.compress(body) + packer.flush()
    return packed if len(packed) < len(body) else body


def decode_payload(stored: bytes) -> bytes:
    """The payload as the component wrote it (see ``encode_payload``)."""
    stored = bytes(stored)
    if not stored or stored[0] in _JSON_START:
        return stored
    if len(stored) < 6 or not stored[1] & 0x20:
        raise OutboxError("outbox payload is neither JSON nor a deflated row")
    zdict = _ZDICTS.get(int.from_bytes(stored[2:6], "big"))
    if zdict is None:
        raise OutboxError("outbox payload deflated with a dictionary this edgehub does not know")
    unpacker = zlib.decompressobj(15, zdict)
    return unpacker.decompress(stored) + unpacker.flush()


def _payload_bytes(payload: bytes | Mapping[str, Any], checked: bool = False) -> bytes:
    if isinstance(payload, bytes | bytearray):
        raw = bytes(payload)
        if checked:
            return raw
        # The uplink splices the body into its envelope as is: it must be one JSON object.
        try:
            doc = json.loads(raw)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise OutboxError(f"outbox payload is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise OutboxError(f"outbox payload must be a JSON object, got {type(doc).__name__}")
        return raw
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()


_INSERT = "INSERT OR IGNORE INTO outbox(msg_id, stream, created_at, payload) VALUES (?,?,?,?)"


def _check_stream(stream: str) -> None:
    if stream not in STREAMS:
        raise OutboxError(f"unknown outbox stream {stream!r} (known: {', '.join(STREAMS)})")


def _check_msg_id(msg_id: str) -> None:
    if not msg_id or len(msg_id) > 200:
        raise OutboxError("outbox msg_id must be 1-200 characters")


def add_to_outbox(
    conn: sqlite3.Connection,
    stream: str,
    msg_id: str,
    payload: bytes | Mapping[str, Any],
    *,
    created_at: float | None = None,
    checked: bool = False,
) -> bool:
    """Add one row in the caller's transaction. Returns False when ``msg_id`` is already there:
    a retried write never produces a second cloud message. In ``orders`` and ``kitchen`` the
    caller's own rows make the msg_id unique (an order's, order change's or ticket version's row
    is added once, with it: migration 6), so it is not looked up there. ``checked``: the caller
    made ``payload`` with ``payloads.dumps`` from a document (one JSON object by construction),
    so it is not parsed again to make sure."""
    _check_stream(stream)
    _check_msg_id(msg_id)
    body = encode_payload(stream, _payload_bytes(payload, checked))
    cur = conn.execute(
        _INSERT,
        (msg_id, stream, time.time() if created_at is None else created_at, body),
    )
    return cur.rowcount == 1


def add_many_to_outbox(conn: sqlite3.Connection, stream: str, rows: Iterable[tuple[str, float, bytes]]) -> None:
    """``add_to_outbox(..., checked=True)`` for the rows of one stream, ``(msg_id, created_at,
    payload)``, in one statement: a batch of orders, a commit's kitchen events. Each payload was
    made by ``payloads.dumps`` from a document; a msg_id already there is skipped."""
    _check_stream(stream)
    values = []
    for msg_id, created_at, payload in rows:
        _check_msg_id(msg_id)
        values.append((msg_id, stream, created_at, encode_payload(stream, payload)))
    conn.executemany(_INSERT, values)


# --- reading the backlog ---------------------------------------------------------------------------


@dataclass(frozen=True)
class StreamCounters:
    """One stream's life so far. ``produced == pending + acked + dropped`` always holds."""

    stream: str
    produced: int
    pending: int
    pending_bytes: int
    acked: int
    dropped: int
    last_seq: int
    last_stream_seq: int
    last_acked_stream_seq: int
    last_acked_at: float | None
    oldest_at: float | None

    def as_dict(self, now: float) -> dict[str, Any]:
        return {
            "count": self.pending,
            "bytes": self.pending_bytes,
            "oldest_age_s": round(now - self.oldest_at, 1) if self.oldest_at is not None else None,
            "produced": self.produced,
            "acked": self.acked,
            "dropped": self.dropped,
            "last_seq": self.last_seq,
            "last_stream_seq": self.last_stream_seq,
            "last_acked_stream_seq": self.last_acked_stream_seq,
        }


def stream_counters(conn: sqlite3.Connection) -> dict[str, StreamCounters]:
    out: dict[str, StreamCounters] = {}
    rows = conn.execute(
        "SELECT stream, produced, pending, pending_bytes, acked, dropped, last_seq, last_stream_seq, "
        "last_acked_stream_seq, last_acked_at FROM outbox_streams ORDER BY stream"
    ).fetchall()
    for row in rows:
        oldest = conn.execute(_OLDEST[row[0] in COMPRESSED_STREAMS], (row[0],)).fetchone() if row[2] else None
        # The row is the ten columns selected above, in the dataclass's order; mypy cannot count them.
        out[row[0]] = StreamCounters(*row, oldest_at=oldest[0] if oldest else None)  # type: ignore[misc]
    return out


# The (stream, seq) index is partial (migration 6): a query uses it only if it repeats the
# index's condition. The per-order streams are most of the outbox: their oldest row is near the
# start of seq order.
_RARE = "stream NOT IN ('orders', 'kitchen')"
_OLDEST = {
    False: f"SELECT created_at FROM outbox WHERE stream=? AND {_RARE} ORDER BY seq LIMIT 1",
    True: "SELECT created_at FROM outbox WHERE stream=? ORDER BY seq LIMIT 1",
}


class OutboxRow(NamedTuple):
    seq: int
    stream: str
    stream_seq: int
    msg_id: str
    created_at: float
    payload: bytes


def read_rows(
    conn: sqlite3.Connection, after_seq: int, limit: int, until_seq: int | None = None
) -> list[OutboxRow]:
    """Rows in store order (which keeps every stream's order), ``after_seq < seq <= until_seq``."""
    if until_seq is None:
        rows = conn.execute(
            "SELECT seq, stream, stream_seq, msg_id, created_at, payload FROM outbox "
            "WHERE seq > ? ORDER BY seq LIMIT ?",
            (after_seq, limit),
        ).fetchall()
    else:
        rows = conn.execute(
            "SELECT seq, stream, stream_seq, msg_id, created_at, payload FROM outbox "
            "WHERE seq > ? AND seq <= ? ORDER BY seq LIMIT ?",
            (after_seq, until_seq, limit),
        ).fetchall()
    return [OutboxRow(seq, stream, stream_seq, msg_id, created_at, decode_payload(payload))
            for seq, stream, stream_seq, msg_id, created_at, payload in rows]


def waiting_payloads(conn: sqlite3.Connection, msg_prefix: str, limit: int) -> list[bytes]:
    """The payloads of the newest ``limit`` rows still waiting for the cloud whose msg_id starts
    with ``msg_prefix``, oldest first."""
    rows = conn.execute("SELECT payload FROM outbox WHERE substr(msg_id, 1, length(?1)) = ?1 "
                        "ORDER BY seq DESC LIMIT ?2", (msg_prefix, limit)).fetchall()
    return [decode_payload(bytes(payload)) for (payload,) in reversed(rows)]


def waiting_up_to(conn: sqlite3.Connection, seq: int) -> int:
    """Rows still waiting for the cloud at or before ``seq``."""
    return int(conn.execute("SELECT COUNT(*) FROM outbox WHERE seq <= ?", (seq,)).fetchone()[0])


def waiting_by_stream(conn: sqlite3.Connection) -> list[tuple[str, int, float]]:
    """(stream, rows waiting, the oldest's created_at) of every stream with rows waiting."""
    return conn.execute("SELECT stream, COUNT(*), MIN(created_at) FROM outbox GROUP BY stream").fetchall()


def head_seq(conn: sqlite3.Connection) -> int:
    return int(conn.execute("SELECT COALESCE(MAX(seq), 0) FROM outbox").fetchone()[0])


def _delete_seqs(conn: sqlite3.Connection, seqs: list[int]) -> None:
    # One statement for the lot, not one per row: under the journal's SAVEPOINT each statement
    # (with the counters' trigger) costs time in proportion to all the savepoint changed so far.
    conn.execute("DELETE FROM outbox WHERE seq IN (SELECT value FROM json_each(?))", (json.dumps(seqs),))


def delete_acked(conn: sqlite3.Connection, acked: list[tuple[int, str, int]], at: float) -> None:
    """Remove rows the cloud broker acknowledged: (seq, stream, stream_seq) each."""
    _delete_seqs(conn, [seq for seq, _, _ in acked])
    per_stream: dict[str, tuple[int, int]] = {}
    for _, stream, stream_seq in acked:
        n, top = per_stream.get(stream, (0, 0))
        per_stream[stream] = (n + 1, max(top, stream_seq))
    for stream, (n, top) in per_stream.items():
        conn.execute(
            "UPDATE outbox_streams SET acked = acked + ?, last_acked_at = ?, "
            "last_acked_stream_seq = MAX(last_acked_stream_seq, ?) WHERE stream = ?",
            (n, at, top, stream),
        )


def evict_telemetry(conn: sqlite3.Connection, *, now: float, ttl_s: float, quota_bytes: int) -> int:
    """Drop telemetry past its TTL, then the oldest telemetry over the byte quota. Counted as
    ``dropped`` so the cloud's reconciliation knows these gaps are deliberate."""
    dropped = conn.execute(
        f"DELETE FROM outbox WHERE stream=? AND {_RARE} AND created_at < ?", (TELEMETRY, now - ttl_s)
    ).rowcount
    row = conn.execute("SELECT pending_bytes FROM outbox_streams WHERE stream=?", (TELEMETRY,)).fetchone()
    excess = (row[0] if row else 0) - quota_bytes
    while excess > 0:
        victims = conn.execute(
            f"SELECT seq, length(CAST(payload AS BLOB)) FROM outbox WHERE stream=? AND {_RARE} "
            "ORDER BY seq LIMIT 256",
            (TELEMETRY,),
        ).fetchall()
        if not victims:
            break
        chosen = []
        for seq, size in victims:
            chosen.append(seq)
            excess -= size
            if excess <= 0:
                break
        _delete_seqs(conn, chosen)
        dropped += len(chosen)
    if dropped:
        conn.execute("UPDATE outbox_streams SET dropped = dropped + ? WHERE stream=?", (dropped, TELEMETRY))
    return dropped


# --- the disk guard --------------------------------------------------------------------------------


class DiskUsage(NamedTuple):
    total: int
    used: int
    free: int


class DiskGuard:
    """Watches free space on the data dir: ``warn`` raises an alert, ``hard`` makes the outbox
    refuse telemetry (and evict what it holds) so the space left goes to orders."""

    def __init__(
        self,
        path: Path,
        warn_free_mib: int,
        hard_free_mib: int,
        usage: Callable[[Path], DiskUsage] | None = None,
    ) -> None:
        self.path = path
        self.warn_bytes = warn_free_mib * 1024 * 1024
        self.hard_bytes = hard_free_mib * 1024 * 1024
        self._usage = usage or (lambda p: DiskUsage(*shutil.disk_usage(p)))
        self.level = DISK_OK
        self.free = -1

    def check(self) -> str:
        """Measure; log once when the level changes. Returns the level."""
        path = self.path
        while not path.exists() and path != path.parent:  # before the first start: the nearest parent
            path = path.parent
        try:
            self.free = int(self._usage(path).free)
        except OSError as exc:
            log.warning("cannot measure free space on %s: %s", path, exc)
            return self.level
        level = (
            DISK_HARD
            if self.free <= self.hard_bytes
            else DISK_WARN
            if self.free <= self.warn_bytes
            else DISK_OK
        )
        if level != self.level:
            mib = self.free // (1024 * 1024)
            if level == DISK_HARD:
                log.error(
                    "data disk %s nearly full (%d MiB free): refusing and evicting telemetry; orders "
                    "are still taken. Free space on the box or get the WAN back.",
                    self.path,
                    mib,
                )
            elif level == DISK_WARN:
                log.warning(
                    "data disk %s getting full (%d MiB free, warning below %d MiB)",
                    self.path,
                    mib,
                    self.warn_bytes // (1024 * 1024),
                )
            else:
                log.info("data disk %s has room again (%d MiB free)", self.path, mib)
            self.level = level
        return level


# --- the policy object the hub holds ---------------------------------------------------------------


@dataclass(frozen=True)
class OutboxPolicy:
    telemetry_ttl_s: float = 72 * 3600.0
    telemetry_quota_bytes: int = 64 * 1024 * 1024
    disk_warn_free_mib: int = 512
    disk_hard_free_mib: int = 128
    maintain_every_s: float = 10.0


class Outbox:
    """The outbox with its policy: quota and TTL for telemetry, the disk guard. An async context
    manager that owns its maintenance task (eviction, disk checks)."""

    def __init__(
        self,
        journal: Any,
        data_dir: Path,
        policy: OutboxPolicy | None = None,
        disk_usage: Callable[[Path], DiskUsage] | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.journal = journal
        self.policy = policy or OutboxPolicy()
        self.guard = DiskGuard(
            data_dir, self.policy.disk_warn_free_mib, self.policy.disk_hard_free_mib, disk_usage
        )
        self.clock = clock
        self.refused = 0
        self.evicted = 0
        self._task: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._poked = False
        self._waiting: asyncio.Task[None] | None = None  # a patient maintenance write

    async def __aenter__(self) -> Outbox:
        await self.maintain()
        self._task = asyncio.create_task(self._run(), name="outbox-maintenance")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        await cancel_and_wait(self._waiting)  # its write is queued: the journal commits it as it closes

    def add(
        self,
        conn: sqlite3.Connection,
        stream: str,
        msg_id: str,
        payload: bytes | Mapping[str, Any],
        *,
        created_at: float | None = None,
    ) -> bool:
        """``add_to_outbox`` under the policy: at the disk's hard limit telemetry is refused
        (``OutboxFull``); durable streams are always taken."""
        if stream == TELEMETRY and self.guard.level == DISK_HARD:
            self.refused += 1
            raise OutboxFull(
                f"telemetry {msg_id} refused: the data disk has less than "
                f"{self.policy.disk_hard_free_mib} MiB free"
            )
        added = add_to_outbox(conn, stream, msg_id, payload, created_at=created_at)
        if added and stream == TELEMETRY:
            self.evicted += evict_telemetry(
                conn,
                now=self.clock(),
                ttl_s=self.policy.telemetry_ttl_s,
                quota_bytes=self.policy.telemetry_quota_bytes,
            )
        return added

    async def add_now(self, stream: str, msg_id: str, payload: bytes | Mapping[str, Any],
                      within_s: float | None = None) -> bool:
        """Add a row in a commit of its own (for rows that describe nothing else journaled);
        ``within_s``: the row may wait that long for another write's commit to ride with."""
        return bool(await self.journal.write(lambda conn: self.add(conn, stream, msg_id, payload),
                                             within_s=within_s))

    async def maintain(self, patient: bool = False) -> None:
        """Check the disk, and drop telemetry past its TTL or quota. ``patient`` (the periodic
        run, disk not short): the drop's write does not open a commit but rides with the next
        one within ``MAINTAIN_WAIT_S`` (one such write waits at a time), so it never makes a quiet
        box's commit nor ends a patient telemetry sample's wait; the disk is checked every run."""
        level = await asyncio.to_thread(self.guard.check)
        if patient and level == DISK_OK:
            if self._waiting is None or self._waiting.done():
                self._waiting = asyncio.create_task(self._evict(level, MAINTAIN_WAIT_S), name="outbox-evict")
            return
        await self._evict(level, None)

    async def _evict(self, level: str, within_s: float | None) -> None:
        quota = 0 if level == DISK_HARD else self.policy.telemetry_quota_bytes
        now = self.clock()
        try:
            dropped = await self.journal.write(
                lambda conn: evict_telemetry(
                    conn, now=now, ttl_s=self.policy.telemetry_ttl_s, quota_bytes=quota
                ),
                within_s=within_s,
            )
        except EdgehubError as exc:
            log.warning("outbox maintenance failed: %s", exc)
            return
        if dropped:
            self.evicted += dropped
            log.info("outbox: dropped %d telemetry rows (TTL, quota or disk)", dropped)

    def poke(self) -> None:
        """Run maintenance now (tests, the disk guard after a big write)."""
        self._poked = True
        self._wake.set()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.policy.maintain_every_s):
                    await self._wake.wait()
            self._wake.clear()
            await self.maintain(patient=not self._poked)
            self._poked = False

    async def counters(self) -> dict[str, StreamCounters]:
        return dict(await self.journal.read(stream_counters))

    async def status(self) -> dict[str, Any]:
        now = self.clock()
        counters = await self.counters()
        return {
            "streams": {name: c.as_dict(now) for name, c in counters.items()},
            "backlog": sum(c.pending for c in counters.values()),
            "backlog_bytes": sum(c.pending_bytes for c in counters.values()),
            "disk": {
                "level": self.guard.level,
                "free_mib": self.guard.free // (1024 * 1024) if self.guard.free >= 0 else None,
                "warn_free_mib": self.policy.disk_warn_free_mib,
                "hard_free_mib": self.policy.disk_hard_free_mib,
            },
            "telemetry_refused": self.refused,
            "telemetry_evicted": self.evicted,
        }
