"""Which station cooks which order line.

A line goes to the station it names (``"station": "grill"``), else to the station a config rule
gives its sku, else its category, else to ``kitchen.default_station``. Everything the cook needs
travels with the line (qty, modifiers, note); the order's table, covers, course, note and rush
travel on the ticket. ``route`` is pure: no I/O, no clock, so it is tested on its own.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from edgehub.config import KitchenConfig

# The order fields a ticket carries for the cook (the rest stays in the journal's order);
# ``order_no`` is the order's short number (``payloads.order_no_of``), set by the kitchen.
HEADER_FIELDS = ("order_no", "table", "covers", "course", "note", "rush")


@dataclass(frozen=True)
class Routed:
    """One station's share of an order: the ticket header fields and its lines."""

    station: str
    header: Mapping[str, Any]
    lines: tuple[dict[str, Any], ...]


class Router:
    def __init__(self, config: KitchenConfig) -> None:
        self.config = config

    def station_for(self, line: Mapping[str, Any]) -> str:
        station = line.get("station")
        if isinstance(station, str) and station:
            return station
        sku = line.get("sku")
        if isinstance(sku, str) and sku in self.config.sku_rules:
            return self.config.sku_rules[sku]
        category = line.get("category")
        if isinstance(category, str) and category in self.config.category_rules:
            return self.config.category_rules[category]
        return self.config.default_station

    def route(
        self, doc: Mapping[str, Any], lines: Iterable[Mapping[str, Any]] | None = None
    ) -> dict[str, Routed]:
        """Split an order (``order/1`` document) into one share per station, in line order.

        ``lines`` overrides the document's lines (an amend's new lines with the order's header).
        """
        header = {key: doc[key] for key in HEADER_FIELDS if doc.get(key) is not None}
        shares: dict[str, list[dict[str, Any]]] = {}
        for index, line in enumerate(doc["lines"] if lines is None else lines):
            station = self.station_for(line)
            shares.setdefault(station, []).append(ticket_line(index, line))
        return {station: Routed(station, header, tuple(found)) for station, found in shares.items()}


def ticket_line(index: int, line: Mapping[str, Any]) -> dict[str, Any]:
    """The cook's view of an order line. ``key`` identifies it across amendments: the POS's
    ``line_id`` when it sends one, else what the cook would call the same dish."""
    modifiers = [str(m) for m in line.get("modifiers") or ()]
    out: dict[str, Any] = {
        "line": index,
        "sku": line["sku"],
        "name": line.get("name") or line["sku"],
        "qty": line["qty"],
        "modifiers": modifiers,
    }
    for key in ("note", "category", "line_id"):
        if line.get(key):
            out[key] = line[key]
    out["key"] = str(
        line.get("line_id") or "|".join((line["sku"], *sorted(modifiers), line.get("note") or ""))
    )
    return out
