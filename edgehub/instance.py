"""One running hub per data directory, and every port free before anything is written.

``edgehub run`` checks, in this order and before it writes a byte: that no other hub holds the
data directory's lock (``DATA_DIR/edgehub.lock``, an ``flock`` the kernel drops when the holder
dies, even by kill -9), then that every port it will listen on is free. Only then does it take
the lock (writing who holds it into the file) and start. A second ``make run`` in another
terminal therefore exits at once with one line naming the running hub's process, and leaves
that hub's journal, outbox and broker files alone.

The lock file holds one JSON line about its holder (pid, config, page URL, start time): the
second start and ``edgehub discover`` read it to say which hub runs there.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgehub.config import Address, Config
from edgehub.errors import EdgehubError

LOCK_NAME = "edgehub.lock"
# A process forked by the hub holds a copy of the lock's descriptor until it execs (close-on-exec),
# so a lock just released may still look held for a moment.
SETTLE_S = 1.0


class AlreadyRunning(EdgehubError):
    """Another hub holds this data directory."""


class PortTaken(EdgehubError):
    """A port the hub must listen on is in use by another program."""


@dataclass(frozen=True)
class Holder:
    """Who holds a data directory's lock, as it wrote itself into the lock file."""

    pid: int | None
    config: str = ""
    page: str = ""
    started_at: float | None = None

    def describe(self) -> str:
        parts = [f"process {self.pid}" if self.pid else "another process"]
        if self.config:
            parts.append(f"config {self.config}")
        if self.started_at:
            parts.append(f"started {time.strftime('%H:%M:%S', time.localtime(self.started_at))}")
        if self.page:
            parts.append(f"page {self.page}")
        return ", ".join(parts)


def _read_holder(path: Path) -> Holder:
    try:
        doc: Any = json.loads(path.read_text(encoding="utf-8") or "{}")
    except (OSError, ValueError):
        doc = {}
    if not isinstance(doc, dict):
        doc = {}
    pid = doc.get("pid")
    started = doc.get("started_at")
    return Holder(pid if isinstance(pid, int) else None, str(doc.get("config", "")), str(doc.get("page", "")),
                  float(started) if isinstance(started, int | float) else None)


class InstanceLock:
    """``DATA_DIR/edgehub.lock``: ``check()`` looks without writing, ``acquire()`` takes it for
    the life of the process (the file descriptor is close-on-exec, so Mosquitto and other
    children never inherit it)."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.path = data_dir / LOCK_NAME
        self._fd: int | None = None

    def holder(self) -> Holder | None:
        """The hub holding the lock now, or None when nobody does. Writes nothing."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise EdgehubError(f"cannot read {self.path}: {exc.strerror}") from exc
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except BlockingIOError:
                return _read_holder(self.path)
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    def _already(self, holder: Holder) -> AlreadyRunning:
        return AlreadyRunning(f"edgehub is already running for {self.data_dir} ({holder.describe()}); "
                              "stop that one first (Ctrl-C in its terminal, or kill "
                              f"{holder.pid or '<pid>'}), or give this one its own [paths] data_dir")

    def check(self) -> None:
        """Raise AlreadyRunning, naming the holder, if another hub holds the lock. A lock held by a
        file that names nobody is being let go (or just taken): it is looked at again for up to
        ``SETTLE_S`` before it counts."""
        deadline = time.monotonic() + SETTLE_S
        holder = self.holder()
        while holder is not None and holder.pid is None and time.monotonic() < deadline:
            time.sleep(0.02)
            holder = self.holder()
        if holder is not None:
            raise self._already(holder)

    @property
    def held(self) -> bool:
        """This object holds the lock now."""
        return self._fd is not None

    def acquire(self, config: str = "", page: str = "") -> None:
        if self._fd is not None:
            return
        try:
            self.data_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        except OSError as exc:
            raise EdgehubError(f"cannot create {self.path}: {exc.strerror}; [paths] data_dir must be a "
                               "folder this user may write") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise self._already(_read_holder(self.path)) from None
        self._fd = fd
        self.describe(config=config, page=page)

    def describe(self, **info: str) -> None:
        """Rewrite what the lock file says about this hub (its page URL is known once it listens)."""
        if self._fd is None:
            return
        current = _read_holder(self.path)
        doc = {"pid": os.getpid(), "config": info.get("config", current.config),
               "page": info.get("page", current.page), "started_at": current.started_at or time.time()}
        data = (json.dumps(doc) + "\n").encode()
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, data, 0)

    def release(self) -> None:
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.ftruncate(self._fd, 0)
            os.close(self._fd)  # closing drops the flock
            self._fd = None


# --- ports -------------------------------------------------------------------------------------


def listening_process(address: Address) -> str | None:
    """``process 1234 (mosquitto)`` for whoever listens on ``address``'s port, when this user may
    see it (root sees every process; others only their own), else None."""
    import psutil

    with contextlib.suppress(psutil.Error, OSError):
        for conn in psutil.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_LISTEN and conn.laddr and conn.laddr.port == address.port:
                if conn.pid is None:
                    return None
                with contextlib.suppress(psutil.Error):
                    return f"process {conn.pid} ({psutil.Process(conn.pid).name()})"
                return f"process {conn.pid}"
    return None


def port_problem(address: Address) -> str | None:
    """Why a listener on ``address`` cannot start now (in use, address not on this machine), or None.

    Binds the way the listeners do (SO_REUSEADDR, as aiohttp and Mosquitto set it), so a port
    left in TIME_WAIT by a hub that just stopped is not taken for a port in use."""
    family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
    host = "" if address.host in ("0.0.0.0", "::") else address.host
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, address.port))
            sock.listen(1)
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                who = listening_process(address)
                return f"port {address.port} is in use by {who or 'another program'}"
            return f"cannot listen on {address}: {exc.strerror}"
    return None


def check_ports(config: Config) -> None:
    """Every address this hub will listen on is free (the private broker's too, in managed mode);
    raise PortTaken naming each one taken, the config key and what to do."""
    wanted: list[tuple[str, Address]] = [("api.listen", config.api.listen)]
    if config.broker.mode == "managed":
        wanted.append(("broker.listen", config.broker.listen))
        if config.broker.lan_listen is not None:
            wanted.append(("broker.lan_listen", config.broker.lan_listen))
    problems = []
    for key, address in wanted:
        if address.port == 0:
            continue  # a free port is chosen at start
        problem = port_problem(address)
        if problem is not None:
            problems.append(f"{key} {address}: {problem}")
    if problems:
        raise PortTaken(f"cannot start: {'; '.join(problems)}. Is another edgehub (or `make run`) running? "
                        f"Stop it, or give these keys free ports in {config.source}")
