"""An order's progress through the kitchen (edgehub/kitchen/progress.py): its state from its
tickets' states, and what the front hears of each ticket change."""

from __future__ import annotations

from typing import Any

import pytest

from edgehub.kitchen.progress import (
    EXPIRED,
    IN_KITCHEN,
    ORDERED,
    READY,
    SERVED,
    VOIDED,
    Change,
    Progress,
    front_event,
    order_state,
    stage,
)


@pytest.mark.parametrize(("states", "expected"), [
    (["new"], IN_KITCHEN),
    (["ready", "in_progress"], IN_KITCHEN),  # one station still cooks
    (["ready", "recalled"], IN_KITCHEN),
    (["ready", "ready"], READY),
    (["ready", "served"], READY),  # the drinks went out, the food waits at the pass
    (["ready", "voided"], READY),
    (["served", "served"], SERVED),
    (["served", "voided"], SERVED),
    (["served", "expired"], SERVED),
    (["expired", "voided"], EXPIRED),
    (["voided", "voided"], VOIDED),
])
def test_an_orders_state_follows_its_tickets(states: list[str], expected: str) -> None:
    assert order_state(states) == expected


@pytest.mark.parametrize(("states", "expected"), [
    ([], None),  # no ticket yet
    (["new"], ORDERED),
    (["new", "voided"], ORDERED),  # an amend took a station's dishes off before anyone cooked
    (["new", "in_progress"], IN_KITCHEN),
    (["new", "ready"], IN_KITCHEN),  # the bar's drinks are up, the wok has not started
    (["recalled"], IN_KITCHEN),
    (["new", "served"], IN_KITCHEN),  # another round on a table already served
    (["ready", "served"], READY),
    (["served"], SERVED),
    (["expired"], EXPIRED),
    (["voided"], VOIDED),
])
def test_the_front_tells_an_untouched_order_apart(states: list[str], expected: str | None) -> None:
    """``stage`` is ``order_state``, with ``ordered`` while no cook has touched a ticket."""
    assert stage(states) == expected


@pytest.mark.parametrize(("before", "after", "ticket_event", "heard"), [
    (None, IN_KITCHEN, "created", None),  # a new order: the ack told the till already
    (IN_KITCHEN, IN_KITCHEN, "started", None),
    (IN_KITCHEN, IN_KITCHEN, "bumped", "ticket_ready"),
    (IN_KITCHEN, READY, "bumped", "order_ready"),
    (READY, READY, "served", None),  # half of it served: still waiting
    (READY, IN_KITCHEN, "recalled", "recalled"),
    (READY, IN_KITCHEN, "created", "recalled"),  # an amend added a dish to a ready order
    (None, IN_KITCHEN, "recalled", "recalled"),  # a served order (no longer held) recalled
    (READY, SERVED, "served", "served"),
    (IN_KITCHEN, VOIDED, "voided", "voided"),
    (IN_KITCHEN, EXPIRED, "expired", "expired"),
])
def test_what_the_front_hears(before: str | None, after: str, ticket_event: str, heard: str | None) -> None:
    assert front_event(before, after, ticket_event) == heard


def ticket(ticket_id: str, state: str, at: float = 100.0, **extra: Any) -> dict[str, Any]:
    order_id, station, _ = ticket_id.split("/")
    return {"ticket_id": ticket_id, "order_id": order_id, "station": station, "state": state,
            "created_at": min(at, 100.0), "updated_at": at, "terminal": "pos-1", "order_no": "7", **extra}


def test_progress_follows_events_and_forgets_what_left_the_kitchen() -> None:
    progress = Progress()
    heard: list[Change | None] = []
    progress.listeners.append(heard.append)
    progress.apply(ticket("o/grill/1", "new"), "created", 100.0)
    progress.apply(ticket("o/bar/1", "new"), "created", 100.0)
    assert [c.event for c in heard if c] == [None, None]
    change = progress.apply(ticket("o/grill/1", "ready", ready_at=110.0), "bumped", 110.0)
    assert (change.event, change.order.state) == ("ticket_ready", IN_KITCHEN)
    change = progress.apply(ticket("o/bar/1", "ready"), "bumped", 120.0)
    assert (change.event, change.order.state, change.order.ready_at) == ("order_ready", READY, 120.0)
    assert progress.get("o") is change.order and change.order.doc()["order_no"] == "7"
    progress.apply(ticket("o/grill/1", "served"), "served", 130.0)
    change = progress.apply(ticket("o/bar/1", "served"), "served", 131.0)
    assert change.event == "served" and progress.get("o") is None and len(progress) == 0


def test_progress_rebuilds_from_the_journals_tickets_and_forgets_old_ready_orders() -> None:
    progress = Progress()
    heard: list[Change | None] = []
    progress.listeners.append(heard.append)
    progress.rebuild([ticket("a/grill/1", "ready", at=50.0), ticket("a/bar/1", "new"),
                      ticket("b/grill/1", "ready", at=60.0), ticket("c/grill/1", "served")])
    assert heard == [None]  # listeners are told to read everything again
    assert [(o.order_id, o.state) for o in progress.orders()] == [("a", IN_KITCHEN), ("b", READY)]
    assert progress.forget_ready_before(70.0) == 1 and progress.get("b") is None
    assert progress.get("a") is not None


def test_at_most_max_orders_are_held_the_oldest_leave_first() -> None:
    progress = Progress(max_orders=3)
    for n in range(5):
        progress.apply(ticket(f"o{n}/grill/1", "new"), "created", 100.0 + n)
    assert [o.order_id for o in progress.orders()] == ["o2", "o3", "o4"]


def test_a_failing_listener_does_not_stop_the_kitchen() -> None:
    progress = Progress()

    def broken(change: Change | None) -> None:
        raise RuntimeError("listener bug")

    seen: list[Change | None] = []
    progress.listeners += [broken, seen.append]
    progress.apply(ticket("o/grill/1", "new"), "created", 100.0)
    assert len(seen) == 1
