"""Kitchen slips: a station's ticket printed in large type on the station's printer role.

``KitchenPrinter`` is all the kitchen needs from the durable print queue (edgehub/devices/…,
which owns roles, spares and failover): ``submit(role, job_id, ticket_bytes)``. Job ids are
stable (``kitchen/{ticket_id}/{version}``), so a queue that keeps job ids prints a slip once
however often it is submitted. Slips are rendered with drivers/escpos_render.py.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from drivers.escpos_render import PrinterProfile, Ticket, columns, render

__all__ = ["KitchenPrinter", "job_id", "render_slip"]


class KitchenPrinter(Protocol):
    async def submit(self, role: str, job_id: str, ticket_bytes: bytes) -> None: ...


def job_id(ticket: dict[str, Any]) -> str:
    return f"kitchen/{ticket['ticket_id']}/{ticket['version']}"


# What the slip says on top, per ticket event.
_TITLES = {"created": "", "amended": "** CHANGED **", "voided": "*** VOID ***", "recalled": "** RECALL **"}


def render_slip(
    ticket: dict[str, Any], event: str = "created", profile: PrinterProfile | None = None
) -> bytes:
    """The ESC/POS bytes of a station slip: large type (readable across the pass), the station,
    table, order and time, each line with qty, modifiers and note; a VOID slip says so first
    and last, so a cook holding half of it still knows."""
    profile = profile or PrinterProfile()
    width = profile.columns // 2  # large type is double width
    slip = Ticket(large_type=True)
    banner = _TITLES.get(event, "")
    if banner:
        slip.title(banner)
    slip.title(ticket["station"].upper())
    where = f"Table {ticket['table']}" if ticket.get("table") else "No table"
    stamp = time.strftime("%H:%M", time.localtime(ticket["created_at"]))
    slip.text(columns(where, stamp, width))
    slip.text(f"Order {ticket['order_id']}")
    extras = [f"{ticket['covers']} covers" if ticket.get("covers") else "", str(ticket.get("course") or "")]
    if any(extras):
        slip.text("  ".join(e for e in extras if e))
    if ticket.get("rush"):
        slip.text("RUSH", align="center")
    slip.rule()
    for line in ticket["lines"]:
        change = line.get("change")
        if change == "removed":
            slip.text(f"-- {line['name']}")  # struck out on the slip: the dish is off
            continue
        mark = {"added": "+ ", "changed": "* "}.get(change or "", "")
        slip.text(f"{mark}{line['qty']} x {line['name']}")
        for modifier in line.get("modifiers", ()):
            slip.text(f"   {modifier}")
        if line.get("note"):
            slip.text(f"   ! {line['note']}")
    if ticket.get("note"):
        slip.rule()
        slip.text(f"! {ticket['note']}")
    if event == "voided":
        slip.rule()
        slip.title("*** VOID ***")
        if ticket.get("void_reason"):
            slip.text(str(ticket["void_reason"]))
    slip.cut()
    return render(slip, profile)
