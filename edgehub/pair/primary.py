"""The serving box's side of a pair: every group commit goes to the standby, and while the
standby is in sync a commit is answered only once the standby has it on disk too.

``Replicator`` is the journal's commit hook (edgehub/store/journal.py). On the writer thread,
inside the group's transaction, it turns the group's statements into the next record
(edgehub/pair/record.py), logs its hash, and puts it in an in-memory ring (``pair.backlog_mib``)
the standby's session sends from, before this box's own COMMIT: the two boxes' fsyncs overlap.
A record that then fails to commit here is dropped, and the standby that may hold it gets a
fresh copy (``rolled_back``). Whoever waits on the
group (a terminal's ack, a cook's tap, a payment's state) is answered at once when the box
serves alone, or, while the standby is in sync, when the standby acknowledges a record at or
past this group's. A standby that does not acknowledge within ``pair.standby_timeout_ms``, or
whose link drops, is no longer in sync: everything held is answered, the box serves alone and
says so (``one copy since …``: edgehub/pair/service.py), and the standby catches up from the
ring (or from a snapshot) when it is back, without the primary stopping.

A standby's session runs on a thread of its own: the decision (stream from the ring, snapshot,
salvage, refuse: ``decide``), then records out and acknowledgements in. Nothing here waits on
the hub's event loop, except handing a salvage to the hub (a standby's journal that took orders
alone: edgehub/pair/salvage.py).
"""

from __future__ import annotations

import collections
import contextlib
import hashlib
import logging
import os
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgehub.errors import PairError, PeerRefused
from edgehub.pair import tables, wire
from edgehub.pair.record import Record, RecordingConnection, Statement, seal
from edgehub.store.journal import connect

log = logging.getLogger("edgehub.pair")

PING_EVERY_S = 0.2
CHUNK_BYTES = 1 << 20
PROVE_BATCH = 48  # hashes asked for at once while finding a fork


@dataclass
class Held:
    seq: int
    settle: Callable[[], None]
    since: float


@dataclass
class StandbyView:
    """What the primary knows of its standby (the status page's ``pair.standby``)."""

    box: str = ""
    address: str = ""
    connected_at: float = 0.0
    acked_seq: int = 0
    state: str = "absent"  # absent, snapshot, salvage, catching up, in sync
    caught_up_at: float | None = None
    catch_up: dict[str, Any] = field(default_factory=dict)


class Ring:
    """The newest records, for a standby that returns (``max_bytes``; a standby's session pins
    what it has not sent yet, up to twice that)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._records: collections.deque[Record] = collections.deque()
        self._bytes = 0

    def append(self, record: Record, pinned_from: int | None) -> None:
        self._records.append(record)
        self._bytes += record.size
        while self._records and self._bytes > self.max_bytes:
            oldest = self._records[0]
            if pinned_from is not None and oldest.seq >= pinned_from and self._bytes <= 2 * self.max_bytes:
                break
            self._records.popleft()
            self._bytes -= oldest.size

    def __len__(self) -> int:
        return len(self._records)

    def drop_last(self, seq: int) -> None:
        if self._records and self._records[-1].seq == seq:
            self._bytes -= self._records.pop().size

    @property
    def first_seq(self) -> int | None:
        return self._records[0].seq if self._records else None

    def get(self, seq: int) -> Record | None:
        first = self.first_seq
        if first is None or seq < first:
            return None
        index = seq - first
        return self._records[index] if index < len(self._records) else None

    def covers(self, seq: int) -> bool:
        first = self.first_seq
        return first is not None and first <= seq

    @property
    def bytes(self) -> int:
        return self._bytes


class Replicator:
    """The journal's commit hook on the serving box, and the server of its standby's session."""

    recording_factory: type[sqlite3.Connection] = RecordingConnection

    def __init__(self, journal_path: Path, box: str, standby_timeout_s: float, backlog_bytes: int,
                 salvage: Callable[[dict[str, Any]], dict[str, Any]] | None = None,
                 on_change: Callable[[], None] | None = None, clock: Callable[[], float] = time.time) -> None:
        self.path = journal_path
        self.box = box
        self.standby_timeout_s = standby_timeout_s
        self.clock = clock
        self.salvage = salvage  # hands a standby's salvage to the hub (blocking; from a session thread)
        self.on_change = on_change  # the copies changed (from any thread)
        self.ring = Ring(backlog_bytes)
        self._lock = threading.Lock()
        self._new = threading.Condition(self._lock)
        self.epoch = 0
        self.seq = 0
        self.hash = b""
        self.lineage = ""
        self._pending: Record | None = None  # sealed, not yet committed (writer thread)
        self._held: collections.deque[Held] = collections.deque()
        self.in_sync = False
        self.acked = 0
        self.one_copy_since: float = clock()
        self.one_copy_reason = "the standby has not connected yet"
        self.standby = StandbyView()
        self._session: Session | None = None
        self._pinned_from: int | None = None
        self.records = 0
        self.gaps = 0
        self.uncommitted: set[str] = set()  # hashes of records sent but not committed here
        self._stopping = False
        self._watch: threading.Thread | None = None

    # --- the journal's hook (writer thread) ----------------------------------------------------

    def opened(self, conn: sqlite3.Connection) -> None:
        tables.create(conn)
        pos = tables.position(conn)
        self.lineage, self.epoch, self.seq, self.hash = pos.lineage, pos.epoch, pos.seq, pos.hash

    def prepared(self, conn: sqlite3.Connection, statements: list[Statement]) -> object | None:
        """Seal the group's record and hand it to the standby's session at once: the standby
        applies and fsyncs it while this box's COMMIT fsyncs, so a pair's ack waits for the
        slower of the two disks, not for both one after the other."""
        if not statements:
            return None
        seq = self.seq + 1
        try:
            record = seal(self.hash, self.epoch, seq, statements)
        except PairError as exc:
            # Committed here but not expressible as a record: the standby needs a snapshot.
            log.error("journal change %d cannot be replicated (%s): the standby will get a fresh copy", seq, exc)
            sealed = seal(self.hash, self.epoch, seq, [])
            record = Record(sealed.epoch, sealed.seq, sealed.hash, sealed.prev, b"")
            self.gaps += 1
        tables.log_record(conn, record.seq, record.epoch, record.hash)
        with self._lock:
            self._pending = record
            self.seq, self.hash = record.seq, record.hash
            self.ring.append(record, self._pinned_from)
            self._new.notify_all()
        return record

    def rolled_back(self, token: object | None) -> None:
        """The group did not commit here after all (a full disk, an I/O error). Its record may be
        on the standby already: that standby is not a copy of this journal any more and gets a
        fresh one (``uncommitted``), never records that build on this one."""
        if not isinstance(token, Record):
            return
        with self._lock:
            self._pending = None
            self.ring.drop_last(token.seq)
            self.seq, self.hash = token.seq - 1, token.prev
            self.uncommitted.add(token.hash.hex())
            session = self._session
        log.error("pair: record %d was sent to the standby but not committed here; it gets a fresh copy", token.seq)
        if session is not None:
            session.close(f"record {token.seq} was not committed on the serving box")

    def committed(self, token: object | None, settle: Callable[[], None]) -> None:
        with self._lock:
            if isinstance(token, Record):
                self._pending = None
                self.records += 1
            if self.in_sync and self.seq > self.acked:
                self._held.append(Held(self.seq, settle, time.monotonic()))
                return
        settle()

    # --- the state the hub shows -----------------------------------------------------------------

    @property
    def copies(self) -> int:
        return 2 if self.in_sync else 1

    def start(self) -> None:
        self._watch = threading.Thread(target=self._watch_acks, name="pair-ack-watch", daemon=True)
        self._watch.start()

    def stop(self) -> None:
        self._stopping = True
        session = self._session
        if session is not None:
            session.close("the primary is stopping")
        self._release_all()
        with self._lock:
            self._new.notify_all()
        if self._watch is not None:
            self._watch.join(timeout=2)

    def _watch_acks(self) -> None:
        """A standby that does not confirm a record within the timeout is no longer in sync."""
        while not self._stopping:
            time.sleep(0.02)
            with self._lock:
                oldest = self._held[0] if self._held else None
                session = self._session
            if oldest is None or time.monotonic() - oldest.since < self.standby_timeout_s:
                continue
            reason = (f"the standby did not confirm record {oldest.seq} within "
                      f"{self.standby_timeout_s * 1000:.0f} ms")
            self.single_copy(reason)
            if session is not None:
                session.close(reason)

    def single_copy(self, reason: str) -> None:
        with self._lock:
            was = self.in_sync
            self.in_sync = False
            if was:
                self.one_copy_since = self.clock()
            self.one_copy_reason = reason
            if self.standby.state == "in sync":
                self.standby.state = "catching up"
        self._release_all()
        if was:
            log.error("ONE COPY: this box serves alone since now (%s); acked orders are on this box only "
                      "until the standby is back in sync", reason)
            self._changed()

    def _release_all(self) -> None:
        with self._lock:
            held = list(self._held)
            self._held.clear()
        for item in held:
            item.settle()

    def confirmed(self, seq: int) -> None:
        released: list[Held] = []
        became_sync = False
        with self._lock:
            self.acked = max(self.acked, seq)
            self.standby.acked_seq = self.acked
            while self._held and self._held[0].seq <= self.acked:
                released.append(self._held.popleft())
            if not self.in_sync and self.acked >= self.seq and self._session is not None:
                self.in_sync = True
                became_sync = True
                self.standby.state = "in sync"
                self.standby.caught_up_at = self.clock()
        for item in released:
            item.settle()
        if became_sync:
            log.warning("two copies: the standby %s holds every record (up to %d) again; "
                        "one copy since %s is over", self.standby.box, self.acked,
                        time.strftime("%H:%M:%S", time.localtime(self.one_copy_since)))
            self._changed()

    def _changed(self) -> None:
        if self.on_change is not None:
            try:
                self.on_change()
            except Exception:  # a status hook must not break replication
                log.exception("pair state hook failed")

    def status(self) -> dict[str, Any]:
        with self._lock:
            view = self.standby
            lag = self.seq - view.acked_seq if view.state != "absent" else None
            return {
                "copies": self.copies,
                "one_copy_since": None if self.in_sync else self.one_copy_since,
                "one_copy_reason": "" if self.in_sync else self.one_copy_reason,
                "epoch": self.epoch,
                "seq": self.seq,
                "lineage": self.lineage,
                "backlog": {"records": len(self.ring), "bytes": self.ring.bytes,
                            "first_seq": self.ring.first_seq},
                "standby": {"box": view.box, "address": view.address, "state": view.state,
                            "acked_seq": view.acked_seq, "lag_records": lag,
                            "connected_at": view.connected_at or None, "caught_up_at": view.caught_up_at,
                            "catch_up": view.catch_up},
                "waiting_acks": len(self._held),
                "gaps": self.gaps,
            }

    # --- a standby's session (its own thread) ------------------------------------------------------

    def serve(self, channel: wire.Channel, hello: dict[str, Any]) -> None:
        """Run one standby's session until it ends (blocking, on the listener's thread)."""
        previous = self._session
        if previous is not None:
            previous.close("another session of the standby started")
        session = Session(self, channel, hello)
        with self._lock:
            self._session = session
            self.standby = StandbyView(box=str(hello.get("box", "")), address=channel.peer,
                                       connected_at=self.clock(), state="deciding")
        try:
            session.run()
        except PeerRefused as exc:
            log.error("pair: refused the standby at %s: %s", channel.peer, exc.reason)
            self.standby.state = "refused"
        except PairError as exc:
            log.warning("pair: the standby's session ended: %s", exc)
        except (sqlite3.Error, OSError) as exc:
            log.error("pair: the standby's session failed: %s", exc)
            session.ended = str(exc)
        finally:
            channel.close()
            with self._lock:
                mine = self._session is session
                if mine:
                    self._session = None
                    self._pinned_from = None
            if mine:
                self.single_copy(f"the standby's link ended ({session.ended or 'closed'})")
                with self._lock:
                    self.standby.state = "absent" if self.standby.state != "refused" else "refused"

    def pin(self, seq: int | None) -> None:
        with self._lock:
            self._pinned_from = seq

    def next_record(self, seq: int, timeout: float) -> Record | bool | None:
        """The record ``seq`` once it exists (None after ``timeout``); False if the ring no
        longer has it."""
        with self._lock:
            if self.seq < seq:
                self._new.wait(timeout)
            if self.seq < seq or self._stopping:
                return None
            record = self.ring.get(seq)
            return record if record is not None else False

    def read(self) -> sqlite3.Connection:
        """A connection of the session's own (it reads, and VACUUM INTO writes only the copy)."""
        return connect(self.path, 256)


class Session:
    """One standby connected to this (serving) box."""

    def __init__(self, rep: Replicator, channel: wire.Channel, hello: dict[str, Any]) -> None:
        self.rep = rep
        self.ch = channel
        self.hello = hello
        self.ended = ""
        self._closed = threading.Event()

    def close(self, why: str) -> None:
        if not self.ended:
            self.ended = why
        self._closed.set()
        self.ch.close()

    def run(self) -> None:
        start = self.decide()
        if start is None:
            return
        self.stream(start)

    # --- what the standby gets -----------------------------------------------------------------

    def decide(self) -> int | None:
        """Where the standby's copy stands against this journal; the first record to stream
        (after a snapshot or salvage, if one is needed), or None when refused."""
        rep, hello = self.rep, self.hello
        theirs = hello.get("position") or {}
        lineage, seq = str(theirs.get("lineage", "")), int(theirs.get("seq", 0))
        their_hash = bytes.fromhex(str(theirs.get("hash", "")))
        empty = bool(hello.get("empty"))
        with contextlib.closing(rep.read()) as conn:
            if hello.get("suspect"):
                return self.snapshot(conn, "its copy failed to replay a record (it is set aside)")
            if their_hash.hex() in rep.uncommitted:
                return self.snapshot(conn, f"it holds record {seq}, which this box could not commit")
            if lineage != rep.lineage:
                if not lineage or empty:
                    return self.snapshot(conn, "a first copy of this journal")
                rows = hello.get("business_rows", "?")
                raise self.refuse("diverged", f"the standby's journal ({rows} rows of orders, payments, tickets) "
                                  "is not a copy of this store's journal (another lineage): nothing copied; "
                                  "run `edgehub pair resync` on the box whose journal should be replaced")
            if tables.hash_at(conn, seq) == their_hash and seq <= rep.seq:
                if seq == rep.seq or rep.ring.covers(seq + 1):
                    self.ch.send_json(wire.DECIDE, {"action": "stream", "from": seq + 1, "head": rep.seq})
                    rep.standby.state = "catching up"
                    return seq + 1
                return self.snapshot(conn, f"it is {rep.seq - seq} records behind, more than kept in memory")
            fork = self.find_fork(conn, seq, int(hello.get("oldest", 0)))
            base = self.fork_base(conn, fork)
            if base is None:
                raise self.refuse("diverged", f"the journals differ from record {fork + 1} on, and neither box "
                                  "took over there: nothing copied; run `edgehub pair resync` on the box whose "
                                  "journal should be replaced (its journal is kept aside)")
            self.take_salvage(fork, base)
            return self.snapshot(conn, f"it served alone after record {fork} (what it took is handed over)")

    def refuse(self, kind: str, reason: str) -> PeerRefused:
        self.ch.send_json(wire.REFUSE, {"kind": kind, "reason": reason})
        return PeerRefused(reason)

    def find_fork(self, conn: sqlite3.Connection, their_seq: int, their_oldest: int) -> int:
        """The last record both journals hold alike (hashes chain: equal at n means equal up
        to n), found by asking the standby for its hashes."""
        low = max(tables.oldest_logged(conn) - 1, their_oldest - 1, 0)
        high = min(their_seq, self.rep.seq)
        if low > high:
            raise self.refuse("diverged", "the journals share no record either box still has a hash of: "
                              "nothing copied; run `edgehub pair resync` on the box whose journal should "
                              "be replaced")
        # The lowest candidate must agree, else there is no common stretch to search in.
        while True:
            span = high - low
            if span <= 0:
                candidates = [low]
            else:
                step = max(1, span // PROVE_BATCH)
                candidates = sorted({*range(low, high, step), high})
            self.ch.send_json(wire.PROVE, {"seqs": candidates})
            _, proof = self.ch.recv_json((wire.PROOF,))
            theirs = proof.get("hashes", {})
            agree = []
            for n in candidates:
                mine = tables.hash_at(conn, n)
                other = theirs.get(str(n))
                agree.append(mine is not None and other is not None and mine.hex() == other)
            if not agree[0]:
                raise self.refuse("diverged", f"the journals differ at record {candidates[0]} already, the oldest "
                                  "either box can compare: nothing copied; run `edgehub pair resync` on the box "
                                  "whose journal should be replaced")
            last_good = max(i for i, ok in enumerate(agree) if ok and all(agree[:i + 1]))
            if last_good == len(candidates) - 1:
                return candidates[-1]
            low, high = candidates[last_good], candidates[last_good + 1] - 1
            if low == high:
                return low

    def fork_base(self, conn: sqlite3.Connection, fork: int) -> tables.Epoch | None:
        """Where the journal's counters stood at the fork: a takeover started an epoch right
        after it, on this box or on the standby."""
        for epoch in tables.epochs(conn):
            if epoch.after_seq == fork:
                return epoch
        for doc in self.hello.get("epochs", []):
            if isinstance(doc, dict) and int(doc.get("after_seq", -1)) == fork:
                return tables.Epoch.from_dict(doc)
        return None

    def take_salvage(self, fork: int, base: tables.Epoch) -> None:
        rep = self.rep
        rep.standby.state = "salvage"
        self.ch.send_json(wire.DECIDE, {"action": "salvage", "fork": fork, "base": base.as_dict()})
        kind, payload = self.ch.recv()
        if kind != wire.SALVAGE:
            raise PairError(f"the standby sent frame type {kind} where its salvage was expected")
        try:
            doc = wire.decode_json(zlib.decompress(payload), self.ch.peer)
        except zlib.error as exc:
            raise PairError(f"the standby's salvage is not readable: {exc}") from None
        if rep.salvage is None:
            raise PairError("this box cannot take a salvage now")
        receipt = rep.salvage(doc)
        self.ch.send_json(wire.SALVAGED, receipt)

    def snapshot(self, conn: sqlite3.Connection, why: str) -> int:
        """Send a copy of the whole journal (made with VACUUM INTO while the writer goes on),
        then stream from the record after the copy's."""
        rep = self.rep
        rep.standby.state = "snapshot"
        log.warning("pair: sending the standby %s a copy of the journal: %s", rep.standby.box, why)
        rep.pin(rep.seq + 1)  # records from here on stay in the ring until the copy is sent
        started = time.monotonic()
        tmp = rep.path.with_name(f".{rep.path.name}.snapshot-{os.getpid()}-{threading.get_ident()}")
        tmp.unlink(missing_ok=True)
        try:
            conn.execute("VACUUM INTO ?", (str(tmp),))
            with contextlib.closing(sqlite3.connect(tmp)) as copy:
                pos = tables.position(copy)
                rows = tables.business_rows(copy)
            size = tmp.stat().st_size
            self.ch.send_json(wire.SNAPSHOT, {"why": why, "size": size, "rows": rows, "position": pos.as_dict()})
            digest = hashlib.sha256()
            with tmp.open("rb") as src:
                while chunk := src.read(CHUNK_BYTES):
                    digest.update(chunk)
                    self.ch.send(wire.CHUNK, zlib.compress(chunk, 1))
            self.ch.send_json(wire.SNAPSHOT_END, {"sha256": digest.hexdigest(), "size": size})
        finally:
            tmp.unlink(missing_ok=True)
        elapsed = time.monotonic() - started
        rep.standby.catch_up = {"kind": "snapshot", "rows": rows, "bytes": size, "seconds": round(elapsed, 3),
                                "rows_per_s": round(rows / elapsed) if elapsed > 0 else None}
        rep.standby.state = "catching up"
        return pos.seq + 1

    def stream(self, start: int) -> None:
        """Records from ``start`` on, as they are committed; acknowledgements on another thread."""
        rep = self.rep
        rep.pin(start)
        reader = threading.Thread(target=self._read_acks, name="pair-acks", daemon=True)
        reader.start()
        seq = start
        last_sent = time.monotonic()
        while not self._closed.is_set():
            record = rep.next_record(seq, PING_EVERY_S)
            if record is False:
                raise PairError(f"record {seq} is no longer kept in memory (the standby fell too far behind)")
            if record is None:
                if time.monotonic() - last_sent >= PING_EVERY_S:
                    self.ch.send(wire.PING)
                    last_sent = time.monotonic()
                continue
            assert isinstance(record, Record)
            if not record.body:
                raise PairError(f"record {seq} could not be replicated; the standby needs a fresh copy")
            self.ch.send(wire.RECORD, record.encode())
            last_sent = time.monotonic()
            seq += 1
            rep.pin(seq if seq <= rep.seq else None)
        raise PairError(self.ended or "closed")

    def _read_acks(self) -> None:
        rep = self.rep
        try:
            self.ch.settimeout(max(1.0, rep.standby_timeout_s * 3))
            while not self._closed.is_set():
                kind, payload = self.ch.recv()
                if kind == wire.ACK:
                    rep.confirmed(wire.unpack_seq(payload))
                elif kind == wire.REFUSE:
                    doc = wire.decode_json(payload, self.ch.peer)
                    self.close(f"the standby refused: {doc.get('reason', '')}")
                    log.error("pair: the standby refused a record: %s", doc.get("reason", ""))
                    return
                else:
                    raise PairError(f"the standby sent frame type {kind} while records streamed")
        except PairError as exc:
            self.close(str(exc))
