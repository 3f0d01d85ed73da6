"""Kitchen slips: a station's ticket printed in large type on the station's printer role.

``KitchenPrinter`` is all the kitchen needs from the durable print queue (edgehub/roles/…,
which owns roles, spares and failover): ``submit(role, job_id, slip)``, the slip a ticket in the
``print/1`` shape, rendered when it is sent for the printer that serves the role then (a 58 mm
spare gets a slip laid out for 58 mm). Job ids are stable (``kitchen/{ticket_id}/{version}``),
so a queue that keeps job ids prints a slip once however often it is submitted.
"""

from __future__ import annotations

import time
from typing import Any, Protocol

from drivers.escpos_profile import PrinterProfile
from drivers.escpos_render import render, ticket_from_doc

__all__ = ["KitchenPrinter", "job_id", "render_slip", "slip_ticket"]


class KitchenPrinter(Protocol):
    async def submit(self, role: str, job_id: str, slip: dict[str, Any]) -> None: ...


def job_id(ticket: dict[str, Any]) -> str:
    return f"kitchen/{ticket['ticket_id']}/{ticket['version']}"


# What the slip says on top, per ticket event.
_TITLES = {"created": "", "amended": "** CHANGED **", "voided": "*** VOID ***", "recalled": "** RECALL **"}


def slip_ticket(ticket: dict[str, Any], event: str = "created") -> dict[str, Any]:
    """A station slip as a ``print/1`` ticket: large type (readable across the pass), the station,
    table, order and time, each line with qty, modifiers and note; a VOID slip says so first
    and last, so a cook holding half of it still knows."""
    lines: list[Any] = []

    def title(text: str) -> None:
        lines.append({"text": text, "bold": True, "double_width": True, "double_height": True, "align": "center"})

    banner = _TITLES.get(event, "")
    if banner:
        title(banner)
    title(ticket["station"].upper())
    where = f"Table {ticket['table']}" if ticket.get("table") else "No table"
    lines.append({"text": where, "right": time.strftime("%H:%M", time.localtime(ticket["created_at"]))})
    if ticket.get("order_no"):
        lines.append(f"No. {ticket['order_no']}")  # the number staff call and the pickup board shows
    lines.append(f"Order {ticket['order_id']}")
    extras = [f"{ticket['covers']} covers" if ticket.get("covers") else "", str(ticket.get("course") or "")]
    if any(extras):
        lines.append("  ".join(e for e in extras if e))
    if ticket.get("rush"):
        lines.append({"text": "RUSH", "align": "center"})
    lines.append({"rule": "-"})
    for line in ticket["lines"]:
        change = line.get("change")
        if change == "removed":
            lines.append(f"-- {line['name']}")  # struck out on the slip: the dish is off
            continue
        mark = {"added": "+ ", "changed": "* "}.get(change or "", "")
        lines.append(f"{mark}{line['qty']} x {line['name']}")
        for modifier in line.get("modifiers", ()):
            lines.append(f"   {modifier}")
        if line.get("note"):
            lines.append(f"   ! {line['note']}")
    if ticket.get("note"):
        lines.append({"rule": "-"})
        lines.append(f"! {ticket['note']}")
    if event == "voided":
        lines.append({"rule": "-"})
        title("*** VOID ***")
        if ticket.get("void_reason"):
            lines.append(str(ticket["void_reason"]))
    lines.append({"cut": True})
    return {"large_type": True, "lines": lines}


def render_slip(
    ticket: dict[str, Any], event: str = "created", profile: PrinterProfile | None = None
) -> bytes:
    """The ESC/POS bytes of a station slip for a printer described by ``profile``."""
    return render(ticket_from_doc(slip_ticket(ticket, event)), profile)
