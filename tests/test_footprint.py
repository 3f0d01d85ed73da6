"""What keeps the box's footprint small, asserted as outcomes (speed is measured in bench/)."""

from __future__ import annotations

import asyncio
import gc
import json
import sqlite3
import time
from pathlib import Path

import psutil

from edgehub.gctuning import FULL_EVERY, YOUNG_EVERY, FreezeSurvivors, Trimmer, malloc_free_mb, malloc_trim
from edgehub.store import Journal
from edgehub.store.schema import migrate
from tests.conftest import ALL_TABLES


async def test_a_lazy_write_rides_with_the_next_order_commit(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1", tables=ALL_TABLES) as journal:
        before = journal.stats.commits

        def lazy(conn: sqlite3.Connection) -> None:
            conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES (1, 't', 'lazy', x'')")

        lazy_write = asyncio.create_task(journal.write(lazy, lazy=True))
        await asyncio.sleep(0)  # queued first
        await journal.add_deadletter("t", "durable", b"")
        await lazy_write
        assert journal.stats.commits == before + 1  # one commit, one fsync, for both
        reasons = await journal.read(lambda c: [r[0] for r in c.execute("SELECT reason FROM deadletters")])
        assert sorted(reasons) == ["durable", "lazy"]


async def test_a_lazy_write_alone_is_committed_all_the_same(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1", tables=ALL_TABLES) as journal:
        value = await asyncio.wait_for(journal.write(lambda conn: 42, lazy=True), timeout=10)
        assert value == 42


async def test_a_lazy_write_queued_at_close_is_committed(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    async with Journal(path, "s1", tables=ALL_TABLES) as journal:
        task = asyncio.create_task(journal.write(
            lambda conn: conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) "
                                      "VALUES (1, 't', 'last', x'')"), lazy=True))
        await asyncio.sleep(0)
    await task
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT reason FROM deadletters").fetchall() == [("last",)]


async def test_a_cooks_tap_waits_for_an_order_to_ride_with_but_never_holds_the_order_up(tmp_path: Path) -> None:
    """A write with ``within_s`` (a tap on a kitchen screen) joins the next order's commit if one
    comes within its wait; the order's group still closes after the commit window, not the tap's."""
    async with Journal(tmp_path / "j.sqlite", "s1", tables=ALL_TABLES, commit_window_ms=2) as journal:
        before = journal.stats.commits
        tap = asyncio.create_task(journal.write(lambda conn: "tap", within_s=60.0))
        await asyncio.sleep(0.05)  # the tap waits: no commit of its own yet
        assert journal.stats.commits == before and not tap.done()
        await asyncio.wait_for(journal.add_deadletter("t", "order", b""), timeout=30)
        assert await tap == "tap"
        assert journal.stats.commits == before + 1  # one commit, one fsync, for both
        # Alone, a tap is committed once its own wait is over.
        assert await asyncio.wait_for(journal.write(lambda conn: 7, within_s=0.01), timeout=30) == 7
        assert journal.stats.commits == before + 2


def test_a_tickets_document_is_stored_deflated_and_rows_from_before_still_load() -> None:
    """A ticket row holds its document deflated (six to a 1 KiB page instead of two); a row an
    older edgehub wrote as JSON text loads the same."""
    from edgehub.kitchen.tickets import Event, Ticket, load, write_events

    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ALL_TABLES)
    lines = [{"line": 0, "sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "modifiers": ["no onions"],
              "key": "BURG-01|no onions"}]
    new = Ticket("T-1/grill/1", "T-1", "grill", "pos-1", 100.0, lines, {"table": "T7", "covers": 2},
                 updated_at=100.0, version=1)
    old = Ticket("T-0/grill/1", "T-0", "grill", "pos-1", 90.0, lines, {}, updated_at=90.0, version=1)
    event = Event(1, "created", new.doc(), 100.0, "pos:pos-1")
    write_events(conn, "s1", [event])
    conn.execute("INSERT INTO tickets(ticket_id, order_id, station, state, created_at, updated_at, doc) "
                 "VALUES ('T-0/grill/1', 'T-0', 'grill', 'new', 90.0, 90.0, ?)", (json.dumps(old.doc()),))

    (stored,) = conn.execute("SELECT doc FROM tickets WHERE ticket_id = 'T-1/grill/1'").fetchone()
    assert isinstance(stored, bytes) and len(stored) < len(event.ticket_json) / 2
    loaded = {t.ticket_id: t.doc() for t in load(conn, keep_bumped=20).tickets}
    assert loaded == {"T-1/grill/1": new.doc(), "T-0/grill/1": old.doc()}


def test_new_tickets_touch_no_order_or_station_index() -> None:
    """Migration 5: the kitchen's hot path writes fewer B-trees; a ticket's order is its id range."""
    conn = sqlite3.connect(":memory:", isolation_level=None)
    migrate(conn, ALL_TABLES)
    indexes = {row[0] for row in conn.execute("SELECT name FROM sqlite_schema WHERE type='index' AND sql IS NOT NULL")}
    assert {"ticket_events_ticket", "tickets_order", "tickets_station_state"}.isdisjoint(indexes)
    assert "tickets_bumped" in indexes
    from edgehub.kitchen.tickets import OF_ORDER

    for ticket_id, order_id in [("a/grill/1", "a"), ("a/b/bar/1", "a/b"), ("ab/grill/1", "ab")]:
        conn.execute("INSERT INTO tickets(ticket_id, order_id, station, state, created_at, updated_at, doc) "
                     "VALUES (?, ?, 'grill', 'new', 0, 0, '{}')", (ticket_id, order_id))
    found = conn.execute(f"SELECT ticket_id FROM tickets t WHERE {OF_ORDER.format(order='?1')} ORDER BY 1",
                         ("a",)).fetchall()
    assert found == [("a/grill/1",)]  # not order "ab", nor order "a/b" whose ids also start "a/"
    plan = " ".join(str(r) for r in conn.execute(
        f"EXPLAIN QUERY PLAN SELECT 1 FROM tickets t WHERE {OF_ORDER.format(order='?1')}", ("a",)))
    assert "sqlite_autoindex_tickets_1" in plan


def test_full_collections_freeze_their_survivors_and_thaw_hourly() -> None:
    before = gc.get_threshold()
    now = [0.0]
    policy = FreezeSurvivors(thaw_every_s=3600, clock=lambda: now[0])
    policy.install()
    try:
        keep = [[i] for i in range(1000)]
        gc.collect()
        assert gc.get_freeze_count() >= len(keep)
        now[0] = 3601
        gc.collect()
        assert gc.get_freeze_count() == 0 and policy.thaws == 1
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before


def test_young_collections_wait_for_what_really_piles_up() -> None:
    """At the rush a batch of orders holds more than CPython's 700 young objects at once: with
    the default a collection ran every few orders (gctuning.py); installed, young collections come
    after YOUNG_EVERY objects and full ones after FULL_EVERY middle ones."""
    before = gc.get_threshold()
    policy = FreezeSurvivors()
    policy.install()
    try:
        assert gc.get_threshold() == (YOUNG_EVERY, before[1], FULL_EVERY)
        gc.collect(0)  # the young count starts from nothing
        collections = gc.get_stats()[0]["collections"]
        batch = [{"order_id": str(i), "lines": [{"qty": 1}]} for i in range(YOUNG_EVERY // 4)]
        assert gc.get_stats()[0]["collections"] == collections  # 7,500 live objects: no collection
        del batch
    finally:
        policy.uninstall()
    assert gc.get_threshold() == before


def test_freed_heap_is_handed_back_only_when_malloc_holds_enough_free() -> None:
    """RSS stayed at the high-water mark of a rush: glibc keeps freed pages until malloc_trim."""
    free, trims = [1.0], []
    trimmer = Trimmer(above_mb=4, trim=lambda: trims.append(free[0]), free_mb=lambda: free[0])
    assert not trimmer.maybe_trim() and trims == []  # a quiet heap: nothing worth the walk
    free[0] = 30.0  # a rush came and went
    assert trimmer.maybe_trim() and trims == [30.0] and trimmer.trims == 1
    blind = Trimmer(trim=lambda: trims.append(-1.0), free_mb=None)  # no mallinfo2: trim every time
    assert blind.maybe_trim() and trims == [30.0, -1.0]


def test_a_fragmented_heap_shrinks_on_a_quiet_box_without_any_collection() -> None:
    """The real thing, on its own thread: a heap left full of holes (what a rush leaves) is
    handed back by the timer, with no garbage collection to trigger it."""
    import platform

    if platform.libc_ver()[0] != "glibc" or malloc_free_mb is None:
        return  # glibc's malloc only (the box runs Debian)
    blocks = [bytes(1000) for _ in range(40_000)]  # 1,000 bytes: malloc's, not Python's arenas
    keep = blocks[::50]
    del blocks
    assert malloc_free_mb() > 20
    before = rss_mb()
    trimmer = Trimmer(every_s=0.01, above_mb=4)
    gc.disable()
    trimmer.install()
    try:
        for _ in range(500):
            if trimmer.trims:
                break
            time.sleep(0.01)
    finally:
        trimmer.uninstall()
        gc.enable()
    assert trimmer.trims >= 1
    assert rss_mb() < before - 20, (before, rss_mb())
    assert len(keep) == 800


def rss_mb() -> float:
    return float(psutil.Process().memory_info().rss) / 2**20


def test_malloc_trim_is_found_on_glibc() -> None:
    import platform

    if platform.libc_ver()[0] == "glibc":
        assert malloc_trim is not None and malloc_free_mb is not None
        malloc_trim()
    assert rss_mb() > 0


def test_encoded_documents_are_as_big_as_their_json() -> None:
    """orjson hands back its working buffer (4 KiB and up) as the bytes object; what the hub
    keeps and queues at the rush (tickets, acks, events) must hold only its JSON."""
    import tracemalloc

    from edgehub.bus import payloads

    ticket = {"ticket_id": "pos-1-000001/grill/1", "state": "new", "lines": [{"sku": "BURG-01", "qty": 2}]}
    tracemalloc.start()
    try:
        kept = [payloads.dumps(dict(ticket, n=n)) for n in range(200)]
        held = sum(stat.size for stat in tracemalloc.take_snapshot().statistics("filename"))
    finally:
        tracemalloc.stop()
    assert kept[0] == json.dumps(dict(ticket, n=0), separators=(",", ":")).encode()
    assert held < 200 * (len(kept[0]) + 200), held  # each ~100 B of JSON, not a 4 KiB buffer


def test_the_hub_does_not_load_cryptography_until_it_makes_a_certificate(tmp_path: Path) -> None:
    """cryptography is about 10 MB of the hub's RSS (of a 60 MB budget, docs/footprint.md): the
    hub imports it only to make its certificate, and reads a certificate's fingerprint without it."""
    import subprocess
    import sys

    code = ("import sys, edgehub.hub, edgehub.cli; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] == 'cryptography'))")
    loaded = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert loaded.strip() == "[]", f"imported at start: {loaded}"

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    from edgehub.api.tls import fingerprint, make_certificate

    make_certificate(tmp_path / "box.crt", tmp_path / "box.key", "s1", ["192.0.2.10"])
    cert = x509.load_pem_x509_certificate((tmp_path / "box.crt").read_bytes())
    import hashlib

    digest = hashlib.sha256(cert.public_bytes(serialization.Encoding.DER)).hexdigest().upper()
    assert fingerprint(tmp_path / "box.crt") == "SHA256 " + ":".join(digest[i:i + 2] for i in range(0, 64, 2))
    # A chain: the first certificate is the box's.
    chain = tmp_path / "chain.crt"
    chain.write_text((tmp_path / "box.crt").read_text() + (tmp_path / "box.crt").read_text())
    assert fingerprint(chain) == fingerprint(tmp_path / "box.crt")


# Imported when first used (an installer's request, a scrape, a certificate made, a raster
# ticket), never on the way to READY: each costs a Pi tens of milliseconds or more at start
# (docs/footprint.md, Start). psutil is used at start (in a thread: is the managed broker ours?).
NOT_AT_START = ("edgehub.doctor", "edgehub.bundle", "edgehub.sim", "edgehub.devices.testcli", "prometheus_client",
                "cryptography", "PIL", "tarfile", "zeroconf", "pyudev")
READY_HOOK = """
import json, os, signal, sys
from edgehub import sdnotify

def ready(self, status):  # READY=1: what the start path imported
    print(json.dumps(sorted(sys.modules)), flush=True)
    os.kill(os.getpid(), signal.SIGTERM)

sdnotify.Notifier.ready = ready
import edgehub.cli
sys.exit(edgehub.cli.main(["run", "--config", sys.argv[1]]))
"""


async def test_the_hub_reaches_ready_without_the_modules_it_uses_later(tmp_path: Path) -> None:
    """A real ``edgehub run`` with a store's devices (running here, at the other end of the
    wire) and the uplink: at READY none of ``NOT_AT_START`` is loaded, and neither are the
    tools' command parsers."""
    import sys

    from edgehub.sim.store import SIM_ROLES, SimStore
    from tests.conftest import write_config

    async with SimStore() as sim:
        extra = "\n[discovery]\nusb = false\nserial = false\nlan = false\n"
        for d in sim.devices:
            extra += (f'\n[[device]]\nid = "{d.id}"\ndriver = "{d.driver}"\ntransport = "{d.transport}"\n'
                      f'address = "{d.address}"\n' + "".join(f'{k} = "{v}"\n' for k, v in d.extra.items()))
        for role in SIM_ROLES:
            extra += f'\n[[role]]\nname = "{role.name}"\ndevices = {json.dumps(list(role.devices))}\n'
        path = write_config(tmp_path / "box", mode="managed", extra=extra)
        proc = await asyncio.create_subprocess_exec(sys.executable, "-c", READY_HOOK, str(path),
                                                    stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    lines = [line for line in out.decode().splitlines() if line.startswith("[")]
    assert lines, f"the hub never got READY: {err.decode()[-2000:]}"
    loaded = json.loads(lines[0])
    assert "edgehub.devices.registry" in loaded and "drivers.escpos" in loaded  # the hub itself, started
    early = sorted(m for m in loaded if m.split(".")[0] in NOT_AT_START or m in NOT_AT_START
                   or any(m.startswith(f"{name}.") for name in NOT_AT_START))
    assert early == [], f"imported on the way to READY: {early}"
