"""The station page in a real headless Chromium, as kitchen staff use it (issue 27): taps of any
length at any moment register while orders keep changing the screen; each bump-bar key does its
job (and a screen's own keys replace the defaults); the type is large, the width filled, and
"N more" says what is off the page; a new and a late ticket sound; the screen says "offline"
when orders cannot reach it; a misspelt station and a wrong secret are refused with what to do.
Screenshots at 1920x1080 and 1024x600 go to the artifacts folder (tests/browser.py).

How fast an order reaches a screen is measured in bench/kitchen.py; these tests wait generously
and assert what a cook would see."""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
import random
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from edgehub.broker import MosquittoProcess
from edgehub.bus.session import MqttSession
from edgehub.config import Config
from edgehub.hub import Hub
from edgehub.kitchen.progress import station_of
from tests.browser import CHROMIUM, CHROMIUM_ARGS, keep, needs_chromium
from tests.conftest import SCREEN_TOKEN, Terminal, display_secret, order, write_config

playwright_api = pytest.importorskip("playwright.async_api")
pytestmark = needs_chromium

# A sound plays without a tap first, as on a kitchen screen set up in kiosk mode (docs/kitchen.md).
BROWSER_ARGS = [*CHROMIUM_ARGS, "--autoplay-policy=no-user-gesture-required"]
GRILL_SECRET = "grill-screen-secret-0123"
KEYS_SECRET = "keys-screen-secret-0123"
BIG_SECRET = "big-screen-secret-01234"
KITCHEN = f"""
[limits]
orders_per_s = 0

[kitchen]
default_station = "pass"
screen_token = "{SCREEN_TOKEN}"

[kitchen.stations.grill]

[kitchen.stations.bar]

[kitchen.stations.fast]
amber_after_s = 1
red_after_s = 2

[[terminal]]
id = "kds-grill"
kind = "kds"
password = "pw-kds-grill"
stations = ["grill"]
screen_token = "{GRILL_SECRET}"

[[terminal]]
id = "kds-big"
kind = "kds"
password = "pw-kds-big"
stations = ["grill"]
screen_token = "{BIG_SECRET}"
screen_scale = 1.5

[[terminal]]
id = "kds-keys"
kind = "kds"
password = "pw-kds-keys"
stations = ["keys2"]
screen_token = "{KEYS_SECRET}"
screen_keys = {{ bump = ["b"], select = ["q", "w", "e"] }}
"""
DISHES = ["宫保鸡丁", "Cheeseburger", "麻婆豆腐", "Fries", "回锅肉", "Caesar salad", "鱼香肉丝", "Cola"]


@pytest.fixture
def config_path(tmp_path: Path) -> Path:
    return write_config(tmp_path / "box", terminals=("pos-1", "pos-2", "kds-1", "display-1"), extra=KITCHEN)


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    async with playwright_api.async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, args=BROWSER_ARGS)
        try:
            yield browser
        finally:
            await browser.close()


async def open_screen(browser: Any, hub: Hub, station: str, token: str = SCREEN_TOKEN, width: int = 1280,
                      height: int = 720, touch: bool = False) -> Any:
    context = await browser.new_context(viewport={"width": width, "height": height}, has_touch=touch)
    page = await context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.errors = errors
    await page.goto(f"{hub.api.url}kds/{station}?token={token}")
    await page.wait_for_selector("#conn.live", timeout=15_000)
    return page


def dish_lines(n: int, station: str) -> list[dict[str, Any]]:
    return [{"sku": f"S{k}", "name": DISHES[(n + k) % len(DISHES)], "qty": 1 + (n + k) % 3, "station": station,
             **({"modifiers": ["不要辣 no chili"]} if (n + k) % 5 == 0 else {})} for k in range(1 + n % 4)]


async def send_orders(config: Config, station: str, count: int, prefix: str = "", table: bool = True) -> list[str]:
    """``count`` orders for ``station``, all sent, then all acks awaited; their ticket ids."""
    ids = []
    async with Terminal(config, "pos-1") as pos:
        for n in range(count):
            order_id = f"{prefix or station}-{n:03d}"
            fields: dict[str, Any] = {"table": f"T{n % 30 + 1}", "covers": 2} if table else {}
            await pos.send(order(order_id, lines=dish_lines(n, station), **fields))
            ids.append(f"{order_id}/{station}/1")
        acks = [await pos.ack() for _ in range(count)]
    assert {a["status"] for a in acks} == {"accepted"}
    return ids


async def wait_state(hub: Hub, ticket_id: str, state: str, timeout: float = 5.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            ticket = hub.kitchen._tickets.get(ticket_id)  # noqa: SLF001
            if ticket is not None and ticket.state == state:
                return
            await asyncio.sleep(0.02)


def state_of(hub: Hub, ticket_id: str) -> str:
    return hub.kitchen._tickets[ticket_id].state  # noqa: SLF001


# --- taps ---------------------------------------------------------------------------------------


async def tap_with_mouse(page: Any, ticket_id: str, hold_s: float) -> None:
    """Press on the card and hold; no press when the card left the page first (raised tickets of
    other orders pushed it to the next page). What was pressed, the page says (``presses``)."""
    # Playwright presses where the card is when the press starts, and only on that card.
    with contextlib.suppress(playwright_api.TimeoutError):
        await page.locator(f'article.ticket[data-ticket="{ticket_id}"]').click(delay=hold_s * 1000, timeout=4_000)


async def tap_with_finger(page: Any, ticket_id: str, hold_s: float) -> None:
    box = await page.locator(f'article.ticket[data-ticket="{ticket_id}"]').bounding_box()
    if box is None:
        return
    x, y = box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
    cdp = page.cdp
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchStart", "touchPoints": [{"x": x, "y": y}]})
    await asyncio.sleep(hold_s)
    await cdp.send("Input.dispatchTouchEvent", {"type": "touchEnd", "touchPoints": []})


# Which ticket each press went down on, as the page itself saw it (a capture listener the test
# adds): a click that timed out under load may still have pressed, so the page is asked, not
# the click's outcome.
RECORD_PRESSES = """() => { window.presses = [];
  document.addEventListener("pointerdown", (e) => {
    const card = e.target.closest && e.target.closest("article.ticket");
    window.presses.push(card ? card.dataset.ticket : "");
  }, true); }"""


async def presses(page: Any) -> list[str]:
    """The tickets pressed on ``page`` since the last call ("" for a press beside every card)."""
    return list(await page.evaluate("() => window.presses.splice(0)"))


SCREENS = 12
# Taps per screen: 9 in `make test` (108 in all); `make soak` taps 100 per screen.
TAPS = int(os.environ.get("EDGEHUB_KDS_TAPS", "9"))


async def tap_randomly(page: Any, hub: Hub, station: str, taps: int, rng: random.Random, finger: bool,
                       counted: dict[str, int]) -> None:
    """``taps`` taps on this station's tickets: each held 50-1500 ms (log-uniform: most taps are
    short), each starting at a random moment of the page's one-second clock and of the changes
    arriving. A tap starts a new ticket and bumps a started one; a ticket is tapped again only
    once the screen shows what its last tap did, as a cook would. A tap counts for the ticket the
    page saw pressed (a card may move as the finger comes down)."""
    done = 0
    while done < taps:
        await asyncio.sleep(rng.uniform(0.0, 1.0))
        cards = await page.eval_on_selector_all(
            "article.ticket:not([hidden])", "cards => cards.map(c => [c.dataset.ticket, c.dataset.state])")
        expected = ("new", "in_progress")
        candidates = [i for i, state in cards if i.startswith(station + "-") and counted.get(i, 0) < 2
                      and state == expected[counted.get(i, 0)]]
        assert candidates, f"no ticket left to tap at {station}: {cards}"
        target = rng.choice(candidates)
        hold = math.exp(rng.uniform(math.log(0.05), math.log(1.5)))
        await (tap_with_finger if finger else tap_with_mouse)(page, target, hold)
        for pressed in await presses(page):
            if pressed:  # (a finger that came down as its card moved away pressed nothing)
                counted[pressed] = counted.get(pressed, 0) + 1
                done += 1


async def churn(hub: Hub, config: Config, stations: list[str], stop: asyncio.Event, rng: random.Random) -> int:
    """Meanwhile the screens keep changing: new orders (new cards), amends (cards change size),
    and priority changes from a native kitchen screen on MQTT (cards change place)."""
    changes = 0
    native = MqttSession(config.broker.listen.host, config.broker.listen.port, username="kds-1",
                         password="pw-kds-1", client_id=f"churn-{time.monotonic_ns()}")
    async with Terminal(config, "pos-2") as pos, native:
        n = 0
        while not stop.is_set():
            station = rng.choice(stations)
            n += 1
            await pos.send(order(f"churn-{station}-{n}", lines=dish_lines(n, station)))
            await pos.ack()
            open_ids = [t.ticket_id for t in hub.kitchen._tickets.values()  # noqa: SLF001
                        if t.station == station and t.state == "new" and t.ticket_id.startswith("churn")]
            if open_ids:
                target = rng.choice(open_ids)
                await native.publish(hub.topics.kds_command(station), json.dumps(
                    {"schema": "kds-command/1", "action": "priority", "ticket_id": target,
                     "priority": rng.randint(-1, 2)}), qos=1)
                order_id = target.split("/")[0]
                await pos.send({"schema": "amend/1", "order_id": order_id, "amend_id": f"a{n}",
                                "lines": dish_lines(n + 1, station)}, topic=pos.topics.amend("pos-2"))
                await pos.ack()
            changes += 1
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(rng.uniform(0.1, 0.4)):
                    await stop.wait()
    return changes


async def test_taps_of_any_length_at_random_phases_all_register(hub: Hub, config: Config) -> None:
    """The issue's complaint: a press spanning a rebuild did not register (7 of 12 lost at 600 ms).
    108 taps on twelve screens at once, three of them touched, while the screens change (new orders,
    amends, priorities from another screen, bumped tickets leaving): none lost, none counted
    twice, none landing on another ticket."""
    rng = random.Random(2027)
    stations = [f"tap{i}" for i in range(SCREENS)]
    for station in stations:
        await send_orders(config, station, max(12, TAPS // 2 + 8), table=True)  # two taps a ticket
    stop = asyncio.Event()
    counted: dict[str, int] = {}
    fingers = {1, 5, 9}  # these screens are touched (a tablet), the others clicked
    async with chromium() as browser:
        pages = await asyncio.gather(*(open_screen(browser, hub, s, width=1920, height=1080, touch=(i in fingers))
                                       for i, s in enumerate(stations)))
        for i in fingers:
            pages[i].cdp = await pages[i].context.new_cdp_session(pages[i])
        for page in pages:
            await page.evaluate(RECORD_PRESSES)
        churning = asyncio.create_task(churn(hub, config, stations, stop, random.Random(7)))
        started = time.monotonic()
        await asyncio.gather(*(tap_randomly(p, hub, s, TAPS, random.Random(rng.random()), i in fingers, counted)
                               for i, (p, s) in enumerate(zip(pages, stations, strict=True))))
        stop.set()
        changes = await churning
        expected = {ticket_id: ("new", "in_progress", "ready")[n] for ticket_id, n in counted.items()}
        with contextlib.suppress(TimeoutError):  # the last taps' commits; what is still wrong is reported below
            async with asyncio.timeout(10):
                while any(state_of(hub, t) != state for t, state in expected.items()):
                    await asyncio.sleep(0.05)
        for page in pages:
            assert page.errors == []
        # What each page says it did (taps it sent, its status line's changes, its last notice):
        # read when a tap is reported lost below.
        said = {s: await p.evaluate("() => ({sent: window.kds.taps, status: window.kds.status.map(s => s.text), "
                                    "notice: document.getElementById('message').textContent})")
                for p, s in zip(pages, stations, strict=True)}
        print(f"{sum(counted.values())} taps in {time.monotonic() - started:.1f} s with {changes} changes meanwhile")
    assert sum(counted.values()) >= SCREENS * TAPS >= 100
    wrong = {t: f"{state_of(hub, t)}, not {state}" for t, state in expected.items() if state_of(hub, t) != state}
    pressed = {s: sum(n for t, n in counted.items() if station_of(t) == s) for s in stations}
    assert wrong == {}, (f"{len(wrong)} of {sum(counted.values())} taps lost or counted twice; the screens "
                         f"that pressed them: " + "; ".join(f"{s}: {pressed[s]} pressed, {said[s]}"
                                                           for s in sorted({station_of(t) for t in wrong})))
    # Nothing else moved: every one of these stations' tickets that is not new was tapped.
    moved = {t.ticket_id for t in hub.kitchen._tickets.values()  # noqa: SLF001
             if t.station in stations and t.state != "new" and not t.ticket_id.startswith("churn")}
    assert moved == {t for t in expected if not t.startswith("churn")}


# --- keys ---------------------------------------------------------------------------------------


async def selected(page: Any) -> str:
    return str(await page.get_attribute("article.ticket.selected", "data-ticket"))


async def shown(page: Any) -> list[str]:
    """The tickets on the page, in the page's order (position 1 first)."""
    found: list[str] = await page.evaluate("window.kds.visible")
    return found


async def test_each_bump_bar_key_does_its_job(hub: Hub, config: Config) -> None:
    ids = await send_orders(config, "keys", 14)
    custom = await send_orders(config, "keys2", 3)
    async with chromium() as browser:
        page = await open_screen(browser, hub, "keys", width=1024, height=600)
        visible = await shown(page)
        assert visible == ids[:len(visible)] and 3 <= len(visible) < 14
        assert await selected(page) == ids[0]  # the first ticket is selected to begin with

        await page.keyboard.press("3")  # select by position
        assert await selected(page) == ids[2]
        await page.keyboard.press(" ")  # start
        await wait_state(hub, ids[2], "in_progress")
        await page.keyboard.press("Enter")  # bump
        await wait_state(hub, ids[2], "ready")
        await page.keyboard.press("r")  # recall the last bumped
        await wait_state(hub, ids[2], "recalled")
        await page.locator(f'article.ticket[data-ticket="{ids[2]}"]').wait_for()

        await page.keyboard.press("1")
        await page.keyboard.press("+")  # priority up: it stays first, now P1
        async with asyncio.timeout(5):
            while hub.kitchen._tickets[ids[0]].priority != 1:  # noqa: SLF001
                await asyncio.sleep(0.02)
        await page.keyboard.press("2")
        second = await selected(page)
        await page.keyboard.press("-")  # priority down: it goes to the end
        async with asyncio.timeout(5):
            while hub.kitchen._tickets[second].priority != -1:  # noqa: SLF001
                await asyncio.sleep(0.02)
        async with asyncio.timeout(5):  # lowered, it goes after the others: off this page
            while second in await shown(page):
                await asyncio.sleep(0.05)

        await page.keyboard.press("1")
        await page.keyboard.press("ArrowRight")  # the selection moves on
        assert await selected(page) == (await shown(page))[1]

        first_page = await shown(page)
        await page.keyboard.press("PageDown")  # the next page: what was off the screen
        await page.wait_for_selector("#more:has-text('before')")
        second_page = await shown(page)
        assert second_page and not set(second_page) & set(first_page)
        assert await selected(page) == second_page[0]
        await page.keyboard.press("PageUp")
        await page.wait_for_selector("#more:not(:has-text('before'))")
        assert await shown(page) == first_page

        # A screen with its own keys: Enter is not its bump key any more, "b" is; "w" selects #2.
        mine = await open_screen(browser, hub, "keys2", token=KEYS_SECRET)
        await mine.keyboard.press("w")
        assert await selected(mine) == custom[1]
        await mine.keyboard.press("Enter")
        await asyncio.sleep(0.5)
        assert state_of(hub, custom[1]) == "new"
        await mine.keyboard.press("b")
        await wait_state(hub, custom[1], "ready")
        assert page.errors == [] and mine.errors == []


# --- readable, the width filled, N more, screenshots -------------------------------------------


async def measure(page: Any) -> dict[str, Any]:
    found: dict[str, Any] = await page.evaluate("""() => {
        const box = document.getElementById('tickets').getBoundingClientRect();
        const cards = [...document.querySelectorAll('article.ticket:not([hidden])')];
        const rects = cards.map(c => c.getBoundingClientRect());
        const px = (sel) => parseFloat(getComputedStyle(document.querySelector(sel)).fontSize);
        return {left: box.left, right: box.right, bottom: box.bottom, shown: cards.length,
                cardsLeft: Math.min(...rects.map(r => r.left)), cardsRight: Math.max(...rects.map(r => r.right)),
                cardsBottom: Math.max(...rects.map(r => r.bottom)), item: px('article.ticket li'),
                meta: px('article.ticket .meta'), number: px('article.ticket .no'),
                more: Number(document.getElementById('more').dataset.more),
                heads: cards.map(c => c.querySelector('.head').innerText),
                texts: cards.map(c => c.innerText)};
    }""")
    return found


async def test_readable_from_two_metres_the_width_filled_and_n_more(hub: Hub, config: Config) -> None:
    await send_orders(config, "grill", 100, prefix="G")
    async with chromium() as browser:
        for width, height, smallest in ((1920, 1080, 28), (1024, 600, 24)):
            page = await open_screen(browser, hub, "grill", width=width, height=height)
            await page.wait_for_selector("#more:has-text('more')")
            got = await measure(page)
            await page.screenshot(path=str(keep(f"kds-{width}x{height}.png")))
            print(f"{width}x{height}: {got['shown']} tickets shown, {got['more']} more, item {got['item']} px")
            assert got["item"] >= smallest and got["meta"] >= 0.6 * got["item"] and got["number"] > got["item"]
            # The width is filled: cards from the left edge to the right edge of their area.
            assert got["cardsLeft"] - got["left"] < 2 and got["right"] - got["cardsRight"] < 2, got
            assert got["cardsBottom"] <= got["bottom"] + 1  # nothing cut off at the bottom
            assert got["shown"] + got["more"] == 100 and got["more"] > 0
            assert await page.locator("#more").inner_text() == f"page 1 · {got['more']} more ▶"
            # The table and the short order number, never the raw id.
            heads = [" ".join(h.split()) for h in got["heads"]]  # position (1-9), number, table, age
            assert all(re.fullmatch(r"([1-9] )?#\d+ T\d+ \d+:\d\d", h) for h in heads), heads
            assert not any("G-0" in text for text in got["texts"])
            await page.click("#next")
            await page.wait_for_selector(f"#more:has-text('◀ {got['shown']} before · page 2')")
            await page.context.close()

        # A screen's own scale setting (screen_scale = 1.5): the same page, larger type.
        big = await open_screen(browser, hub, "grill", token=BIG_SECRET, width=1920, height=1080)
        await big.wait_for_selector("#more:has-text('more')")
        bigger = await measure(big)
        normal = await open_screen(browser, hub, "grill", width=1920, height=1080)
        await normal.wait_for_selector("#more:has-text('more')")
        plain = await measure(normal)
        assert bigger["item"] == pytest.approx(1.5 * plain["item"], rel=0.02)
        assert bigger["shown"] < plain["shown"]


# --- the old flow, the priority off the tap target ---------------------------------------------


async def test_a_tap_starts_another_bumps_priority_and_recall(hub: Hub, config: Config) -> None:
    async with chromium() as browser:
        page = await open_screen(browser, hub, "grill")
        async with Terminal(config, "pos-1") as pos:
            await pos.send(order("F-1", table="12"))
            assert (await pos.ack())["order_no"] == "1"
            await pos.send(order("F-2", lines=[{"sku": "FRY-01", "name": "Fries", "qty": 2, "station": "grill"}]))
            await pos.ack()
        first = page.locator('article.ticket[data-ticket="F-1/grill/1"]')
        await first.wait_for()
        head = await first.locator(".head").inner_text()
        assert "#1" in head and "T12" in head and "F-1" not in await first.inner_text()
        second = page.locator('article.ticket[data-ticket="F-2/grill/1"]')
        await second.wait_for()
        assert await first.get_attribute("data-state") == "new"
        # Priority lives in the header: ▲ then tap the ticket (the tap does not start it).
        await page.click("#raise")
        await page.wait_for_selector("#banner:has-text('raise')")
        await second.click()
        async with asyncio.timeout(5):
            while hub.kitchen._tickets["F-2/grill/1"].priority != 1:  # noqa: SLF001
                await asyncio.sleep(0.02)
        assert state_of(hub, "F-2/grill/1") == "new"
        # Raised, it goes first: position 1 on the screen, marked P1.
        await page.wait_for_selector('article.ticket[data-ticket="F-2/grill/1"] .pos:text-is("1")')
        assert "P1" in await second.inner_text()
        await first.click()  # new -> in progress
        await wait_state(hub, "F-1/grill/1", "in_progress")
        await page.wait_for_selector('article.ticket[data-ticket="F-1/grill/1"][data-state="in_progress"]')
        await first.click()  # in progress -> bumped off the screen
        await first.wait_for(state="detached")
        await page.click("#recall")  # the last bumped comes back
        await page.wait_for_selector('article.ticket[data-state="recalled"]')
        assert page.errors == []


# --- sound --------------------------------------------------------------------------------------


async def test_a_new_and_a_late_ticket_sound_and_sound_can_be_switched_off(hub: Hub, config: Config) -> None:
    async with chromium() as browser:
        page = await open_screen(browser, hub, "fast")
        await send_orders(config, "fast", 1, prefix="S1")
        async with asyncio.timeout(10):  # new at once, late once red (after 2 s at this station)
            while [s["kind"] for s in await page.evaluate("window.kds.sounds")] != ["new", "late"]:
                await asyncio.sleep(0.1)
        sounds = await page.evaluate("window.kds.sounds")
        assert sounds[0]["audio"] == "running"  # the page made the sound itself, nothing fetched
        await page.click("#sound")
        assert await page.inner_text("#sound") == "Sound off"
        await send_orders(config, "fast", 1, prefix="S2")
        await page.locator('article.ticket[data-ticket="S2-000/fast/1"]').wait_for()
        # The sound would have started with the card (the same message makes both): none.
        assert len(await page.evaluate("window.kds.sounds")) == 2
        # Switched off stays off for this station's screen after a reload.
        await page.reload()
        await page.wait_for_selector("#conn.live")
        assert await page.inner_text("#sound") == "Sound off"


# --- honest about being offline -----------------------------------------------------------------


async def test_the_screen_says_offline_when_orders_cannot_reach_it(config: Config, broker: MosquittoProcess) -> None:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        hub.screens.status.heartbeat_s = 0.4  # so a stalled box shows within a second here
        await send_orders(config, "grill", 2)
        async with chromium() as browser:
            page = await open_screen(browser, hub, "grill")
            # The broker goes: orders from the tills cannot arrive. Not "live".
            await broker.stop()
            await page.wait_for_selector("#conn.no-orders:has-text('no new orders')", timeout=5_000)
            assert "orders cannot reach it" in await page.inner_text("#banner")
            broker._stopping = False  # noqa: SLF001
            await broker.start()
            await page.wait_for_selector("#conn.live", timeout=15_000)
            assert await page.is_hidden("#banner")
            # The box's loop stalls (the page hears nothing): offline while it lasts.
            stalled_at = await page.evaluate("Date.now()")
            time.sleep(3.0)  # noqa: ASYNC251 - the point: the hub (this loop) stops answering
            await page.wait_for_selector("#conn.live", timeout=5_000)
            log = await page.evaluate("window.kds.status")
            assert any(e["text"] == "OFFLINE" and e["at"] >= stalled_at for e in log), log
            # The box goes away entirely.
            await hub.__aexit__(None, None, None)
            await page.wait_for_selector("#conn:has-text('OFFLINE')", timeout=5_000)
            assert "cannot be reached" in await page.inner_text("#banner")
            await page.locator("article.ticket").first.click()
            await page.wait_for_selector("#message:has-text('offline: not sent')")


# --- a misspelt station, logging in -------------------------------------------------------------


async def test_a_misspelt_station_is_refused_with_the_stations(hub: Hub) -> None:
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{hub.api.url}kds/grll") as response:
            assert response.status == 404
            text = await response.text()
        for station in ("grill", "bar", "fast", "pass", "keys2"):
            assert f'href="/kds/{station}"' in text
        async with http.get(f"{hub.api.url}kds") as response:  # the list, to pick from
            assert response.status == 200 and 'href="/kds/grill"' in await response.text()
        async with http.ws_connect(f"ws://127.0.0.1:{hub.api.port}/kds/grll/ws?token={SCREEN_TOKEN}") as ws:
            refusal = (await ws.receive()).json()
            assert refusal["code"] == 4404 and "grill" in refusal["stations"]
            assert (await ws.receive()).data == 4404


async def test_a_screen_logs_in_with_its_own_secret(hub: Hub) -> None:
    async with chromium() as browser:
        page = await (await browser.new_context(viewport={"width": 1280, "height": 720})).new_page()
        await page.goto(f"{hub.api.url}kds/grill")
        await page.wait_for_selector("#setup:not([hidden])")  # no secret yet: it asks for one
        await page.fill("#secret", "not-the-secret-0123")
        await page.click("#login-form button")
        await page.wait_for_selector("#login-error:has-text('not accepted')")
        await page.fill("#secret", GRILL_SECRET)  # the grill screen's own secret (issue 19)
        await page.click("#login-form button")
        await page.wait_for_selector("#conn.live")
        assert await page.evaluate("localStorage.getItem('edgehub-kds-token')") == GRILL_SECRET

        # The grill's secret does not drive the bar: refused, with the way back to its station.
        await page.goto(f"{hub.api.url}kds/bar")
        await page.wait_for_selector("#refused:not([hidden])")
        assert "drives grill, not bar" in await page.inner_text("#refused-text")
        await page.click("#refused-links a")
        await page.wait_for_selector("#conn.live")
        assert page.url.endswith("/kds/grill")

        # A customer display's secret is no kitchen screen's, and the API token opens nothing.
        for secret, says in ((display_secret("display-1"), "customer display"),):
            other = await (await browser.new_context()).new_page()
            await other.goto(f"{hub.api.url}kds/grill?token={secret}")
            await other.wait_for_selector("#refused:not([hidden])")
            assert says in await other.inner_text("#refused-text")
        other = await (await browser.new_context()).new_page()
        await other.goto(f"{hub.api.url}kds/grill?token={hub.config.api.token}")
        await other.wait_for_selector("#login-error:has-text('not accepted')")
        assert "the box's API token, never a screen's secret" in await other.inner_text("#login-error")
        # The screen's MQTT password (what its config calls its password) is not its page's secret,
        # and the page says which is.
        await other.fill("#secret", "pw-kds-grill")
        await other.click("#login-form button")
        await other.wait_for_selector("#login-error:has-text('MQTT password')")
        assert "/etc/edgehub/secrets/screen-kds-grill" in await other.inner_text("#login-error")
