"""The benchmarks' shared parts that decide how a process is run: the box's nice level."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType

from tests.conftest import REPO


def bench_common() -> ModuleType:
    spec = importlib.util.spec_from_file_location("bench_common", REPO / "bench" / "common.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bench_takes_the_nice_level_of_the_box_units() -> None:
    unit = (REPO / "systemd" / "edgehub.service").read_text()
    assert f"Nice={bench_common().box_nice()}" in unit.splitlines()


def test_renice_reaches_every_thread_of_a_process() -> None:
    # A child with a second thread; a positive nice needs no root.
    code = ("import threading, time; threading.Thread(target=time.sleep, args=(30,)).start(); "
            "print('up', flush=True); time.sleep(30)")
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert child.stdout is not None and child.stdout.readline().strip() == "up"
        assert bench_common().renice(child.pid, 7)
        tasks = [int(t.name) for t in Path(f"/proc/{child.pid}/task").iterdir()]
        assert len(tasks) == 2
        assert {os.getpriority(os.PRIO_PROCESS, tid) for tid in tasks} == {7}
    finally:
        child.kill()
        child.wait()
