"""What the cloud pushes down (menu, routing rules, config), kept durably and applied.

The cloud publishes ``cloud/{store}/down/{kind}`` retained at QoS 1 (docs/cloud.md); each
document carries a ``version`` that only grows. The hub stores the newest version of each kind
in the journal (with a receipt in the ``audit`` outbox stream, same commit), acks the MQTT
message only after that commit, then tells whoever listens. Older or equal versions (a retained
copy seen again on reconnect) are ignored. With the WAN down, ``current(kind)`` is the cached
version from the journal, so the store runs on what it last had.

Readers use the registry::

    menu = hub.downlink.current("menu")          # DownlinkDoc | None
    hub.downlink.check("menu", check_menu)       # raise PayloadError: not stored, dead-lettered
    hub.downlink.on_change("menu", kitchen.reload_menu)

A listener registered before the hub starts is called once at start with the cached version (if
any), then with each newer one, so a store that restarts with the WAN down runs on what it had.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from edgehub.errors import EdgehubError, PayloadError
from edgehub.store.outbox import add_to_outbox
from edgehub.uplink import cloudapi
from edgehub.uplink.cloudapi import DOWNLINK_KINDS, DownlinkDoc
from edgehub.uplink.tables import TABLES

log = logging.getLogger("edgehub.uplink.downlink")

Listener = Callable[[DownlinkDoc], object]
Check = Callable[[DownlinkDoc], None]


class Downlink:
    """The registry of the last version of each downlink document. ``async with`` loads it."""

    def __init__(self, journal: Any, store_id: str, clock: Callable[[], float] = time.time) -> None:
        self.journal = journal
        self.store_id = store_id
        self.clock = clock
        self._docs: dict[str, DownlinkDoc] = {}
        self._listeners: dict[str, list[Listener]] = {}
        self._checks: dict[str, list[Check]] = {}
        self._lock = asyncio.Lock()
        self.rejected = 0

    async def __aenter__(self) -> Downlink:
        await self.journal.ensure(TABLES)

        def load(conn: sqlite3.Connection) -> list[tuple[str, int, float, bytes]]:
            return conn.execute("SELECT kind, version, received_at, payload FROM downlink").fetchall()

        for kind, _version, received_at, payload in await self.journal.read(load):
            try:
                self._docs[kind] = cloudapi.parse_downlink(payload, kind, received_at)
            except PayloadError as exc:  # written by this code, so only a damaged row gets here
                log.error("cached %s document unreadable (%s): waiting for the cloud to send it again", kind, exc)
        if self._docs:
            log.info("downlink: running on cached %s",
                     ", ".join(f"{d.kind} v{d.version}" for d in self._docs.values()))
        for doc in list(self._docs.values()):
            try:
                for check in self._checks.get(doc.kind, []):
                    check(doc)
            except PayloadError as exc:  # stored by an older edgehub whose rules were looser
                log.error("cached %s v%d not applied (%s): waiting for a newer version", doc.kind, doc.version, exc)
                continue
            await self._apply(doc)
        return self

    async def __aexit__(self, *exc: object) -> None:
        return None

    # --- what the rest of the hub reads ------------------------------------------------------------

    def current(self, kind: str) -> DownlinkDoc | None:
        if kind not in DOWNLINK_KINDS:
            raise KeyError(f"unknown downlink kind {kind!r} (known: {', '.join(DOWNLINK_KINDS)})")
        return self._docs.get(kind)

    def on_change(self, kind: str, listener: Listener) -> None:
        """Call ``listener(doc)`` with the cached version at start and after each new version of
        ``kind`` is stored."""
        self.current(kind)  # an unknown kind is a programming error: say so now
        self._listeners.setdefault(kind, []).append(listener)

    def check(self, kind: str, check: Check) -> None:
        """Run ``check(doc)`` on each new version of ``kind`` before it is stored; a PayloadError
        from it rejects the document (dead letter, not acked as applied)."""
        self.current(kind)
        self._checks.setdefault(kind, []).append(check)

    def versions(self) -> dict[str, int]:
        return {kind: doc.version for kind, doc in sorted(self._docs.items())}

    # --- what the uplink hands over ----------------------------------------------------------------

    async def receive(self, kind: str, raw: bytes) -> bool:
        """Validate, store (if newer) and apply one document. True when a new version was applied.
        Raises PayloadError for a document that is not valid (the caller dead-letters it)."""
        doc = cloudapi.parse_downlink(raw, kind, self.clock())
        for check in self._checks.get(kind, []):
            check(doc)
        async with self._lock:  # one document at a time, in arrival order
            known = self._docs.get(kind)
            if known is not None and doc.version <= known.version:
                log.debug("downlink %s v%d ignored: v%d is current", kind, doc.version, known.version)
                return False
            receipt = cloudapi.downlink_applied(self.store_id, doc)

            def store(conn: sqlite3.Connection) -> bool:
                row = conn.execute("SELECT version FROM downlink WHERE kind=?", (kind,)).fetchone()
                if row is not None and row[0] >= doc.version:
                    return False
                conn.execute("INSERT INTO downlink(kind, version, received_at, payload) VALUES (?,?,?,?) "
                             "ON CONFLICT(kind) DO UPDATE SET version=excluded.version, "
                             "received_at=excluded.received_at, payload=excluded.payload",
                             (kind, doc.version, doc.received_at, raw))
                add_to_outbox(conn, "audit", f"down:{kind}:{doc.version}", receipt, created_at=doc.received_at)
                return True

            if not await self.journal.write(store):
                return False
            self._docs[kind] = doc
            log.info("downlink: %s v%d stored and applied", kind, doc.version)
            await self._apply(doc)
            return True

    async def _apply(self, doc: DownlinkDoc) -> None:
        for listener in self._listeners.get(doc.kind, []):
            try:
                result = listener(doc)
                if asyncio.iscoroutine(result):
                    await result
            except Exception:  # a broken consumer must not stop the next version
                log.exception("applying %s v%d failed in %r", doc.kind, doc.version, listener)

    async def reject(self, topic: str, raw: bytes, problem: str) -> None:
        self.rejected += 1
        log.warning("downlink on %s rejected: %s", topic, problem)
        try:
            await self.journal.add_deadletter(topic, f"downlink rejected: {problem}", raw)
        except EdgehubError as exc:
            log.error("downlink dead letter not journaled: %s", exc)

    def status(self) -> dict[str, Any]:
        return {kind: {"version": d.version, "received_at": d.received_at, "issued_at": d.issued_at}
                for kind, d in sorted(self._docs.items())} | ({"rejected": self.rejected} if self.rejected else {})


def summary(doc: DownlinkDoc) -> str:
    return json.dumps({"kind": doc.kind, "version": doc.version})
