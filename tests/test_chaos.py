"""Chaos: kill -9 the hub and restart Mosquitto while terminals send orders. Nothing acked is
lost and every order is journaled exactly once."""

from __future__ import annotations

import asyncio
import random
import sqlite3

from edgehub.broker import MosquittoProcess
from edgehub.config import Config
from edgehub.hub import Hub
from edgehub.sim.terminal import TerminalSim
from tests.conftest import HubProcess


def journaled(config: Config) -> list[str]:
    with sqlite3.connect(config.journal.path) as conn:
        return [row[0] for row in conn.execute("SELECT order_id FROM orders")]


def terminal(config: Config, terminal_id: str) -> TerminalSim:
    return TerminalSim("127.0.0.1", config.broker.listen.port, config.store.id, terminal_id,
                       f"pw-{terminal_id}", resend_after=1.0)


async def test_kill_9_five_times_during_2000_orders(
    broker: MosquittoProcess, config: Config, hub_process: HubProcess
) -> None:
    await asyncio.to_thread(hub_process.start)
    sims = [terminal(config, "pos-1"), terminal(config, "pos-2")]
    # Slow enough that all five kills come while orders are still being sent (at 250/s the run
    # was over after two or three of them).
    run = asyncio.gather(*(s.run(orders=1000, rate=100, timeout=90) for s in sims))
    rng = random.Random(7)
    kills = 0
    mid_run = 0  # kills while the terminals still had orders to send or to see acked
    for _ in range(5):
        await asyncio.sleep(rng.uniform(0.3, 1.0))
        mid_run += not run.done()
        hub_process.kill9()
        kills += 1
        await asyncio.sleep(rng.uniform(0.0, 0.3))
        await asyncio.to_thread(hub_process.start)
    reports = await run
    assert kills == 5
    sent = {f"{s.terminal_id}-{s.run_id}-{n:06d}" for s in sims for n in range(1000)}
    acked = set().union(*(r.acked_ids for r in reports))
    assert acked == sent, f"{len(sent - acked)} orders never acked"
    rows = journaled(config)
    assert len(rows) == len(set(rows)) == 2000, "an order was journaled twice or lost"
    assert set(rows) == sent
    # The kills really interrupted the run. (Not "some order was re-sent or acked duplicate":
    # an order the hub had not finished comes again from the broker's session, unseen by its
    # terminal, so a run can rightly show neither; one CI run did.)
    assert mid_run == kills, f"only {mid_run} of the kills came while orders were in flight"


async def test_mosquitto_restart_mid_run_loses_nothing_acked(broker: MosquittoProcess, config: Config) -> None:
    async with Hub(config) as hub:
        await asyncio.wait_for(hub.ready.wait(), 10)
        sim = terminal(config, "pos-1")
        run = asyncio.create_task(sim.run(orders=600, rate=300, timeout=60))
        await asyncio.sleep(0.8)
        await broker.stop()
        await asyncio.sleep(0.5)
        await broker.start()
        report = await run
        assert hub.bus is not None and hub.bus.connects >= 2
    assert report.unacked == 0 and len(report.acked_ids) == 600
    rows = journaled(config)
    assert len(rows) == len(set(rows)) == 600
