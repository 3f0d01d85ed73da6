"""Parts of a pair on loopback, for the tests that need no network namespace: a serving hub
(a real Hub with its private Mosquitto, the Replicator as its journal's hook and the PairService
as its first component, as the node builds it when it takes over) and the pair link's listener;
the standby's Follower on a journal of its own. The floating address and keepalived are the
network-namespace lab's (tests/pair/lab.py)."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import sqlite3
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from edgehub import __version__
from edgehub.broker import free_port
from edgehub.config import Address, Config, load_config
from edgehub.hub import Hub
from edgehub.pair import link, tables
from edgehub.pair.primary import Replicator
from edgehub.pair.service import PairService
from edgehub.pair.standby import Follower
from edgehub.store.schema import SCHEMA_VERSION
from tests.conftest import write_config

SECRET = b"test-pair-secret-0123456789abcdefghijkl"


def identity(box: str, store: str = "s1", schema: int = SCHEMA_VERSION) -> dict[str, Any]:
    return {"store_id": store, "box": box, "schema_version": schema, "version": __version__}


def box_config(directory: Path, store: str = "s1", extra: str = "") -> Config:
    return load_config(write_config(directory, store=store, mode="managed", terminals=("pos-1", "pos-2", "kds-grill"),
                                    extra=f"[limits]\norders_per_s = 0\n{extra}"))


class ServingBox:
    """The serving side of a pair, on loopback (``async with``)."""

    def __init__(self, config: Config, box: str = "a", standby_timeout_s: float = 2.0,
                 secret: bytes = SECRET, ident: dict[str, Any] | None = None) -> None:
        self.config = config
        self.box = box
        self.port = free_port()
        self.secret = secret
        self.identity = ident or identity(box, config.store.id)
        self.rep = Replicator(config.journal.path, box, standby_timeout_s, 8 * 1024 * 1024)
        self.hub = Hub(config)
        self.hub.journal.hook = self.rep
        self.service = PairService(config.store.id, box, self.hub.journal, self.hub.bus, self.hub.topics, self.rep,
                                   self.hub.signals, lambda: {"box": box, "role": "primary"})
        self.hub.add(self.service, first=True)
        self.refusals: list[tuple[str, str]] = []
        self.seen: list[dict[str, Any]] = []
        self.listener = link.Listener(Address("127.0.0.1", self.port), secret, self.identity, self.describe,
                                      self.follow, self.seen.append, lambda who, why: self.refusals.append((who, why)))

    def describe(self) -> dict[str, Any]:
        rep = self.rep
        return {"role": "primary", "position": tables.Position(rep.lineage, rep.epoch, rep.seq, rep.hash).as_dict()}

    def follow(self, channel: Any, hello: dict[str, Any]) -> str | None:
        self.rep.serve(channel, hello)
        return None

    async def __aenter__(self) -> ServingBox:
        await self.hub.__aenter__()
        async with asyncio.timeout(15):
            await self.hub.ready.wait()
        self.listener.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await asyncio.to_thread(self.listener.stop)
        await self.hub.__aexit__(None, None, None)
        await asyncio.to_thread(self.rep.stop)


def follower(path: Path, box: ServingBox, name: str = "b", ident: dict[str, Any] | None = None,
             secret: bytes = SECRET) -> Follower:
    return Follower(path, ("127.0.0.1", box.port), secret, ident or identity(name, box.config.store.id), 2.0)


async def until(what: Callable[[], bool | Awaitable[bool]], timeout: float, why: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = what()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"not within {timeout} s: {why}")


def dump(path: Path) -> dict[str, list[tuple[Any, ...]]]:
    """Every row of every table (sqlite_sequence too) of a journal, for comparing two copies."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=10)) as conn:
        names = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' ORDER BY name")]
        return {name: sorted(conn.execute(f"SELECT * FROM {name}").fetchall(), key=repr) for name in names}


def file_digest(path: Path) -> str:
    digest = hashlib.sha256()
    for suffix in ("", "-wal"):
        part = Path(f"{path}{suffix}")
        if part.exists():
            digest.update(part.read_bytes())
    return digest.hexdigest()
