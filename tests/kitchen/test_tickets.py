"""The ticket state machine (every move allowed or refused with a reason), colours by age, and
kitchen slips as they come out of a printer: large type, and a VOID slip that says so."""

from __future__ import annotations

import itertools
import json
from typing import Any

import pytest

from drivers.base import DeviceInfo
from drivers.escpos import EscposPrinter
from edgehub.errors import TicketRefused
from edgehub.kitchen import TRANSITIONS, next_state, render_slip
from edgehub.kitchen.tickets import STATES, Ticket, colour
from edgehub.sim.printer import PrintedTicket, PrinterSim

EXPECTED = {
    ("start", "new"): "in_progress",
    ("start", "recalled"): "in_progress",
    ("bump", "new"): "ready",
    ("bump", "in_progress"): "ready",
    ("bump", "recalled"): "ready",
    ("serve", "ready"): "served",
    ("recall", "ready"): "recalled",
    ("recall", "served"): "recalled",
    ("void", "new"): "voided",
    ("void", "in_progress"): "voided",
    ("void", "ready"): "voided",
    ("void", "recalled"): "voided",
    ("expire", "new"): "expired",  # the hub's move: from any open state, final
    ("expire", "in_progress"): "expired",
    ("expire", "recalled"): "expired",
}


@pytest.mark.parametrize(("action", "state"), list(itertools.product(TRANSITIONS, STATES)))
def test_every_move_is_allowed_or_refused_with_a_reason(action: str, state: str) -> None:
    if (action, state) in EXPECTED:
        assert next_state("o1/grill/1", state, action) == EXPECTED[(action, state)]
        return
    with pytest.raises(TicketRefused) as caught:
        next_state("o1/grill/1", state, action)
    reason = caught.value.reason
    assert caught.value.ticket_id == "o1/grill/1" and caught.value.action == action
    assert len(reason) > 20 and "cannot" not in reason.split()[0:1]
    # The reason names where the ticket stands, so a cook knows what to do instead.
    assert state.replace("_", " ") in reason or "voided" in reason


def test_some_reasons_word_for_word() -> None:
    def why(action: str, state: str) -> str:
        with pytest.raises(TicketRefused) as caught:
            next_state("t", state, action)
        return caught.value.reason

    assert why("start", "ready") == "the ticket is ready (bumped); recall it first to work on it again"
    assert why("serve", "in_progress") == "the ticket is in progress, not ready; bump it first"
    assert why("void", "served") == "the ticket was served already; a served ticket cannot be voided"
    assert (
        why("recall", "new")
        == "the ticket is new and still on the screen; only a bumped ticket can be recalled"
    )
    assert why("bump", "voided").startswith("the ticket was voided")


@pytest.mark.parametrize(
    ("age", "expected"),
    [(0, "green"), (479.9, "green"), (480, "amber"), (719.9, "amber"), (720, "red"), (5000, "red")],
)
def test_colour_thresholds(age: float, expected: str) -> None:
    assert colour(age, 480, 720) == expected


TICKET = {
    "ticket_id": "1042/grill/1",
    "order_id": "1042",
    "station": "grill",
    "version": 1,
    "table": "T7",
    "order_no": "42",
    "covers": 2,
    "course": "main",
    "rush": True,
    "created_at": 1_700_000_000.0,
    "note": "allergy: nuts",
    "lines": [
        {
            "sku": "BURG-01",
            "name": "Cheeseburger",
            "qty": 2,
            "modifiers": ["no onions"],
            "note": "well done",
            "key": "a",
        },
        {"sku": "FRY-02", "name": "Fries", "qty": 1, "modifiers": [], "key": "b", "change": "added"},
    ],
}


async def print_through_sim(data: bytes, job_id: str) -> PrintedTicket:
    """Send the slip the way the print queue will: EscposPrinter over TCP to the simulator."""
    async with PrinterSim() as sim:
        printer = EscposPrinter(DeviceInfo("prn-kitchen", "printer", "tcp", sim.address, "escpos"))
        try:
            await printer.print_job(job_id, data)
        finally:
            await printer.close()
        (out,) = [t for t in sim.printed if t.has_content()]
        return out


async def test_kitchen_slip_prints_in_large_type() -> None:
    out = await print_through_sim(render_slip(TICKET), "kitchen/1042/grill/1/1")
    lines = [line for line in out.lines if line.text.strip()]
    texts = [line.text.strip() for line in lines]
    assert texts[0] == "GRILL"
    assert "Order 1042" in texts and "2 covers  main" in texts and "RUSH" in texts
    assert "No. 42" in texts  # the number staff call
    assert "2 x Cheeseburger" in texts and "no onions" in texts and "! well done" in texts
    assert "+ 1 x Fries" in texts and "! allergy: nuts" in texts
    assert texts[1].startswith("Table T7")
    # Large type: every line doubled in width and height, readable across the pass.
    assert all(line.double_width and line.double_height for line in lines)
    assert out.cut


async def test_void_slip_says_void_first_and_last() -> None:
    voided = {**TICKET, "version": 3, "state": "voided", "void_reason": "order cancelled: guest left"}
    out = await print_through_sim(render_slip(voided, "voided"), "kitchen/1042/grill/1/3")
    texts = [line.text.strip() for line in out.lines if line.text.strip()]
    assert texts[0] == "*** VOID ***" and texts[1] == "GRILL"
    # (large type holds 24 characters a line on 80 mm paper, so the reason wraps)
    assert texts[-3:] == ["*** VOID ***", "order cancelled: guest", "left"]
    assert all(line.double_width for line in out.lines if line.text.strip())


def test_changed_slip_marks_removed_lines() -> None:
    from edgehub.sim.printer import PrinterCore

    changed = {
        **TICKET,
        "lines": [
            *TICKET["lines"],
            {"sku": "X", "name": "Onion rings", "qty": 1, "modifiers": [], "key": "c", "change": "removed"},
        ],
    }
    core = PrinterCore()
    session = core.session()
    session.feed(render_slip(changed, "amended"))
    session.close()
    texts = [line.text.strip() for line in core.printed[0].lines if line.text.strip()]
    assert texts[0] == "** CHANGED **" and "-- Onion rings" in texts


@pytest.mark.parametrize("detail", [None, {"added": ["Pommes frites"], "header": {"note": "Allergie: Nüsse"}}])
def test_an_event_is_encoded_once_and_reads_the_same(detail: dict[str, Any] | None) -> None:
    from edgehub.bus import payloads
    from edgehub.kitchen.tickets import Event

    ticket = Ticket("o1/grill/1", "o1", "grill", "pos-1", 1_700_000_000.0,
                    [{"line": 0, "sku": "B", "name": "Bürger \"XL\"", "qty": 1, "modifiers": ["ohne Zwiebeln"]}],
                    header={"table": "T4"}, version=2).doc()
    event = Event(7, "amended" if detail else "created", ticket, 1_700_000_001.5, "pos:pos-1", detail)
    assert event.body == payloads.dumps(event.payload())
    assert json.loads(event.ticket_json) == ticket
    assert payloads.cloud_kitchen_raw("s1", event.body) == payloads.cloud_kitchen("s1", event.payload())


@pytest.mark.parametrize("head", [{}, {"schema": "cloud-order/1", "received_at": 1.5, "n": 2**70}])
def test_encoded_fields_are_spliced_as_if_the_document_was_encoded_whole(head: dict[str, Any]) -> None:
    from edgehub.bus import payloads

    fields = {"order": {"order_id": "Ä-1", "lines": []}, "detail": [1, "x"]}
    spliced = payloads.with_encoded(payloads.dumps(head), {k: payloads.dumps(v) for k, v in fields.items()})  # type: ignore[arg-type]
    assert spliced == json.dumps({**head, **fields}, separators=(",", ":"), ensure_ascii=False).encode()
