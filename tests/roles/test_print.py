"""Print jobs on roles: request/response, durability, and failover under every way a printer dies.

Every assertion is what the kitchen would see: each ticket came out, at most one unmarked copy
of it, any extra copy marked REPRINT, never twice on one printer, in order on each printer.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from edgehub.bus.session import V311
from edgehub.roles.roles import Reply
from edgehub.sim.printer import PrinterSim
from tests.roles.conftest import Store, Till, copies, printer_info, running_store, ticket

GRILL = "kitchen-printer.grill"
Fault = Callable[[], Awaitable[None]]


def check_printed_once(sims: list[PrinterSim], jobs: int) -> dict[str, int]:
    """The kitchen's view: every job out, no unmarked duplicate, in order per printer."""
    unmarked: dict[int, int] = {}
    seen: set[int] = set()
    reprints = 0
    for sim in sims:
        out = copies(sim)
        numbers = [n for n, _ in out]
        assert numbers == sorted(set(numbers)), f"printer {sim.address} out of order or twice: {numbers}"
        for n, marked in out:
            seen.add(n)
            reprints += marked
            if not marked:
                unmarked[n] = unmarked.get(n, 0) + 1
    assert seen == set(range(jobs)), f"missing jobs: {sorted(set(range(jobs)) - seen)[:20]}"
    doubled = [n for n, c in unmarked.items() if c > 1]
    assert not doubled, f"jobs printed twice without a REPRINT mark: {doubled}"
    return {"reprints": reprints}


async def test_print_request_response_and_duplicate(store: Store) -> None:
    async with PrinterSim() as sim, Till(store.config) as till:
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: store.roles.serving("receipt-printer") == "prn-c")
        await till.request(
            "receipt-printer",
            "print",
            {"schema": "print/1", "job_id": "r-1", "ticket": ticket(1)},
            correlation=b"c1",
        )
        queued = await till.reply("job_id", "r-1", "queued")
        printed = await till.reply("job_id", "r-1", "printed")
        assert printed["device"] == "prn-c" and printed["reprint"] is False
        assert [c for c, d in till.replies if d is queued] == [b"c1"]
        # A re-send of the same job id is answered, not printed again.
        await till.request(
            "receipt-printer", "print", {"schema": "print/1", "job_id": "r-1", "ticket": ticket(1)}
        )
        await store.wait_for(lambda: any(d.get("duplicate") for d in till.replies_for("job_id", "r-1")))
        dup = next(d for d in till.replies_for("job_id", "r-1") if d.get("duplicate"))
        assert (dup["status"], dup["device"]) == ("printed", "prn-c")  # as the first answer said
        await asyncio.sleep(0.2)
        assert copies(sim) == [(1, False)]


async def test_mqtt311_client_uses_reply_to_and_request_id(store: Store) -> None:
    async with PrinterSim() as sim, Till(store.config, "pos-2", V311) as till:
        await store.add(printer_info("prn-c", sim))
        await till.request(
            "receipt-printer", "print", {"schema": "print/1", "request_id": "q-7", "ticket": ticket(2)}
        )
        done = await till.reply("request_id", "q-7", "printed")
        assert done["job_id"].startswith("job-")
        assert copies(sim) == [(2, False)]


async def test_bad_ticket_is_rejected_with_the_field(store: Store) -> None:
    async with Till(store.config) as till:
        await till.request(
            "receipt-printer",
            "print",
            {"schema": "print/1", "request_id": "bad", "ticket": {"lines": [{"feed": 0}]}},
        )
        await store.wait_for(lambda: bool(till.replies))
        doc = till.replies[-1][1]
        assert doc["status"] == "rejected" and doc["error"].startswith("ticket.lines[0].feed")
        await till.request("scale", "print", {"schema": "print/1", "ticket": ticket(1)})
        await store.wait_for(lambda: len(till.replies) == 2)
        assert "no role 'scale'" in till.replies[-1][1]["error"]


async def run_stream(
    store: Store, sims: list[PrinterSim], jobs: int, faults: dict[int, Callable[[], Awaitable[None]]]
) -> None:
    """Send ``jobs`` tickets to the grill role; run ``faults[n]`` once n jobs have printed."""
    queue = store.roles.printqueue
    start = queue.stats.printed
    for n in range(jobs):
        await queue.submit(GRILL, ticket(n), f"j-{n}", _no_reply())
    for at in sorted(faults):

        def reached(at: int = at) -> bool:
            return queue.stats.printed - start >= at

        await store.wait_for(reached, what=f"{at} jobs printed")
        await faults[at]()
    await store.wait_for(lambda: queue.stats.printed - start >= jobs, timeout=60, what="all printed")
    # Held copies (paper back, cover shut) come out once the printer is fine again.
    await asyncio.sleep(0.3)
    assert queue.waiting(GRILL) == 0


def _no_reply() -> Reply:
    return Reply(None, None, None)


@pytest.mark.parametrize("fault", ["kill", "paper_out", "cover_open", "silent", "slow", "flap"])
async def test_failover_keeps_every_ticket(tmp_path: Path, fault: str) -> None:
    async with running_store(tmp_path / "box") as store, PrinterSim() as a, PrinterSim() as b:
        await store.add(printer_info("prn-a", a))
        await store.add(printer_info("prn-b", b))
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a")

        async def break_a() -> None:
            if fault == "kill":
                await a.kill()
            elif fault == "flap":
                await a.kill()
                await asyncio.sleep(0.05)
                await a.revive()
                await asyncio.sleep(0.05)
                await a.kill()
            elif fault == "slow":
                a.slow = 0.01
            else:
                setattr(a, fault, True)

        async def mend_a() -> None:
            if fault in ("kill", "flap"):
                await a.revive()
            elif fault == "slow":
                a.slow = 0.0
            else:
                setattr(a, fault, False)

        await run_stream(store, [a, b], 80, {10: break_a, 40: mend_a})
        result = check_printed_once([a, b], 80)
        if fault == "slow":
            assert [n for n, _ in copies(a)] == list(range(80)) and not copies(b)
        else:
            assert copies(b), "the spare printed nothing"
        # A failed device that came back took the role back after failback_after_s.
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a", what="failback")
        assert result["reprints"] <= 2


async def serving_changes(store: Store, role: str) -> list[dict[str, Any]]:
    """The role's changes of serving device, as kept in the outbox for the cloud (``audit``)."""
    rows = await store.journal.read(
        lambda conn: conn.execute("SELECT msg_id, payload FROM outbox WHERE stream='audit' ORDER BY seq").fetchall()
    )
    docs = [{"msg_id": m, **json.loads(p)} for m, p in rows]
    return [d for d in docs if d["role"] == role and d["event"] == "serving"]


async def confirmed_in_order(store: Store, role: str) -> list[str]:
    """Job ids in the order the role's printers confirmed them."""
    rows = await store.journal.read(
        lambda conn: conn.execute(
            "SELECT job_id FROM print_jobs WHERE role=? AND state='printed' ORDER BY done_at, seq", (role,)
        ).fetchall()
    )
    return [r[0] for r in rows]


async def test_500_jobs_through_every_fault(tmp_path: Path) -> None:
    """One stream of 500 tickets over two printers. The serving printer fails every way in turn
    while jobs are queued behind the one printing, then both fail at once; each fault must
    really move the role (or, for "slow", must not)."""
    async with running_store(tmp_path / "box") as store, PrinterSim() as a, PrinterSim() as b:
        await store.add(printer_info("prn-a", a))
        await store.add(printer_info("prn-b", b))
        queue = store.roles.printqueue
        sent = 0

        async def send(count: int) -> None:
            nonlocal sent
            for n in range(sent, sent + count):
                await queue.submit(GRILL, ticket(n), f"j-{n}", _no_reply())
            sent += count

        async def printed(count: int, what: str) -> None:
            await store.wait_for(lambda: queue.stats.printed >= count, timeout=60, what=what)

        def knob(sim: PrinterSim, name: str, on: object, off: object) -> tuple[Fault, Fault]:
            async def turn_on() -> None:
                setattr(sim, name, on)

            async def turn_off() -> None:
                setattr(sim, name, off)

            return turn_on, turn_off

        async def flap() -> None:  # up, down, up, down
            await a.kill()
            await asyncio.sleep(0.05)
            await a.revive()
            await asyncio.sleep(0.05)
            await a.kill()

        faults: dict[str, tuple[Fault, Fault]] = {
            "kill": (a.kill, a.revive),  # the plug pulled
            "paper_out": knob(a, "paper_out", True, False),
            "cover_open": knob(a, "cover_open", True, False),
            "silent": knob(a, "silent", True, False),  # takes bytes, answers nothing
            "slow": knob(a, "slow", 0.01, 0.0),  # slow is not failed: no failover
            "flap": (flap, a.revive),
        }
        for fault, (brk, mend) in faults.items():
            await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a", what=f"{fault}: a serves")
            await send(40)
            await printed(sent - 30, f"{fault}: printing")  # 30 queued behind the printer
            await brk()
            if fault != "slow":
                await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-b", what=f"{fault}: moved")
            await send(20)
            await printed(sent, f"{fault}: all printed")
            await mend()
        # Both printers down at once: the jobs wait, the role says so, nothing is dropped.
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a", what="a serves again")
        await send(40)
        await printed(sent - 30, "printing before both fail")
        await a.kill()
        b.paper_out = True
        await store.wait_for(lambda: store.roles.serving(GRILL) is None, what="role down")
        grill = next(r for r in store.roles.status_now() if r["role"] == GRILL)
        assert grill["state"] == "down" and grill["waiting"] > 0
        assert "prn-a failed" in grill["reason"] and "prn-b failed: paper end" in grill["reason"]
        b.paper_out = False  # paper in the spare: the waiting jobs go on there
        await printed(sent, "the jobs that waited")
        await a.revive()
        await send(500 - sent)
        await printed(500, "all 500")
        await asyncio.sleep(0.3)  # held copies (paper back, cover shut) come out by now
        assert queue.waiting(GRILL) == 0 and queue.stats.printed == 500

        result = check_printed_once([a, b], 500)
        assert result["reprints"] <= 12
        # The role confirmed the jobs in the order they were sent, whichever printer served.
        assert await confirmed_in_order(store, GRILL) == [f"j-{n}" for n in range(500)]
        # Each fault moved the role for the reason the printer gave; "both down" left it with
        # none. Each change is one audit row (with its own id) kept for the cloud.
        await store.wait_for(lambda: not store.roles._audit, what="audit rows written")  # noqa: SLF001
        changes = await serving_changes(store, GRILL)
        away = [c["reason"] for c in changes if c["previous"] == "prn-a" and c["device"] == "prn-b"]
        for needle in ("paper end", "cover open", "no answer"):
            assert any(needle in r for r in away), f"no failover for {needle!r}: {away}"
        assert len(away) >= 5  # kill, paper, cover, silent, flap
        assert any(c["device"] is None for c in changes)
        assert len({c["msg_id"] for c in changes}) == len(changes)


async def test_all_printers_down_jobs_wait_and_complete(store: Store) -> None:
    async with PrinterSim() as sim, Till(store.config) as till:
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: store.roles.serving("receipt-printer") == "prn-c")
        await sim.kill()
        await store.wait_for(lambda: store.roles.serving("receipt-printer") is None)
        for n in range(5):
            await till.request(
                "receipt-printer", "print", {"schema": "print/1", "job_id": f"w-{n}", "ticket": ticket(n)}
            )
        for n in range(5):
            queued = await till.reply("job_id", f"w-{n}", "queued")
            # The terminal is told plainly that its job is kept but no printer serves the role.
            assert queued["warning"].startswith("receipt-printer: no healthy printer (prn-c failed")
            assert "the job is kept and prints as soon as a printer serves receipt-printer" in queued["warning"]
        await store.wait_for(lambda: (till.state("receipt-printer") or {}).get("waiting") == 5)
        state = till.state("receipt-printer")
        assert state is not None and state["state"] == "down"
        assert "receipt-printer: no healthy printer" in state["reason"]
        await sim.revive()
        for n in range(5):
            await till.reply("job_id", f"w-{n}", "printed")
        assert [n for n, _ in copies(sim)] == list(range(5))


async def test_jobs_survive_a_restart(tmp_path: Path) -> None:
    async with running_store(tmp_path / "box") as store:
        for n in range(3):
            await store.roles.printqueue.submit("receipt-printer", ticket(n), f"k-{n}", _no_reply())
    async with running_store(tmp_path / "box") as store, PrinterSim() as sim:
        assert store.roles.printqueue.waiting("receipt-printer") == 3
        await store.add(printer_info("prn-c", sim))
        await store.wait_for(lambda: len(copies(sim)) == 3)
        assert copies(sim) == [(0, False), (1, False), (2, False)]


async def test_kitchen_slips_use_the_role_queue_and_reprint_marks(tmp_path: Path) -> None:
    from edgehub.roles import KitchenSlips

    async with running_store(tmp_path / "box") as store, PrinterSim() as a, PrinterSim() as b:
        slips = KitchenSlips(store.roles.printqueue)
        await store.add(printer_info("prn-a", a))
        await store.add(printer_info("prn-b", b))
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a")
        a.slow = 0.5  # the slip is still printing when the printer dies
        await slips.submit(GRILL, "kitchen/t-1/1", {"lines": ["JOB 0007"]})
        await store.wait_for(lambda: bool(a.core._finished), what="slip sent to prn-a")  # noqa: SLF001
        await a.kill()
        await store.wait_for(lambda: len(copies(b)) == 1, what="slip on the spare")
        assert copies(b) == [(7, True)]
        # A role nobody bound yet keeps its slips until one is bound.
        await slips.submit("kitchen-printer.wok", "kitchen/t-2/1", {"lines": ["JOB 0008"]})
        assert store.roles.seats["kitchen-printer.wok"].serving is None
        assert store.roles.printqueue.waiting("kitchen-printer.wok") == 1
        await store.roles.rebind("kitchen-printer.wok", ("prn-b",), 30.0, who="test")
        await store.wait_for(lambda: (8, False) in copies(b))
