"""A store with two boxes, built from real parts in network namespaces this module creates.

Three namespaces on one bridge (the store LAN, 10.{n}.{m}.0/24): box ``a`` (.1) and box ``b``
(.2), each running the real ``edgehub run`` with its own private Mosquitto and keepalived
(``broker.mode`` and ``pair.vrrp`` managed: both die with the hub, as under systemd's
BindsTo), and a terminals namespace (.50) with the tills and the chain's cloud (a Mosquitto the
boxes' uplinks reach over the LAN, and a recorder of what arrives). The floating address is .100.
Nothing here touches the host's own network: the test process reaches the namespaces from
threads that entered them (``setns``), so every socket it opens is inside.

The faults are the real thing: ``kill -9`` of a hub or of its Mosquitto, a box's link set down,
a box frozen (SIGSTOP to the hub and its children), the link between the boxes cut (their
switch ports isolated from each other: VRRP adverts and the pair link stop, while both still
reach the tills).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.request
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import paho.mqtt.client as mqtt
import psutil

from edgehub.sim.terminal import TerminalSim, make_order

REPO = Path(__file__).resolve().parents[2]
CLONE_NEWNET = 0x40000000
TOKEN = "lab-token-0123456789abcdef"
SECRET = "lab-pair-secret-0123456789abcdefghijklmnop"
STORE = "s1"
TERMINALS = ("pos-1", "pos-2", "pos-3", "pos-4")
T = TypeVar("T")
_libc = ctypes.CDLL("libc.so.6", use_errno=True)


def available() -> str:
    """Why the lab cannot run here ("" when it can)."""
    if os.geteuid() != 0:
        return "two boxes in network namespaces need root"
    for tool in ("ip", "keepalived", "mosquitto"):
        if subprocess.run(["sh", "-c", f"command -v {tool} || test -x /usr/sbin/{tool}"],
                          capture_output=True).returncode:
            return f"{tool} is not installed (make system-deps installs it)"
    return ""


def ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True, timeout=10)


def enter(ns: str) -> None:
    """Move the calling thread into network namespace ``ns`` (for the sockets it opens next)."""
    fd = os.open(f"/run/netns/{ns}", os.O_RDONLY)
    try:
        if _libc.setns(fd, CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise OSError(err, f"setns {ns}: {os.strerror(err)}")
    finally:
        os.close(fd)


def call_in(ns: str, fn: Callable[[], T], timeout: float = 30.0) -> T:
    """Run ``fn`` on a thread of its own inside ``ns``; its result (or its exception)."""
    box: dict[str, Any] = {}

    def target() -> None:
        try:
            enter(ns)
            box["value"] = fn()
        except BaseException as exc:
            box["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        raise TimeoutError(f"{fn!r} in {ns} did not finish within {timeout} s")
    if "error" in box:
        raise box["error"]
    return box["value"]  # type: ignore[no-any-return]


def start_in(ns: str, coro: Callable[[], Awaitable[T]]) -> concurrent.futures.Future[T]:
    """Run a coroutine on an event loop of its own, on a thread inside ``ns``."""
    future: concurrent.futures.Future[T] = concurrent.futures.Future()

    def target() -> None:
        try:
            enter(ns)
            future.set_result(asyncio.run(coro()))  # type: ignore[arg-type]
        except BaseException as exc:
            future.set_exception(exc)

    threading.Thread(target=target, daemon=True).start()
    return future


@dataclass
class Box:
    name: str
    ns: str
    address: str
    directory: Path
    config: Path
    proc: subprocess.Popen[bytes] | None = None
    frozen: list[int] = field(default_factory=list)

    @property
    def journal(self) -> Path:
        return self.directory / "data" / "journal.sqlite"

    @property
    def log(self) -> Path:
        return self.directory / "hub.log"


class Cloud:
    """The chain's cloud in the terminals namespace: Mosquitto and a recorder of uplink rows."""

    def __init__(self, lab: Lab) -> None:
        self.lab = lab
        self.port = 18830
        self.proc: subprocess.Popen[bytes] | None = None
        self.messages: list[dict[str, Any]] = []
        self._lock = threading.Lock()
        self._client: mqtt.Client | None = None

    def start(self) -> None:
        d = self.lab.directory / "cloud"
        d.mkdir(parents=True, exist_ok=True)
        (d / "mosquitto.conf").write_text("\n".join([
            "user root", f"listener {self.port} {self.lab.terminals_address}", "allow_anonymous true",
            "persistence false", "max_queued_messages 0", "max_queued_bytes 0", "max_inflight_messages 1000",
            "log_dest stderr", "log_type error", ""]))
        self.proc = subprocess.Popen(["ip", "netns", "exec", self.lab.ns_t, "mosquitto", "-c",
                                      str(d / "mosquitto.conf")],
                                     stdout=subprocess.DEVNULL, stderr=open(d / "mosquitto.log", "ab"))
        call_in(self.lab.ns_t, self._subscribe)

    def _subscribe(self) -> None:
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="lab-cloud-recorder",
                             protocol=mqtt.MQTTv5)
        client.on_message = self._on_message
        for _ in range(100):
            try:
                client.connect(self.lab.terminals_address, self.port)
                break
            except OSError:
                time.sleep(0.05)
        client.subscribe(f"cloud/{STORE}/up/#", qos=1)
        client.loop_start()  # its thread was started inside the namespace: its socket is there
        self._client = client

    def _on_message(self, client: mqtt.Client, userdata: object, msg: mqtt.MQTTMessage) -> None:
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        with self._lock:
            self.messages.append(doc)

    def orders(self) -> dict[str, list[dict[str, Any]]]:
        """Order messages by msg_id (a list: every copy that arrived)."""
        out: dict[str, list[dict[str, Any]]] = {}
        with self._lock:
            for doc in self.messages:
                if doc.get("stream") == "orders":
                    out.setdefault(doc["msg_id"], []).append(doc)
        return out

    def stop(self) -> None:
        if self._client is not None:
            self._client.loop_stop()
            self._client.disconnect()
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(5)


class Lab:
    def __init__(self, directory: Path, advert_ms: int = 100, extra: str = "") -> None:
        tag = f"{os.getpid() % 100000}"
        self.directory = directory
        self.ns_t, self.ns_a, self.ns_b = f"ehp{tag}t", f"ehp{tag}a", f"ehp{tag}b"
        n = 200 + os.getpid() % 50
        m = (os.getpid() // 50) % 250 + 1
        self.prefix = f"10.{n}.{m}"
        self.terminals_address = f"{self.prefix}.50"
        self.vip = f"{self.prefix}.100"
        self.advert_ms = advert_ms
        self.extra = extra
        self.boxes = {
            "a": Box("a", self.ns_a, f"{self.prefix}.1", directory / "a", directory / "a" / "edgehub.toml"),
            "b": Box("b", self.ns_b, f"{self.prefix}.2", directory / "b", directory / "b" / "edgehub.toml"),
        }
        self.cloud = Cloud(self)
        self._made: list[str] = []

    # --- the LAN -----------------------------------------------------------------------------

    def __enter__(self) -> Lab:
        try:
            self._build()
            self.cloud.start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        for ns in (self.ns_t, self.ns_a, self.ns_b):
            ip("netns", "add", ns)
            self._made.append(ns)
            ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", self.ns_t, "link", "add", "br0", "type", "bridge")
        ip("-n", self.ns_t, "link", "set", "br0", "up")
        for box in self.boxes.values():
            ip("link", "add", "lan0", "netns", box.ns, "type", "veth", "peer", "name", f"port-{box.name}",
               "netns", self.ns_t)
            ip("-n", self.ns_t, "link", "set", f"port-{box.name}", "master", "br0", "up")
            ip("-n", box.ns, "addr", "add", f"{box.address}/24", "dev", "lan0")
            ip("-n", box.ns, "link", "set", "lan0", "up")
        ip("-n", self.ns_t, "link", "add", "lan0", "type", "veth", "peer", "name", "port-t")
        ip("-n", self.ns_t, "link", "set", "port-t", "master", "br0", "up")
        ip("-n", self.ns_t, "addr", "add", f"{self.terminals_address}/24", "dev", "lan0")
        ip("-n", self.ns_t, "link", "set", "lan0", "up")
        for box in self.boxes.values():
            self.write_config(box)

    def write_config(self, box: Box, prefer: str | None = None) -> None:
        other = self.boxes["b" if box.name == "a" else "a"]
        box.directory.mkdir(parents=True, exist_ok=True)
        terminals = "".join(f'\n[[terminal]]\nid = "{t}"\npassword = "pw-{t}"\n' for t in TERMINALS)
        box.config.write_text(f"""
[store]
id = "{STORE}"
name = "Lab store"

[paths]
data_dir = "data"
run_dir = "run"

[broker]
mode = "managed"
listen = "127.0.0.1:1884"
lan_listen = "0.0.0.0:1883"
hub_password = "hub-secret-password"

[api]
listen = "0.0.0.0:8080"
token = "{TOKEN}"
plain_http = true

[limits]
orders_per_s = 0

[discovery]
usb = false
serial = false
lan = false

[cloud]
enabled = true
url = "mqtt://{self.terminals_address}:{self.cloud.port}"
keepalive_s = 5
connect_timeout_s = 2
ping_interval_s = 0.5
ping_timeout_s = 1.5
reconnect_max_s = 0.5
replay_rate = 0
telemetry_every_s = 0

[pair]
box = "{box.name}"
listen = "{box.address}:7411"
peer = "{other.address}:7411"
secret = "{SECRET}"
address = "{self.vip}/24"
interface = "lan0"
router_id = {40 + os.getpid() % 200}
prefer = "{prefer or ('primary' if box.name == 'a' else 'standby')}"
vrrp = "managed"
advert_ms = {self.advert_ms}
{self.extra}
{terminals}
""")

    def close(self) -> None:
        for box in self.boxes.values():
            self.thaw(box.name)
            self.kill(box.name)
        self.cloud.stop()
        for ns in self._made:
            ip("netns", "del", ns, check=False)
        self._made.clear()

    # --- the boxes -----------------------------------------------------------------------------

    def start(self, name: str) -> None:
        box = self.boxes[name]
        log = open(box.log, "ab")  # the child owns it
        box.proc = subprocess.Popen(["ip", "netns", "exec", box.ns, sys.executable, "-m", "edgehub", "run",
                                     "--config", str(box.config)],
                                    stdout=log, stderr=log, cwd=box.directory, env={**os.environ})
        log.close()

    def running(self, name: str) -> bool:
        proc = self.boxes[name].proc
        return proc is not None and proc.poll() is None

    def kill(self, name: str) -> None:
        """``kill -9`` of the hub (its Mosquitto and keepalived go with it, as under BindsTo)."""
        box = self.boxes[name]
        if box.proc is not None and box.proc.poll() is None:
            children = self._children(box)
            box.proc.send_signal(signal.SIGKILL)
            box.proc.wait(10)
            for child in children:  # their parent-death signal takes them down; do not leave a stray
                try:
                    child.wait(5)
                except psutil.TimeoutExpired:
                    child.kill()
                except psutil.NoSuchProcess:
                    pass

    def _children(self, box: Box) -> list[psutil.Process]:
        if box.proc is None:
            return []
        try:
            return list(psutil.Process(box.proc.pid).children(recursive=True))
        except psutil.NoSuchProcess:
            return []

    def child_pid(self, name: str, binary: str) -> int:
        for child in self._children(self.boxes[name]):
            try:
                if child.name() == binary:
                    return int(child.pid)
            except psutil.NoSuchProcess:
                continue
        raise AssertionError(f"box {name} runs no {binary}")

    def kill_broker(self, name: str) -> None:
        os.kill(self.child_pid(name, "mosquitto"), signal.SIGKILL)

    def freeze(self, name: str, hub_only: bool = False) -> None:
        """The box hangs: its hub, Mosquitto and keepalived all stop (SIGSTOP); or only the hub,
        while keepalived runs on (the heartbeat check must give the address up)."""
        box = self.boxes[name]
        assert box.proc is not None
        pids = [box.proc.pid] if hub_only else [box.proc.pid, *(c.pid for c in self._children(box))]
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        box.frozen = pids

    def thaw(self, name: str) -> None:
        box = self.boxes[name]
        for pid in box.frozen:
            try:
                os.kill(pid, signal.SIGCONT)
            except ProcessLookupError:
                pass
        box.frozen = []

    def link(self, name: str, up: bool) -> None:
        ip("-n", self.boxes[name].ns, "link", "set", "lan0", "up" if up else "down")

    def cut(self) -> None:
        """The link between the boxes is cut; both still reach the tills and the cloud (their
        switch ports are isolated from each other: a bridge's ``isolated`` ports talk only to
        ports that are not)."""
        for name in self.boxes:
            subprocess.run(["bridge", "-n", self.ns_t, "link", "set", "dev", f"port-{name}", "isolated", "on"],
                           check=True, capture_output=True, timeout=10)

    def heal(self) -> None:
        for name in self.boxes:
            subprocess.run(["bridge", "-n", self.ns_t, "link", "set", "dev", f"port-{name}", "isolated", "off"],
                           check=True, capture_output=True, timeout=10)

    def point_tills_at(self, name: str, hold: bool = False) -> None:
        """The tills' ARP entry for the floating address names this box's port (as a switch does
        when the box last sent a gratuitous ARP): their next packet goes there. ``hold``: the
        entry stays (a permanent one, which no gratuitous ARP changes) until pointed again."""
        mac = json.loads(ip("-n", self.boxes[name].ns, "-j", "link", "show", "lan0").stdout)[0]["address"]
        ip("-n", self.ns_t, "neigh", "replace", self.vip, "lladdr", mac, "dev", "lan0",
           "nud", "permanent" if hold else "reachable")

    # --- what the boxes say ----------------------------------------------------------------------

    def holds_address(self, name: str) -> bool:
        return self.vip in ip("-n", self.boxes[name].ns, "-br", "addr", "show", "lan0").stdout

    def status(self, name: str, timeout: float = 3.0) -> dict[str, Any]:
        box = self.boxes[name]

        def get() -> dict[str, Any]:
            request = urllib.request.Request(f"http://{box.address}:8080/api/v1/status",
                                             headers={"Authorization": f"Bearer {TOKEN}"})
            with urllib.request.urlopen(request, timeout=timeout) as response:
                doc: dict[str, Any] = json.loads(response.read())
                return doc

        return call_in(self.ns_t, get, timeout + 2)

    def pair(self, name: str) -> dict[str, Any]:
        try:
            doc = self.status(name)
        except (OSError, TimeoutError, ValueError):
            return {}
        section = doc.get("pair")
        return section if isinstance(section, dict) else {}

    def wait(self, what: Callable[[], bool], timeout: float, why: str) -> float:
        started = time.monotonic()
        deadline = started + timeout
        while time.monotonic() < deadline:
            if what():
                return time.monotonic() - started
            time.sleep(0.05)
        raise AssertionError(f"not within {timeout} s: {why}\n{self.tails()}")

    def wait_serving(self, name: str, timeout: float = 20.0) -> None:
        self.wait(lambda: self.pair(name).get("role") == "primary", timeout, f"box {name} serves")

    def wait_two_copies(self, serving: str, timeout: float = 30.0) -> None:
        """The serving box has its standby in sync, and the standby is ready to take over
        (keepalived has it as BACKUP, fit)."""
        standby = "b" if serving == "a" else "a"

        def ready() -> bool:
            mine, theirs = self.pair(serving), self.pair(standby)
            return (mine.get("copies") == 2 and mine.get("role") == "primary" and theirs.get("role") == "standby"
                    and theirs.get("fit") is True and (theirs.get("keepalived") or {}).get("state") == "BACKUP")

        self.wait(ready, timeout, f"box {serving} serves with its standby {standby} in sync and ready")

    def tails(self, lines: int = 25) -> str:
        out = []
        for box in self.boxes.values():
            text = box.log.read_text(errors="replace") if box.log.exists() else ""
            out.append(f"--- box {box.name} ---\n" + "\n".join(text.splitlines()[-lines:]))
        return "\n".join(out)

    def journal_orders(self, name: str) -> list[str]:
        with sqlite3.connect(f"file:{self.boxes[name].journal}?mode=ro", uri=True, timeout=10) as conn:
            return [row[0] for row in conn.execute("SELECT order_id FROM orders")]

    def journal_order_rows(self, name: str) -> list[str]:
        """msg_ids of the orders stream still in the outbox (a duplicate row would show here)."""
        with sqlite3.connect(f"file:{self.boxes[name].journal}?mode=ro", uri=True, timeout=10) as conn:
            return [row[0] for row in conn.execute("SELECT msg_id FROM outbox WHERE stream = 'orders'")]

    # --- the tills -------------------------------------------------------------------------------

    def tills(self, orders: int, rate: float, resend_after: float = 0.25,
              timeout: float = 120.0) -> concurrent.futures.Future[list[Any]]:
        """Four tills sending ``orders`` each at ``rate``/s to the floating address, re-sending
        until acked. The future's result: their reports."""

        async def run() -> list[Any]:
            sims = [TerminalSim(self.vip, 1883, STORE, t, f"pw-{t}", resend_after=resend_after, clean=True)
                    for t in TERMINALS]
            return list(await asyncio.gather(*(s.run(orders, rate, timeout) for s in sims)))

        return start_in(self.ns_t, run)


class Till:
    """One till driven step by step (the takeover measurements: first ack after a fault)."""

    def __init__(self, lab: Lab, terminal: str = "pos-1", resend_after: float = 0.1) -> None:
        self.lab = lab
        self.sim = TerminalSim(lab.vip, 1883, STORE, terminal, f"pw-{terminal}", resend_after=resend_after,
                               clean=True)
        self.n = 0

    async def order_acked(self, timeout: float = 20.0) -> float:
        """Send one new order; the seconds until it was acked ``accepted``."""
        sim = self.sim
        self.n += 1
        order_id = f"{sim.terminal_id}-{sim.run_id}-t{self.n:05d}"
        started = time.perf_counter()
        await sim.submit(make_order(order_id, self.n))
        deadline = started + timeout
        while order_id not in sim.report.acked_ids:
            if time.perf_counter() > deadline:
                raise TimeoutError(f"order {order_id} not acked within {timeout} s")
            await asyncio.sleep(0.005)
        return time.perf_counter() - started


class TillFleet:
    """Four tills sending orders to the floating address at ``rate`` each, re-sending until acked,
    from ``start`` until ``stop`` (which waits for the acks still due and returns the reports)."""

    def __init__(self, lab: Lab, rate: float, resend_after: float = 0.25) -> None:
        self.lab = lab
        self.rate = rate
        self.resend_after = resend_after
        self._stop = threading.Event()
        self._future: concurrent.futures.Future[list[Any]] | None = None
        self.sims: list[TerminalSim] = []

    def start(self) -> TillFleet:
        self._future = start_in(self.lab.ns_t, self._run)
        return self

    async def _run(self) -> list[Any]:
        self.sims = [TerminalSim(self.lab.vip, 1883, STORE, t, f"pw-{t}", resend_after=self.resend_after, clean=True)
                     for t in TERMINALS]
        async with contextlib.AsyncExitStack() as stack:
            for sim in self.sims:
                await stack.enter_async_context(sim.running())
            started, n = time.perf_counter(), 0
            while not self._stop.is_set():
                for sim in self.sims:
                    await sim.submit(make_order(f"{sim.terminal_id}-{sim.run_id}-{n:06d}", n))
                n += 1
                delay = started + n / self.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            deadline = time.perf_counter() + 60
            while any(sim.pending for sim in self.sims) and time.perf_counter() < deadline:
                await asyncio.sleep(0.05)
            for sim in self.sims:
                sim.report.unacked = sim.pending
        return [sim.report for sim in self.sims]

    def stop(self, timeout: float = 90.0) -> list[Any]:
        self._stop.set()
        assert self._future is not None
        return self._future.result(timeout)

    def acked(self) -> int:
        return sum(len(sim.report.acked_ids) for sim in self.sims)


def accepted_ids(reports: list[Any]) -> set[str]:
    return set().union(*(r.acked_ids for r in reports))


def oracle(lab: Lab, serving: str, reports: list[Any], cloud_timeout: float = 45.0) -> dict[str, Any]:
    """The counting oracle: every order acked ``accepted`` is in the serving box's journal once
    and at the cloud once in effect (after the cloud's dedupe by msg_id); nothing is unacked."""
    acked = accepted_ids(reports)
    rejected = sum(r.rejected for r in reports)
    unacked = sum(r.unacked for r in reports)
    journal = lab.journal_orders(serving)
    rows = lab.journal_order_rows(serving)
    lost = acked - set(journal)
    twice = len(journal) - len(set(journal))
    rows_twice = len(rows) - len(set(rows))
    deadline = time.monotonic() + cloud_timeout
    while True:
        at_cloud = {msg_id.partition(":")[2] for msg_id in lab.cloud.orders()}
        if acked <= at_cloud or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    return {"acked": len(acked), "rejected": rejected, "unacked": unacked, "lost": sorted(lost)[:10],
            "lost_count": len(lost), "journaled_twice": twice, "outbox_rows_twice": rows_twice,
            "missing_at_cloud": len(acked - at_cloud), "at_cloud": len(at_cloud & acked)}
