"""A simulated POS terminal that behaves like a real one.

It publishes orders with unique ids at a steady rate, keeps every order until the hub acks it,
re-sends unacked orders (same order_id) after a timeout, and survives broker and hub restarts
with a persistent session. Used by ``edgehub sim terminal``, the tests and the benchmarks.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.errors import MqttError, MqttRefused

log = logging.getLogger("edgehub.sim.terminal")

MENU = [
    ("BURG-01", "Cheeseburger", "grill"),
    ("FRY-02", "Fries", "fryer"),
    ("WOK-07", "宫保鸡丁 Kung Pao chicken", "wok"),
    ("COLA-33", "Cola 0.33", "bar"),
    ("SAL-04", "Caesar salad", "cold"),
]


@dataclass
class TerminalReport:
    sent: int = 0
    resends: int = 0
    accepted: int = 0
    duplicates: int = 0
    rejected: int = 0
    slowed_down: int = 0  # "rejected" with retry_after_s: sent again later
    unacked: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    acked_ids: set[str] = field(default_factory=set)
    error: str = ""  # why the broker could not be reached or refused us, if it never let us in

    def summary(self) -> dict[str, Any]:
        lat = sorted(self.latencies_ms)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))], 2) if lat else 0.0

        return {"sent": self.sent, "acked": len(self.acked_ids), "accepted": self.accepted,
                "duplicate_acks": self.duplicates, "rejected": self.rejected, "resends": self.resends,
                "unacked": self.unacked, "slowed_down": self.slowed_down, "p50_ms": pct(0.50), "p99_ms": pct(0.99),
                **({"error": self.error} if self.error else {})}


def make_order(order_id: str, n: int) -> dict[str, Any]:
    sku, name, station = MENU[n % len(MENU)]
    return {"schema": "order/1", "order_id": order_id, "table": f"T{n % 40 + 1}", "covers": 2,
            "lines": [{"sku": sku, "name": name, "qty": 1 + n % 3, "station": station},
                      {"sku": "COLA-33", "name": "Cola 0.33", "qty": 1, "station": "bar"}]}


# CONNACK codes that a retry cannot change: client id not valid, bad user name or password, not
# authorized (MQTT 5 numbering, which MqttRefused uses for 3.1.1 refusals too).
REFUSED_FOR_GOOD = {0x85, 0x86, 0x87}


class TerminalSim:
    def __init__(self, host: str, port: int, store_id: str, terminal_id: str, password: str,
                 resend_after: float = 2.0, run_id: str | None = None, clean: bool = False) -> None:
        self.host = host
        self.port = port
        self.topics = Topics(store_id)
        self.terminal_id = terminal_id
        self.password = password
        self.resend_after = resend_after
        self.run_id = run_id or secrets.token_hex(3)
        self.clean = clean
        self.report = TerminalReport()
        self._pending: dict[str, tuple[bytes, float, float]] = {}  # id -> (payload, first, last sent)
        self._client: MqttSession | None = None
        self._connected = asyncio.Event()
        self._refused = asyncio.Event()  # the broker said no (credentials, ACL): no use retrying
        self._publishing: set[asyncio.Task[None]] = set()
        self._sending: dict[str, MqttSession] = {}  # order id -> the connection its publish is on

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def _make_client(self) -> MqttSession:
        return MqttSession(self.host, self.port, username=self.terminal_id, password=self.password,
                           client_id=f"sim-{self.terminal_id}-{self.run_id}", clean_start=self.clean,
                           session_expiry_s=3600, keepalive_s=10, connect_timeout_s=5)

    async def _connection(self) -> None:
        while True:
            try:
                async with self._make_client() as client:
                    await client.subscribe(self.topics.ack(self.terminal_id), qos=1)
                    self._client = client
                    self.report.error = ""
                    self._connected.set()
                    async for message in client.messages:
                        self._on_ack(message.payload)
            except MqttRefused as exc:
                self.report.error = f"the broker at {self.host}:{self.port} refused {self.terminal_id}: {exc}"
                if exc.reason_code in REFUSED_FOR_GOOD:
                    # A wrong password, an unknown terminal: the broker will not change its mind.
                    self._refused.set()
                    return
                log.debug("terminal %s refused: %s", self.terminal_id, exc)
            except MqttError as exc:
                if not self._connected.is_set():
                    why = "nothing listens there (connection refused)" if "refused" in str(exc) else str(exc)
                    self.report.error = (f"cannot reach the broker at {self.host}:{self.port}: {why}; is the hub "
                                         "running (make run)?")
                log.debug("terminal %s lost its connection: %s", self.terminal_id, exc)
            finally:
                self._client = None
                self._connected.clear()
            await asyncio.sleep(0.2)

    def _on_ack(self, raw: bytes) -> None:
        try:
            ack = json.loads(raw)
            order_id = ack["order_id"]
        except (ValueError, KeyError, TypeError):
            return
        retry = ack.get("retry_after_s")
        if ack.get("status") == "rejected" and isinstance(retry, int | float) and order_id in self._pending:
            # Not taken (the box asked it to slow down): sent again once that time has passed.
            payload, first, _ = self._pending[order_id]
            self._pending[order_id] = (payload, first, time.perf_counter() - self.resend_after + float(retry))
            self.report.slowed_down += 1
            return
        entry = self._pending.pop(order_id, None)
        if ack.get("duplicate"):
            self.report.duplicates += 1
        if entry is None:
            return  # an ack for an order acked before (a re-send crossed the first ack)
        self.report.acked_ids.add(order_id)
        if ack.get("status") == "accepted":
            self.report.accepted += 1
        else:
            self.report.rejected += 1
        self.report.latencies_ms.append((time.perf_counter() - entry[1]) * 1000)

    async def _send(self, order_id: str, payload: bytes) -> bool:
        """Hand the order to the MQTT session, as a till's app does: the broker's PUBACK is not
        waited for here (the hub's ack is what counts, and the re-send covers a lost publish), so
        a connection that just died never holds up the next send or a re-send. False: nothing
        was handed over (no connection, or this order's last copy is still on its way on it)."""
        client = self._client
        if client is None:
            return False
        if self._sending.get(order_id) is client:
            return False  # its last copy is still on its way on this connection: no second one
        self._sending[order_id] = client
        task = asyncio.create_task(self._publish(client, order_id, payload))
        self._publishing.add(task)
        task.add_done_callback(self._publishing.discard)
        return True

    async def _publish(self, client: MqttSession, order_id: str, payload: bytes) -> None:
        try:
            with contextlib.suppress(MqttError, TimeoutError):
                await client.publish(self.topics.order(self.terminal_id), payload, qos=1, timeout=5)
        finally:
            if self._sending.get(order_id) is client:
                del self._sending[order_id]

    async def _resender(self) -> None:
        while True:
            await asyncio.sleep(min(0.2, self.resend_after / 4))
            now = time.perf_counter()
            for order_id, (payload, first, last) in list(self._pending.items()):
                if now - last >= self.resend_after and order_id in self._pending:
                    self._pending[order_id] = (payload, first, now)
                    if await self._send(order_id, payload):
                        self.report.resends += 1

    async def submit(self, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()
        now = time.perf_counter()
        self._pending[doc["order_id"]] = (payload, now, now)
        self.report.sent += 1
        await self._send(doc["order_id"], payload)

    @property
    def pending(self) -> int:
        """Orders sent and not acked yet."""
        return len(self._pending)

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TerminalSim]:
        """Connected (and reconnecting) with re-sends going, for a caller that submits orders
        itself one at a time."""
        tasks = [asyncio.create_task(self._connection()), asyncio.create_task(self._resender())]
        try:
            yield self
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def run(self, orders: int, rate: float, timeout: float = 60.0) -> TerminalReport:
        """Send ``orders`` orders at ``rate`` per second; return once all are acked or at timeout."""
        async with asyncio.TaskGroup() as tg:
            conn = tg.create_task(self._connection())
            resender = tg.create_task(self._resender())
            connected = tg.create_task(self._connected.wait())
            try:
                async with asyncio.timeout(timeout):
                    # The connection task ends only when the broker refused us.
                    await asyncio.wait([conn, connected], return_when=asyncio.FIRST_COMPLETED)
                    if self._refused.is_set():
                        return self.report
                    start = time.perf_counter()
                    for n in range(orders):
                        delay = start + n / rate - time.perf_counter() if rate > 0 else 0
                        if delay > 0:
                            await asyncio.sleep(delay)
                        await self.submit(make_order(f"{self.terminal_id}-{self.run_id}-{n:06d}", n))
                    while self._pending:  # noqa: ASYNC110 - acks and re-sends change it, each in its place
                        await asyncio.sleep(0.02)
            except TimeoutError:
                pass
            finally:
                self.report.unacked = len(self._pending)
                conn.cancel()
                resender.cancel()
                connected.cancel()
        return self.report


async def run_terminals(sims: list[TerminalSim], orders: int, rate: float, timeout: float,
                        progress: Callable[[str, bool], None] | None = None) -> list[TerminalReport]:
    """Run every terminal to the end. ``progress(line, final)`` hears how far they got: every
    0.25 s (a terminal redraws one line), the last time with ``final`` set."""
    runs = asyncio.gather(*(s.run(orders, rate, timeout) for s in sims))
    if progress is None:
        return list(await runs)
    task = asyncio.ensure_future(runs)
    while not task.done():
        progress(progress_line(sims, orders), False)
        await asyncio.wait([task], timeout=PROGRESS_EVERY_S)
    progress(progress_line(sims, orders), True)
    return list(task.result())


PROGRESS_EVERY_S = 0.25


def progress_line(sims: list[TerminalSim], orders: int) -> str:
    """``pos-1 37/200 sent, 36 acked · pos-2 …``: how far each terminal got."""
    parts = []
    for sim in sims:
        r = sim.report
        lat = sorted(r.latencies_ms)
        p50 = f", ack p50 {lat[len(lat) // 2]:.0f} ms" if lat else ""
        waiting = "" if sim.connected else " (connecting)"
        parts.append(f"{sim.terminal_id} {r.sent}/{orders} sent, {len(r.acked_ids)} acked"
                     f"{f', {r.resends} re-sent' if r.resends else ''}{p50}{waiting}")
    return " · ".join(parts)
