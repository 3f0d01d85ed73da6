"""The kitchen on a real journal with a frozen clock: tickets from orders, cook actions, POS
amend and cancel, red alerts, restart. What is asserted is what the cook, the POS and the
cloud would see: the station's snapshot, the events a screen got, the slips, the outbox rows."""

from __future__ import annotations

import asyncio
import json
import sqlite3
from typing import Any

import pytest

from edgehub.bus.payloads import Amend, Cancel, KdsCommand, Order
from edgehub.bus.topics import Topics
from edgehub.config import Config
from edgehub.errors import PayloadError, TicketRefused
from edgehub.kitchen import Kitchen
from edgehub.store import Journal
from edgehub.store.outbox import decode_payload
from tests.kitchen.conftest import FrozenClock, SlipCollector, settle


def make_order(order_id: str, **fields: Any) -> Order:
    doc: dict[str, Any] = {
        "schema": "order/1",
        "order_id": order_id,
        "table": "T4",
        "lines": [
            {
                "sku": "BURG-01",
                "name": "Cheeseburger",
                "qty": 2,
                "station": "grill",
                "modifiers": ["no onions"],
            },
            {"sku": "COLA-33", "name": "Cola", "qty": 1},
        ],
    }
    doc.update(fields)
    return Order(order_id, "pos-1", doc)


async def place(kitchen: Kitchen, journal: Journal, order: Order) -> None:
    await journal.accept_order(order)
    kitchen.on_order_accepted(order)
    await settle(kitchen)


def cmd(action: str, ticket_id: str | None, priority: int | None = None) -> KdsCommand:
    return KdsCommand("c", action, ticket_id, priority)


def open_ids(kitchen: Kitchen, station: str) -> list[str]:
    return [t["ticket_id"] for t in kitchen.snapshot(station)["tickets"]]


def outbox(config: Config, stream: str) -> list[dict[str, Any]]:
    with sqlite3.connect(config.journal.path) as conn:
        return [
            json.loads(decode_payload(p))  # orders and kitchen rows are stored deflated
            for (p,) in conn.execute("SELECT payload FROM outbox WHERE stream=? ORDER BY seq", (stream,))
        ]


async def test_an_order_becomes_one_ticket_per_station(
    kitchen: Kitchen, journal: Journal, config: Config
) -> None:
    feed = kitchen.attach("grill")
    await place(kitchen, journal, make_order("o1", rush=True, covers=3))
    assert open_ids(kitchen, "grill") == ["o1/grill/1"] and open_ids(kitchen, "bar") == ["o1/bar/1"]
    grill = kitchen.snapshot("grill")["tickets"][0]
    assert grill["table"] == "T4" and grill["covers"] == 3 and grill["rush"] and grill["priority"] == 5
    assert grill["lines"][0]["modifiers"] == ["no onions"]
    assert feed.queue.get_nowait()["schema"] == "kds-snapshot/1"
    event = feed.queue.get_nowait()
    assert (event["schema"], event["event"], event["seq"]) == ("kds-event/1", "created", 1)
    # Kept for the cloud in the same commit, one row per change.
    rows = outbox(config, "kitchen")
    assert sorted(r["event"]["ticket"]["ticket_id"] for r in rows) == ["o1/bar/1", "o1/grill/1"]
    # Only the grill has a printer role.
    assert kitchen.printer is not None
    jobs = kitchen.printer.jobs  # type: ignore[attr-defined]
    assert [(role, job) for role, job, _ in jobs] == [("kitchen-printer", "kitchen/o1/grill/1/1")]


async def test_tap_start_bump_recall_serve(kitchen: Kitchen, journal: Journal) -> None:
    await place(kitchen, journal, make_order("o1"))
    await place(kitchen, journal, make_order("o2"))
    assert (await kitchen.command("grill", cmd("start", "o1/grill/1"), "t"))["state"] == "in_progress"
    assert (await kitchen.command("grill", cmd("bump", "o1/grill/1"), "t"))["state"] == "ready"
    assert (await kitchen.command("grill", cmd("bump", "o2/grill/1"), "t"))["state"] == "ready"
    snap = kitchen.snapshot("grill")
    assert snap["tickets"] == [] and [t["ticket_id"] for t in snap["recent"]] == ["o2/grill/1", "o1/grill/1"]
    # Recall without an id brings back the last bumped.
    recalled = await kitchen.command("grill", cmd("recall", None), "t")
    assert recalled["ticket_id"] == "o2/grill/1" and recalled["state"] == "recalled"
    assert open_ids(kitchen, "grill") == ["o2/grill/1"]
    await kitchen.command("grill", cmd("serve", "o1/grill/1"), "t")
    with pytest.raises(TicketRefused, match="already served"):
        await kitchen.command("grill", cmd("serve", "o1/grill/1"), "t")


async def test_a_refused_tap_changes_nothing(kitchen: Kitchen, journal: Journal, config: Config) -> None:
    await place(kitchen, journal, make_order("o1"))
    before = kitchen.snapshot("grill")
    rows = len(outbox(config, "kitchen"))
    for action, ticket_id, reason in [
        ("serve", "o1/grill/1", "not ready; bump it first"),
        ("recall", "o1/grill/1", "only a bumped ticket can be recalled"),
        ("start", "o1/bar/1", "no such ticket at grill"),
        ("bump", "nope/grill/1", "no such ticket at grill"),
    ]:
        with pytest.raises(TicketRefused, match=reason):
            await kitchen.command("grill", cmd(action, ticket_id), "t")
    with pytest.raises(TicketRefused, match="nothing was bumped at grill"):
        await kitchen.command("grill", cmd("recall", None), "t")
    assert kitchen.snapshot("grill") == before and len(outbox(config, "kitchen")) == rows
    assert kitchen.stats.refused == 5


async def test_screen_order_is_priority_then_age(
    kitchen: Kitchen, journal: Journal, clock: FrozenClock
) -> None:
    for n in range(3):
        await place(kitchen, journal, make_order(f"o{n}"))
        clock.advance(60)
    assert open_ids(kitchen, "grill") == ["o0/grill/1", "o1/grill/1", "o2/grill/1"]
    await kitchen.command("grill", cmd("priority", "o2/grill/1", 2), "t")
    await kitchen.command("grill", cmd("priority", "o0/grill/1", -1), "t")
    assert open_ids(kitchen, "grill") == ["o2/grill/1", "o1/grill/1", "o0/grill/1"]
    # The POS marks o1 rush: it goes above what the cook raised.
    await kitchen.amend(Amend("o1", "r1", "pos-1", {"schema": "amend/1", "rush": True}))
    assert open_ids(kitchen, "grill") == ["o1/grill/1", "o2/grill/1", "o0/grill/1"]
    with pytest.raises(TicketRefused, match="priority is already 2"):
        await kitchen.command("grill", cmd("priority", "o2/grill/1", 2), "t")


async def test_colours_and_one_red_alert(
    kitchen: Kitchen, journal: Journal, clock: FrozenClock, config: Config
) -> None:
    feed = kitchen.attach("grill")
    await place(kitchen, journal, make_order("o1"))

    def colours(station: str) -> list[str]:
        return [t["colour"] for t in kitchen.snapshot(station)["tickets"]]

    assert colours("grill") == ["green"] and colours("bar") == ["green"]
    clock.advance(299)
    assert colours("grill") == ["green"] and colours("bar") == ["amber"]  # the bar's own thresholds
    assert await kitchen.check_overdue() == []
    clock.advance(1)
    (bar_alert,) = await kitchen.check_overdue()
    assert bar_alert["station"] == "bar" and bar_alert["level"] == "red"
    clock.advance(180)  # 480 s
    assert colours("grill") == ["amber"]
    clock.advance(239)
    assert await kitchen.check_overdue() == []
    clock.advance(1)  # 720 s
    assert colours("grill") == ["red"]
    (alert,) = await kitchen.check_overdue()
    assert (alert["schema"], alert["ticket_id"], alert["age_s"]) == ("kds-alert/1", "o1/grill/1", 720.0)
    assert await kitchen.check_overdue() == []  # once per ticket
    assert "kds-alert/1" in [feed.queue.get_nowait()["schema"] for _ in range(feed.queue.qsize())]
    alerts = [r["event"] for r in outbox(config, "kitchen") if r["event"]["schema"] == "kds-alert/1"]
    assert [a["ticket_id"] for a in alerts] == ["o1/bar/1", "o1/grill/1"]


async def test_a_crowd_of_red_tickets_is_one_log_line_per_station(
    kitchen: Kitchen, journal: Journal, clock: FrozenClock, config: Config, caplog: pytest.LogCaptureFixture
) -> None:
    """A box started after hours off finds every ticket left open overdue at once: each is
    alerted (screens, cloud) but the log says so once per station, not once per ticket."""
    for n in range(8):
        await place(kitchen, journal, make_order(f"o{n}"))
        clock.advance(1)
    clock.advance(3600)
    caplog.set_level("INFO", logger="edgehub.kitchen")
    alerts = await kitchen.check_overdue()
    assert len(alerts) == 16  # a grill and a bar ticket each
    lines = [r.getMessage() for r in caplog.records if "red" in r.getMessage()]
    assert sorted(lines) == [
        "8 tickets at bar turned red at once; the oldest is o0/bar/1 (3608 s)",
        "8 tickets at grill turned red at once; the oldest is o0/grill/1 (3608 s)",
    ]
    alerted = [r["event"]["ticket_id"] for r in outbox(config, "kitchen") if r["event"]["schema"] == "kds-alert/1"]
    assert len(alerted) == 16
    caplog.clear()
    await place(kitchen, journal, make_order("late"))
    clock.advance(3600)
    await kitchen.check_overdue()
    assert sorted(r.getMessage() for r in caplog.records if "red" in r.getMessage()) == [
        "ticket late/bar/1 at bar is red (3600 s)", "ticket late/grill/1 at grill is red (3600 s)"]


async def test_amend_marks_lines_voids_emptied_stations_and_is_applied_once(
    kitchen: Kitchen, journal: Journal, config: Config
) -> None:
    await place(kitchen, journal, make_order("o1"))
    await kitchen.command("grill", cmd("start", "o1/grill/1"), "t")
    amend = Amend(
        "o1",
        "a1",
        "pos-1",
        {
            "schema": "amend/1",
            "order_id": "o1",
            "amend_id": "a1",
            "lines": [
                {
                    "sku": "BURG-01",
                    "name": "Cheeseburger",
                    "qty": 3,
                    "station": "grill",
                    "modifiers": ["no onions"],
                },
                {"sku": "FRY-02", "name": "Fries", "qty": 1, "station": "grill"},
            ],
        },
    )
    assert await kitchen.amend(amend) is False
    seq = kitchen.snapshot("grill")["seq"]
    assert await kitchen.amend(amend) is True  # re-sent: acked again, applied once
    assert kitchen.snapshot("grill")["seq"] == seq
    # The same amend_id for other lines is not that amend again: refused, not acked as a re-send.
    other = Amend("o1", "a1", "pos-1", {**amend.doc, "lines": amend.doc["lines"][:1]})
    with pytest.raises(PayloadError, match="'a1' is taken by another change of order 'o1'"):
        await kitchen.amend(other)
    assert kitchen.snapshot("grill")["seq"] == seq
    (grill,) = kitchen.snapshot("grill")["tickets"]
    assert grill["state"] == "in_progress" and grill["amended"]
    assert [(line["name"], line["qty"], line.get("change")) for line in grill["lines"]] == [
        ("Cheeseburger", 3, "changed"),
        ("Fries", 1, "added"),
    ]
    assert grill["lines"][0]["qty_before"] == 2
    assert kitchen.snapshot("grill")["all_day"] == {"Cheeseburger": 3, "Fries": 1}
    # The cola left the order: the bar's ticket is voided and its screen loses it.
    assert kitchen.snapshot("bar")["tickets"] == []
    jobs = [job for _, job, _ in kitchen.printer.jobs]  # type: ignore[union-attr]
    assert jobs == ["kitchen/o1/grill/1/1", "kitchen/o1/grill/1/3"]  # new, then CHANGED
    assert [
        r["order_id"]
        for r in [json.loads(json.dumps(x["amend"])) for x in outbox(config, "orders") if "amend" in x]
    ] == ["o1"]


async def test_amend_after_bump_and_after_serve(kitchen: Kitchen, journal: Journal) -> None:
    await place(kitchen, journal, make_order("o1"))
    await kitchen.command("grill", cmd("bump", "o1/grill/1"), "t")
    await kitchen.command("bar", cmd("bump", "o1/bar/1"), "t")
    await kitchen.command("bar", cmd("serve", "o1/bar/1"), "t")
    lines = [
        {"sku": "BURG-01", "name": "Cheeseburger", "qty": 3, "station": "grill", "modifiers": ["no onions"]},
        {"sku": "COLA-33", "name": "Cola", "qty": 3},
    ]
    await kitchen.amend(Amend("o1", "a1", "pos-1", {"schema": "amend/1", "lines": lines}))
    # The bumped grill ticket has more to cook: back on the screen.
    (grill,) = kitchen.snapshot("grill")["tickets"]
    assert (grill["ticket_id"], grill["state"]) == ("o1/grill/1", "recalled")
    # The cola was served already: only the two extra go out, on a second bar ticket.
    (bar,) = kitchen.snapshot("bar")["tickets"]
    assert bar["ticket_id"] == "o1/bar/2" and [(x["name"], x["qty"]) for x in bar["lines"]] == [("Cola", 2)]


async def test_cancel_voids_what_is_not_served_and_prints_void(kitchen: Kitchen, journal: Journal) -> None:
    await place(kitchen, journal, make_order("o1"))
    await kitchen.command("bar", cmd("bump", "o1/bar/1"), "t")
    await kitchen.command("bar", cmd("serve", "o1/bar/1"), "t")
    feed = kitchen.attach("grill")
    assert await kitchen.cancel(Cancel("o1", "pos-1", "guest left", {"schema": "cancel/1"})) is False
    assert await kitchen.cancel(Cancel("o1", "pos-1", "guest left", {"schema": "cancel/1"})) is True
    assert kitchen.snapshot("grill")["tickets"] == []
    feed.queue.get_nowait()
    voided = feed.queue.get_nowait()
    assert voided["event"] == "voided" and voided["ticket"]["void_reason"] == "order cancelled: guest left"
    assert feed.queue.empty()
    role, job, data = kitchen.printer.jobs[-1]  # type: ignore[union-attr]
    assert (role, job) == ("kitchen-printer", "kitchen/o1/grill/1/2") and b"*** VOID ***" in data
    with pytest.raises(PayloadError, match="was cancelled"):
        await kitchen.amend(Amend("o1", "a9", "pos-1", {"schema": "amend/1", "rush": True}))
    with pytest.raises(PayloadError, match="no accepted order 'zz'"):
        await kitchen.cancel(Cancel("zz", "pos-1", "", {"schema": "cancel/1"}))


async def test_restart_keeps_state_sequence_and_alerts(
    config: Config, journal: Journal, clock: FrozenClock
) -> None:
    topics = Topics(config.store.id)
    async with Kitchen(config.kitchen, topics, journal, config.store.id, clock=clock, tick_s=3600) as first:
        await place(first, journal, make_order("o1"))
        await place(first, journal, make_order("o2"))
        await first.command("grill", cmd("start", "o2/grill/1"), "t")
        await first.command("grill", cmd("bump", "o1/grill/1"), "t")
        clock.advance(800)
        assert len(await first.check_overdue()) == 3
        before = first.snapshot("grill")
    # An order accepted while the kitchen was down (the hub died between the two commits).
    await journal.accept_order(make_order("o3"))
    async with Kitchen(config.kitchen, topics, journal, config.store.id, clock=clock, tick_s=3600) as second:
        after = second.snapshot("grill")
        assert after["tickets"][:1] == before["tickets"] and after["recent"] == before["recent"]
        assert [t["ticket_id"] for t in after["tickets"]] == ["o2/grill/1", "o3/grill/1"]
        assert after["seq"] == before["seq"] + 1 and second.stats.recovered_orders == 1
        assert await second.check_overdue() == []  # alerted before the restart; o3 is new
    async with Kitchen(config.kitchen, topics, journal, config.store.id, clock=clock, tick_s=3600) as third:
        assert third.stats.recovered_orders == 0  # the watermark moved on


async def test_slip_collector_is_a_kitchen_printer() -> None:
    from edgehub.kitchen import KitchenPrinter

    printer: KitchenPrinter = SlipCollector()
    await printer.submit("kitchen-printer", "job", {"lines": ["x"]})


async def test_a_new_order_shows_at_once_but_never_ahead_of_an_earlier_tap(
    kitchen: Kitchen, journal: Journal, config: Config
) -> None:
    """New tickets go to the screens as soon as their order is durable, before their own
    commit; yet a station's events reach its screens in seq order (a gap means: ask for a
    snapshot), so a tap still being committed goes out first."""
    await place(kitchen, journal, make_order("o1"))
    feed = kitchen.attach("grill")
    assert feed.queue.get_nowait()["schema"] == "kds-snapshot/1"

    # Alone: the new ticket is on the screen before its commit has even been queued.
    order2 = make_order("o2")
    await journal.accept_order(order2)
    kitchen.on_order_accepted(order2)
    event = feed.queue.get_nowait()
    assert (event["event"], event["ticket"]["ticket_id"]) == ("created", "o2/grill/1")
    await settle(kitchen)
    with sqlite3.connect(config.journal.path) as conn:  # and it is journaled after all
        assert conn.execute("SELECT state FROM tickets WHERE ticket_id='o2/grill/1'").fetchone() == ("new",)

    # Behind a tap that is being committed: held until the tap is out, then in order.
    order3 = make_order("o3")
    await journal.accept_order(order3)
    tap = asyncio.create_task(kitchen.command("grill", cmd("start", "o1/grill/1"), "t"))
    await asyncio.sleep(0)  # the tap is decided (seq taken) and waits for its commit
    kitchen.on_order_accepted(order3)
    assert feed.queue.empty()  # held: the tap has the earlier seq
    await tap
    await settle(kitchen)
    events = [feed.queue.get_nowait() for _ in range(feed.queue.qsize())]
    assert [(e["event"], e["ticket"]["ticket_id"]) for e in events] == [
        ("started", "o1/grill/1"), ("created", "o3/grill/1")]
    seqs = [event["seq"], *(e["seq"] for e in events)]
    assert seqs == list(range(seqs[0], seqs[0] + 3))
    assert kitchen.snapshot("grill")["seq"] == seqs[-1]


async def test_a_tap_right_after_an_order_is_journaled_after_its_ticket(
    kitchen: Kitchen, journal: Journal, config: Config
) -> None:
    """New orders' tickets are handed to the journal together, a turn of the loop later; a cook
    (or a native KDS app) tapping the ticket in between must not be overwritten by its creation."""
    orders = [make_order(f"b{n}") for n in range(3)]
    for order in orders:
        await journal.accept_order(order)
    for order in orders:  # a group commit resolves its orders in one turn
        kitchen.on_order_accepted(order)
    started = await kitchen.command("grill", cmd("start", "b1/grill/1"), "t")
    assert started["state"] == "in_progress"
    await settle(kitchen)
    with sqlite3.connect(config.journal.path) as conn:
        states = dict(conn.execute("SELECT ticket_id, state FROM tickets WHERE station='grill'").fetchall())
        events = conn.execute("SELECT ticket_id, event FROM ticket_events WHERE station='grill' ORDER BY id").fetchall()
    assert states == {"b0/grill/1": "new", "b1/grill/1": "in_progress", "b2/grill/1": "new"}
    assert events == [("b0/grill/1", "created"), ("b1/grill/1", "created"), ("b2/grill/1", "created"),
                      ("b1/grill/1", "started")]
    assert len([r for r in outbox(config, "kitchen") if r["event"]["ticket"]["station"] == "grill"]) == 4
