"""The benches' Pi profile: the box's processes run at the speed of a Raspberry Pi 4 core and
sync to an SD card, on whatever machine runs the bench (``--profile pi``; docs/footprint.md,
"The Pi profile").

CPU: the kernel's CFS bandwidth control (cgroup v1 ``cpu`` controller). Every thread of the box
(the hub, its Mosquitto, a bench's stand-in for the hub) gets a cgroup of its own whose quota is
one Pi 4 core, so a thread never runs faster than a Pi core and threads still run side by side;
their parent cgroup holds four such cores (a Pi 4 has four). The quota is calibrated at the start
of every run: a reference workload (the n-body simulation of the Computer Language Benchmarks
Game, written for this module) runs in such a cgroup, and the quota is moved until it runs at the
published Pi 4 figure (``PI4_NBODY_US_PER_STEP``). The load generator (the POS terminals and
kitchen screens, separate devices in a store) gets a cgroup of its own, one host core, so the
box's quota is there for it on a two-core machine.

Storage: ``build/libsdcard.so`` (bench/native/sdcard.c, LD_PRELOAD) makes each fsync/fdatasync
of the box's processes take what an SD card takes, and counts syncs and bytes per process.

What it cannot model: memory bandwidth and caches (the Pi's are smaller and slower: code that
misses the cache runs slower there than the quota says), and the bandwidth control is a rate,
not a clock: a piece of work shorter than the quota still left in its period runs at the host's
speed (at most ``quota`` of host time early: see ``Calibration.latency_bound_ms``).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import struct
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
SHIM = REPO / "build" / "libsdcard.so"
CGROUP_CPU = Path("/sys/fs/cgroup/cpu")

# Raspberry Pi 4 Model B (Cortex-A72, 1.5 GHz, performance governor): 5,000,000 steps of the
# n-body benchmark in Python in 158.26 s (docs/footprint.md, source [1]).
PI4_NBODY_US_PER_STEP = 158.26 / 5_000_000 * 1e6
PI4_CORES = 4
# CFS bandwidth periods and quotas are at least 1 ms; the shortest period that leaves a quota of
# 1 ms keeps the gaps a throttled thread waits in as short as the kernel allows.
MIN_QUOTA_US = 1000
# SD card (docs/footprint.md, sources [2]-[4]): one sync of a small write through ext4 is about
# three 4 KiB writes of an A1 card (the data, the journal block, the commit block: 2 ms each at
# the class's 500 IOPS floor), with a tail of garbage collection.
SD_SYNC_MEDIAN_US = 4000
SD_SYNC_P99_US = 25000
SD_WRITE_KBPS = 10000  # speed class 10: 10 MB/s sequential floor
WATCH_INTERVAL_S = 0.02


class ProfileError(RuntimeError):
    """The profile cannot run here (no cgroup v1 cpu controller, not root, no shim)."""


# --- the reference workload -------------------------------------------------------------------

def _bodies() -> list[list[float]]:
    """Sun, Jupiter, Saturn, Uranus, Neptune: x, y, z, vx, vy, vz, mass (the Benchmarks Game's)."""
    solar_mass = 4 * math.pi * math.pi
    year = 365.24
    planets = [
        (4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01,
         1.66007664274403694e-03, 7.69901118419740425e-03, -6.90460016972063023e-05, 9.54791938424326609e-04),
        (8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01,
         -2.76742510726862411e-03, 4.99852801234917238e-03, 2.30417297573763929e-05, 2.85885980666130812e-04),
        (1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01,
         2.96460137564761618e-03, 2.37847173959480950e-03, -2.96589568540237556e-05, 4.36624404335156298e-05),
        (1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01,
         2.68067772490389322e-03, 1.62824170038242295e-03, -9.51592254519715870e-05, 5.15138902046611451e-05),
    ]
    bodies = [[0.0, 0.0, 0.0, 0.0, 0.0, 0.0, solar_mass]]
    bodies += [[x, y, z, vx * year, vy * year, vz * year, m * solar_mass] for x, y, z, vx, vy, vz, m in planets]
    return bodies


def nbody(steps: int) -> float:
    """Advance the five bodies ``steps`` times (dt 0.01); the energy at the end (a checksum)."""
    bodies = _bodies()
    pairs = [(bodies[i], bodies[j]) for i in range(len(bodies)) for j in range(i + 1, len(bodies))]
    dt = 0.01
    for _ in range(steps):
        for a, b in pairs:
            dx, dy, dz = a[0] - b[0], a[1] - b[1], a[2] - b[2]
            mag = dt * (dx * dx + dy * dy + dz * dz) ** -1.5
            bm, am = b[6] * mag, a[6] * mag
            a[3] -= dx * bm
            a[4] -= dy * bm
            a[5] -= dz * bm
            b[3] += dx * am
            b[4] += dy * am
            b[5] += dz * am
        for body in bodies:
            body[0] += dt * body[3]
            body[1] += dt * body[4]
            body[2] += dt * body[5]
    energy = 0.0
    for i, a in enumerate(bodies):
        energy += 0.5 * a[6] * (a[3] ** 2 + a[4] ** 2 + a[5] ** 2)
        for b in bodies[i + 1:]:
            energy -= a[6] * b[6] / math.dist(a[:3], b[:3])
    return energy


def host_us_per_step(steps: int = 40_000) -> float:
    """The reference on this machine, unlimited (best of three: other work only slows it)."""
    best = float("inf")
    for _ in range(3):
        started = time.perf_counter()
        nbody(steps)
        best = min(best, time.perf_counter() - started)
    return best / steps * 1e6


# --- the profiles -----------------------------------------------------------------------------

@dataclass
class Calibration:
    period_us: int
    quota_us: int
    host_us_per_step: float  # the reference with no limit, this run
    pi_us_per_step: float  # the published figure the quota aims at
    measured_us_per_step: float  # the reference under the final quota
    rounds: int
    loadavg_1m: float
    converged: bool  # within the tolerance; a busy machine's noise can keep it from it

    @property
    def core_fraction(self) -> float:
        return self.quota_us / self.period_us

    @property
    def latency_bound_ms(self) -> float:
        """How much faster than on a Pi one piece of work can finish at most: run at the host's
        speed on quota left in its period, it is done up to (1/f - 1) x quota sooner."""
        return round((1 / self.core_fraction - 1) * self.quota_us / 1000, 2)


@dataclass
class HostProfile:
    """No limits: the figures of this machine."""

    name: str = "host"
    stats_dir: Path | None = None

    def __enter__(self) -> HostProfile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        pass

    def env(self) -> dict[str, str]:
        return {}

    @contextlib.contextmanager
    def box_environ(self) -> Iterator[None]:
        """``os.environ`` as the box's processes get it, while one is started from here."""
        saved = dict(os.environ)
        os.environ.update(self.env())
        try:
            yield
        finally:
            os.environ.clear()
            os.environ.update(saved)

    def box(self, pid: int) -> None:
        """``pid`` (and every process it starts) is part of the box."""

    def terminals(self, pid: int) -> None:
        """``pid`` is the load generator (terminals, screens)."""

    def describe(self) -> dict[str, object]:
        return {"name": self.name, "loadavg_1m": round(os.getloadavg()[0], 2)}

    def sync_counts(self, pids: list[int] | None = None) -> dict[str, int]:
        """Syncs and bytes written through the shim, summed over ``pids`` (all when None)."""
        totals = {"syncs": 0, "sync_ms": 0, "written": 0, "writes": 0}
        if self.stats_dir is None:
            return totals
        for path in self.stats_dir.iterdir():
            if pids is not None and int(path.name) not in pids:
                continue
            raw = path.read_bytes()
            if len(raw) < 64:
                continue
            _version, syncs, sync_us, written, writes, *_ = struct.unpack("<8Q", raw[:64])
            totals["syncs"] += syncs
            totals["sync_ms"] += sync_us // 1000
            totals["written"] += written
            totals["writes"] += writes
        return totals


@dataclass
class PiProfile(HostProfile):
    """A Raspberry Pi 4 with an SD card, as far as the kernel's controls model one."""

    name: str = "pi"
    pi_us_per_step: float = PI4_NBODY_US_PER_STEP
    cores: int = PI4_CORES
    terminal_host_cores: float = 1.0
    sd_median_us: int = SD_SYNC_MEDIAN_US
    sd_p99_us: int = SD_SYNC_P99_US
    sd_write_kbps: int = SD_WRITE_KBPS
    calibration: Calibration | None = None
    _root: Path = field(default=Path(), init=False)
    _boxes: list[int] = field(default_factory=list, init=False)
    _placed: dict[int, Path] = field(default_factory=dict, init=False)
    _stop: threading.Event = field(default_factory=threading.Event, init=False)
    _watcher: threading.Thread | None = field(default=None, init=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _tmp: tempfile.TemporaryDirectory[str] | None = field(default=None, init=False)

    def __enter__(self) -> PiProfile:
        check_pi_profile()
        _remove_stale_cgroups()
        self._root = CGROUP_CPU / f"edgehub-bench-{os.getpid()}"
        self._root.mkdir()
        self._tmp = tempfile.TemporaryDirectory(prefix="bench-sdcard-")
        self.stats_dir = Path(self._tmp.name)
        try:
            self.calibration = self._calibrate()
            period, quota = self.calibration.period_us, self.calibration.quota_us
            _limit(self._root / "box", period, quota * self.cores)
            _limit(self._root / "terminals", period, max(MIN_QUOTA_US, int(period * self.terminal_host_cores)))
        except BaseException:
            self.close()
            raise
        self._watcher = threading.Thread(target=self._watch, name="pi-profile", daemon=True)
        self._watcher.start()
        return self

    def close(self) -> None:
        self._stop.set()
        if self._watcher is not None:
            self._watcher.join(5)
            self._watcher = None
        if self._root != Path() and self._root.exists():
            _remove_tree(self._root)
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def env(self) -> dict[str, str]:
        assert self.stats_dir is not None
        return {"LD_PRELOAD": str(SHIM), "SDCARD_SYNC_MEDIAN_US": str(self.sd_median_us),
                "SDCARD_SYNC_P99_US": str(self.sd_p99_us), "SDCARD_WRITE_KBPS": str(self.sd_write_kbps),
                "SDCARD_STATS_DIR": str(self.stats_dir)}

    def box(self, pid: int) -> None:
        with self._lock:
            self._boxes.append(pid)
        self._place_box_threads()

    def terminals(self, pid: int) -> None:
        (self._root / "terminals" / "cgroup.procs").write_text(str(pid))

    def describe(self) -> dict[str, object]:
        assert self.calibration is not None
        c = self.calibration
        return {"name": self.name, "pi_nbody_us_per_step": round(c.pi_us_per_step, 2),
                "host_nbody_us_per_step": round(c.host_us_per_step, 2),
                "measured_nbody_us_per_step": round(c.measured_us_per_step, 2),
                "slowdown": round(c.pi_us_per_step / c.host_us_per_step, 2),
                "period_us": c.period_us, "quota_us": c.quota_us, "core_fraction": round(c.core_fraction, 3),
                "cores": self.cores, "latency_bound_ms": c.latency_bound_ms, "calibration_rounds": c.rounds,
                "calibrated": c.converged,
                "sd_sync_median_ms": self.sd_median_us / 1000, "sd_sync_p99_ms": self.sd_p99_us / 1000,
                "sd_write_mb_s": self.sd_write_kbps / 1000, "loadavg_1m": round(os.getloadavg()[0], 2)}

    # --- calibration ---------------------------------------------------------------------

    def _calibrate(self, rounds: int = 8, tolerance: float = 0.03) -> Calibration:
        """Move the per-thread quota until the reference runs at the Pi's speed in its cgroup.
        It runs as its own process (a box thread would), about a second each round."""
        host = host_us_per_step()
        fraction = min(1.0, host / self.pi_us_per_step)
        period = max(MIN_QUOTA_US, int(MIN_QUOTA_US / fraction))
        measured = float("nan")
        group = self._root / "calibration"
        done = 0
        for done in range(1, rounds + 1):  # noqa: B007 - the count is reported
            quota = max(MIN_QUOTA_US, min(period, round(period * fraction)))
            _limit(group, period, quota)
            measured = _reference_in(group, steps=int(1.0e6 / self.pi_us_per_step))
            error = measured / self.pi_us_per_step
            if abs(error - 1) <= tolerance:
                break
            fraction = min(1.0, fraction * error)
            period = max(MIN_QUOTA_US, int(MIN_QUOTA_US / fraction))
        if measured > self.pi_us_per_step * (1 + tolerance) and fraction >= 1.0:
            raise ProfileError(f"this machine runs the reference at {measured:.1f} us/step even with a whole core: "
                               f"slower than the Pi 4's {self.pi_us_per_step:.1f} (too busy?)")
        group.rmdir()
        converged = abs(measured / self.pi_us_per_step - 1) <= tolerance
        if not converged:
            print(f"pi profile: calibration did not settle in {rounds} rounds: the reference runs at "
                  f"{measured:.1f} us/step, not {self.pi_us_per_step:.1f} (load {os.getloadavg()[0]:.1f})",
                  file=sys.stderr)
        return Calibration(period, quota, host, self.pi_us_per_step, measured, done, os.getloadavg()[0], converged)

    # --- placing threads -----------------------------------------------------------------

    def _watch(self) -> None:
        while not self._stop.wait(WATCH_INTERVAL_S):
            with contextlib.suppress(OSError):
                self._place_box_threads()

    def _place_box_threads(self) -> None:
        assert self.calibration is not None
        with self._lock:
            roots = list(self._boxes)
        pids = _with_descendants(roots)
        alive = set()
        for pid in pids:
            with contextlib.suppress(FileNotFoundError, ProcessLookupError):
                for entry in os.listdir(f"/proc/{pid}/task"):
                    tid = int(entry)
                    alive.add(tid)
                    if tid not in self._placed:
                        group = self._root / "box" / f"t{tid}"
                        _limit(group, self.calibration.period_us, self.calibration.quota_us)
                        try:
                            (group / "tasks").write_text(str(tid))
                        except OSError:  # the thread ended meanwhile
                            group.rmdir()
                            continue
                        self._placed[tid] = group
        for tid in [t for t in self._placed if t not in alive]:
            with contextlib.suppress(OSError):
                self._placed.pop(tid).rmdir()


def check_pi_profile() -> None:
    """Why the Pi profile cannot run here, as a ProfileError, or nothing."""
    if not (CGROUP_CPU / "cpu.cfs_quota_us").exists():
        raise ProfileError(f"the Pi profile needs the cgroup v1 cpu controller at {CGROUP_CPU} (cpu.cfs_quota_us)")
    if not os.access(CGROUP_CPU, os.W_OK):
        raise ProfileError(f"the Pi profile needs write access to {CGROUP_CPU} (run as root)")
    if not SHIM.exists():
        raise ProfileError(f"{SHIM} is missing: build it with `make native`")


def _limit(group: Path, period_us: int, quota_us: int) -> None:
    group.mkdir(exist_ok=True)
    # The quota goes first when the period grows and last when it shrinks: quota <= period's
    # parent limits are checked at each write.
    (group / "cpu.cfs_quota_us").write_text("-1")
    (group / "cpu.cfs_period_us").write_text(str(period_us))
    (group / "cpu.cfs_quota_us").write_text(str(quota_us))


def _reference_in(group: Path, steps: int) -> float:
    """Microseconds per step of the reference, run by a process placed in ``group`` first."""
    code = ("import os, sys, time; sys.path.insert(0, sys.argv[1]); from piprofile import nbody\n"
            "open(sys.argv[2], 'w').write(str(os.getpid()))\n"
            "nbody(500); t = time.perf_counter(); nbody(int(sys.argv[3]))\n"
            "print((time.perf_counter() - t) / int(sys.argv[3]) * 1e6)")
    out = subprocess.run([sys.executable, "-c", code, str(Path(__file__).parent), str(group / "tasks"), str(steps)],
                         capture_output=True, text=True, check=True)
    return float(out.stdout.strip())


def _with_descendants(roots: list[int]) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        with contextlib.suppress(OSError, ValueError, IndexError):
            stat = Path(f"/proc/{entry}/stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], list(roots)
    while todo:
        pid = todo.pop()
        found.append(pid)
        todo.extend(children.get(pid, ()))
    return found


def _remove_tree(group: Path) -> None:
    """Every task back to the root cgroup, then the groups, deepest first."""
    for sub in sorted((p for p in group.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        _empty(sub)
        with contextlib.suppress(OSError):
            sub.rmdir()
    _empty(group)
    with contextlib.suppress(OSError):
        group.rmdir()


def _empty(group: Path) -> None:
    with contextlib.suppress(OSError):
        for tid in (group / "tasks").read_text().split():
            with contextlib.suppress(OSError):
                (CGROUP_CPU / "tasks").write_text(tid)


def _remove_stale_cgroups() -> None:
    """Groups left by a bench that was killed (its pid is gone)."""
    for group in CGROUP_CPU.glob("edgehub-bench-*"):
        pid = int(group.name.rsplit("-", 1)[1])
        if not Path(f"/proc/{pid}").exists():
            _remove_tree(group)


def add_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", choices=("host", "pi"), default="host",
                        help="host: this machine as it is; pi: the box's processes at a Raspberry Pi 4 core's "
                             "speed with an SD card's syncs (docs/footprint.md, The Pi profile)")


def from_args(args: argparse.Namespace) -> HostProfile:
    return PiProfile() if args.profile == "pi" else HostProfile()


def main() -> None:
    """``python bench/piprofile.py``: calibrate, print the profile as JSON, and clean up."""
    parser = argparse.ArgumentParser(description="calibrate the Pi profile and print it")
    parser.parse_args()
    with PiProfile() as profile:
        print(json.dumps({**profile.describe(), "calibration": asdict(profile.calibration) if profile.calibration
                          else None}))


if __name__ == "__main__":
    main()
