"""The pair link's wire: framed messages over TCP, each authenticated with the pair secret.

Records are statements the standby executes on its journal, so nothing may reach it that the
other box of the pair did not send. Both boxes hold the same pair secret (``pair.secret_file``).
A connection starts with each side's 16 random bytes (``MAGIC`` + nonce, in clear); both then
derive a session key ``K = HMAC-SHA256(secret, "edgehub-pair/1" | client nonce | server nonce)``,
and every frame after that carries ``HMAC-SHA256(K, direction | counter | type | payload)``
(truncated to 16 bytes), the counter counting that direction's frames from 0. A frame that does
not verify ends the connection: a box with another secret is told apart from a broken link at
its first frame, a replayed or reordered frame fails its counter. The link is not encrypted
(the store LAN's MQTT listener is not either; docs/security.md).

Frames: ``u32 length | u8 type | payload | 16-byte tag``; the length counts type and payload.
Blocking sockets, used from the pair's own threads (edgehub/pair/primary.py, standby.py): the
hot path (a record out, its acknowledgement back) never waits on the hub's event loop.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from typing import Any

from edgehub.errors import PairError, PeerRefused

MAGIC = b"EHPAIR1\x00"
NONCE_BYTES = 16
TAG_BYTES = 16
MAX_FRAME = 64 * 1024 * 1024  # a snapshot chunk or a salvage is the largest frame

# Frame types
HELLO = 1       # JSON: who is calling, what it holds, what it wants (follow / probe)
DECIDE = 2      # JSON: the primary's answer to a standby (stream / snapshot / salvage / refuse)
RECORD = 3      # a replication record (edgehub/pair/record.py)
ACK = 4         # u64: the standby holds every record up to this seq, on disk
PING = 5        # nothing: the primary is there (the standby answers with an ACK)
SNAPSHOT = 6    # JSON: a copy of the journal follows
CHUNK = 7       # bytes of the copy (zlib)
SNAPSHOT_END = 8  # JSON: sha256 and size of the copy
PROVE = 9       # JSON: which record hashes the primary asks for (finding a fork)
PROOF = 10      # JSON: the standby's hashes at those seqs
SALVAGE = 11    # JSON (zlib): what the standby's journal holds that the primary's does not
SALVAGED = 12   # JSON: what the primary took of it
ROLE = 13       # JSON: the answer to a probe: this box's role and epoch
REFUSE = 14     # JSON: why this box will not pair with the caller

_LEN = struct.Struct("<I")
_U64 = struct.Struct("<Q")
_COUNTER = struct.Struct("<Q")


def session_key(secret: bytes, client_nonce: bytes, server_nonce: bytes) -> bytes:
    return hmac.new(secret, b"edgehub-pair/1" + client_nonce + server_nonce, hashlib.sha256).digest()


class Channel:
    """One authenticated connection. ``send`` may be called from several threads; ``recv`` from
    one. Closing it (from any thread) makes a blocked ``recv`` end with ``PairError``."""

    def __init__(self, sock: socket.socket, key: bytes, client: bool, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        self._key = key
        self._out_dir, self._in_dir = (b"C", b"S") if client else (b"S", b"C")
        self._out_count = 0
        self._in_count = 0
        self._send_lock = threading.Lock()
        self._closed = False
        self.bytes_out = 0
        self.bytes_in = 0

    def _tag(self, direction: bytes, counter: int, kind: int, payload: bytes) -> bytes:
        mac = hmac.new(self._key, direction + _COUNTER.pack(counter) + bytes([kind]), hashlib.sha256)
        mac.update(payload)
        return mac.digest()[:TAG_BYTES]

    def send(self, kind: int, payload: bytes = b"") -> None:
        if len(payload) + 1 > MAX_FRAME:
            raise PairError(f"pair frame of {len(payload)} bytes is larger than {MAX_FRAME}")
        with self._send_lock:
            tag = self._tag(self._out_dir, self._out_count, kind, payload)
            self._out_count += 1
            frame = _LEN.pack(len(payload) + 1) + bytes([kind]) + payload + tag
            try:
                self.sock.sendall(frame)
            except OSError as exc:
                raise PairError(f"link to {self.peer} lost: {exc.strerror or exc}") from exc
            self.bytes_out += len(frame)

    def send_json(self, kind: int, doc: dict[str, Any]) -> None:
        self.send(kind, json.dumps(doc, separators=(",", ":")).encode())

    def recv(self) -> tuple[int, bytes]:
        head = self._read(4)
        (length,) = _LEN.unpack(head)
        if not 1 <= length <= MAX_FRAME:
            raise PairError(f"{self.peer} sent a frame of {length} bytes: not an edgehub pair link")
        body = self._read(length + TAG_BYTES)
        kind, payload, tag = body[0], body[1:length], body[length:]
        if not hmac.compare_digest(tag, self._tag(self._in_dir, self._in_count, kind, payload)):
            raise PeerRefused(f"{self.peer}: a frame did not verify: the other box has another pair secret "
                              "(pair.secret_file must be the same file on both boxes)")
        self._in_count += 1
        self.bytes_in += 4 + len(body)
        return kind, payload

    def recv_json(self, expect: tuple[int, ...]) -> tuple[int, dict[str, Any]]:
        kind, payload = self.recv()
        if kind not in expect:
            raise PairError(f"{self.peer} sent frame type {kind} where {expect} was expected")
        return kind, decode_json(payload, self.peer)

    def _read(self, n: int) -> bytes:
        chunks = []
        left = n
        while left:
            try:
                chunk = self.sock.recv(min(left, 1 << 20))
            except TimeoutError:
                raise PairError(f"{self.peer} went silent") from None
            except OSError as exc:
                raise PairError(f"link to {self.peer} lost: {exc.strerror or exc}") from exc
            if not chunk:
                raise PairError(f"{self.peer} closed the link")
            chunks.append(chunk)
            left -= len(chunk)
        return b"".join(chunks)

    def pending(self) -> bool:
        """Bytes already arrived and waiting to be read (a standby gathers records that came
        together into one commit)."""
        try:
            readable, _, _ = select.select([self.sock], [], [], 0)
        except (OSError, ValueError):
            return True  # let recv() see the error
        return bool(readable)

    def settimeout(self, seconds: float | None) -> None:
        self.sock.settimeout(seconds)

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()


def decode_json(payload: bytes, peer: str) -> dict[str, Any]:
    try:
        doc = json.loads(payload)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PairError(f"{peer} sent a frame that is not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PairError(f"{peer} sent JSON that is not an object")
    return doc


def _exchange(sock: socket.socket, peer: str) -> bytes:
    nonce = os.urandom(NONCE_BYTES)
    try:
        sock.sendall(MAGIC + nonce)
        got = b""
        while len(got) < len(MAGIC) + NONCE_BYTES:
            chunk = sock.recv(len(MAGIC) + NONCE_BYTES - len(got))
            if not chunk:
                raise PairError(f"{peer} closed the link before saying who it is")
            got += chunk
    except TimeoutError:
        raise PairError(f"{peer} did not answer") from None
    except OSError as exc:
        raise PairError(f"link to {peer} failed: {exc.strerror or exc}") from exc
    if got[:len(MAGIC)] != MAGIC:
        raise PairError(f"{peer} is not an edgehub pair link (it answered {got[:8]!r})")
    return nonce + got[len(MAGIC):]


def connect(host: str, port: int, secret: bytes, timeout: float,
            opened: Callable[[socket.socket], None] | None = None) -> Channel:
    """Open a channel to the other box (the client side). ``opened`` is given the socket before
    it connects, so another thread can close it to end a connect that waits on a dead box."""
    peer = f"{host}:{port}"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    if opened is not None:
        opened(sock)
    sock.settimeout(timeout)
    try:
        sock.connect((host, port))
    except TimeoutError:
        sock.close()
        raise PairError(f"the other box at {peer} did not answer within {timeout:g} s") from None
    except OSError as exc:
        sock.close()
        raise PairError(f"cannot reach the other box at {peer}: {exc.strerror or exc}") from exc
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        nonces = _exchange(sock, peer)
    except PairError:
        sock.close()
        raise
    mine, theirs = nonces[:NONCE_BYTES], nonces[NONCE_BYTES:]
    return Channel(sock, session_key(secret, mine, theirs), client=True, peer=peer)


def accept(sock: socket.socket, secret: bytes, timeout: float) -> Channel:
    """Make a channel of a connection the listener accepted (the server side)."""
    peername = sock.getpeername()
    peer = f"{peername[0]}:{peername[1]}" if isinstance(peername, tuple) else str(peername)
    sock.settimeout(timeout)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    nonces = _exchange(sock, peer)
    mine, theirs = nonces[:NONCE_BYTES], nonces[NONCE_BYTES:]
    return Channel(sock, session_key(secret, theirs, mine), client=False, peer=peer)


def pack_seq(seq: int) -> bytes:
    return _U64.pack(seq)


def unpack_seq(payload: bytes) -> int:
    if len(payload) != _U64.size:
        raise PairError("an acknowledgement is 8 bytes")
    value: int = _U64.unpack(payload)[0]
    return value
