"""Replication records: what one group commit of the journal changed, shipped to the standby.

The journal has one writer thread that commits groups (edgehub/store/journal.py); every durable
change of the hub goes through it. With a pair configured, the writer's connection records each
statement that changed at least one row (``RecordingConnection``: the SQL, its exact parameters
and how many rows it changed, triggers included), and the statements of one committed group
become one ``Record``. The standby executes them in the same order on its copy, which was equal
to the primary's before the record, so it ends equal again: the statements are deterministic
(no ``random()``, no ``'now'``; every time and id is a parameter the primary chose), and the
standby checks that each one changes as many rows as it did on the primary.

Records are numbered (``seq``, from 1, over the journal's whole life, across takeovers) and
chained: ``hash = sha256(prev_hash | epoch | seq | body)``. A copy that missed or changed one
record, or took records of its own (an old primary that went on alone), no longer agrees at
some ``seq``; that is how a diverged journal is recognised instead of being merged blindly.

The body is a small binary form of the statements, exact for every SQLite value: integers as
64-bit, floats as IEEE doubles (JSON or SQL text would round a timestamp), text as UTF-8, blobs
as they are.
"""

from __future__ import annotations

import hashlib
import re
import sqlite3
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from edgehub.errors import PairError

Value = None | int | float | str | bytes
# (many, sql, params, changes): ``params`` is one row for execute, a list of rows for executemany.
Statement = tuple[bool, str, Any, int]

_U32 = struct.Struct("<I")
_I64 = struct.Struct("<q")
_F64 = struct.Struct("<d")
_HEAD = struct.Struct("<IQ")  # epoch, seq

T_NONE, T_INT, T_FLOAT, T_TEXT, T_BLOB = 0, 1, 2, 3, 4
ROW_TUPLE, ROW_NAMED = 0, 1


def genesis_hash(lineage: str) -> bytes:
    """The hash "before record 1" of a journal lineage (a pair's journal from its first primary)."""
    return hashlib.sha256(b"edgehub-pair-lineage/1:" + lineage.encode()).digest()


def chain(prev: bytes, epoch: int, seq: int, body: bytes) -> bytes:
    return hashlib.sha256(prev + _HEAD.pack(epoch, seq) + body).digest()


@dataclass(frozen=True, slots=True)
class Record:
    epoch: int
    seq: int
    hash: bytes
    prev: bytes
    body: bytes

    def encode(self) -> bytes:
        """The wire form: epoch, seq, previous hash, hash, body."""
        return _HEAD.pack(self.epoch, self.seq) + self.prev + self.hash + self.body

    @classmethod
    def decode(cls, data: bytes) -> Record:
        if len(data) < _HEAD.size + 64:
            raise PairError(f"replication record of {len(data)} bytes is too short")
        epoch, seq = _HEAD.unpack_from(data)
        at = _HEAD.size
        prev, digest, body = data[at:at + 32], data[at + 32:at + 64], data[at + 64:]
        if chain(prev, epoch, seq, body) != digest:
            raise PairError(f"replication record {seq} does not match its hash")
        return cls(epoch, seq, digest, prev, body)

    @property
    def size(self) -> int:
        return _HEAD.size + 64 + len(self.body)


def seal(prev: bytes, epoch: int, seq: int, statements: Sequence[Statement]) -> Record:
    body = encode_statements(statements)
    return Record(epoch, seq, chain(prev, epoch, seq, body), prev, body)


# --- the body ----------------------------------------------------------------------------------


def _value(out: list[bytes], value: Any) -> None:
    if value is None:
        out.append(b"\x00")
    elif isinstance(value, bool | int):
        out.append(b"\x01" + _I64.pack(int(value)))
    elif isinstance(value, float):
        out.append(b"\x02" + _F64.pack(value))
    elif isinstance(value, str):
        raw = value.encode("utf-8", "surrogatepass")
        out.append(b"\x03" + _U32.pack(len(raw)) + raw)
    elif isinstance(value, bytes | bytearray | memoryview):
        raw = bytes(value)
        out.append(b"\x04" + _U32.pack(len(raw)) + raw)
    else:
        raise PairError(f"a journal write used a {type(value).__name__} parameter, which is not replicated")


def _row(out: list[bytes], row: Any) -> None:
    if isinstance(row, dict):
        out.append(bytes([ROW_NAMED]) + _U32.pack(len(row)))
        for key, value in row.items():
            raw = str(key).encode()
            out.append(_U32.pack(len(raw)) + raw)
            _value(out, value)
        return
    out.append(bytes([ROW_TUPLE]) + _U32.pack(len(row)))
    for value in row:
        _value(out, value)


def encode_statements(statements: Iterable[Statement]) -> bytes:
    out: list[bytes] = []
    count = 0
    for many, sql, params, changes in statements:
        count += 1
        raw = sql.encode()
        out.append(bytes([int(many)]) + _U32.pack(len(raw)) + raw + _U32.pack(changes))
        if many:
            out.append(_U32.pack(len(params)))
            for row in params:
                _row(out, row)
        else:
            _row(out, params)
    return _U32.pack(count) + b"".join(out)


class _Reader:
    __slots__ = ("at", "data")

    def __init__(self, data: bytes) -> None:
        self.data = data
        self.at = 0

    def take(self, n: int) -> bytes:
        end = self.at + n
        if end > len(self.data):
            raise PairError("replication record body is truncated")
        chunk = self.data[self.at:end]
        self.at = end
        return chunk

    def u32(self) -> int:
        value: int = _U32.unpack(self.take(4))[0]
        return value

    def value(self) -> Value:
        tag = self.take(1)[0]
        if tag == T_NONE:
            return None
        if tag == T_INT:
            number: int = _I64.unpack(self.take(8))[0]
            return number
        if tag == T_FLOAT:
            real: float = _F64.unpack(self.take(8))[0]
            return real
        if tag == T_TEXT:
            return self.take(self.u32()).decode("utf-8", "surrogatepass")
        if tag == T_BLOB:
            return self.take(self.u32())
        raise PairError(f"replication record body has an unknown value tag {tag}")

    def row(self) -> tuple[Value, ...] | dict[str, Value]:
        kind = self.take(1)[0]
        n = self.u32()
        if kind == ROW_NAMED:
            return {self.take(self.u32()).decode(): self.value() for _ in range(n)}
        return tuple(self.value() for _ in range(n))


def decode_statements(body: bytes) -> list[Statement]:
    reader = _Reader(body)
    statements: list[Statement] = []
    for _ in range(reader.u32()):
        many = bool(reader.take(1)[0])
        sql = reader.take(reader.u32()).decode()
        changes = reader.u32()
        params: Any = [reader.row() for _ in range(reader.u32())] if many else reader.row()
        statements.append((many, sql, params, changes))
    if reader.at != len(body):
        raise PairError("replication record body has bytes after its statements")
    return statements


# --- capture on the primary, replay on the standby ----------------------------------------------


_SAVEPOINT = re.compile(r"^\s*(SAVEPOINT|ROLLBACK(?:\s+TRANSACTION)?\s+TO(?:\s+SAVEPOINT)?|RELEASE(?:\s+SAVEPOINT)?)"
                        r"\s+(\S+?)\s*;?\s*$", re.IGNORECASE)


class RecordingConnection(sqlite3.Connection):
    """The journal writer's connection on a box of a pair: while ``recording`` is a list, every
    ``execute``/``executemany`` that is an INSERT, UPDATE, DELETE or REPLACE, or that changed a
    row, is appended to it. Also the ones that changed no row: an ``INSERT OR IGNORE`` that was
    ignored (a duplicate order) still moves an AUTOINCREMENT table's counter in
    ``sqlite_sequence``, which ``total_changes`` does not count, and a standby that skipped it
    would number the next order differently. The journal's own BEGIN, SAVEPOINT and COMMIT are
    not recorded; a write function that failed has its statements cut off again (the journal
    rolls its savepoint back). Reads are not recorded."""

    recording: list[Statement] | None = None
    # (savepoint name, len(recording) when it was set): a write that rolls back to a savepoint of
    # its own (an order of a batch that cannot be written) takes its statements back with it.
    savepoints: list[tuple[str, int]]

    def record(self, recording: list[Statement] | None) -> None:
        """Start recording into ``recording`` (None: stop)."""
        self.recording = recording
        self.savepoints = []

    def _savepoint(self, sql: str, recording: list[Statement]) -> bool:
        match = _SAVEPOINT.match(sql)
        if match is None:
            return False
        verb, name = match.group(1).split()[0].upper(), match.group(2).strip('"`[]').lower()
        if verb == "SAVEPOINT":
            self.savepoints.append((name, len(recording)))
            return True
        for i in range(len(self.savepoints) - 1, -1, -1):
            if self.savepoints[i][0] == name:
                if verb == "ROLLBACK":
                    del recording[self.savepoints[i][1]:]
                    del self.savepoints[i + 1:]  # the savepoint itself stays open
                else:  # RELEASE
                    del self.savepoints[i:]
                break
        return True

    def execute(self, sql: str, parameters: Any = (), /) -> sqlite3.Cursor:
        recording = self.recording
        if recording is None:
            return super().execute(sql, parameters)
        if self._savepoint(sql, recording):
            return super().execute(sql, parameters)
        params = parameters if isinstance(parameters, dict) else tuple(parameters)
        before = self.total_changes
        cursor = super().execute(sql, params)
        changed = self.total_changes - before
        if changed or cursor.rowcount >= 0:  # rowcount is -1 for anything but DML
            recording.append((False, sql, params, changed))
        return cursor

    def executemany(self, sql: str, parameters: Iterable[Any], /) -> sqlite3.Cursor:
        recording = self.recording
        if recording is None:
            return super().executemany(sql, parameters)
        rows = [row if isinstance(row, dict) else tuple(row) for row in parameters]
        before = self.total_changes
        cursor = super().executemany(sql, rows)
        changed = self.total_changes - before
        if rows and (changed or cursor.rowcount >= 0):
            recording.append((True, sql, rows, changed))
        return cursor


class Diverged(PairError):
    """Replaying a record on this copy did not do what it did on the primary."""


def replay(conn: sqlite3.Connection, record: Record) -> int:
    """Execute a record's statements in the caller's transaction; the rows they changed.
    ``Diverged`` when a statement fails or changes another number of rows than it did on the
    primary: this copy was not what the primary's journal was before the record."""
    changed = 0
    for many, sql, params, changes in decode_statements(record.body):
        before = conn.total_changes
        try:
            if many:
                conn.executemany(sql, params)
            else:
                conn.execute(sql, params)
        except sqlite3.Error as exc:
            raise Diverged(f"record {record.seq}: {_short(sql)} failed here: {exc}") from exc
        done = conn.total_changes - before
        if done != changes:
            raise Diverged(f"record {record.seq}: {_short(sql)} changed {done} rows here, {changes} on the primary")
        changed += done
    return changed


def _short(sql: str) -> str:
    text = " ".join(sql.split())
    return text if len(text) <= 60 else text[:57] + "..."


# What a standby's connection lets a record do: change rows of the journal's own tables, nothing
# else (no ATTACH, no PRAGMA, no schema change, no extension). Records come from a box that proved
# it holds the pair secret; this is a second fence around what its statements can reach.
_ALLOWED_ACTIONS = {
    sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE, sqlite3.SQLITE_READ,
    sqlite3.SQLITE_SELECT, sqlite3.SQLITE_FUNCTION, sqlite3.SQLITE_TRANSACTION, sqlite3.SQLITE_SAVEPOINT,
    sqlite3.SQLITE_RECURSIVE,
}
_DENIED_FUNCTIONS = {"load_extension", "readfile", "writefile", "edit", "fts3_tokenizer"}


def standby_authorizer(action: int, arg1: str | None, arg2: str | None, db: str | None,
                       trigger: str | None) -> int:
    if action not in _ALLOWED_ACTIONS:
        return sqlite3.SQLITE_DENY
    if action == sqlite3.SQLITE_FUNCTION and (arg2 or "").lower() in _DENIED_FUNCTIONS:
        return sqlite3.SQLITE_DENY
    if db not in (None, "main", "temp") and trigger is None:
        return sqlite3.SQLITE_DENY
    return sqlite3.SQLITE_OK
