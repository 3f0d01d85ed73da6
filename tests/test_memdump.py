"""The support tool of docs/footprint.md (Memory): off by default, a tracemalloc snapshot on SIGUSR2."""

from __future__ import annotations

import os
import signal
import tracemalloc
from pathlib import Path

from edgehub.memdump import install_from_env


def test_off_by_default_installs_nothing() -> None:
    before = signal.getsignal(signal.SIGUSR2)
    assert install_from_env({}) is None
    assert signal.getsignal(signal.SIGUSR2) is before
    assert not tracemalloc.is_tracing()


def test_sigusr2_writes_a_snapshot(tmp_path: Path) -> None:
    before = signal.getsignal(signal.SIGUSR2)
    try:
        assert install_from_env({"EDGEHUB_TRACEMALLOC": str(tmp_path / "mem")}) == tmp_path / "mem"
        os.kill(os.getpid(), signal.SIGUSR2)
        snapshots = list((tmp_path / "mem").glob(f"snapshot-{os.getpid()}-*.pickle"))
        assert len(snapshots) == 1
        assert tracemalloc.Snapshot.load(str(snapshots[0])).traces is not None
    finally:
        signal.signal(signal.SIGUSR2, before)
        tracemalloc.stop()
