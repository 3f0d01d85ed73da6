"""The standby's side of a pair: it follows the serving box's journal, record by record.

``Follower`` runs on a thread of its own with its own connection to this box's journal (the
hub does not run on a standby; nothing else writes the file). It connects to the other box,
says where its copy stands, and does what the serving box decides (edgehub/pair/primary.py):

- *stream*: records arrive; those that came together are applied in one transaction, each
  checked against the chain (``prev`` is this copy's last hash) and against the rows it changed
  on the primary, then fsynced (``synchronous=FULL``) and acknowledged. The primary answers
  its callers once this acknowledgement is in, so "acked" means "on both boxes".
- *snapshot*: a copy of the whole journal arrives (a first copy, a standby too far behind, or
  after a salvage); it is written beside the journal, checked (sha256), and put in its place;
  the journal it replaces is set aside, or deleted when it held no business at all.
- *salvage*: this box served alone after the fork; it sends what it took (edgehub/pair/salvage.py)
  before taking a copy.
- *refuse*: the serving box is of another store or schema, or the journals diverged in a way
  nobody can explain: nothing is copied, the reason is in the log, the status and the doctor,
  and the follower asks again now and then (an installer may be fixing it).

A record that does not replay as it did on the primary (a copy that is not what it claims to
be) is refused, and the next connection asks for a fresh copy (``suspect``).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgehub.errors import PairError, PeerRefused
from edgehub.pair import salvage, tables, wire
from edgehub.pair.record import Diverged, Record, replay, standby_authorizer
from edgehub.store.checkpoint import Checkpointer
from edgehub.store.journal import connect, move_aside
from edgehub.store.schema import migrate

log = logging.getLogger("edgehub.pair")

MAX_BATCH = 512
RETRY_S = 0.25  # a serving box not there yet (a takeover in progress): ask again soon
REFUSED_RETRY_S = 5.0  # a refusal: ask again now and then, logged once per reason
KEEP_REPLACED = 3  # journals set aside because a copy replaced them (held nothing of their own)


@dataclass
class FollowerState:
    state: str = "starting"  # connecting, refused, snapshot, salvage, catching up, in sync, stopped
    since: float = 0.0
    primary: str = ""  # the serving box's name
    address: str = ""
    refused: str = ""  # why the other box was refused (or refused this one)
    refused_kind: str = ""
    last_error: str = ""
    head: int = 0  # the primary's newest record when this session started
    catch_up: dict[str, Any] = field(default_factory=dict)
    set_aside: list[str] = field(default_factory=list)
    salvaged: dict[str, Any] = field(default_factory=dict)
    records: int = 0
    rows: int = 0


class Follower:
    """Follows the serving box; ``start`` runs the thread, ``stop`` ends it and closes the file."""

    def __init__(self, path: Path, peer: tuple[str, int], secret: bytes, identity: dict[str, Any],
                 timeout_s: float, on_change: Callable[[], None] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.path = path
        self.peer = peer
        self.secret = secret
        self.identity = identity  # store_id, box, schema_version, version
        self.timeout_s = timeout_s
        self.on_change = on_change
        self.clock = clock
        self.st = FollowerState(since=clock())
        self.position = tables.Position("", 0, 0, b"")
        self._conn: sqlite3.Connection | None = None
        self._checkpointer: Checkpointer | None = None
        self._channel: wire.Channel | None = None
        self._connecting: socket.socket | None = None
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._suspect = False
        self._lock = threading.Lock()

    # --- lifecycle ---------------------------------------------------------------------------

    def open(self) -> None:
        """Open (and bring up to date) this box's journal: blocking, before ``start``."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = connect(self.path)
        migrate(conn)
        tables.create(conn)
        conn.set_authorizer(standby_authorizer)
        self._conn = conn
        self.position = tables.position(conn)
        self._checkpointer = Checkpointer(lambda: connect(self.path, 64), after_commits=64, restart_frames=16384)
        self._checkpointer.start()

    def start(self) -> None:
        if self._conn is None:
            self.open()
        self._thread = threading.Thread(target=self._run, name="pair-follower", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """End the session and close the journal (blocking): the hub may open it next."""
        self._stopping.set()
        channel, sock = self._channel, self._connecting
        if channel is not None:
            channel.close()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._thread is not None:
            self._thread.join(timeout=10)
        self._close_journal()
        self._set("stopped")

    def _close_journal(self) -> None:
        if self._checkpointer is not None:
            self._checkpointer.stop()
            self._checkpointer = None
        if self._conn is not None:
            with contextlib.suppress(sqlite3.Error):
                self._conn.close()
            self._conn = None

    def _set(self, state: str, **changes: Any) -> None:
        changed = state != self.st.state or any(getattr(self.st, k) != v for k, v in changes.items())
        with self._lock:
            if state != self.st.state:
                self.st.since = self.clock()
            self.st.state = state
            for key, value in changes.items():
                setattr(self.st, key, value)
        if changed and self.on_change is not None:
            with contextlib.suppress(Exception):
                self.on_change()

    @property
    def in_sync(self) -> bool:
        return self.st.state == "in sync"

    @property
    def holds_copy(self) -> bool:
        """This box's journal is a copy of the store's (it may take over with it)."""
        return bool(self.position.lineage)

    def status(self) -> dict[str, Any]:
        with self._lock:
            st = self.st
            return {"state": st.state, "since": st.since, "primary": st.primary, "address": st.address,
                    "refused": st.refused, "refused_kind": st.refused_kind, "last_error": st.last_error,
                    "seq": self.position.seq, "epoch": self.position.epoch, "lineage": self.position.lineage,
                    "lag_records": max(0, st.head - self.position.seq) if st.state == "catching up" else 0,
                    "catch_up": st.catch_up, "set_aside": st.set_aside, "salvaged": st.salvaged,
                    "records_applied": st.records, "rows_applied": st.rows}

    # --- the session -------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._stopping.is_set():
            try:
                self._session()
            except PeerRefused as exc:
                if exc.reason != self.st.refused:
                    log.error("pair: not following %s:%d: %s", *self.peer, exc.reason)
                self._set("refused", refused=exc.reason)
                self._stopping.wait(REFUSED_RETRY_S)
                continue
            except (PairError, OSError, sqlite3.Error) as exc:
                if self._stopping.is_set():
                    break
                if str(exc) != self.st.last_error:
                    log.info("pair: following %s:%d: %s", *self.peer, exc)
                self._set("connecting", last_error=str(exc))
            finally:
                channel, self._channel = self._channel, None
                if channel is not None:
                    channel.close()
            self._stopping.wait(RETRY_S)

    def hello(self, want: str, role: str) -> dict[str, Any]:
        conn = self._conn
        assert conn is not None
        return {**self.identity, "schema": "pair-hello/1", "want": want, "role": role,
                "position": self.position.as_dict(), "empty": tables.is_empty(conn),
                "business_rows": tables.business_rows(conn), "oldest": tables.oldest_logged(conn),
                "epochs": [e.as_dict() for e in tables.epochs(conn)], "suspect": self._suspect}

    def _opened(self, sock: socket.socket) -> None:
        self._connecting = sock
        if self._stopping.is_set():
            sock.close()

    def _session(self) -> None:
        host, port = self.peer
        try:
            ch = wire.connect(host, port, self.secret, timeout=self.timeout_s, opened=self._opened)
        finally:
            self._connecting = None
        self._channel = ch
        if self._stopping.is_set():
            raise PairError("stopping")
        ch.settimeout(self.timeout_s)
        ch.send_json(wire.HELLO, self.hello("follow", "standby"))
        kind, theirs = ch.recv_json((wire.HELLO, wire.REFUSE))
        if kind == wire.REFUSE:
            raise refusal(theirs)
        check_peer(self.identity, theirs, f"{host}:{port}")
        self._set(self.st.state, primary=str(theirs.get("box", "")), address=f"{host}:{port}", refused="",
                  refused_kind="")
        salvaged = False
        started = time.monotonic()
        start_rows = self.st.rows
        while not self._stopping.is_set():
            kind, payload = ch.recv()
            if kind == wire.RECORD:
                self._apply(ch, payload)
                if self.st.state == "catching up" and self.position.seq >= self.st.head:
                    elapsed = time.monotonic() - started
                    rows = self.st.rows - start_rows
                    catch_up = dict(self.st.catch_up)
                    if catch_up.get("kind") != "snapshot":
                        catch_up = {"kind": "records", "records": self.st.head - catch_up.get("from", self.st.head),
                                    "rows": rows, "seconds": round(elapsed, 3),
                                    "rows_per_s": round(rows / elapsed) if elapsed > 0 else None}
                    self._set("in sync", catch_up=catch_up, last_error="")
                    log.warning("pair: in sync with %s (record %d)", self.st.primary, self.position.seq)
            elif kind == wire.PING:
                ch.send(wire.ACK, wire.pack_seq(self.position.seq))
                if self.st.state == "catching up" and self.position.seq >= self.st.head:
                    self._set("in sync", last_error="")
            elif kind == wire.DECIDE:
                doc = wire.decode_json(payload, ch.peer)
                if doc.get("action") == "stream":
                    head = int(doc.get("head", 0))
                    self._set("catching up" if head > self.position.seq else "in sync", head=head,
                              catch_up={"from": self.position.seq})
                    started, start_rows = time.monotonic(), self.st.rows
                elif doc.get("action") == "salvage":
                    self._salvage(ch, tables.Epoch.from_dict(doc["base"]), int(doc.get("fork", 0)))
                    salvaged = True
                else:
                    raise PairError(f"{ch.peer} decided {doc.get('action')!r}, which this box does not know")
            elif kind == wire.PROVE:
                self._prove(ch, wire.decode_json(payload, ch.peer))
            elif kind == wire.SNAPSHOT:
                self._snapshot(ch, wire.decode_json(payload, ch.peer), salvaged)
                started, start_rows = time.monotonic(), self.st.rows
            elif kind == wire.REFUSE:
                raise refusal(wire.decode_json(payload, ch.peer))
            else:
                raise PairError(f"{ch.peer} sent frame type {kind}, which a standby does not expect")

    def _apply(self, ch: wire.Channel, first: bytes) -> None:
        conn = self._conn
        assert conn is not None
        records = [Record.decode(first)]
        later: list[tuple[int, bytes]] = []
        while len(records) < MAX_BATCH and ch.pending():
            kind, payload = ch.recv()
            if kind != wire.RECORD:
                later.append((kind, payload))
                break
            records.append(Record.decode(payload))
        seq, digest = self.position.seq, self.position.hash
        rows = 0
        conn.execute("BEGIN IMMEDIATE")
        try:
            for record in records:
                if record.seq != seq + 1 or record.prev != digest:
                    raise Diverged(f"record {record.seq} does not follow this copy's record {seq}")
                rows += replay(conn, record)
                tables.log_record(conn, record.seq, record.epoch, record.hash)
                seq, digest = record.seq, record.hash
            conn.execute("COMMIT")
        except Diverged as exc:
            conn.execute("ROLLBACK")
            self._suspect = True
            reason = f"this copy does not replay the primary's records: {exc}; asking for a fresh copy"
            log.error("pair: %s", reason)
            with contextlib.suppress(PairError):
                ch.send_json(wire.REFUSE, {"kind": "suspect", "reason": reason})
            raise PairError(reason) from exc
        except BaseException:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("ROLLBACK")
            raise
        if self._checkpointer is not None:
            self._checkpointer.committed()
        last = records[-1]
        self.position = tables.Position(self.position.lineage, max(self.position.epoch, last.epoch), seq, digest)
        self.st.records += len(records)
        self.st.rows += rows
        ch.send(wire.ACK, wire.pack_seq(seq))
        for kind, payload in later:
            if kind == wire.PING:
                ch.send(wire.ACK, wire.pack_seq(seq))
            elif kind == wire.REFUSE:
                raise refusal(wire.decode_json(payload, ch.peer))
            else:
                raise PairError(f"{ch.peer} sent frame type {kind} between records")

    def _prove(self, ch: wire.Channel, doc: dict[str, Any]) -> None:
        conn = self._conn
        assert conn is not None
        hashes: dict[str, str | None] = {}
        for seq in doc.get("seqs", [])[:1000]:
            found = tables.hash_at(conn, int(seq))
            hashes[str(int(seq))] = found.hex() if found is not None else None
        ch.send_json(wire.PROOF, {"hashes": hashes})

    def _salvage(self, ch: wire.Channel, base: tables.Epoch, fork: int) -> None:
        conn = self._conn
        assert conn is not None
        self._set("salvage")
        doc = salvage.collect(conn, base)
        log.warning("pair: this box served alone after record %d: handing %d orders and %d cloud rows to %s",
                    fork, len(doc["orders"]), len(doc["outbox"]), self.st.primary)
        ch.send(wire.SALVAGE, zlib.compress(json.dumps(doc, separators=(",", ":")).encode(), 6))
        ch.settimeout(max(60.0, self.timeout_s))
        _, receipt = ch.recv_json((wire.SALVAGED,))
        ch.settimeout(self.timeout_s)
        self._set("salvage", salvaged={**receipt, "fork": fork, "at": self.clock()})
        log.warning("pair: %s took this box's salvage: %s", self.st.primary, receipt)

    def _snapshot(self, ch: wire.Channel, doc: dict[str, Any], salvaged: bool) -> None:
        """Receive a copy of the serving box's journal and put it in place of this one."""
        started = time.monotonic()
        self._set("snapshot", last_error="")
        log.warning("pair: taking a copy of %s's journal (%s bytes): %s", self.st.primary, doc.get("size"),
                    doc.get("why", ""))
        tmp = self.path.with_name(f".{self.path.name}.incoming")
        digest = hashlib.sha256()
        size = 0
        ch.settimeout(max(30.0, self.timeout_s))
        with tmp.open("wb") as out:
            while True:
                kind, payload = ch.recv()
                if kind == wire.CHUNK:
                    try:
                        chunk = zlib.decompress(payload)
                    except zlib.error as exc:
                        raise PairError(f"a chunk of the copy is not readable: {exc}") from None
                    digest.update(chunk)
                    size += len(chunk)
                    out.write(chunk)
                elif kind == wire.SNAPSHOT_END:
                    end = wire.decode_json(payload, ch.peer)
                    break
                else:
                    raise PairError(f"{ch.peer} sent frame type {kind} inside the copy")
            out.flush()
            os.fsync(out.fileno())
        ch.settimeout(self.timeout_s)
        if digest.hexdigest() != end.get("sha256") or size != end.get("size"):
            tmp.unlink(missing_ok=True)
            raise PairError("the copy arrived damaged (its sha256 does not match); asking again")
        self._install(tmp, "salvaged" if salvaged else "replaced")
        self._suspect = False
        elapsed = time.monotonic() - started
        rows = int(doc.get("rows", 0))
        head = int((doc.get("position") or {}).get("seq", 0))
        self._set("catching up", head=head,
                  catch_up={"kind": "snapshot", "rows": rows, "bytes": size, "seconds": round(elapsed, 3),
                            "rows_per_s": round(rows / elapsed) if elapsed > 0 else None, "from": head})

    def _install(self, tmp: Path, why: str) -> None:
        conn = self._conn
        assert conn is not None
        empty = tables.is_empty(conn)
        self._close_journal()
        if empty:
            for suffix in ("", "-wal", "-shm"):
                Path(f"{self.path}{suffix}").unlink(missing_ok=True)
            aside = ""
        else:
            aside = str(move_aside(self.path, why, self.clock()))
            log.warning("pair: this box's journal is set aside as %s (kept, never deleted by edgehub)"
                        if why != "replaced" else "pair: this box's journal (older than the copy) is set aside as %s",
                        aside)
            if why == "replaced":
                prune_replaced(self.path)
        os.replace(tmp, self.path)
        fd = os.open(self.path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        self.open()
        if aside:
            self.st.set_aside = [*self.st.set_aside, aside][-10:]


def prune_replaced(path: Path) -> None:
    """Journals set aside because a copy replaced them held nothing the copy lacks: the newest
    few are kept (support may look), older ones go. Salvaged or corrupt ones are never pruned."""
    found = sorted(path.parent.glob(f"{path.name}.replaced-*"), key=lambda p: p.stat().st_mtime)
    bases = [p for p in found if not p.name.endswith(("-wal", "-shm"))]
    for old in bases[:-KEEP_REPLACED]:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{old}{suffix}").unlink(missing_ok=True)


def refusal(doc: dict[str, Any]) -> PairError:
    reason = str(doc.get("reason", "refused"))
    if doc.get("kind") in ("not_primary", "busy"):
        return PairError(reason)
    return PeerRefused(reason)


def check_peer(mine: dict[str, Any], theirs: dict[str, Any], where: str) -> None:
    """The other box is of this store and this journal schema (else ``PeerRefused``). The
    reason names both boxes, so it reads the same in either box's log and status."""
    me = f"box {mine.get('box')}"
    other = f"box {theirs.get('box') or '?'} ({where})"
    if theirs.get("store_id") != mine.get("store_id"):
        raise PeerRefused(f"{other} is of store {theirs.get('store_id')!r} and {me} of store "
                          f"{mine.get('store_id')!r}: not a pair; nothing copied (check store.id and pair.peer "
                          "on both boxes)")
    if theirs.get("schema_version") != mine.get("schema_version"):
        raise PeerRefused(f"{other} has journal schema {theirs.get('schema_version')} (edgehub "
                          f"{theirs.get('version')}) and {me} schema {mine.get('schema_version')} (edgehub "
                          f"{mine.get('version')}): nothing copied; install the same edgehub on both boxes")
    if theirs.get("box") == mine.get("box"):
        raise PeerRefused(f"{other} has the name {mine.get('box')!r} too: each box of a pair needs its own pair.box")
