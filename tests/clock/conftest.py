"""A real chronyd for the time server's tests: Debian's chrony on loopback ports, never touching
the machine's clock (``-x``), its files in the test's folder. As root it runs as it is; as another
user inside a user namespace of its own (``unshare --map-root-user``), where it may start."""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import subprocess
from pathlib import Path

import pytest

from edgehub.clock.ntp import query

CHRONYD = shutil.which("chronyd") or "/usr/sbin/chronyd"
needs_chrony = pytest.mark.skipif(not Path(CHRONYD).exists(),
                                  reason=f"{CHRONYD} is not installed (apt-get install chrony, or make test)")


class Chronyd:
    """``async with Chronyd(folder, name, lines, ntp_port)``: a chronyd reading ``lines`` (and a
    pid file in ``folder``), ready once it answers NTP on ``ntp_port``."""

    def __init__(self, folder: Path, name: str, lines: list[str], ntp_port: int) -> None:
        self.folder = folder
        self.name = name
        self.lines = lines
        self.ntp_port = ntp_port
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = folder / f"{name}.log"

    async def __aenter__(self) -> Chronyd:
        self.folder.mkdir(parents=True, exist_ok=True)
        conf = self.folder / f"{self.name}.conf"
        conf.write_text("\n".join([*self.lines, f"pidfile {self.folder / self.name}.pid", ""]))
        prefix = [] if os.geteuid() == 0 else ["unshare", "--user", "--map-root-user"]
        self.proc = subprocess.Popen([*prefix, CHRONYD, "-x", "-d", "-f", str(conf), "-u", "root"],  # noqa: ASYNC220 - starts at once
                                     stdout=open(self.log, "ab"), stderr=subprocess.STDOUT)
        for _ in range(100):
            if self.proc.poll() is not None:
                raise RuntimeError(f"chronyd {self.name} exited: {self.log.read_text()[-1500:]}")
            with contextlib.suppress(OSError, TimeoutError, ValueError):
                await query("127.0.0.1", self.ntp_port, timeout=0.2)
                return self
            await asyncio.sleep(0.05)
        raise RuntimeError(f"chronyd {self.name} does not answer NTP: {self.log.read_text()[-1500:]}")

    async def __aexit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
