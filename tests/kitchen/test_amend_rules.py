"""The amend rules on their own: no hub, no journal, just ticket lines."""

from __future__ import annotations

from typing import Any

from edgehub.kitchen.amend import additions, diff_lines


def line(key: str, qty: int, name: str | None = None) -> dict[str, Any]:
    return {"key": key, "sku": key, "name": name or key, "qty": qty}


def test_an_amend_marks_what_was_added_changed_and_removed() -> None:
    old = [line("A", 1), line("B", 2), line("C", 1)]
    new = [line("A", 1), line("B", 3), line("D", 1)]
    marked, summary = diff_lines(old, new)
    assert [(m["key"], m.get("change"), m.get("qty_before")) for m in marked] == [
        ("A", None, None), ("B", "changed", 2), ("D", "added", None), ("C", "removed", None)]
    assert summary == {"added": ["D"], "changed": ["B"], "removed": ["C"]}


def test_the_same_lines_change_nothing() -> None:
    lines = [line("A", 1), line("B", 2)]
    assert diff_lines(lines, [dict(x) for x in lines])[1] == {}


def test_a_served_ticket_needs_only_what_was_added() -> None:
    served = [line("A", 1), line("B", 2)]
    assert additions(served, [line("A", 2), line("B", 1), line("C", 1)]) == [line("A", 1), line("C", 1)]
    assert additions(served, served) == []
