"""The pair's part in the serving hub: the epoch, the loud single-copy state, the salvage.

Built by the node (edgehub/pair/node.py) for each hub it starts on the box that takes the
floating address, from narrow parts: the journal, the bus, the outbox, the intake's "accepted"
hooks and the replicator. It is the hub's first component, so its work is done before anything
else of the hub writes:

- a new **epoch** (edgehub/pair/tables.py): the takeover's row, replicated like any change; the
  cloud sees it in every uplink message's ``epoch`` (docs/cloud.md);
- **how many copies** there are, said loudly wherever someone looks: the retained
  ``hub/$copies`` topic terminals read (``one copy since …``), the status's ``pair`` section
  (the page and ``edgehub doctor`` read it), the log, and an ``audit`` row to the cloud at each
  change (``cloud-pair/1``);
- the **salvage** of a box that steps down after serving alone (edgehub/pair/salvage.py): its
  orders through the same path as a terminal's (journal, then the kitchen), its other rows by id.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import Callable, Mapping
from typing import Any

from edgehub.bus import payloads
from edgehub.bus.connection import BusConnection
from edgehub.bus.payloads import Order
from edgehub.bus.topics import Topics
from edgehub.component import Component, Signals, StatusReader
from edgehub.errors import BrokerError, EdgehubError
from edgehub.intake import ORDER_ACCEPTED
from edgehub.pair import salvage, tables
from edgehub.pair.primary import Replicator
from edgehub.pair.record import genesis_hash
from edgehub.store import Journal
from edgehub.store.outbox import add_to_outbox
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.pair")

SALVAGE_TIMEOUT_S = 120.0


class PairService(Component):
    """An async context manager owning its publisher task; ``status`` is the ``pair`` section."""

    def __init__(self, store_id: str, box: str, journal: Journal, bus: BusConnection, topics: Topics,
                 replicator: Replicator, signals: Signals,
                 node_status: Callable[[], dict[str, Any]], clock: Callable[[], float] = time.time) -> None:
        self.store_id = store_id
        self.box = box
        self.journal = journal
        self.bus = bus
        self.topics = topics
        self.replicator = replicator
        self.signals = signals  # salvaged orders go out as ORDER_ACCEPTED, as a till's
        self.node_status = node_status
        self.clock = clock
        self.epoch: tables.Epoch | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._copies_said: tuple[int, float | None] | None = None
        self.salvages: list[dict[str, Any]] = []

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"pair": self.status}

    async def __aenter__(self) -> PairService:
        self._loop = asyncio.get_running_loop()
        rep = self.replicator
        rep.salvage = self._salvage_blocking
        rep.on_change = self.changed
        at = self.clock()

        def begin(conn: Any) -> tables.Epoch:
            if not rep.lineage:
                rep.lineage = tables.new_lineage(conn, self.box)
                if rep.seq == 0:
                    rep.hash = genesis_hash(rep.lineage)
            position = tables.Position(rep.lineage, rep.epoch, rep.seq, rep.hash)
            rep.epoch = position.epoch + 1  # the takeover's own record is the epoch's first
            return tables.begin_epoch(conn, self.box, position, at)

        before = rep.epoch
        try:
            self.epoch = await self.journal.write(begin)
        except BaseException:
            rep.epoch = before
            raise
        rep.one_copy_since = at
        rep.one_copy_reason = "this box took over; the other box is not following yet"
        log.warning("pair: box %s serves store %s from record %d on (epoch %d); one copy until the other box "
                    "follows", self.box, self.store_id, self.epoch.after_seq, self.epoch.epoch)
        await self._audit("takeover", after_seq=self.epoch.after_seq, one_copy_since=at)
        rep.start()
        self._task = asyncio.create_task(self._publish_loop(), name="pair-copies")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)
        self.replicator.salvage = None
        self.replicator.on_change = None

    def changed(self) -> None:
        """The copies changed (called from the replicator's threads)."""
        loop = self._loop
        if loop is not None:
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._changed.set)

    async def _publish_loop(self) -> None:
        while True:
            await self.bus.connected.wait()
            await self._say_copies()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(5.0):
                    await self._changed.wait()
            self._changed.clear()

    async def _say_copies(self) -> None:
        rep = self.replicator
        copies = rep.copies
        since = None if copies == 2 else rep.one_copy_since
        body = payloads.hub_copies(copies, self.box, rep.standby.box, rep.epoch, since,
                                   "" if copies == 2 else rep.one_copy_reason, self.clock())
        key = (copies, since)
        if key != self._copies_said:
            try:
                await self.bus.publish(self.topics.hub_copies, body, qos=1, retain=True)
            except (BrokerError, TimeoutError) as exc:
                log.info("pair: %s not published: %s", self.topics.hub_copies, exc)
                return
            first = self._copies_said is None
            self._copies_said = key
            if not first:
                await self._audit("two-copies" if copies == 2 else "one-copy",
                                  standby=rep.standby.box or None,
                                  one_copy_since=since, reason="" if copies == 2 else rep.one_copy_reason)

    async def _audit(self, event: str, **detail: Any) -> None:
        at = self.clock()
        epoch = self.replicator.epoch
        body = payloads.cloud_pair_event(self.store_id, event, self.box, self.replicator.standby.box, epoch, at,
                                         **detail)
        msg_id = f"pair:{self.store_id}:{epoch}:{event}:{int(at * 1000)}"
        try:
            await self.journal.write(lambda conn: add_to_outbox(conn, "audit", msg_id, body))
        except EdgehubError as exc:
            log.error("pair: the %s event for the cloud was not journaled: %s", event, exc)

    async def status(self) -> dict[str, Any]:
        return {**self.node_status(), **self.replicator.status(),
                "epoch_started": self.epoch.as_dict() if self.epoch else None,
                "salvages": self.salvages[-5:]}

    # --- what a box that served alone hands over -------------------------------------------------

    def _salvage_blocking(self, doc: dict[str, Any]) -> dict[str, Any]:
        loop = self._loop
        if loop is None:
            raise EdgehubError("the pair service is not running")
        future = asyncio.run_coroutine_threadsafe(self.take_salvage(doc), loop)
        return future.result(timeout=SALVAGE_TIMEOUT_S)

    async def take_salvage(self, doc: dict[str, Any]) -> dict[str, Any]:
        """Take what the other box journaled alone; returns the receipt it gets."""
        receipt: dict[str, Any] = {"orders": 0, "orders_known": 0, "orders_refused": 0, "rows": 0,
                                   "rows_known": 0, "sent_counted": 0, "records": {}}
        for entry in doc.get("orders", []):
            try:
                order = Order(str(entry["order_id"]), str(entry["terminal"]), json.loads(entry["payload"]))
                received_at = float(entry["received_at"])
            except (KeyError, TypeError, ValueError) as exc:
                log.error("pair: a salvaged order is not readable (%s): kept in the other box's journal", exc)
                receipt["orders_refused"] += 1
                continue
            (commit,) = await self.journal.accept_orders([order], received_at=received_at)
            if commit.conflict:
                receipt["orders_refused"] += 1
                log.error("pair: salvaged order %s not taken: %s (it stays in the other box's journal, set aside)",
                          order.order_id, commit.conflict)
            elif commit.duplicate:
                receipt["orders_known"] += 1
            else:
                receipt["orders"] += 1
                self.signals.emit(ORDER_ACCEPTED, order)
        rows = [r for r in doc.get("outbox", []) if isinstance(r, dict)]
        tables_rows = doc.get("rows", {}) if isinstance(doc.get("rows"), dict) else {}
        sent = {str(k): int(v) for k, v in (doc.get("sent") or {}).items() if isinstance(v, int)}

        def write(conn: Any) -> tuple[int, int, dict[str, int]]:
            added = known = 0
            for row in rows:
                if row.get("stream") in ("kitchen",) and conn.execute(
                        "SELECT 1 FROM outbox WHERE msg_id = ? AND stream = 'kitchen'", (row["msg_id"],)).fetchone():
                    known += 1
                    continue
                if add_to_outbox(conn, str(row["stream"]), str(row["msg_id"]), str(row["payload"]).encode(),
                                 created_at=float(row["created_at"])):
                    added += 1
                else:
                    known += 1
            copied = {table: salvage.insert_rows(conn, table, list(values))
                      for table, values in tables_rows.items() if isinstance(values, list)}
            salvage.count_sent(conn, sent)
            return added, known, copied

        added, known, copied = await self.journal.write(write)
        receipt.update(rows=added, rows_known=known, records=copied,
                       sent_counted=sum(n for s, n in sent.items() if s not in salvage.REMADE_STREAMS))
        self.salvages.append({**receipt, "at": self.clock(), "from_epoch": doc.get("fork_epoch")})
        log.warning("pair: took the other box's salvage: %d new orders (%d it had already), %d cloud rows, %s",
                    receipt["orders"], receipt["orders_known"], added, copied)
        await self._audit("salvage", **{k: v for k, v in receipt.items() if k != "records"}, tables=copied)
        return receipt
