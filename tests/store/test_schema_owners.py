"""Each owner's tables are versioned on their own, and every journal ends with the same schema."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest

from edgehub.errors import JournalError
from edgehub.kitchen.tables import TABLES as KITCHEN_TABLES
from edgehub.store import Journal
from edgehub.store.schema import FORMAT, JOURNAL, LEGACY_ROW, LEGACY_VERSIONS, Step, Tables, migrate
from tests.conftest import ALL_TABLES


def schema(conn: sqlite3.Connection) -> list[tuple[str, str, str]]:
    return conn.execute("SELECT type, name, sql FROM sqlite_master WHERE name != 'sqlite_sequence' "
                        "ORDER BY type, name").fetchall()


def owners(conn: sqlite3.Connection) -> dict[str, int]:
    return dict(conn.execute("SELECT owner, version FROM schema_owners WHERE owner != ?", (LEGACY_ROW,)))


@pytest.mark.parametrize("legacy", range(LEGACY_VERSIONS + 1))
def test_a_journal_of_any_earlier_version_ends_as_a_new_one(legacy: int) -> None:
    fresh = sqlite3.connect(":memory:")
    migrate(fresh, ALL_TABLES)
    old = sqlite3.connect(":memory:")
    migrate(old, ALL_TABLES, to=legacy)
    assert old.execute("PRAGMA user_version").fetchone()[0] == legacy

    assert migrate(old, ALL_TABLES) == (legacy, FORMAT)

    assert schema(old) == schema(fresh)
    assert owners(old) == owners(fresh) == {t.owner: len(t.steps) for t in (JOURNAL, *ALL_TABLES)}
    assert old.execute("PRAGMA user_version").fetchone()[0] == FORMAT


def test_every_legacy_version_is_made_by_the_owners_parts() -> None:
    versions = sorted({step.legacy for t in (JOURNAL, *ALL_TABLES) for step in t.steps if step.legacy})
    assert versions == list(range(1, LEGACY_VERSIONS + 1))


def test_tables_registered_later_are_made_then_and_only_theirs(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as conn:
        migrate(conn)  # the journal's own tables alone
        assert "tickets" not in {name for _, name, _ in schema(conn)}
        assert migrate(conn, [KITCHEN_TABLES]) == (FORMAT, FORMAT)
        assert owners(conn) == {"journal": len(JOURNAL.steps), "kitchen": len(KITCHEN_TABLES.steps)}
        assert "tickets" in {name for _, name, _ in schema(conn)}


async def test_a_component_started_on_an_open_journal_brings_its_tables(tmp_path: Path) -> None:
    async with Journal(tmp_path / "j.sqlite", "s1") as journal:
        assert "kitchen" not in journal.tables
        await journal.ensure(KITCHEN_TABLES)
        await journal.ensure(KITCHEN_TABLES)  # once is enough
        names = await journal.read(lambda conn: {row[0] for row in conn.execute("SELECT name FROM sqlite_master")})
        version = await journal.read(lambda conn: owners(conn)["kitchen"])
    assert {"tickets", "ticket_events", "order_changes", "kitchen_watermark", "kitchen_seqs"} <= names
    assert version == len(KITCHEN_TABLES.steps)


def test_a_new_step_runs_once_and_keeps_the_rows(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    first = Tables("counter", ("counts",), (Step("CREATE TABLE counts (n INTEGER NOT NULL);"),))
    second = Tables("counter", ("counts",), (*first.steps, Step("ALTER TABLE counts ADD COLUMN at REAL;")))
    with sqlite3.connect(path) as conn:
        migrate(conn, [first])
        conn.execute("INSERT INTO counts(n) VALUES (7)")
        conn.commit()
        migrate(conn, [second])
        migrate(conn, [second])
        assert conn.execute("SELECT n, at FROM counts").fetchall() == [(7, None)]
        assert owners(conn)["counter"] == 2


def test_a_step_that_fails_changes_nothing(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    twice = "CREATE TABLE counts (n INTEGER); CREATE TABLE counts (n INTEGER);"
    broken = Tables("counter", ("counts",), (Step(twice),))
    with sqlite3.connect(path) as conn:
        migrate(conn)
        with pytest.raises(sqlite3.OperationalError):
            migrate(conn, [broken])
        assert "counter" not in owners(conn)
        assert "counts" not in {name for _, name, _ in schema(conn)}


def test_an_owner_newer_than_this_edgehub_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "j.sqlite"
    with sqlite3.connect(path) as conn:
        migrate(conn, ALL_TABLES)
        conn.execute("UPDATE schema_owners SET version = version + 1 WHERE owner = 'kitchen'")
        conn.commit()
        with pytest.raises(JournalError, match="kitchen tables are version 4, newer than this edgehub's"):
            migrate(conn, ALL_TABLES)
