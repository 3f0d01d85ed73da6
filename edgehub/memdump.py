"""Support tool, off by default: a tracemalloc snapshot of the live daemon on SIGUSR2.

    EDGEHUB_TRACEMALLOC=/var/tmp/edgehub-mem edgehub run ...   # start tracing (costs memory and CPU)
    kill -USR2 $(pidof -s edgehub)                             # writes <dir>/snapshot-<pid>-<n>.pickle

Compare two snapshots with ``tracemalloc.Snapshot.load(a).compare_to(Snapshot.load(b), "lineno")``
(docs/footprint.md, Memory). ``EDGEHUB_TRACEMALLOC_FRAMES`` sets the traceback depth (default 1).
Without ``EDGEHUB_TRACEMALLOC`` nothing is imported, traced or installed.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

__all__ = ["install_from_env"]


def install_from_env(environ: dict[str, str] | None = None) -> Path | None:
    env = os.environ if environ is None else environ
    target = env.get("EDGEHUB_TRACEMALLOC")
    if not target:
        return None
    import tracemalloc

    directory = Path(target)
    directory.mkdir(parents=True, exist_ok=True)
    if not tracemalloc.is_tracing():
        tracemalloc.start(int(env.get("EDGEHUB_TRACEMALLOC_FRAMES", "1")))
    count = 0

    def dump(signum: int, frame: object) -> None:
        nonlocal count
        count += 1
        snapshot = tracemalloc.take_snapshot()
        path = directory / f"snapshot-{os.getpid()}-{count}.pickle"
        snapshot.dump(str(path.with_suffix(".tmp")))
        os.replace(path.with_suffix(".tmp"), path)

    signal.signal(signal.SIGUSR2, dump)
    return directory
