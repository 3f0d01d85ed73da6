"""Ready back to the front: the tills, pagers and the screen at the pass hear when food is ready.

Fed by the kitchen's order progress (edgehub/kitchen/progress.py, the one place that says what
state an order is in), this component

- publishes ``order-ready/1`` (QoS 1) on ``…/ready/{terminal}`` for each change the front cares
  about (a ticket ready, the order ready, back to the kitchen, served, expired, voided): the
  order's own terminal reads it, and so does every terminal of kind ``pager`` or ``display``
  (the broker's ACL); only the hub writes there;
- keeps the pickup board (``pickup-board/1``: the numbers in preparation and those ready in the
  last ``kitchen.ready_on_board_s``), retained on ``…/pickup/board`` and handed to the box's own
  customer page (``/pickup``, edgehub/kitchen/pickup.py); it changes at most ``BOARD_EVERY_S``
  apart, so a rush does not flood the displays.

A message that cannot go out while the broker is away waits (the newest ``MAX_WAITING``) and goes
when the hub is connected again; the board is published again on every connect, since the
broker keeps no retained message across its own restart (persistence is off: docs/design.md).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from edgehub.bus import payloads
from edgehub.bus.topics import Topics
from edgehub.component import BUS_CONNECTED, Bus, Component, Listener, StatusReader, on
from edgehub.config import KitchenConfig
from edgehub.errors import BrokerError
from edgehub.kitchen.kitchen import ScreenFeed
from edgehub.kitchen.progress import IN_KITCHEN, ORDER_PROGRESS, READY, Change, OrderProgress, Progress
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.kitchen.ready")

BOARD_EVERY_S = 0.25  # the board is sent at most this often
BOARD_TICK_S = 1.0  # and looked at this often (a ready number leaves after ready_on_board_s)
BOARD_MAX = 60  # entries per list on the board (a screenful); the totals count them all
MAX_WAITING = 2000  # ready messages kept while the broker is away


@dataclass
class ReadyStats:
    published: int = 0
    waited: int = 0  # published later: the broker was away when it happened
    dropped: int = 0  # more than MAX_WAITING while the broker was away
    boards: int = 0


class ReadyBoard(Component):
    name = "ready"

    def __init__(self, progress: Progress, topics: Topics, bus: Bus | None, config: KitchenConfig,
                 clock: Callable[[], float] = time.time) -> None:
        self.progress = progress
        self.topics = topics
        self.bus = bus
        self.config = config
        self.clock = clock
        self.stats = ReadyStats()
        self.feeds: set[ScreenFeed] = set()  # the /pickup screens
        self._waiting: collections.deque[tuple[str, bytes]] = collections.deque()
        self._dirty = asyncio.Event()
        self._board: dict[str, Any] | None = None
        self._board_key: Any = None
        self._task: asyncio.Task[None] | None = None

    def listens(self) -> Sequence[Listener]:
        return [on(BUS_CONNECTED, self._on_connect), on(ORDER_PROGRESS, self._on_change)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"ready": self._status}

    async def _status(self) -> dict[str, Any]:
        return self.status()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> ReadyBoard:
        self._dirty.set()
        self._task = asyncio.create_task(self._run(), name="pickup-board")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._task)

    # --- order-ready/1 ---------------------------------------------------------------------

    def _on_change(self, change: Change | None) -> None:
        self._dirty.set()
        if change is None or change.event is None:
            return
        body = payloads.dumps(payloads.order_ready(change.event, change.order.doc(), dict(change.ticket),
                                                   change.at))
        topic = self.topics.order_ready(change.order.terminal or "-")
        if self._waiting or not self._send(topic, body):
            self._wait(topic, body)

    def _send(self, topic: str, body: bytes) -> bool:
        if self.bus is None:
            return True
        try:
            self.bus.publish_nowait(topic, body, qos=1)
        except BrokerError:
            return False
        self.stats.published += 1
        return True

    def _wait(self, topic: str, body: bytes) -> None:
        if not self._waiting:
            log.info("\"ready\" messages wait for the broker (the hub is not connected)")
        if len(self._waiting) >= MAX_WAITING:
            self._waiting.popleft()
            self.stats.dropped += 1
            if self.stats.dropped == 1 or self.stats.dropped % 1000 == 0:
                log.warning("%d \"ready\" messages dropped while the broker was away (the newest %d wait)",
                            self.stats.dropped, MAX_WAITING)
        self._waiting.append((topic, body))

    def _on_connect(self, _: None = None) -> None:
        sent = 0
        while self._waiting:
            topic, body = self._waiting[0]
            if not self._send(topic, body):
                return
            self._waiting.popleft()
            self.stats.waited += 1
            sent += 1
        if sent:
            log.info("%d \"ready\" messages that waited for the broker sent", sent)
        self._board_key = None  # publish the board again: the broker may have lost it
        self._dirty.set()

    # --- the board -------------------------------------------------------------------------

    def board(self) -> dict[str, Any]:
        """The pickup board now: in preparation (oldest first) and ready (newest first)."""
        now = self.clock()
        since = now - self.config.ready_on_board_s
        preparing: list[OrderProgress] = []
        ready: list[OrderProgress] = []
        for order in self.progress.orders():
            if order.state == IN_KITCHEN:
                preparing.append(order)
            elif order.state == READY and (order.ready_at or order.since) >= since:
                ready.append(order)
        ready.sort(key=lambda o: o.ready_at or o.since, reverse=True)
        return payloads.pickup_board(
            now, [_entry(o, "since", o.created_at) for o in preparing[:BOARD_MAX]],
            [_entry(o, "ready_at", o.ready_at or o.since) for o in ready[:BOARD_MAX]], len(preparing), len(ready))

    def current(self) -> dict[str, Any]:
        """The board as last sent (what a screen that connects now is given first)."""
        return self._board if self._board is not None else self.board()

    async def _run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(BOARD_TICK_S):
                    await self._dirty.wait()
            self._dirty.clear()
            board = self.board()
            key = (board["preparing"], board["ready"], board["preparing_total"], board["ready_total"])
            if key != self._board_key:
                self._board, self._board_key = board, key
                self._publish_board(board)
                await asyncio.sleep(BOARD_EVERY_S)

    def _publish_board(self, board: dict[str, Any]) -> None:
        self.stats.boards += 1
        for feed in list(self.feeds):
            feed.push(board)
        if self.bus is not None:
            try:
                self.bus.publish_nowait(self.topics.pickup_board, payloads.dumps(board), qos=1, retain=True)
            except BrokerError:
                self._board_key = None  # sent again on the next connect

    def status(self) -> dict[str, Any]:
        board = self.current()
        return {"preparing": board["preparing_total"], "ready": board["ready_total"],
                "orders_held": len(self.progress), "waiting": len(self._waiting), "screens": len(self.feeds),
                **vars(self.stats)}


def _entry(order: OrderProgress, when: str, at: float) -> dict[str, Any]:
    entry: dict[str, Any] = {"order_no": order.order_no, "order_id": order.order_id,
                             "terminal": order.terminal, when: round(at, 3)}
    if order.table:
        entry["table"] = order.table
    return entry
