"""The installer's field check: one device, asked what a real store needs of it, in the store.

``edgehub device test ID``, the button on the box's page and ``POST
/api/v1/devices/{id}/field-check`` all run here, inside the running hub, on the driver the hub
holds open (``registry.open_driver``): nothing else opens the port, and the check waits its
turn behind a sale on the driver's own lock. What a check does is the driver's
(``Driver.field_check``: a printer prints a test page and shows its raw status bytes, a scale
reads once with unit and stability, a scanner waits for one scan and shows its bytes); what is
kept here is the result, with the device: the last check of each device is a row of the
journal's ``field_checks`` table (this component's), its outcome travels in the device's
description (``field_check``: ok and when) and the whole of it goes into support bundles.
"""

from __future__ import annotations

import asyncio
import json
import logging
import sqlite3
import time
from collections.abc import Callable
from typing import Any

from aiohttp import web

from drivers.base import FIELD_CHECK_MAX_WAIT_S, FIELD_CHECK_WAIT_S, FieldCheck, FieldStep
from edgehub.devices.registry import DeviceEvent, DeviceRegistry
from edgehub.devices.tables import TABLES
from edgehub.errors import DeviceError, EdgehubError
from edgehub.store import Journal

__all__ = ["DEFAULT_WAIT_S", "MAX_WAIT_S", "CheckRunning", "FieldChecks", "NoSuchDevice"]

log = logging.getLogger("edgehub.devices.fieldcheck")

DEFAULT_WAIT_S = FIELD_CHECK_WAIT_S  # how long a scanner's check waits for the installer's scan
MAX_WAIT_S = FIELD_CHECK_MAX_WAIT_S
# Beyond the wait for a person: what the device's own steps may take (a printer's test page is
# confirmed within the driver's 30 s confirmation limit; a scale answers in well under a second).
_STEPS_BUDGET_S = 45.0


class NoSuchDevice(EdgehubError):
    """The registry has no device with that id."""


class CheckRunning(EdgehubError):
    """A field check of that device is already running."""


def _summary(record: dict[str, Any]) -> dict[str, Any]:
    return {"ok": bool(record["ok"]), "at": record["at"]}


class FieldChecks:
    """The field-check component. Constructor does no I/O; ``async with`` loads the kept results."""

    def __init__(self, registry: DeviceRegistry, journal: Journal, *,
                 wall_clock: Callable[[], float] = time.time) -> None:
        self.registry = registry
        self.journal = journal
        self._wall = wall_clock
        self._last: dict[str, dict[str, Any]] = {}
        self._running: set[str] = set()

    # -- lifecycle ---------------------------------------------------------------------------
    async def __aenter__(self) -> FieldChecks:
        await self.journal.ensure(TABLES)

        def load(conn: sqlite3.Connection) -> list[tuple[str, str]]:
            return conn.execute("SELECT device_id, result FROM field_checks").fetchall()

        for device_id, text in await self.journal.read(load):
            try:
                self._last[device_id] = json.loads(text)
            except ValueError:
                log.warning("the kept field check of %s does not parse; dropped", device_id)
        for entry in self.registry.all():
            self._attach(entry.device_id)
        self.registry.subscribe(self._on_event)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.registry.unsubscribe(self._on_event)

    def _on_event(self, event: DeviceEvent) -> None:
        if event.kind == "added" and event.previous is None:
            self._attach(event.entry.device_id)

    def _attach(self, device_id: str) -> None:
        entry, record = self.registry.get(device_id), self._last.get(device_id)
        if entry is not None and record is not None:
            entry.field_check = _summary(record)

    # -- reading -----------------------------------------------------------------------------
    def last(self, device_id: str) -> dict[str, Any] | None:
        """The device's last field check, as kept."""
        return self._last.get(device_id)

    def all(self) -> list[dict[str, Any]]:
        """Every kept field check, by device id (for support bundles)."""
        return [self._last[k] for k in sorted(self._last)]

    # -- running -----------------------------------------------------------------------------
    async def run(self, device_id: str, wait_s: float = DEFAULT_WAIT_S) -> dict[str, Any]:
        """Check ``device_id`` now on its open driver, keep the result, return it. NoSuchDevice,
        CheckRunning; a device that cannot be opened is a failed check, not an error."""
        entry = self.registry.get(device_id)
        if entry is None:
            raise NoSuchDevice(f"no device {device_id!r}")
        if device_id in self._running:
            raise CheckRunning(f"a field check of {device_id} is running already")
        self._running.add(device_id)
        started = time.monotonic()
        try:
            info = entry.info
            try:
                async with asyncio.timeout(wait_s + _STEPS_BUDGET_S):
                    driver = await self.registry.open_driver(device_id)
                    check = await driver.field_check(wait_s)
            except TimeoutError:
                check = FieldCheck((FieldStep("check", False, f"the device did not finish its check within "
                                                              f"{wait_s + _STEPS_BUDGET_S:g} s"),))
            except DeviceError as exc:
                message = str(exc).removeprefix(f"{device_id}: ")
                check = FieldCheck((FieldStep("open", False, f"the hub cannot reach the device: {message}"),))
            except Exception as exc:  # a driver bug: a failed check that says so, not a 500
                log.exception("field check of %s failed unexpectedly", device_id)
                check = FieldCheck((FieldStep("check", False, f"driver error: {exc}"),))
            record = {
                "device_id": device_id,
                "kind": info.kind,
                "driver": info.driver,
                "model": info.model,
                "transport": info.transport,
                "address": info.address,
                "at": round(self._wall(), 3),
                "seconds": round(time.monotonic() - started, 3),
                "wait_s": wait_s,
                **check.to_dict(),
            }
            await self._keep(record)
        finally:
            self._running.discard(device_id)
        log.info("field check of %s: %s", device_id, "passed" if record["ok"] else "failed: " + "; ".join(
            f"{s['name']}: {s['detail']}" for s in record["steps"] if not s["ok"]))
        return record

    async def _keep(self, record: dict[str, Any]) -> None:
        text = json.dumps(record, ensure_ascii=False, separators=(",", ":"))

        def write(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO field_checks(device_id, checked_at, ok, result) VALUES (?, ?, ?, ?) "
                "ON CONFLICT(device_id) DO UPDATE SET checked_at = excluded.checked_at, ok = excluded.ok, "
                "result = excluded.result",
                (record["device_id"], record["at"], int(record["ok"]), text),
            )

        await self.journal.write(write)
        self._last[record["device_id"]] = record
        self._attach(record["device_id"])

    # -- HTTP ----------------------------------------------------------------------------------
    def http_routes(self) -> list[web.AbstractRouteDef]:
        return [web.post("/api/v1/devices/{device_id}/field-check", self._post),
                web.get("/api/v1/devices/{device_id}/field-check", self._get)]

    async def _post(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        wait_s = DEFAULT_WAIT_S
        if request.can_read_body:
            try:
                body = await request.json()
            except ValueError:
                return _error(400, "the body must be JSON: {\"wait_s\": seconds}")
            if not isinstance(body, dict) or set(body) - {"wait_s"}:
                return _error(400, "the body may only hold wait_s (seconds to wait for a scan)")
            value = body.get("wait_s", DEFAULT_WAIT_S)
            if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= MAX_WAIT_S:
                return _error(400, f"wait_s must be a number of seconds above 0 and at most {MAX_WAIT_S:g}")
            wait_s = float(value)
        try:
            record = await self.run(device_id, wait_s)
        except NoSuchDevice as exc:
            return _error(404, str(exc))
        except CheckRunning as exc:
            return _error(409, str(exc))
        return web.json_response(record)

    async def _get(self, request: web.Request) -> web.Response:
        device_id = request.match_info["device_id"]
        record = self._last.get(device_id)
        if record is None:
            known = self.registry.get(device_id) is not None
            return _error(404, f"{device_id} has not been field-checked yet" if known else f"no device {device_id!r}")
        return web.json_response(record)


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)
