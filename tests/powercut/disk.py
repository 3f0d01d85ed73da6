"""A recorded SD card and what a power cut leaves on it.

``RecordedDisk`` makes an ext4 file system the way the box's image makes its root (the image's
mkfs features and mount options: ``image/rootfs.env``), serves it through ``cutdisk`` (FUSE,
tests/powercut/cutdisk.c) under a loop device, and mounts it: the box's processes write to a
real ext4 whose block writes and cache flushes are all recorded, with their times.

``CardHistory.cut`` is what the card holds after a power cut at a given time: everything written
before the last completed flush, and of the writes after it, any subset, each whole, lost or
torn at a 512-byte sector (a card acknowledges writes from a volatile cache and may program
them in any order; a flush is the only promise). ``CardHistory.recover`` does what the box does at boot
(``e2fsck -p``: the ext4 journal is replayed), then a full check that must find nothing, and
copies a directory out of the image with ``debugfs``.

Why this and not a crash-simulating SQLite VFS or a FUSE file system holding the journal's
files: here the hub, SQLite, the kernel's page cache and ext4 (its journal, delayed allocation,
file sizes, directory entries) are all the real ones, with the box's mount options; only the
card is modelled, by the one rule a card promises. It needs root, /dev/fuse and loop devices.
"""

from __future__ import annotations

import contextlib
import os
import random
import shutil
import struct
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CUTDISK = REPO / "build" / "cutdisk"
ROOTFS_ENV = REPO / "image" / "rootfs.env"
SECTOR = 512


def rootfs_settings() -> dict[str, str]:
    """``MKFS_FEATURES`` and ``MOUNT_OPTIONS`` of the box's root file system (image/rootfs.env)."""
    settings = {}
    for line in ROOTFS_ENV.read_text().splitlines():
        line = line.strip()
        if line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key.strip()] = value.strip().strip('"')
    return settings


def why_not_here() -> str:
    """Why recorded disks cannot run on this machine ("" when they can)."""
    if os.geteuid() != 0:
        return "power-cut tests need root (loop devices, mounts)"
    if not Path("/dev/fuse").exists():
        return "power-cut tests need /dev/fuse"
    for tool in ("losetup", "mkfs.ext4", "e2fsck", "e2undo", "debugfs", "mount", "umount"):
        if shutil.which(tool) is None:
            return f"power-cut tests need {tool}"
    if not CUTDISK.exists():
        return f"{CUTDISK} is missing: build it with `make native`"
    return ""


@dataclass(frozen=True)
class Write:
    at_ns: int
    offset: int
    data: bytes


@dataclass(frozen=True)
class Flush:
    at_ns: int


def read_log(path: Path) -> list[Write | Flush]:
    raw = path.read_bytes()
    events: list[Write | Flush] = []
    i = 0
    while i < len(raw):
        kind = raw[i:i + 1]
        (at_ns,) = struct.unpack_from("<Q", raw, i + 1)
        i += 9
        if kind == b"W":
            offset, length = struct.unpack_from("<QI", raw, i)
            i += 12
            events.append(Write(at_ns, offset, raw[i:i + length]))
            i += length
        elif kind == b"F":
            events.append(Flush(at_ns))
        else:
            raise ValueError(f"{path}: record {len(events)} at byte {i - 9} has kind {kind!r}")
    return events


def _run(*cmd: str, ok: tuple[int, ...] = (0,)) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode not in ok:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stdout[-800:]} {proc.stderr[-800:]}")
    return proc


class RecordedDisk:
    """``with RecordedDisk(workdir) as mount:`` a mounted ext4 whose every write is recorded."""

    def __init__(self, workdir: Path, size_mb: int = 96) -> None:
        self.workdir = workdir
        self.size = size_mb * 2**20
        self.base = workdir / "base.img"
        self.log = workdir / "writes.log"
        self.fuse_dir = workdir / "fuse"
        self.mount = workdir / "mnt"
        self._daemon: subprocess.Popen[bytes] | None = None
        self._loop = ""
        self._mounted = False

    def __enter__(self) -> Path:
        settings = rootfs_settings()
        self.fuse_dir.mkdir(parents=True)
        self.mount.mkdir()
        with open(self.base, "wb") as image:
            image.truncate(self.size)
        features = settings.get("MKFS_FEATURES", "")
        _run("mkfs.ext4", "-q", "-F", "-b", "4096", *(["-O", features] if features else []), str(self.base))
        try:
            self._daemon = subprocess.Popen([str(CUTDISK), str(self.fuse_dir), str(self.base), str(self.log)],
                                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            disk = self.fuse_dir / "disk"
            deadline = time.monotonic() + 10
            while not disk.exists():
                if self._daemon.poll() is not None or time.monotonic() > deadline:
                    said = self._daemon.stderr.read() if self._daemon.stderr else b""
                    raise RuntimeError(f"cutdisk did not serve {disk}: {said!r}")
                time.sleep(0.02)
            self._loop = _run("losetup", "--find", "--show", str(disk)).stdout.strip()
            _run("mount", "-t", "ext4", "-o", settings["MOUNT_OPTIONS"], self._loop, str(self.mount))
            self._mounted = True
        except BaseException:
            self.__exit__()
            raise
        return self.mount

    def __exit__(self, *exc: object) -> None:
        if self._mounted:
            try:
                _run("umount", str(self.mount))
            except RuntimeError:  # still busy (a hub that did not stop): detach it anyway
                _run("umount", "-l", str(self.mount))
            self._mounted = False
        if self._loop:
            _run("losetup", "-d", self._loop)
            self._loop = ""
        if self._daemon is not None:
            # The loop driver lets go of the file a moment after `losetup -d`; until then the
            # FUSE mount is busy. A mount still busy after that is detached lazily, so the daemon
            # can exit and no dead mount is left behind.
            deadline = time.monotonic() + 5
            while True:
                try:
                    _run("umount", str(self.fuse_dir))
                    break
                except RuntimeError:
                    if time.monotonic() > deadline:
                        _run("umount", "-l", str(self.fuse_dir), ok=(0, 32))
                        break
                    time.sleep(0.05)
            try:
                self._daemon.wait(10)
            except subprocess.TimeoutExpired:
                self._daemon.kill()
                self._daemon.wait()
            self._daemon = None


class CardHistory:
    """The card's states over the run: ``cut(t)`` is the card after a power cut at monotonic
    ns ``t``, as a file in ``scratch``. Cuts come in time order: the part the card has flushed
    is built up once in that file; each cut's unflushed writes, and what the box's recovery
    changes, are undone after it (e2fsck's own undo file)."""

    def __init__(self, base: Path, log: Path, scratch: Path) -> None:
        self.events = read_log(log)
        self.image = scratch / "card.img"
        self._undo = scratch / "recovery.undo"
        shutil.copyfile(base, self.image)
        self._applied = 0  # events already on the durable image (up to a flush)

    @property
    def flushes(self) -> int:
        return sum(isinstance(e, Flush) for e in self.events)

    @contextlib.contextmanager
    def cut(self, cut_ns: int, rng: random.Random) -> Iterator[Path]:
        last_flush = self._applied
        for i in range(self._applied, len(self.events)):
            event = self.events[i]
            if event.at_ns >= cut_ns:
                break
            if isinstance(event, Flush):
                last_flush = i + 1
        pending = [e for e in self.events[last_flush:] if e.at_ns < cut_ns and isinstance(e, Write)]
        fd = os.open(self.image, os.O_RDWR)
        saved: list[tuple[int, bytes]] = []
        try:
            for event in self.events[self._applied:last_flush]:
                if isinstance(event, Write):
                    os.pwrite(fd, event.data, event.offset)
            self._applied = last_flush
            rng.shuffle(pending)  # the card programs its cache in any order
            for event in pending:
                fate = rng.random()
                if fate < 0.4:
                    continue  # lost
                data = event.data
                if fate < 0.6 and len(data) > SECTOR:  # torn at a sector
                    data = data[:SECTOR * rng.randrange(1, -(-len(data) // SECTOR))]
                saved.append((event.offset, os.pread(fd, len(data), event.offset)))
                os.pwrite(fd, data, event.offset)
            os.fsync(fd)
            self._undo.unlink(missing_ok=True)
            yield self.image
        finally:
            if self._undo.exists():
                _run("e2undo", str(self._undo), str(self.image))
                self._undo.unlink()
            for offset, data in reversed(saved):
                os.pwrite(fd, data, offset)
            os.close(fd)

    def recover(self, image: Path, directory: str, into: Path) -> str:
        """The box's boot on ``image`` (journal replay, undone after the cut), a full check that
        must come out clean, and ``directory`` copied out to ``into``; what e2fsck said."""
        preen = _run("e2fsck", "-p", "-z", str(self._undo), str(image), ok=(0, 1))
        _run("e2fsck", "-f", "-n", str(image))
        into.mkdir(parents=True, exist_ok=True)
        _run("debugfs", "-R", f"rdump {directory} {into}", str(image))
        return preen.stdout.strip()


