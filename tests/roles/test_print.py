"""Print jobs on roles: request/response, durability, and failover under every way a printer dies.

Every assertion is what the kitchen would see: each ticket came out, at most one unmarked copy
of it, any extra copy marked REPRINT, never twice on one printer, in order on each printer.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import aiomqtt
import pytest

from edgehub.sim.printer import PrinterSim
from tests.roles.conftest import Store, Till, copies, printer_info, running_store, ticket

GRILL = "kitchen-printer.grill"


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
        assert dup["status"] == "printed"
        await asyncio.sleep(0.2)
        assert copies(sim) == [(1, False)]


async def test_mqtt311_client_uses_reply_to_and_request_id(store: Store) -> None:
    async with PrinterSim() as sim, Till(store.config, "pos-2", aiomqtt.ProtocolVersion.V311) as till:
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
        await store.wait_for(lambda at=at: queue.stats.printed - start >= at, what=f"{at} jobs printed")
        await faults[at]()
    await store.wait_for(lambda: queue.stats.printed - start >= jobs, timeout=60, what="all printed")
    # Held copies (paper back, cover shut) come out once the printer is fine again.
    await asyncio.sleep(0.3)
    assert queue.waiting(GRILL) == 0


def _no_reply():  # type: ignore[no-untyped-def]
    from edgehub.roles.roles import Reply

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


async def test_500_jobs_through_every_fault(tmp_path: Path) -> None:
    """One stream of 500 tickets over two printers while both fail in turn, every way."""
    async with running_store(tmp_path / "box") as store, PrinterSim() as a, PrinterSim() as b:
        await store.add(printer_info("prn-a", a))
        await store.add(printer_info("prn-b", b))
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a")

        def knob(sim: PrinterSim, name: str, value: object) -> Callable[[], Awaitable[None]]:
            async def turn() -> None:
                setattr(sim, name, value)

            return turn

        async def flap_b() -> None:
            await b.kill()
            await asyncio.sleep(0.05)
            await b.revive()
            await asyncio.sleep(0.05)
            await b.kill()
            await asyncio.sleep(0.05)
            await b.revive()

        faults = {
            30: a.kill,
            60: a.revive,  # plug pulled on the primary
            100: knob(b, "paper_out", True),  # ...and the spare runs out of paper
            130: knob(b, "paper_out", False),
            170: knob(a, "cover_open", True),
            200: knob(a, "cover_open", False),
            240: knob(a, "silent", True),
            270: knob(a, "silent", False),
            300: knob(a, "slow", 0.01),
            330: knob(a, "slow", 0.0),
            360: flap_b,
            380: a.kill,
            420: a.revive,
        }
        await run_stream(store, [a, b], 500, faults)
        result = check_printed_once([a, b], 500)
        assert copies(a) and copies(b)
        assert store.roles.printqueue.stats.printed == 500
        assert result["reprints"] <= 10


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
            await till.reply("job_id", f"w-{n}", "queued")
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
    from drivers.escpos_render import Ticket, render
    from edgehub.roles import KitchenSlips

    async with running_store(tmp_path / "box") as store, PrinterSim() as a, PrinterSim() as b:
        slips = KitchenSlips(store.roles.printqueue)
        await store.add(printer_info("prn-a", a))
        await store.add(printer_info("prn-b", b))
        await store.wait_for(lambda: store.roles.serving(GRILL) == "prn-a")
        a.slow = 0.5  # the slip is still printing when the printer dies
        await slips.submit(GRILL, "kitchen/t-1/1", render(Ticket().text("JOB 0007")))
        await store.wait_for(lambda: bool(a.core._finished), what="slip sent to prn-a")
        await a.kill()
        await store.wait_for(lambda: len(copies(b)) == 1, what="slip on the spare")
        assert copies(b) == [(7, True)]
        # A role nobody bound yet keeps its slips until one is bound.
        await slips.submit("kitchen-printer.wok", "kitchen/t-2/1", render(Ticket().text("JOB 0008")))
        assert store.roles.seats["kitchen-printer.wok"].serving is None
        assert store.roles.printqueue.waiting("kitchen-printer.wok") == 1
        await store.roles.rebind("kitchen-printer.wok", ("prn-b",), 30.0, who="test")
        await store.wait_for(lambda: (8, False) in copies(b))
