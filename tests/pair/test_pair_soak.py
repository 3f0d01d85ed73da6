"""``make soak``: twenty takeovers in a row, back and forth, of every kind, while four tills send
orders, and the counting oracle after the lot (tests/pair/test_pair_lab.py does a few of each in
``make test``)."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

from tests.pair.lab import Lab, TillFleet, available, oracle
from tests.pair.test_pair_lab import assert_nothing_lost, fault, other, recover

pytestmark = [pytest.mark.soak, pytest.mark.skipif(bool(available()), reason=available() or "lab available"),
              pytest.mark.timeout(1800)]

KINDS = ("kill -9 of the hub", "kill -9 of its Mosquitto", "its link down", "frozen", "its hub alone frozen")


def test_twenty_takeovers_in_a_row_back_and_forth_lose_nothing(tmp_path: Path) -> None:
    with Lab(tmp_path) as lab:
        lab.start("a")
        lab.start("b")
        lab.wait_two_copies("a", 40)
        tills = TillFleet(lab, rate=10).start()
        serving = "a"
        for n, kind in zip(range(20), itertools.cycle(KINDS), strict=False):
            before = tills.acked()
            fault(lab, kind, serving)
            lab.wait(lambda s=serving: lab.pair(other(s)).get("role") == "primary", 15,
                     f"takeover {n + 1} ({kind}): the standby serves")
            lab.wait(lambda b=before: tills.acked() > b + 8, 15, f"takeover {n + 1}: orders acked again")
            recover(lab, kind, serving)
            lab.wait_two_copies(other(serving), 90)
            serving = other(serving)
        reports = tills.stop()
        result = oracle(lab, serving, reports)
        assert_nothing_lost(result, lab)
        assert result["acked"] > 1000
