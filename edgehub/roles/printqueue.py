"""Durable print jobs: one FIFO per printer role, each job journaled before it is sent.

A terminal publishes ``print/1`` to ``…/role/{role}/cmd/print/{terminal}`` and gets ``queued``
with the job id once the job is durable; ``printed`` follows when the printer confirmed it
(``GS ( H`` or status), or ``sent`` (unconfirmed) from a printer that reports no status
(``status = "none"``).
One job at a time per role, in order. A job stays in the journal until a printer confirms it.

A job is kept as its ticket and rendered when it is sent, for the profile of the printer that
serves the role then (paper width, code page, Chinese font or none): a job that fails over from
an 80 mm printer to a 58 mm one is laid out again for 58 mm. Kitchen slips go the same way.

When the device fails under a job, what happens next is decided by what the driver knows:
``PrinterNotReady(job_sent=False)``, ``PrinterNoAnswer`` or ``PrinterUnreachable`` means nothing
went out, so the job runs again as it is on the device that serves the role next; anything else
(sent but not confirmed, connection lost, no answer) means the first copy may have come out, so
the job runs again marked ``REPRINT``.
Either way the device is reported failed and the job never runs again on it blindly: it goes to
whichever device the failover rule picks. A job that was being sent when the hub itself died
is marked for reprint at start, for the same reason.

A ticket that cannot print on any printer (an EAN-13 barcode that is not 12 or 13 digits, ...)
is refused at intake. One that is in the journal all the same (queued by an older hub) fails
for good when its turn comes: marked ``failed``, the terminal told why, and the next job goes on.
"""

from __future__ import annotations

import asyncio
import base64
import collections
import json
import logging
import sqlite3
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from drivers.escpos_profile import PrinterProfile
from drivers.escpos_render import (
    Text,
    Ticket,
    TicketRenderError,
    render,
    ticket_from_doc,
)
from edgehub.bus import payloads
from edgehub.bus.message import Message
from edgehub.config import LimitsConfig
from edgehub.errors import DeviceError, EdgehubError, JournalError, PayloadError
from edgehub.roles.serving import NO_REPLY, Reply, Requester, Serving
from edgehub.store import Journal

log = logging.getLogger("edgehub.roles.print")

# print_job has its own budget from the driver's timings; this only guards against a driver bug.
JOB_GUARD_S = 300.0
REPRINT_BANNER = "*** REPRINT ***"
FAILED_BEFORE = "this job failed earlier and was not printed: its ticket cannot print"


@dataclass
class PrintJob:
    seq: int
    job_id: str
    role: str
    ticket: dict[str, Any]
    reply: Reply
    reprint: bool = False
    attempts: int = 0
    maybe_on: str = "another printer"  # where the first copy may have come out
    printed_on: str | None = None  # a known job's printer, for the answer to its re-send


@dataclass
class PrintStats:
    queued: int = 0
    printed: int = 0  # done: confirmed, or sent to a printer that reports no status
    unconfirmed: int = 0  # of those, sent to a printer that reports no status
    reprints: int = 0
    rejected: int = 0
    failed: int = 0
    retries: int = 0


def to_ticket(doc: dict[str, Any], reprint_note: str | None) -> Ticket:
    """A validated ``print/1`` ticket as blocks for the renderer; a reprint gets a banner."""
    ticket = Ticket(large_type=bool(doc.get("large_type", False)))
    if reprint_note is not None:
        ticket.add(Text(REPRINT_BANNER, bold=True, align="center"))
        ticket.add(Text(reprint_note, align="center"))
    return ticket_from_doc(doc, ticket)


def to_bytes(doc: dict[str, Any], reprint_note: str | None, profile: PrinterProfile | None = None) -> bytes:
    """The printer bytes of a job for the printer described by ``profile``: rendered from its
    ticket, or given ready (``escpos``, base64, journaled by an older hub), with the reprint
    banner printed in front when it is a reprint."""
    if "escpos" not in doc:
        return render(to_ticket(doc, reprint_note), profile)
    data = base64.b64decode(doc["escpos"])
    if reprint_note is None:
        return data
    banner = Ticket(cut_at_end=False)
    banner.add(Text(REPRINT_BANNER, bold=True, align="center")).add(Text(reprint_note, align="center"))
    return render(banner, profile) + data


class KitchenSlips:
    """A ticket printed on a printer role nobody waits to hear of: the kitchen's station slips
    (``edgehub.kitchen.printing.KitchenPrinter``) and the day's report go through the role's
    durable queue like any other job (rendered when sent)."""

    def __init__(self, queue: PrintQueue) -> None:
        self.queue = queue

    async def submit(self, role: str, job_id: str, slip: dict[str, Any]) -> None:
        self.queue.serving.ensure_role(role)
        await self.queue.submit(role, slip, job_id, NO_REPLY)


class PrintQueue:
    """The print jobs of every printer role; ``run_role`` is the worker of one role."""

    def __init__(self, journal: Journal, serving: Serving, limits: LimitsConfig, wall: Callable[[], float]) -> None:
        self.journal = journal
        self.serving = serving
        self.limits = limits
        self.wall = wall
        self.queues: dict[str, collections.deque[PrintJob]] = collections.defaultdict(collections.deque)
        self._wake: dict[str, asyncio.Event] = collections.defaultdict(asyncio.Event)
        self.stats = PrintStats()

    def waiting(self, role: str) -> int:
        queue = self.queues.get(role)
        return len(queue) if queue else 0

    async def load(self) -> None:
        """Jobs not yet confirmed, in order. One that was on its way when the hub stopped may
        have printed: it runs again marked as a reprint."""

        def load(conn: sqlite3.Connection) -> list[tuple[Any, ...]]:
            conn.execute("UPDATE print_jobs SET reprint=1, state='queued' WHERE state='sending'")
            return conn.execute(
                "SELECT seq, job_id, role, ticket, reply_topic, correlation, request_id, reprint, attempts "
                "FROM print_jobs WHERE state='queued' ORDER BY seq"
            ).fetchall()

        for (
            seq,
            job_id,
            role,
            ticket,
            topic,
            correlation,
            request_id,
            reprint,
            attempts,
        ) in await self.journal.write(load):
            self.queues[role].append(
                PrintJob(
                    seq,
                    job_id,
                    role,
                    _json(ticket),
                    Reply(topic, correlation, request_id),
                    bool(reprint),
                    attempts,
                )
            )
        if any(self.queues.values()):
            log.info("%d print jobs waiting from before", sum(len(q) for q in self.queues.values()))

    # --- intake --------------------------------------------------------------------------------

    async def handle(self, role: str, requester: Requester, message: Message, raw: bytes) -> None:
        try:
            request = payloads.parse_print(raw, self.limits, requester.own_tree)
        except PayloadError as exc:
            self.stats.rejected += 1
            await self.journal.add_deadletter(message.topic, f"print rejected: {exc}", raw)
            refusal = requester.refusal(raw)
            await self.serving.reply(
                refusal, payloads.print_reply(role, "", "rejected", refusal.request_id, error=str(exc))
            )
            return
        reply = requester.reply(request.request.reply_to, request.request.request_id)
        try:
            job, duplicate, status = await self.submit(role, request.ticket, request.job_id, reply)
        except JournalError as exc:
            # Not acknowledged: the terminal sends again and the job is taken once the journal is back.
            log.error("print job for %s not journaled: %s", role, exc)
            return
        await self.serving.reply(
            reply,
            payloads.print_reply(
                role, job.job_id, status, reply.request_id, duplicate=duplicate, device=job.printed_on,
                warning=self.down_warning(role) if status == "queued" else "",
                error=FAILED_BEFORE if status == "failed" else "",
            ),
        )

    def down_warning(self, role: str) -> str:
        """What a terminal is told when its job is durable but no printer serves the role now."""
        seat = self.serving.seats.get(role)
        if seat is None or seat.serving is not None:
            return ""
        return (
            f"{seat.reason or role + ': no printer'}; the job is kept and prints as soon as a "
            f"printer serves {role} ({self.waiting(role)} waiting)"
        )

    async def submit(
        self, role: str, ticket: dict[str, Any], job_id: str | None, reply: Reply
    ) -> tuple[PrintJob, bool, str]:
        """Journal a job (durable on return) and queue it; a known job id is not queued again.
        Returns (job, duplicate, status). Kitchen routing and tests call this directly."""
        job_id = job_id or f"job-{uuid.uuid4().hex[:16]}"
        text = payloads.dumps(ticket).decode()
        at = self.wall()

        def insert(conn: sqlite3.Connection) -> tuple[int, bool, str, str | None]:
            cur = conn.execute(
                "INSERT OR IGNORE INTO print_jobs(job_id, role, created_at, ticket, reply_topic, "
                "correlation, request_id) VALUES (?,?,?,?,?,?,?)",
                (job_id, role, at, text, reply.topic, reply.correlation, reply.request_id),
            )
            if cur.rowcount == 0:
                seq, state, device = conn.execute(
                    "SELECT seq, state, device_id FROM print_jobs WHERE job_id=?", (job_id,)
                ).fetchone()
                return seq, True, state, device
            return int(cur.lastrowid or 0), False, "queued", None

        seq, duplicate, state, device = await self.journal.write(insert)
        job = PrintJob(seq, job_id, role, ticket, reply, printed_on=device if state in ("printed", "sent") else None)
        if not duplicate:
            self.stats.queued += 1
            self.queues[role].append(job)
            self._wake[role].set()
            self.serving.mark_dirty(role)
        return job, duplicate, state if state in ("printed", "sent", "failed") else "queued"

    # --- the worker ------------------------------------------------------------------------------

    async def run_role(self, role: str) -> None:
        queue = self.queues[role]
        while True:
            if not queue:
                self._wake[role].clear()
                await self._wake[role].wait()
                continue
            job = queue[0]
            device = await self.serving.acquire(role)
            try:
                done = await self._attempt(job, device)
            except (EdgehubError, OSError) as exc:
                # Journal trouble: the job stays first in line; try again shortly.
                log.error("print job %s on %s: %s", job.job_id, role, exc)
                done = False
                await asyncio.sleep(1.0)
            except Exception:
                # A driver bug must not stop the role: the job stays first in line.
                log.exception("print job %s on %s failed unexpectedly", job.job_id, role)
                done = False
                await asyncio.sleep(1.0)
            finally:
                self.serving.release(role)
            if done:
                queue.popleft()
                self.serving.mark_dirty(role)
            else:
                self.stats.retries += 1

    async def _attempt(self, job: PrintJob, device: str) -> bool:
        """One try of ``job`` on ``device``: True when it is done (printed, or failed for good),
        False to try again elsewhere."""
        from drivers.escpos import PrinterNotReady

        try:
            driver = await self.serving.open_driver(device)
        except (DeviceError, TimeoutError) as exc:
            await self.serving.device_failed(device, f"cannot open: {exc}")
            return False
        print_job = getattr(driver, "print_job", None)
        if print_job is None:
            await self.serving.device_failed(device, f"driver {driver.name} cannot print tickets")
            return False
        note = f"first copy may have printed on {job.maybe_on}" if job.reprint else None
        profile = getattr(driver, "profile", None)
        try:
            data = to_bytes(job.ticket, note, profile if isinstance(profile, PrinterProfile) else None)
        except Exception as exc:
            # A ticket no printer can print fails for good; one that only this printer's profile
            # cannot take (a code page it lacks, no CJK font on the box to draw for it) goes to
            # another printer, and this one is reported.
            if isinstance(profile, PrinterProfile) and _renders(job.ticket, note):
                await self.serving.device_failed(device, f"cannot print this ticket: {_short(exc)}")
                return False
            await self._fail(job, exc)
            return True
        await self._mark(job, "sending", device)
        try:
            async with asyncio.timeout(JOB_GUARD_S):
                result = await print_job(job.job_id, data)
        except PrinterNotReady as exc:
            if exc.job_sent:
                job.reprint, job.maybe_on = True, device
            await self._mark(job, "queued", None)
            await self.serving.device_failed(device, ", ".join(exc.status.problems()) or str(exc))
            return False
        except (DeviceError, TimeoutError) as exc:
            # Sent (maybe partly) and not confirmed: the first copy may have come out. Unless the
            # driver knows nothing went out (no answer before the job: PrinterNoAnswer).
            if getattr(exc, "job_sent", True):
                job.reprint, job.maybe_on = True, device
            await self._mark(job, "queued", None)
            await self.serving.device_failed(device, _short(exc))
            return False
        confirmed = getattr(result, "confirmed", True)
        status = "printed" if confirmed else "sent"
        try:
            await self._mark(job, status, device)
        except BaseException:
            # It did print: if it has to run again, that copy says so.
            job.reprint, job.maybe_on = True, device
            raise
        self.stats.printed += 1
        self.stats.unconfirmed += not confirmed
        self.stats.reprints += job.reprint
        warning = getattr(result, "warning", "") if confirmed else (
            "sent in full to a printer that reports no status (status = none): not confirmed")
        await self.serving.reply(
            job.reply,
            payloads.print_reply(
                job.role,
                job.job_id,
                status,
                job.reply.request_id,
                device=device,
                reprint=job.reprint,
                warning=warning,
            ),
        )
        return True

    async def _fail(self, job: PrintJob, exc: Exception) -> None:
        """``job`` can never print: out of the journal's queue, the terminal told why."""
        await self._mark(job, "failed", None)
        self.stats.failed += 1
        reason = str(exc) if isinstance(exc, TicketRenderError) else f"cannot render the ticket: {_short(exc)}"
        log.error("print job %s on %s failed, not printed: %s", job.job_id, job.role, reason,
                  exc_info=not isinstance(exc, TicketRenderError))
        await self.serving.reply(
            job.reply, payloads.print_reply(job.role, job.job_id, "failed", job.reply.request_id, error=reason)
        )

    async def _mark(self, job: PrintJob, state: str, device: str | None) -> None:
        at = self.wall()
        if state == "sending":
            job.attempts += 1

        def update(conn: sqlite3.Connection) -> None:
            conn.execute(
                "UPDATE print_jobs SET state=?, device_id=COALESCE(?, device_id), reprint=?, "
                "attempts=?, done_at=? WHERE seq=?",
                (state, device, int(job.reprint), job.attempts,
                 at if state in ("printed", "sent", "failed") else None,
                 job.seq),
            )

        await self.journal.write(update)


def _renders(ticket: dict[str, Any], note: str | None) -> bool:
    """Whether ``ticket`` renders for the default printer profile (80 mm, Chinese font)."""
    try:
        to_bytes(ticket, note)
    except Exception:
        return False
    return True


def _short(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer"
    text = str(exc)
    return text if len(text) < 160 else text[:157] + "..."


def _json(text: str) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(text)
    return doc


def reprints_between(conn: sqlite3.Connection, start: float, end: float) -> int:
    """Jobs created from ``start`` (included) to ``end`` (excluded) that had to print again."""
    (count,) = conn.execute("SELECT COUNT(*) FROM print_jobs WHERE reprint=1 AND created_at >= ? AND created_at < ?",
                            (start, end)).fetchone()
    return int(count)
