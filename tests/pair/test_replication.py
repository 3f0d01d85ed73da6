"""Acked means on both boxes: a serving hub on loopback with a standby following its journal.

Real parts: the whole Hub with its private Mosquitto, real terminals and a kitchen screen over
MQTT, the pair link over TCP, the standby's own journal file. The floating address and
keepalived are the lab's (tests/pair/test_pair_lab.py); here it is the journal's side.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import sqlite3
import time
from pathlib import Path
from typing import Any

from edgehub.bus.session import MqttSession
from edgehub.pair.standby import Follower
from tests.conftest import Terminal, order
from tests.pair.conftest import ServingBox, box_config, dump, file_digest, follower, identity, until

GRILL_PRINTS = '[kitchen.stations.grill]\nprinter_role = "kitchen-printer"\n'


def has_order(path: Path, order_id: str) -> bool:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        return conn.execute("SELECT 1 FROM orders WHERE order_id = ?", (order_id,)).fetchone() is not None


def ticket_state(path: Path, ticket_id: str) -> str | None:
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5)) as conn:
        row = conn.execute("SELECT state FROM tickets WHERE ticket_id = ?", (ticket_id,)).fetchone()
        return str(row[0]) if row else None


async def settled(box: ServingBox) -> None:
    """The standby confirmed the last record and nothing new came for a while (the kitchen's
    lazy ticket writes, the outbox's deletes)."""
    seq = -1
    while True:
        await until(lambda: box.rep.acked == box.rep.seq, 10, "the standby confirms the last record")
        if box.rep.seq == seq:
            return
        seq = box.rep.seq
        await asyncio.sleep(0.3)


async def retained(box: ServingBox, topic: str) -> dict[str, Any]:
    listen = box.config.broker.listen
    async with MqttSession(listen.host, listen.port, username="edgehub-hub", password="hub-secret-password",
                           client_id=f"test-retained-{time.monotonic_ns()}") as client:
        await client.subscribe(topic, qos=1)
        async with asyncio.timeout(5):
            async for message in client.messages:
                doc: dict[str, Any] = json.loads(message.payload)
                return doc
    raise AssertionError("no retained message")


async def test_every_change_of_a_busy_hub_is_on_the_standby_before_it_is_acked(tmp_path: Path) -> None:
    config = box_config(tmp_path / "a", extra=GRILL_PRINTS)
    standby_path = tmp_path / "b" / "journal.sqlite"
    async with ServingBox(config) as box:
        standby = follower(standby_path, box)
        standby.start()
        try:
            await until(lambda: box.rep.in_sync, 15, "the standby in sync")
            assert (await retained(box, box.hub.topics.hub_copies))["copies"] == 2
            async with Terminal(config, "pos-1") as pos, Terminal(config, "kds-grill") as screen:
                # Every ack of a new order: the order is in the standby's journal at that moment.
                for n in range(40):
                    await pos.send(order(f"o{n}", lines=[{"sku": "BURG-01", "name": "宫保鸡丁", "qty": 1 + n % 3,
                                                          "station": "grill" if n % 2 else "bar"}]))
                    ack = await pos.ack()
                    assert ack["status"] == "accepted" and not ack["duplicate"], ack
                    assert has_order(standby_path, f"o{n}"), f"o{n} acked before the standby had it"
                # A re-send is a duplicate on both boxes (and numbers nothing differently on either).
                await pos.send(order("o3", lines=[{"sku": "BURG-01", "name": "宫保鸡丁", "qty": 1,
                                                   "station": "grill"}]))
                assert (await pos.ack())["duplicate"] is True
                await pos.send({"schema": "amend/1", "order_id": "o1", "amend_id": "a1", "rush": True},
                               topic=box.hub.topics.amend("pos-1"))
                assert (await pos.ack())["status"] == "accepted"
                await pos.send({"schema": "cancel/1", "order_id": "o5", "cancel_id": "c1", "reason": "guest left"},
                               topic=box.hub.topics.cancel("pos-1"))
                assert (await pos.ack())["status"] == "accepted"
                await pos.send(b"{not json")  # a dead letter, journaled for support
                topic = box.hub.topics.kds_command("grill")
                await screen.client.publish(topic, json.dumps({"schema": "kds-command/1", "command_id": "k1",
                                                               "action": "bump", "ticket_id": "o1/grill/1"}), qos=1)
                await until(lambda: ticket_state(config.journal.path, "o1/grill/1") == "ready", 10,
                            "the bump journaled")
            await settled(box)
            mine, theirs = dump(config.journal.path), dump(standby_path)
        finally:
            await asyncio.to_thread(standby.stop)
    for table in ("orders", "tickets", "ticket_events", "order_changes", "print_jobs", "outbox", "outbox_streams",
                  "deadletters", "kitchen_seqs", "sqlite_sequence", "pair_epochs", "pair_lineage", "pair_log"):
        assert mine[table] == theirs[table], f"{table} differs"
    assert mine == theirs
    assert len(mine["orders"]) == 40 and mine["print_jobs"], "the workload made print jobs"


async def test_a_standby_that_stops_confirming_is_waited_for_then_the_box_serves_alone_and_says_so(
        tmp_path: Path) -> None:
    config = box_config(tmp_path / "a")
    standby_path = tmp_path / "b" / "journal.sqlite"
    async with ServingBox(config, standby_timeout_s=1.5) as box:
        standby = follower(standby_path, box)
        standby.start()
        try:
            await until(lambda: box.rep.in_sync, 15, "the standby in sync")
            async with Terminal(config, "pos-1") as pos:
                await pos.send(order("before"))
                assert (await pos.ack())["status"] == "accepted"
                # The standby's disk stops taking writes (another writer holds its journal).
                blocker = sqlite3.connect(standby_path, timeout=1, isolation_level=None)
                blocker.execute("BEGIN IMMEDIATE")
                try:
                    await pos.send(order("stuck"))
                    waited = time.monotonic()
                    with contextlib.suppress(TimeoutError):
                        early = await pos.ack(timeout=0.5)
                        raise AssertionError(f"acked while the standby did not have it: {early}")
                    ack = await pos.ack(timeout=10)  # then: served alone, and acked
                    assert ack["status"] == "accepted" and time.monotonic() - waited >= 0.5
                    status = (await box.hub.status())["pair"]
                    assert status["copies"] == 1 and "did not confirm record" in status["one_copy_reason"]
                    copies = await retained(box, box.hub.topics.hub_copies)
                    assert copies["copies"] == 1 and copies["one_copy_since"] and copies["reason"]
                    await pos.send(order("alone"))
                    assert (await pos.ack(timeout=5))["status"] == "accepted"  # no waiting while alone
                finally:
                    blocker.execute("ROLLBACK")
                    blocker.close()
                # The standby catches up by itself, and the box says two copies again.
                await until(lambda: box.rep.in_sync, 20, "the standby back in sync")
                await until(lambda: has_order(standby_path, "alone"), 5, "the standby has what came meanwhile")
                assert (await retained(box, box.hub.topics.hub_copies))["copies"] == 2
        finally:
            await asyncio.to_thread(standby.stop)
    with contextlib.closing(sqlite3.connect(config.journal.path)) as conn:
        events = [json.loads(p)["event"] for (p,) in conn.execute(
            "SELECT payload FROM outbox WHERE stream = 'audit' AND msg_id LIKE 'pair:%' ORDER BY seq")]
    # The takeover, the first standby in sync, it falls behind, it is back, it is stopped.
    assert events == ["takeover", "two-copies", "one-copy", "two-copies", "one-copy"], events


async def test_a_returning_standby_catches_up_from_the_records_without_stopping_the_primary(tmp_path: Path) -> None:
    config = box_config(tmp_path / "a")
    standby_path = tmp_path / "b" / "journal.sqlite"
    async with ServingBox(config) as box:
        first = follower(standby_path, box)
        first.start()
        await until(lambda: box.rep.in_sync, 15, "the standby in sync")
        await asyncio.to_thread(first.stop)
        async with Terminal(config, "pos-1") as pos:
            for n in range(100):  # taken alone, each acked at once
                await pos.send(order(f"gone-{n}"))
                assert (await pos.ack(timeout=5))["status"] == "accepted"
            again = follower(standby_path, box)
            again.start()
            try:
                for n in range(30):  # and the primary never stops acking while it catches up
                    await pos.send(order(f"back-{n}"))
                    assert (await pos.ack(timeout=5))["status"] == "accepted"
                await until(lambda: box.rep.in_sync, 20, "the standby back in sync")
                catch_up = again.status()["catch_up"]
                assert catch_up["kind"] == "records" and catch_up["rows"] > 0 and catch_up["rows_per_s"], catch_up
                assert again.status()["set_aside"] == []  # followed on, no copy needed
            finally:
                await asyncio.to_thread(again.stop)
    assert dump(config.journal.path)["orders"] == dump(standby_path)["orders"]


async def test_a_box_that_is_not_this_ones_partner_is_refused_and_nothing_is_copied(tmp_path: Path) -> None:
    config = box_config(tmp_path / "a")
    async with ServingBox(config) as box:
        async with Terminal(config, "pos-1") as pos:
            await pos.send(order("o1"))
            await pos.ack()
        # A box with its own journal (another lineage, with orders of its own).
        other = box_config(tmp_path / "other")
        async with ServingBox(other, box="x") as stranger:
            async with Terminal(other, "pos-1") as pos:
                await pos.send(order("theirs"))
                await pos.ack()
        other_path = other.journal.path
        before = file_digest(other_path)
        cases = {
            "another store": (tmp_path / "c1" / "j.sqlite", identity("b", store="s9"), box.secret,
                              "is of store 's9' and box a of store 's1'"),
            "another schema": (tmp_path / "c2" / "j.sqlite", identity("b", schema=999), box.secret,
                               "has journal schema"),
            "another secret": (tmp_path / "c3" / "j.sqlite", identity("b"), b"another-secret-0123456789abcdefghij",
                               "another pair secret"),
            "diverged": (other_path, identity("b"), box.secret, "not a copy of this store's journal"),
        }
        for name, (path, ident, secret, reason) in cases.items():
            standby = Follower(path, ("127.0.0.1", box.port), secret, ident, 2.0)
            standby.start()
            try:
                await until(lambda s=standby: s.status()["state"] == "refused", 10, f"{name}: refused")
                assert reason in standby.status()["refused"], (name, standby.status()["refused"])
            finally:
                await asyncio.to_thread(standby.stop)
        assert not box.rep.in_sync
        assert (await box.hub.status())["pair"]["copies"] == 1
    # Nothing of either journal was overwritten.
    assert file_digest(other_path) == before
    assert [r[1] for r in dump(config.journal.path)["orders"]] == ["o1"]
    assert [r[1] for r in dump(other_path)["orders"]] == ["theirs"]
    refused = " | ".join(why for _, why in box.refusals)
    assert "store 's9'" in refused and "schema 999" in refused and "another pair secret" in refused
    assert stranger.rep.lineage != box.rep.lineage


async def test_a_box_that_served_alone_hands_over_what_it_took_and_follows_the_newer_one(tmp_path: Path) -> None:
    """Both boxes served (the link between them was cut): the one in the older epoch steps down,
    its orders reach the serving box once each, and its own journal is set aside, not lost."""
    config_a, config_b = box_config(tmp_path / "a"), box_config(tmp_path / "b")
    async with ServingBox(config_a) as a:
        standby = follower(config_b.journal.path, a)
        standby.start()
        await until(lambda: a.rep.in_sync, 15, "b in sync")
        async with Terminal(config_a, "pos-1") as pos:
            await pos.send(order("before"))
            await pos.ack()
        await until(lambda: a.rep.acked == a.rep.seq, 10, "b has 'before'")
        await asyncio.to_thread(standby.stop)  # the link is cut; b takes over with its copy
        async with ServingBox(config_b, box="b") as b:
            assert b.rep.epoch == a.rep.epoch + 1
            for box, prefix in ((a, "a"), (b, "b")):
                async with Terminal(box.config, "pos-1") as pos:
                    for n in range(20):
                        await pos.send(order(f"{prefix}-{n}"))
                        assert (await pos.ack())["status"] == "accepted"
                    await pos.send(order("both"))  # a till sent it to one box, then to the other
                    assert (await pos.ack())["status"] == "accepted"
            await a.__aexit__(None, None, None)  # a sees b serves in a newer epoch: it steps down
            old_a = dump(config_a.journal.path)
            stepping_down = follower(config_a.journal.path, b, name="a")
            stepping_down.start()
            try:
                await until(lambda: b.rep.in_sync, 20, "a follows b")
                status = stepping_down.status()
                assert status["salvaged"]["orders"] == 20 and status["salvaged"]["orders_known"] == 1, status
                assert len(status["set_aside"]) == 1
                served = {row[1] for row in dump(config_b.journal.path)["orders"]}
                assert served == {"before", "both", *(f"a-{n}" for n in range(20)), *(f"b-{n}" for n in range(20))}
                # a's cloud messages of its own orders are b's to send now, the same msg_ids.
                rows = dump(config_b.journal.path)["outbox"]
                assert sum(1 for r in rows if r[1] == "order:a-3") == 1
                await settled(b)
                assert dump(config_a.journal.path)["orders"] == dump(config_b.journal.path)["orders"]
            finally:
                await asyncio.to_thread(stepping_down.stop)
            aside = Path(status["set_aside"][0])
            assert aside.name.startswith("journal.sqlite.salvaged-")
            assert dump(aside)["orders"] == old_a["orders"]  # what a held is kept as it was


async def test_a_payment_in_flight_on_the_dead_box_is_unknown_on_the_standby_and_never_retried(
        tmp_path: Path) -> None:
    config_a, config_b = box_config(tmp_path / "a"), box_config(tmp_path / "b")
    async with ServingBox(config_a) as a:
        standby = follower(config_b.journal.path, a)
        standby.start()
        await until(lambda: a.rep.in_sync, 15, "b in sync")

        def on_the_pinpad(conn: sqlite3.Connection) -> None:  # what payments journal before the pinpad is asked
            conn.execute("INSERT INTO payments(payment_id, role, sale_id, amount_cents, currency, device_id, state, "
                         "created_at, updated_at, result, terminal, tender) VALUES "
                         "('p1', 'pinpad', 's1', 1250, 'CNY', 'zvt-1', 'sent', 1, 1, '{}', 'pos-1', 'card')")

        await a.hub.journal.write(on_the_pinpad)  # acked: on both boxes
        assert dump(config_b.journal.path)["payments"][0][6] == "sent"
        await asyncio.to_thread(standby.stop)
    async with ServingBox(config_b, box="b") as b:  # a died; b takes over with its copy
        [payment] = dump(config_b.journal.path)["payments"]
        assert payment[0] == "p1" and payment[6] == "unknown"  # settled as after a restart, never charged again
        assert "p1" in b.hub.roles.payments.open
