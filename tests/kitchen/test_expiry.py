"""Open tickets do not pile up: after ``expire_open_after_h`` they close as ``expired``
(journaled, outbox, announced), and a station never holds more than ``max_open_per_station``
in memory (the rest stay in the journal, counted, and still expire). Frozen clock throughout."""

from __future__ import annotations

import dataclasses
import logging
import sqlite3
from pathlib import Path

import pytest

from edgehub.bus.topics import Topics
from edgehub.config import Config, load_config
from edgehub.errors import ConfigError, TicketRefused
from edgehub.kitchen import Kitchen
from edgehub.store import Journal
from tests.conftest import write_config
from tests.kitchen.conftest import FrozenClock, settle
from tests.kitchen.test_kitchen import cmd, make_order, open_ids, outbox, place

HOUR = 3600.0


def states(config: Config) -> dict[str, int]:
    with sqlite3.connect(config.journal.path) as conn:
        return dict(conn.execute("SELECT state, COUNT(*) FROM tickets GROUP BY state").fetchall())


async def test_an_open_ticket_expires_after_the_setting(kitchen: Kitchen, journal: Journal, clock: FrozenClock,
                                                        config: Config) -> None:
    assert config.kitchen.expire_open_after_h == 12
    feed = kitchen.attach("grill")
    await place(kitchen, journal, make_order("o1"))
    await place(kitchen, journal, make_order("o2"))
    await kitchen.command("grill", cmd("start", "o2/grill/1"), "screen")
    await kitchen.command("bar", cmd("bump", "o2/bar/1"), "screen")  # bumped: not open, never expires
    clock.advance(12 * HOUR - 1)
    assert await kitchen.expire_stale() == []
    await kitchen.command("grill", cmd("priority", "o1/grill/1", 2), "screen")  # touched: its clock restarts
    clock.advance(2)
    expired = await kitchen.expire_stale()
    assert sorted(ev.ticket["ticket_id"] for ev in expired) == ["o1/bar/1", "o2/grill/1"]
    assert all(ev.event == "expired" and ev.ticket["state"] == "expired" for ev in expired)
    assert open_ids(kitchen, "grill") == ["o1/grill/1"] and open_ids(kitchen, "bar") == []
    events = []
    while not feed.queue.empty():
        doc = feed.queue.get_nowait()
        if doc.get("event") == "expired":
            events.append(doc)
    assert [e["ticket"]["ticket_id"] for e in events] == ["o2/grill/1"]
    assert events[0]["ticket"]["expired_at"] == pytest.approx(clock.now, abs=0.01)
    cloud = [d for d in outbox(config, "kitchen") if "'event': 'expired'" in str(d)]
    assert len(cloud) == 2
    assert states(config) == {"new": 1, "expired": 2, "ready": 1}
    with pytest.raises(TicketRefused):
        await kitchen.command("grill", cmd("bump", "o2/grill/1"), "screen")
    assert (await kitchen.status())["expired"] == 2


async def test_a_station_beyond_the_cap_stays_bounded_and_says_so(
    config: Config, journal: Journal, clock: FrozenClock, caplog: pytest.LogCaptureFixture
) -> None:
    capped = dataclasses.replace(config.kitchen, max_open_per_station=50)
    topics = Topics(config.store.id)
    caplog.set_level(logging.WARNING, "edgehub.kitchen")
    async with Kitchen(capped, topics, journal, config.store.id, clock=clock, tick_s=3600) as kitchen:
        for i in range(120):
            clock.advance(1)
            await place(kitchen, journal, make_order(f"o{i:03}"))
        grill = open_ids(kitchen, "grill")
        assert len(grill) == 50 and grill[0] == "o070/grill/1" and grill[-1] == "o119/grill/1"
        assert len(kitchen._tickets) <= 2 * 50 and len(kitchen._by_order) <= 50  # noqa: SLF001
        status = await kitchen.status()
        assert status["open"] == {"grill": 120, "bar": 120}
        assert status["open_not_in_memory"] == {"grill": 70, "bar": 70}
        assert any("station grill: 70 open tickets beyond the 50" in w for w in status["warnings"])
        assert any("beyond the 50 its screens show" in r.getMessage() for r in caplog.records)
        with pytest.raises(TicketRefused):  # not held: too old to change from a screen
            await kitchen.command("grill", cmd("bump", "o000/grill/1"), "screen")

        # A restart keeps the right open set: the newest 50, the rest counted.
    async with Kitchen(capped, topics, journal, config.store.id, clock=clock, tick_s=3600) as kitchen:
        assert open_ids(kitchen, "grill") == grill
        assert (await kitchen.status())["open_not_in_memory"] == {"grill": 70, "bar": 70}
        # Expiry reaches the tickets only the journal holds.
        clock.advance(12 * HOUR + 200)
        while await kitchen.expire_stale():
            clock.advance(1)
        await settle(kitchen)
        status = await kitchen.status()
        assert status["open"] == {} and status["warnings"] == [] and status["expired"] == 240
    assert states(config) == {"expired": 240}


async def test_restart_keeps_open_bumped_and_drops_expired(
    config: Config, journal: Journal, clock: FrozenClock
) -> None:
    topics = Topics(config.store.id)
    async with Kitchen(config.kitchen, topics, journal, config.store.id, clock=clock, tick_s=3600) as first:
        await place(first, journal, make_order("old"))
        clock.advance(13 * HOUR)
        await place(first, journal, make_order("new"))
        await first.command("bar", cmd("bump", "new/bar/1"), "screen")
        assert len(await first.expire_stale()) == 2
    async with Kitchen(config.kitchen, topics, journal, config.store.id, clock=clock, tick_s=3600) as second:
        assert open_ids(second, "grill") == ["new/grill/1"] and open_ids(second, "bar") == []
        assert [t["ticket_id"] for t in second.snapshot("bar")["recent"]] == ["new/bar/1"]
        await second.command("bar", cmd("recall", None), "screen")  # the bumped one is still at hand
        assert await second.expire_stale() == []


def test_config_checker_reports_bad_expiry_and_cap(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra="[kitchen]\nexpire_open_after_h = 0\nmax_open_per_station = 10\n")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = "\n".join(caught.value.problems)
    text = path.read_text().splitlines()
    line = {key: i for i, t in enumerate(text, start=1) for key in ("expire_open", "max_open") if t.startswith(key)}
    assert f":{line['expire_open']}: kitchen.expire_open_after_h: must be from 1 to 168 hours" in found
    assert f":{line['max_open']}: kitchen.max_open_per_station: must be from 50 to 5000 tickets" in found


async def test_served_tickets_leave_memory_and_ready_ones_stay_bounded(
    config: Config, journal: Journal, clock: FrozenClock
) -> None:
    """docs/footprint.md, Memory: a kitchen that bumps and serves holds what a restart would load
    (open tickets, the last bumped for recall, ready ones up to the cap), not hours of served ones."""
    capped = dataclasses.replace(config.kitchen, max_open_per_station=50)
    topics = Topics(config.store.id)
    async with Kitchen(capped, topics, journal, config.store.id, clock=clock, tick_s=3600) as kitchen:
        for i in range(300):
            clock.advance(1)
            await place(kitchen, journal, make_order(f"s{i:03}"))
            for station in ("grill", "bar"):
                await kitchen.command(station, cmd("bump", f"s{i:03}/{station}/1"), "screen")
                if i < 200:  # the last 100 stay ready (bumped, not served)
                    await kitchen.command(station, cmd("serve", f"s{i:03}/{station}/1"), "screen")
            kitchen._forget_old()  # noqa: SLF001
        await settle(kitchen)
        # 20 recent per station (recall) + at most 50 ready per station; not 600 tickets.
        assert len(kitchen._tickets) <= 2 * (20 + 50)  # noqa: SLF001
        assert len(kitchen._by_order) <= 20 + 50  # noqa: SLF001
        await kitchen.command("grill", cmd("recall", None), "screen")  # the last bumped, at hand
        await kitchen.command("bar", cmd("serve", "s299/bar/1"), "screen")  # a ready one, at hand
        with pytest.raises(TicketRefused):  # served long ago: only the journal has it
            await kitchen.command("grill", cmd("recall", "s000/grill/1"), "screen")
