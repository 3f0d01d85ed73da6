"""Shared parts of the benchmarks: a full-speed POS load generator (paho, QoS 1, acks matched
by order_id, TCP_NODELAY like the hub's own clients) and percentiles."""

from __future__ import annotations

import argparse
import compileall
import contextlib
import json
import os
import socket
import subprocess
import sys
import threading
import time
import tomllib
from pathlib import Path

import paho.mqtt.client as mqtt

REPO = Path(__file__).resolve().parent.parent
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from edgehub.config import commit_window_problem  # noqa: E402 - after the repo is on the path
from edgehub.sim.store import SIM_ROLES  # noqa: E402


def compile_like_the_image() -> None:
    """Byte-compile the hub's code, as the image does (``image/install-into-root.sh`` runs
    ``compileall`` over its venv): a box never compiles its Python at start. Without this, a
    checkout run with ``PYTHONDONTWRITEBYTECODE`` compiles every module of edgehub at each start,
    which a start-time or memory figure would count (the compiler's heap: about 1.3 MB of RSS)."""
    for package in ("edgehub", "drivers"):
        compileall.compile_dir(REPO / package, quiet=1)


def box_nice() -> int:
    """The nice level the box's units give edgehub and Mosquitto (``Nice=`` in edgehub.service)."""
    for line in (REPO / "systemd" / "edgehub.service").read_text().splitlines():
        if line.startswith("Nice="):
            return int(line.partition("=")[2])
    return 0


def renice(pid: int, nice: int) -> bool:
    """Every thread of ``pid`` at ``nice`` (threads started later inherit it from theirs), as the
    box's units run the hub and its broker; False where this user may not (a negative nice needs
    root), and nothing is changed then."""
    tasks = sorted(int(task.name) for task in Path(f"/proc/{pid}/task").iterdir())
    try:
        for tid in tasks:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
    except PermissionError:
        for tid in tasks:
            with contextlib.suppress(OSError):
                os.setpriority(os.PRIO_PROCESS, tid, 0)
        return False
    return True


class Loader:
    """A POS terminal at full speed: paho, QoS 1, acks matched by order_id."""

    def __init__(self, port: int, store: str, terminal: str = "pos-1", host: str = "127.0.0.1") -> None:
        self.topic = f"edgehub/v1/{store}/pos/{terminal}/order"
        self.sent_at: dict[str, float] = {}
        self.latency: dict[str, float] = {}
        self.cond = threading.Condition()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{terminal}-{time.time_ns()}")
        self.client.username_pw_set(terminal, f"pw-{terminal}")
        self.client.max_inflight_messages_set(1000)
        self.client.on_message = self._on_ack
        self.client.connect(host, port)
        self.client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.client.subscribe(f"edgehub/v1/{store}/pos/{terminal}/ack", qos=1)
        self.client.loop_start()
        time.sleep(0.3)

    def _on_ack(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        now = time.perf_counter()
        order_id = json.loads(msg.payload)["order_id"]
        with self.cond:
            if order_id in self.sent_at and order_id not in self.latency:
                self.latency[order_id] = now - self.sent_at[order_id]
                self.cond.notify_all()

    def _send(self, order_id: str) -> None:
        body = json.dumps({"schema": "order/1", "order_id": order_id, "table": "T7", "covers": 2,
                           "lines": [{"sku": "BURG-01", "name": "Cheeseburger", "qty": 2, "station": "grill"},
                                     {"sku": "COLA-33", "name": "Cola", "qty": 2, "station": "bar"}]})
        with self.cond:
            self.sent_at[order_id] = time.perf_counter()
        self.client.publish(self.topic, body, qos=1)

    def burst(self, prefix: str, n: int, window: int = 400, timeout: float = 120.0) -> float:
        """Send n orders keeping at most ``window`` unacked; return acked orders per second."""
        start = time.perf_counter()
        for i in range(n):
            with self.cond:
                self.cond.wait_for(lambda: len(self.sent_at) - len(self.latency) < window, timeout)
            self._send(f"{prefix}-{i}")
        with self.cond:
            if not self.cond.wait_for(lambda: len(self.latency) == len(self.sent_at), timeout):
                raise RuntimeError(f"only {len(self.latency)} of {len(self.sent_at)} acked")
        return n / (time.perf_counter() - start)

    def paced(self, prefix: str, rate: float, seconds: float) -> list[float]:
        before = set(self.latency)
        n = int(rate * seconds)
        start = time.perf_counter()
        for i in range(n):
            delay = start + i / rate - time.perf_counter()
            if delay > 0:
                time.sleep(delay)
            self._send(f"{prefix}-{i}")
        with self.cond:
            self.cond.wait_for(lambda: len(self.latency) == len(self.sent_at), 30)
        return sorted(v * 1000 for k, v in self.latency.items() if k not in before and k.startswith(prefix))

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


def terminal_client(name: str, port: int, user: str) -> mqtt.Client:
    """A test terminal's paho client (password ``pw-{user}``), connected, without Nagle."""
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-{name}-{time.time_ns()}")
    client.username_pw_set(user, f"pw-{user}")
    client.max_inflight_messages_set(1000)
    client.connect("127.0.0.1", port)
    client.socket().setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return client


def pct(values: list[float], p: float) -> float:
    return round(values[min(len(values) - 1, int(p * len(values)))], 2) if values else float("nan")


def commit_window_ms(text: str) -> float:
    """``--commit-window-ms``: what ``journal.commit_window_ms`` accepts, or a usage error."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of milliseconds") from None
    if problem := commit_window_problem(value):
        raise argparse.ArgumentTypeError(f"{text} ms: journal.commit_window_ms {problem}")
    return value


# The benchmarks measure what the box can take: one load generator sends as fast as it can, which
# the per-terminal order quota (edgehub/quota.py) would answer with "slow down".
NO_QUOTA = "\n[limits]\norders_per_s = 0\n"


def journal_section(commit_window_ms: float | None) -> str:
    """Config text setting the journal's group commit window (``journal.commit_window_ms``), or
    nothing to keep the default: the benchmarks' way to show what a longer window trades (bytes
    written per order against the wait on every ack)."""
    return "" if commit_window_ms is None else f"[journal]\ncommit_window_ms = {commit_window_ms:g}\n"


class SimDevices:
    """The simulated store's printers, scale, scanner and pinpad in a process of their own
    (``edgehub sim store``), for a hub run without ``--simulate``: on a box they are the other
    end of the LAN or a cable, so what they spend answering the hub's probes is not the box's.
    ``config()`` is the ``[[device]]`` entries they print, the roles ``--simulate`` binds to them
    (``SIM_ROLES``) and hardware discovery off, as ``--simulate`` sets it."""

    def __init__(self, log_path: Path) -> None:
        self.log_path = log_path
        self.proc: subprocess.Popen[str] | None = None
        self.devices: list[dict[str, str]] = []

    def __enter__(self) -> SimDevices:
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "edgehub", "sim", "store"], cwd=REPO,
                                         stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        entries = []
        for line in self.proc.stdout:  # the entries, then the `edgehub discover` hint
            if line.startswith("# find them"):
                break
            entries.append(line)
        else:
            self.close()
            raise RuntimeError(f"edgehub sim store ended: {self.log_path.read_text()[-2000:]}")
        self.devices = tomllib.loads("".join(entries))["device"]
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def config(self) -> str:
        text = "\n[discovery]\nusb = false\nserial = false\nlan = false\n"
        for device in self.devices:
            text += "\n[[device]]\n" + "".join(f"{key} = {json.dumps(value)}\n" for key, value in device.items())
        for role in SIM_ROLES:
            text += (f"\n[[role]]\nname = {json.dumps(role.name)}\ndevices = {json.dumps(list(role.devices))}\n"
                     f"failback_after_s = {role.failback_after_s:g}\n")
        return text
