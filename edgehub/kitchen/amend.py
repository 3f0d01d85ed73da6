"""The kitchen's amend rules, as functions of ticket lines: what an amend marks on a ticket (added,
changed, removed), what a served ticket still needs cooked, and a changed header on a ticket."""

from __future__ import annotations

from typing import Any

from edgehub.kitchen.tickets import RUSH_PRIORITY, Ticket


def quantities(lines: list[dict[str, Any]]) -> dict[str, int]:
    out: dict[str, int] = {}
    for line in lines:
        out[line["key"]] = out.get(line["key"], 0) + int(line["qty"])
    return out


def diff_lines(
    old: list[dict[str, Any]], new: list[dict[str, Any]]
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """New lines marked ``added`` / ``changed`` (with ``qty_before``), plus the removed old lines
    marked ``removed``, so the cook sees what moved; and a summary (empty: nothing changed)."""
    before, after = quantities(old), quantities(new)
    marked: list[dict[str, Any]] = []
    summary: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
    seen: set[str] = set()
    for line in new:
        out = {k: v for k, v in line.items() if k not in ("change", "qty_before")}
        key = line["key"]
        if key not in before:
            out["change"] = "added"
            if key not in seen:
                summary["added"].append(line["name"])
        elif before[key] != after[key] and key not in seen:
            out["change"], out["qty_before"] = "changed", before[key]
            summary["changed"].append(line["name"])
        seen.add(key)
        marked.append(out)
    for line in old:
        if line["key"] not in after and line["key"] not in seen:
            marked.append({**{k: v for k, v in line.items() if k != "qty_before"}, "change": "removed"})
            summary["removed"].append(line["name"])
            seen.add(line["key"])
    return marked, {k: v for k, v in summary.items() if v}


def additions(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """What ``new`` has beyond ``old``: new dishes, and the extra quantity of known ones."""
    before = quantities(old)
    extra = []
    for line in new:
        more = int(line["qty"]) - before.get(line["key"], 0)
        before[line["key"]] = max(0, before.get(line["key"], 0) - int(line["qty"]))
        if more > 0:
            extra.append({**line, "qty": more})
    return extra


def apply_header(ticket: Ticket, changed: dict[str, Any]) -> None:
    for key, value in changed.items():
        if key == "rush":
            ticket.rush = bool(value)
            if ticket.rush and ticket.priority < RUSH_PRIORITY:
                ticket.priority = RUSH_PRIORITY
            elif not ticket.rush and ticket.priority == RUSH_PRIORITY:
                ticket.priority = 0
        elif value is None:
            ticket.header.pop(key, None)
        else:
            ticket.header[key] = value
