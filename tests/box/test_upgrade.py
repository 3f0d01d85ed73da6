"""An upgrade keeps the journal, the outbox and the config.

The first release of edgehub wrote schema version 1 (orders, outbox, dead letters). A box that
ran it and is upgraded in place (package upgrade, same /var/lib/edgehub) must come up with every
order, every outbox row still bound for the cloud (numbered within its stream so the cloud's gap
check holds), its dead letters, and without making kitchen tickets for orders cooked long ago.
"""

from __future__ import annotations

import asyncio
import json
import sqlite3
from pathlib import Path

import pytest

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.errors import JournalError
from edgehub.hub import Hub
from edgehub.store import Journal
from edgehub.store.schema import SCHEMA_VERSION, migrate
from tests.conftest import ALL_TABLES, Terminal, order, write_config


def release_1_journal(path: Path, orders: int) -> None:
    """A journal exactly as release 1 left it: schema 1 and the rows its intake wrote."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA page_size = 1024")
        conn.execute("PRAGMA journal_mode = WAL")
        migrate(conn, ALL_TABLES, to=1)
        for n in range(orders):
            doc = order(f"OLD-{n}")
            conn.execute("INSERT INTO orders(order_id, terminal, received_at, payload) VALUES (?,?,?,?)",
                         (f"OLD-{n}", "pos-1", 1_700_000_000.0 + n, json.dumps(doc)))
            cloud = json.dumps({"order_id": f"OLD-{n}", "terminal": "pos-1", "order": doc})
            conn.execute("INSERT INTO outbox(msg_id, stream, created_at, payload) VALUES (?,?,?,?)",
                         (f"order:OLD-{n}", "orders", 1_700_000_000.0 + n, cloud.encode()))
        conn.execute("INSERT INTO deadletters(received_at, topic, reason, payload) VALUES (?,?,?,?)",
                     (1_700_000_000.0, "edgehub/v1/s1/pos/pos-1/order", "no order_id", b"{}"))


async def test_release_1_journal_is_migrated_with_every_row(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    release_1_journal(path, orders=5)
    async with Journal(path, "s1", tables=ALL_TABLES) as journal:
        counts = await journal.counts()
        assert counts["orders"] == 5 and counts["outbox"] == 5 and counts["deadletters"] == 1
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        numbered = conn.execute("SELECT msg_id, stream_seq FROM outbox ORDER BY seq").fetchall()
        assert numbered == [(f"order:OLD-{n}", n + 1) for n in range(5)]
        produced, pending, last = conn.execute(
            "SELECT produced, pending, last_stream_seq FROM outbox_streams WHERE stream='orders'").fetchone()
        assert (produced, pending, last) == (5, 5, 5)
        assert conn.execute("SELECT COUNT(*) FROM tickets").fetchone()[0] == 0


async def test_upgraded_box_takes_new_orders_and_old_ids_stay_duplicates(tmp_path: Path) -> None:
    config_path = write_config(tmp_path / "box")
    config = load_config(config_path)
    release_1_journal(config.journal.path, orders=3)
    async with MosquittoProcess(config, die_with_parent=False):
        async with Hub(config) as hub, Terminal(config, "pos-1") as pos:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            await pos.send(order("OLD-1"))
            again = await pos.ack()
            assert again["status"] == "accepted" and again.get("duplicate") is True
            await pos.send(order("NEW-1"))
            fresh = await pos.ack()
            assert fresh["status"] == "accepted" and not fresh.get("duplicate")
            assert (await hub.journal.counts())["orders"] == 4
            # Only the new order is cooked (its tickets follow the ack): release-1 orders were
            # served long ago.
            cooked: set[str] = set()
            async with asyncio.timeout(5):
                while not cooked:
                    await asyncio.sleep(0.05)
                    with sqlite3.connect(config.journal.path) as conn:
                        cooked = {r[0] for r in conn.execute("SELECT DISTINCT order_id FROM tickets")}
            assert cooked == {"NEW-1"}


def test_a_journal_from_a_newer_edgehub_is_refused_not_rewritten(tmp_path: Path) -> None:
    path = tmp_path / "journal.sqlite"
    with sqlite3.connect(path) as conn:
        conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")

    async def open_it() -> None:
        async with Journal(path, "s1", tables=ALL_TABLES):
            pass

    with pytest.raises(JournalError, match="newer than this edgehub"):
        asyncio.run(open_it())
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION + 1
