"""A ticket no printer can print (an EAN-13 barcode of three digits): refused at intake; and one
already in the journal (queued by a hub before the check) fails once and the queue goes on.
Once it blocked its role for good, across restarts, logging the same error every second."""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
from pathlib import Path
from typing import Any

import pytest

from edgehub.bus.session import V5, V311
from edgehub.sim.printer import PrinterSim
from tests.roles.conftest import Store, Till, copies, printer_info, running_store, ticket

EAN_ERROR = "EAN-13 barcode needs 12 or 13 digits, got '123'"
BAD_TICKET = {"lines": [{"barcode": "123", "symbology": "EAN13"}]}


async def print_jobs(store: Store) -> list[tuple[str, str, Any]]:
    return await store.journal.read(
        lambda conn: conn.execute("SELECT job_id, state, done_at FROM print_jobs ORDER BY seq").fetchall()
    )


@pytest.mark.parametrize("protocol", [V5, V311], ids=["V5", "V311"])
async def test_a_ticket_that_cannot_print_is_rejected_naming_the_field(store: Store, protocol: int) -> None:
    async with Till(store.config, protocol=protocol) as till:
        await till.request(
            "receipt-printer",
            "print",
            {"schema": "print/1", "job_id": "j2", "request_id": "r2", "ticket": BAD_TICKET},
        )
        reply = await till.reply("request_id", "r2", ("queued", "rejected"))
        assert reply["status"] == "rejected", reply
        assert reply["error"] == f"ticket.lines[0].barcode: {EAN_ERROR}"
        assert await print_jobs(store) == []
        assert store.roles.printqueue.waiting("receipt-printer") == 0
        assert store.roles.printqueue.stats.rejected == 1


async def test_a_journaled_job_that_cannot_print_fails_once_and_the_next_prints(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    box = tmp_path / "box"
    async with running_store(box) as store:
        reply_topic = f"{store.topics.root}/pos/pos-1/replies"

        def queued_before_the_check(conn: sqlite3.Connection) -> None:
            conn.executemany(
                "INSERT INTO print_jobs(job_id, role, created_at, ticket, reply_topic, request_id) "
                "VALUES (?, 'receipt-printer', 0, ?, ?, ?)",
                [("j2", json.dumps(BAD_TICKET), reply_topic, "r2"),
                 ("j3", json.dumps(ticket(3)), reply_topic, "r3")],
            )

        await store.journal.write(queued_before_the_check)

    caplog.set_level(logging.INFO, logger="edgehub.roles.print")
    async with running_store(box) as store, PrinterSim() as sim, Till(store.config) as till:
        queue = store.roles.printqueue
        assert queue.waiting("receipt-printer") == 2
        await store.add(printer_info("prn-c", sim))
        failed = await till.reply("request_id", "r2", ("failed", "printed"))
        assert failed["status"] == "failed" and failed["job_id"] == "j2"
        assert failed["error"] == EAN_ERROR
        printed = await till.reply("request_id", "r3", "printed")
        assert printed["job_id"] == "j3"
        assert copies(sim) == [(3, False)]
        await asyncio.sleep(1.5)  # the worker retried a blocked job every second
        assert [d["status"] for d in till.replies_for("job_id", "j2")] == ["failed"]
        errors = [r for r in caplog.records if r.levelno >= logging.ERROR and "j2" in r.getMessage()]
        assert len(errors) == 1 and EAN_ERROR in errors[0].getMessage()
        assert queue.waiting("receipt-printer") == 0
        assert queue.stats.failed == 1 and queue.stats.retries == 0
        jobs = await print_jobs(store)
        assert [(job_id, state) for job_id, state, _ in jobs] == [("j2", "failed"), ("j3", "printed")]
        assert all(done_at is not None for _, _, done_at in jobs)
        # A re-send of the failed job id is answered with its outcome, not queued again.
        await till.request(
            "receipt-printer", "print", {"schema": "print/1", "job_id": "j2", "ticket": ticket(2)}
        )
        await store.wait_for(lambda: len(till.replies_for("job_id", "j2")) == 2)
        again = till.replies_for("job_id", "j2")[-1]
        assert again["status"] == "failed" and again["duplicate"] is True
        assert queue.waiting("receipt-printer") == 0

    async with running_store(box) as store:
        assert store.roles.printqueue.waiting("receipt-printer") == 0  # nothing comes back
