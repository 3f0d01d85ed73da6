"""An amend that puts a dish back on a station whose ticket was voided, or adds to a station
whose ticket was served: the dish goes to a new ticket ``{order}/{station}/{n}`` on the station
the amended order routes it to (its own ``station`` first), keeping its place in the order."""

from __future__ import annotations

from typing import Any

from edgehub.bus.payloads import Amend, KdsCommand, Order
from edgehub.kitchen import Kitchen
from edgehub.store import Journal
from tests.kitchen.test_kitchen import place

GRILL = [
    {"line_id": "a", "sku": "BURG-01", "name": "Cheeseburger", "qty": 1, "station": "grill"},
    {"line_id": "b", "sku": "FRY-02", "name": "Fries", "qty": 1, "station": "grill"},
]
# No sku or category rule sends LEMON-01 anywhere (tests/kitchen/conftest.py): only the line's
# own station does; without it the dish would go to the default station ("pass").
LEMONADE = {"line_id": "c", "sku": "LEMON-01", "name": "Lemonade", "qty": 2, "station": "bar"}


def order(lines: list[dict[str, Any]]) -> Order:
    return Order("K-1", "pos-1", {"schema": "order/1", "order_id": "K-1", "table": "T4", "lines": lines})


def amend(amend_id: str, lines: list[dict[str, Any]], **header: Any) -> Amend:
    doc = {"schema": "amend/1", "order_id": "K-1", "amend_id": amend_id, "lines": lines, **header}
    return Amend("K-1", amend_id, "pos-1", doc)


def tickets_of(kitchen: Kitchen) -> dict[str, tuple[str, str]]:
    return {t.ticket_id: (t.station, t.state) for t in kitchen._order_tickets("K-1")}  # noqa: SLF001


async def test_a_dish_put_back_after_its_ticket_was_voided_goes_to_its_station(
    kitchen: Kitchen, journal: Journal
) -> None:
    await place(kitchen, journal, order([*GRILL, LEMONADE]))
    assert tickets_of(kitchen)["K-1/bar/1"] == ("bar", "new")
    await kitchen.amend(amend("A-1", GRILL))
    assert tickets_of(kitchen)["K-1/bar/1"] == ("bar", "voided")

    await kitchen.amend(amend("A-2", [*GRILL, LEMONADE], note="no ice"))

    assert kitchen.snapshot("pass")["tickets"] == []  # not the default station
    (bar,) = kitchen.snapshot("bar")["tickets"]
    assert (bar["ticket_id"], bar["station"], bar["state"]) == ("K-1/bar/2", "bar", "new")
    assert (bar["table"], bar["note"]) == ("T4", "no ice")  # the order's header as amended
    (line,) = bar["lines"]
    # The same line: its place in the order (for the POS and the cloud) and its identity.
    assert (line["name"], line["qty"], line["line"], line["key"], line["line_id"]) == ("Lemonade", 2, 2, "c", "c")
    assert "change" not in line and "station" not in line
    assert tickets_of(kitchen) == {
        "K-1/grill/1": ("grill", "new"),
        "K-1/bar/1": ("bar", "voided"),
        "K-1/bar/2": ("bar", "new"),
    }

    # A later amend of the same dish is a change on the new ticket, found by its key.
    await kitchen.amend(amend("A-3", [*GRILL, {**LEMONADE, "qty": 3}]))
    (bar,) = kitchen.snapshot("bar")["tickets"]
    assert bar["ticket_id"] == "K-1/bar/2"
    assert [(x["name"], x["qty"], x["line"], x.get("change"), x.get("qty_before")) for x in bar["lines"]] == [
        ("Lemonade", 3, 2, "changed", 2)]


async def test_a_dish_added_after_its_ticket_was_served_goes_to_its_station(
    kitchen: Kitchen, journal: Journal
) -> None:
    await place(kitchen, journal, order([*GRILL, LEMONADE]))
    await kitchen.command("bar", KdsCommand("c", "bump", "K-1/bar/1", None), "t")
    await kitchen.command("bar", KdsCommand("c", "serve", "K-1/bar/1", None), "t")
    await kitchen.amend(amend("A-1", GRILL))  # on the table already: nothing to void
    assert tickets_of(kitchen)["K-1/bar/1"] == ("bar", "served")

    iced_tea = {"line_id": "d", "sku": "TEA-07", "name": "Iced tea", "qty": 1, "station": "bar"}
    await kitchen.amend(amend("A-2", [*GRILL, {**LEMONADE, "qty": 3}, iced_tea]))

    assert kitchen.snapshot("pass")["tickets"] == []
    (bar,) = kitchen.snapshot("bar")["tickets"]
    assert (bar["ticket_id"], bar["station"], bar["state"]) == ("K-1/bar/2", "bar", "new")
    # Only what was not served yet: the third lemonade and the new iced tea.
    assert [(x["name"], x["qty"], x["line"], x["key"]) for x in bar["lines"]] == [
        ("Lemonade", 1, 2, "c"), ("Iced tea", 1, 3, "d")]
    assert tickets_of(kitchen) == {
        "K-1/grill/1": ("grill", "new"),
        "K-1/bar/1": ("bar", "served"),
        "K-1/bar/2": ("bar", "new"),
    }


async def test_a_dish_on_a_station_new_to_the_order_goes_where_it_names(
    kitchen: Kitchen, journal: Journal
) -> None:
    """Same path as a voided ticket: the station had no ticket of this order yet."""
    await place(kitchen, journal, order(GRILL))
    await kitchen.amend(amend("A-1", [*GRILL, LEMONADE]))
    (bar,) = kitchen.snapshot("bar")["tickets"]
    assert bar["ticket_id"] == "K-1/bar/1" and [(x["name"], x["line"]) for x in bar["lines"]] == [("Lemonade", 2)]
    assert kitchen.snapshot("pass")["tickets"] == []
