"""A store's minutes for the power-cut tests: a real hub (``edgehub run --simulate``: its
Mosquitto, printers and pinpad) with its journal on a recorded disk, and three tills sending
orders, print jobs and payments, each answer's arrival timed on the clock the disk's log uses.

``Tills`` keeps what a terminal knows: what it sent, and when the hub acknowledged it
(``accepted`` for an order, ``queued`` for a print job, each payment status). A power cut at
time T must keep everything acknowledged before T (``check_journal``); ``resend_all`` sends
it all again to a hub started on what the cut left, as terminals that never saw (or lost) the
answer would, and nothing may be taken twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sqlite3
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Config, load_config
from edgehub.store import Journal
from tests.conftest import write_config

STORE = "s1"
TILLS = ("pos-1", "pos-2", "pos-3")
PRINT_ROLE = "receipt-printer"
PAY_ROLE = "pinpad"
FINAL_PAYMENT = ("approved", "declined", "aborted", "not_found", "void")


def store_config(directory: Path, data_dir: Path) -> Path:
    """A managed hub (it starts its own Mosquitto) whose journal lives in ``data_dir``."""
    # No per-terminal quota: after a restart the tills send everything again at once.
    path = write_config(directory, store=STORE, terminals=TILLS, mode="managed", extra="[limits]\norders_per_s = 0\n")
    text = path.read_text().replace('data_dir = "data"', f'data_dir = "{data_dir}"')
    text = text.replace('run_dir = "run"', f'run_dir = "{directory / "run"}"')
    path.write_text(text)
    return path


def order_doc(order_id: str, n: int) -> dict[str, Any]:
    return {"schema": "order/1", "order_id": order_id, "table": f"T{n % 30}", "covers": 2,
            "lines": [{"sku": "GBJD-01", "name": "宫保鸡丁", "qty": 1, "station": "wok"},
                      {"sku": "TEA-01", "name": "Jasmine tea", "qty": 2, "station": "bar"}]}


def job_doc(job_id: str) -> dict[str, Any]:
    return {"schema": "print/1", "job_id": job_id,
            "ticket": {"lines": [f"Receipt {job_id}", {"rule": "-"}, "宫保鸡丁 x1  38.00", {"cut": True}]}}


def pay_doc(payment_id: str, n: int) -> dict[str, Any]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": f"sale-{n}", "amount_cents": 3800 + n}


@dataclass
class Tills:
    """What the store's terminals sent and were told, with monotonic ns of each answer."""

    config: Config
    orders: dict[str, int] = field(default_factory=dict)  # order_id -> sent at
    accepted: dict[str, int] = field(default_factory=dict)  # order_id -> first ack "accepted"
    order_acks: list[dict[str, Any]] = field(default_factory=list)
    jobs: dict[str, int] = field(default_factory=dict)
    queued: dict[str, int] = field(default_factory=dict)
    job_replies: list[dict[str, Any]] = field(default_factory=list)
    payments: dict[str, int] = field(default_factory=dict)
    payment_status: dict[str, dict[str, int]] = field(default_factory=dict)  # id -> status -> first at
    payment_replies: list[dict[str, Any]] = field(default_factory=list)
    _clients: dict[str, MqttSession] = field(default_factory=dict)
    _tasks: list[asyncio.Task[None]] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        return Topics(self.config.store.id)

    async def __aenter__(self) -> Tills:
        for till in TILLS:
            client = MqttSession(self.config.broker.listen.host, self.config.broker.listen.port,
                                 username=till, password=f"pw-{till}",
                                 client_id=f"cut-{till}-{os.getpid()}-{time.monotonic_ns()}")
            await client.__aenter__()
            await client.subscribe(self.topics.ack(till), qos=1)
            await client.subscribe(self.reply_topic(till), qos=1)
            self._clients[till] = client
            self._tasks.append(asyncio.create_task(self._listen(client)))
        return self

    async def __aexit__(self, *exc: object) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(BaseException):
                await task
        for client in self._clients.values():
            with contextlib.suppress(Exception):
                await client.__aexit__(None, None, None)

    def reply_topic(self, till: str) -> str:
        return self.topics.reply(till)

    async def _listen(self, client: MqttSession) -> None:
        async for message in client.messages:
            now = time.monotonic_ns()
            doc = json.loads(message.payload)
            schema = doc.get("schema")
            if schema == "ack/1":
                self.order_acks.append(doc)
                if doc["status"] == "accepted":
                    self.accepted.setdefault(doc["order_id"], now)
            elif schema == "print-reply/1":
                self.job_replies.append(doc)
                if doc.get("status") == "queued":
                    self.queued.setdefault(doc["job_id"], now)
            elif schema == "pay-reply/1":
                self.payment_replies.append(doc)
                self.payment_status.setdefault(doc["payment_id"], {}).setdefault(doc["status"], now)

    async def order(self, order_id: str, n: int) -> None:
        self.orders.setdefault(order_id, time.monotonic_ns())
        await self._clients["pos-1"].publish(self.topics.order("pos-1"), json.dumps(order_doc(order_id, n)), qos=1)

    async def _request(self, till: str, role: str, command: str, doc: dict[str, Any]) -> None:
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = self.reply_topic(till)
        topic = self.topics.role_command(role, command, till)
        await self._clients[till].publish(topic, json.dumps(doc).encode(), qos=1, properties=props)

    async def print_job(self, job_id: str) -> None:
        self.jobs.setdefault(job_id, time.monotonic_ns())
        await self._request("pos-2", PRINT_ROLE, "print", job_doc(job_id))

    async def pay(self, payment_id: str, n: int) -> None:
        self.payments.setdefault(payment_id, time.monotonic_ns())
        await self._request("pos-3", PAY_ROLE, "pay", pay_doc(payment_id, n))

    async def run(self, seconds: float, order_rate: float = 30.0, job_every_s: float = 0.3,
                  pay_timeout_s: float = 8.0) -> None:
        """Orders at ``order_rate``, a print job every ``job_every_s`` and one payment after
        another, for ``seconds``."""
        deadline = time.monotonic() + seconds

        async def orders() -> None:
            n = 0
            started = time.monotonic()
            while time.monotonic() < deadline:
                await self.order(f"o-{n:05d}", n)
                n += 1
                await asyncio.sleep(max(0.0, started + n / order_rate - time.monotonic()))

        async def jobs() -> None:
            n = 0
            while time.monotonic() < deadline:
                await self.print_job(f"j-{n:05d}")
                n += 1
                await asyncio.sleep(job_every_s)

        async def payments() -> None:
            n = 0
            while time.monotonic() < deadline:
                payment_id = f"p-{n:05d}"
                await self.pay(payment_id, n)
                end = time.monotonic() + pay_timeout_s
                while time.monotonic() < end and not set(self.payment_status.get(payment_id, {})) & set(FINAL_PAYMENT):
                    await asyncio.sleep(0.02)
                n += 1

        await asyncio.gather(orders(), jobs(), payments())

    async def settle(self, timeout: float = 20.0) -> None:
        """Until every order, job and payment sent has its answer (or ``timeout``)."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            answered_jobs = {reply["job_id"] for reply in self.job_replies}
            if (set(self.orders) <= set(self.accepted) and set(self.jobs) <= answered_jobs
                    and all(set(self.payment_status.get(p, {})) & set(FINAL_PAYMENT) for p in self.payments)):
                return
            await asyncio.sleep(0.05)


def acked_before(tills: Tills, cut_ns: int) -> tuple[set[str], set[str], dict[str, str]]:
    """What the terminals had been told was taken before a cut at ``cut_ns``: orders, print jobs,
    and each payment's last status then."""
    orders = {o for o, at in tills.accepted.items() if at < cut_ns}
    jobs = {j for j, at in tills.queued.items() if at < cut_ns}
    payments = {}
    for payment_id, statuses in tills.payment_status.items():
        told = [(at, status) for status, at in statuses.items() if at < cut_ns]
        if told:
            payments[payment_id] = max(told)[1]
    return orders, jobs, payments


async def check_journal(path: Path, orders: set[str], jobs: set[str], payments: dict[str, str]) -> dict[str, int]:
    """The journal a cut left: passes SQLite's full integrity check, opens with the hub's own
    code without being moved aside, and holds every acknowledged order (with its outbox row),
    print job and payment, a payment never behind what its terminal was told."""
    conn = sqlite3.connect(path)
    try:
        problems = conn.execute("PRAGMA integrity_check").fetchall()
        assert problems == [("ok",)], f"{path}: integrity_check: {problems[:5]}"
    finally:
        conn.close()
    journal = Journal(path, STORE)
    async with journal:
        assert not journal.stats.moved_aside, f"{path} was moved aside at open"

        def read(conn: sqlite3.Connection) -> tuple[set[str], set[str], set[str], dict[str, str]]:
            have_orders = {r[0] for r in conn.execute("SELECT order_id FROM orders")}
            outbox = {r[0] for r in conn.execute("SELECT msg_id FROM outbox WHERE stream = 'orders'")}
            have_jobs = {r[0] for r in conn.execute("SELECT job_id FROM print_jobs")}
            have_payments = dict(conn.execute("SELECT payment_id, state FROM payments").fetchall())
            return have_orders, outbox, have_jobs, have_payments

        have_orders, outbox, have_jobs, have_payments = await journal.read(read)
    lost = orders - have_orders
    assert not lost, f"{len(lost)} acked orders lost: {sorted(lost)[:5]}"
    unsent = {f"order:{o}" for o in orders} - outbox
    assert not unsent, f"{len(unsent)} acked orders lost their outbox row: {sorted(unsent)[:5]}"
    lost_jobs = jobs - have_jobs
    assert not lost_jobs, f"{len(lost_jobs)} queued print jobs lost: {sorted(lost_jobs)[:5]}"
    for payment_id, told in payments.items():
        # "processing" is said once the intent is journaled; a pinpad that could not be reached
        # withdraws it (the row goes), so only an outcome the till was told must be there.
        if told in (*FINAL_PAYMENT, "unknown"):
            state = have_payments.get(payment_id)
            assert state is not None, f"payment {payment_id} ({told} on the till) is not in the journal"
            if told in FINAL_PAYMENT:
                assert state == told, f"payment {payment_id} was {told} on the till, the journal says {state}"
    return {"orders": len(have_orders), "jobs": len(have_jobs), "payments": len(have_payments)}


def restart_config(directory: Path, data_dir: Path) -> Config:
    return load_config(store_config(directory, data_dir))
