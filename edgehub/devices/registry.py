"""The device registry: every device the box knows, its health, and its one open driver.

Discovery calls ``upsert`` when it finds a device and ``mark_gone`` when it disappears; the
watchdog calls ``set_health``; roles and the API read ``get``/``all`` and ``subscribe`` to
``DeviceEvent``s. A device is keyed by its stable ``device_id`` (USB serial number, MAC,
by-id name), so a printer replugged into another port or given a new IP is the *same* entry:
the old driver is closed and the next ``open_driver`` opens it at the new address, and
whatever role it serves stays bound.

What the store sees: ``…/dev/{id}/$description`` and ``…/dev/{id}/$state`` (retained), and an
alert on ``…/hub/alert`` for every state change. The registry is the only writer of these
topics. A publish that fails (broker not up yet, reconnecting) is kept, newest per topic, and
sent again by the registry's own task, so the retained state always ends up true.

Listeners hear of a change at once, in the same step that makes it, before anything is
published: a publish waits for the broker, and a probe finishing meanwhile may change the device
again. An event sent only after that would reach the roles when the state it announces is
already gone (a pinpad marked failed, then found ready, would never have lost its role).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Literal

from drivers.base import DeviceInfo, Driver, Health
from edgehub.bus import payloads
from edgehub.bus.topics import Topics
from edgehub.component import Signal, Signals
from edgehub.errors import DeviceError, DeviceTimeout, DeviceUnavailable, EdgehubError
from edgehub.tasks import cancel_and_wait

__all__ = ["DEVICE_CHANGED", "DeviceEntry", "DeviceEvent", "DeviceRegistry", "DriverFactory", "EventKind", "Publish"]

log = logging.getLogger("edgehub.devices")

#: ``publish(topic, payload, retain)``; the registry publishes QoS 1.
Publish = Callable[[str, bytes, bool], Awaitable[None]]
DriverFactory = Callable[[DeviceInfo], "Driver | Awaitable[Driver]"]
EventKind = Literal["added", "moved", "gone", "health"]
#: An alert leaving the box for the cloud: ``sink(device_id, payload)`` (e.g. the outbox).
AlertSink = Callable[[str, bytes], Awaitable[None]]

UNKNOWN = Health("unknown", "not checked yet")


@dataclass
class DeviceEntry:
    """One device. ``driver`` is the open production driver, or None until ``open_driver``."""

    info: DeviceInfo
    driver: Driver | None
    health: Health
    last_seen: float  # registry clock (monotonic) of the last discovery or good probe
    present: bool
    since: float = 0.0  # wall clock of the last health change, for people
    static: bool = False  # configured in [[device]]: never forgotten, only marked failed
    # The installer's last field check of it ({"ok", "at"}; the whole result: FieldChecks).
    field_check: dict[str, Any] | None = None

    @property
    def device_id(self) -> str:
        return self.info.device_id

    def describe(self) -> dict[str, Any]:
        """The entry as the API and ``edgehub discover`` show it."""
        info = self.info
        return {
            "device_id": info.device_id,
            "kind": info.kind,
            "model": info.model,
            "vendor": info.vendor,
            "transport": info.transport,
            "address": info.address,
            "driver": info.driver,
            "serial_number": info.serial_number,
            "present": self.present,
            "state": self.health.state,
            "reason": self.health.reason,
            "since": round(self.since, 3),
            "static": self.static,
            "field_check": dict(self.field_check) if self.field_check is not None else None,
        }


@dataclass(frozen=True)
class DeviceEvent:
    """What changed: ``added`` (new, or back at the same address), ``moved`` (back or still
    there at a new address: same id), ``gone`` (unplugged / vanished), ``health`` (state change).
    ``previous`` is the health before the change (None for a device never seen before)."""

    kind: EventKind
    entry: DeviceEntry
    previous: Health | None = None


# Every change of a device, heard at once in the step that makes it (see the module's doc).
DEVICE_CHANGED: Signal[DeviceEvent] = Signal("device changed")


def _default_factory(info: DeviceInfo) -> Driver:
    from drivers import driver_class

    cls = driver_class(info.driver)
    if cls is None:
        raise DeviceUnavailable(f"no driver called {info.driver!r}", info.device_id)
    return cls(info)


@dataclass
class _Slot:
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)


class DeviceRegistry:
    """All devices by stable id. Constructor does no I/O; ``async with`` owns the publish task."""

    def __init__(
        self,
        topics: Topics,
        publish: Publish | None,
        clock: Callable[[], float] = time.monotonic,
        driver_factory: DriverFactory = _default_factory,
        *,
        wall_clock: Callable[[], float] = time.time,
        alert_sink: AlertSink | None = None,
        open_timeout: float = 5.0,
        retry_interval: float = 1.0,
        signals: Signals | None = None,
    ) -> None:
        self.topics = topics
        self._publish = publish
        self._clock = clock
        self._wall = wall_clock
        self._factory = driver_factory
        self.alert_sink = alert_sink
        self.open_timeout = open_timeout
        self.retry_interval = retry_interval
        self._entries: dict[str, DeviceEntry] = {}
        self._slots: dict[str, _Slot] = {}
        # DEVICE_CHANGED goes out here (the hub's signals: roles and support hear it too).
        self.signals = signals or Signals()
        # Retained messages not yet accepted by the broker: newest payload per topic.
        self._unsent: dict[str, bytes] = {}
        self._unsent_wakeup = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._publish_failing = False
        self._published_once = False  # a state has reached the broker since start
        self._failing_level = logging.DEBUG  # what the failure being retried was logged at

    # -- reading ---------------------------------------------------------------------------
    def get(self, device_id: str) -> DeviceEntry | None:
        return self._entries.get(device_id)

    def all(self) -> list[DeviceEntry]:
        return sorted(self._entries.values(), key=lambda e: (e.info.kind, e.info.device_id))

    def subscribe(self, listener: Callable[[DeviceEvent], None]) -> None:
        """Call ``listener`` (synchronously, on the event loop) for every ``DeviceEvent``."""
        self.signals.listen(DEVICE_CHANGED, listener)

    def unsubscribe(self, listener: Callable[[DeviceEvent], None]) -> None:
        self.signals.forget(DEVICE_CHANGED, listener)

    async def status(self) -> dict[str, Any]:
        """The ``devices`` section of ``/api/v1/status``."""
        entries = self.all()
        counts: dict[str, int] = {}
        for entry in entries:
            key = entry.health.state if entry.present else "gone"
            counts[key] = counts.get(key, 0) + 1
        return {"count": len(entries), "states": counts, "devices": [e.describe() for e in entries]}

    # -- changes from discovery --------------------------------------------------------------
    async def upsert(self, info: DeviceInfo, *, static: bool = False) -> DeviceEntry:
        """Discovery found ``info``. Same id at a new address: same entry, driver reopened."""
        now = self._clock()
        entry = self._entries.get(info.device_id)
        if entry is None:
            entry = DeviceEntry(
                info=info,
                driver=None,
                health=UNKNOWN,
                last_seen=now,
                present=True,
                since=self._wall(),
                static=static,
            )
            self._entries[info.device_id] = entry
            log.info(
                "device %s found: %s %s at %s (%s)",
                info.device_id,
                info.kind,
                info.model or info.driver,
                info.address,
                info.transport,
            )
            self._emit(DeviceEvent("added", entry, None))
            await self._publish_description(entry)
            await self._publish_state(entry)
            return entry
        entry.last_seen = now
        entry.static = entry.static or static
        moved = (info.address, info.transport, info.driver) != (
            entry.info.address,
            entry.info.transport,
            entry.info.driver,
        )
        changed = info != entry.info
        if entry.present and not changed:
            return entry
        previous, was_present, old_address = entry.health, entry.present, entry.info.address
        async with self._slot(info.device_id).lock:
            if moved:
                await self._close_driver(entry)  # it talks to the old address
            entry.info = info
        if moved:
            log.info(
                "device %s now at %s (%s), was at %s",
                info.device_id,
                info.address,
                info.transport,
                old_address,
            )
        if not was_present:
            entry.present = True
            entry.health, entry.since = Health("unknown", "found again, not checked yet"), self._wall()
            log.info("device %s is back at %s", info.device_id, info.address)
        if moved or not was_present:
            self._emit(DeviceEvent("moved" if moved else "added", entry, previous))
        if not was_present:
            await self._publish_state(entry)
        await self._publish_description(entry)
        return entry

    async def mark_gone(self, device_id: str, reason: str) -> None:
        """Discovery no longer sees the device (unplugged, no longer answering on the LAN)."""
        entry = self._entries.get(device_id)
        if entry is None or not entry.present:
            return
        previous = entry.health
        health = Health("failed", reason or "gone")
        entry.present = False
        entry.health, entry.since = health, self._wall()
        log.warning("device %s gone: %s", device_id, health.reason)
        # Before waiting for the driver's lock (an open may hold it for seconds) or the broker.
        self._emit(DeviceEvent("gone", entry, previous))
        async with self._slot(device_id).lock:
            await self._close_driver(entry)
        await self._publish_state(entry)
        await self._publish_description(entry)
        await self._alert(entry, previous, health)

    # -- changes from the watchdog -----------------------------------------------------------
    async def set_health(self, device_id: str, health: Health) -> None:
        """Record a probe's result. Publishes, alerts and logs only when the health changed."""
        entry = self._entries.get(device_id)
        if entry is None or not entry.present:
            return  # a late probe of a device discovery already gave up on
        if health.usable:
            entry.last_seen = self._clock()
        if health == entry.health:
            return
        previous = entry.health
        entry.health, entry.since = health, self._wall()
        level = logging.INFO if health.usable else logging.WARNING
        log.log(
            level,
            "device %s (%s at %s): %s%s",
            device_id,
            entry.info.kind,
            entry.info.address,
            health.state,
            f" ({health.reason})" if health.reason else "",
        )
        # Listeners first, while ``health`` is the device's state (see the module docstring).
        self._emit(DeviceEvent("health", entry, previous))
        await self._publish_state(entry)
        await self._alert(entry, previous, health)

    # -- drivers ---------------------------------------------------------------------------
    async def open_driver(self, device_id: str) -> Driver:
        """The entry's open production driver, opening it on first use (one per device).

        Raises ``DeviceUnavailable`` (unknown, gone or unreachable) or ``DeviceTimeout``.
        """
        entry = self._entries.get(device_id)
        if entry is None:
            raise DeviceUnavailable("no such device", device_id)
        if entry.driver is not None:
            return entry.driver
        async with self._slot(device_id).lock:
            if entry.driver is not None:
                return entry.driver
            if not entry.present:
                raise DeviceUnavailable(f"device is gone ({entry.health.reason})", device_id)
            info = entry.info
            driver: Driver | None = None
            try:
                async with asyncio.timeout(self.open_timeout):
                    made = self._factory(info)
                    driver = await made if inspect.isawaitable(made) else made
                    await driver.open()
            except TimeoutError as exc:
                await self._discard(driver)
                raise DeviceTimeout(
                    f"opening {info.driver} at {info.address} took over {self.open_timeout:g}s", device_id
                ) from exc
            except DeviceError:
                await self._discard(driver)
                raise
            except (OSError, ValueError, ImportError) as exc:
                await self._discard(driver)
                raise DeviceUnavailable(
                    f"cannot open {info.driver} at {info.address}: {exc}", device_id
                ) from exc
            except BaseException:  # cancelled (a caller's timeout): do not leak a half-open driver
                await self._discard(driver)
                raise
            if entry.info is not info or not entry.present:
                # Moved or gone while we were opening: this driver talks to the old address.
                await self._discard(driver)
                raise DeviceUnavailable("device moved while opening, try again", device_id)
            entry.driver = driver
            return driver

    async def reset_driver(self, device_id: str) -> None:
        """Close the entry's driver so the next ``open_driver`` starts afresh (e.g. after a
        serial port broke: those drivers do not reconnect by themselves)."""
        entry = self._entries.get(device_id)
        if entry is None:
            return
        async with self._slot(device_id).lock:
            await self._close_driver(entry)

    async def _close_driver(self, entry: DeviceEntry) -> None:
        driver, entry.driver = entry.driver, None
        await self._discard(driver)

    @staticmethod
    async def _discard(driver: Driver | None) -> None:
        if driver is None:
            return
        with contextlib.suppress(Exception):  # close() never raises by contract; be sure
            async with asyncio.timeout(3.0):
                await driver.close()

    def _slot(self, device_id: str) -> _Slot:
        slot = self._slots.get(device_id)
        if slot is None:
            slot = self._slots[device_id] = _Slot()
        return slot

    # -- publishing ------------------------------------------------------------------------
    def _emit(self, event: DeviceEvent) -> None:
        self.signals.emit(DEVICE_CHANGED, event)

    async def _publish_description(self, entry: DeviceEntry) -> None:
        i = entry.info
        payload = payloads.device_description(
            i.device_id,
            i.kind,
            i.transport,
            i.address,
            i.driver,
            i.model,
            i.vendor,
            i.serial_number,
            entry.present,
        )
        await self._send(self.topics.device_description(i.device_id), payload, retain=True)

    async def _publish_state(self, entry: DeviceEntry) -> None:
        payload = payloads.device_state(
            entry.device_id, entry.health.state, entry.health.reason, entry.present, entry.since
        )
        await self._send(self.topics.device_state(entry.device_id), payload, retain=True)

    async def _alert(self, entry: DeviceEntry, previous: Health | None, health: Health) -> None:
        """Alert the change from ``previous`` to ``health`` (the entry may have moved on since)."""
        payload = payloads.device_alert(
            entry.device_id,
            entry.info.kind,
            health.state,
            previous.state if previous else None,
            health.reason,
            self._wall(),
        )
        await self._send(self.topics.alert, payload, retain=False)
        if self.alert_sink is not None:
            try:
                await self.alert_sink(entry.device_id, payload)
            except Exception:
                log.exception("keeping the alert for %s for the cloud failed", entry.device_id)

    async def _send(self, topic: str, payload: bytes, retain: bool) -> None:
        if self._publish is None:
            return
        if retain and topic in self._unsent:
            # An older value is still waiting: keep order by queueing this one behind it.
            self._unsent[topic] = payload
            self._unsent_wakeup.set()
            return
        try:
            async with asyncio.timeout(5.0):
                await self._publish(topic, payload, retain)
        except (EdgehubError, TimeoutError, OSError) as exc:
            if retain:
                self._unsent[topic] = payload
                self._unsent_wakeup.set()
            if not self._publish_failing:
                self._publish_failing = True
                # Devices are found before the hub's broker session is up at every start: that
                # is not news. A broker lost later is.
                self._failing_level = logging.WARNING if self._published_once else logging.DEBUG
                log.log(self._failing_level, "cannot publish device state yet (%s); will retry", exc)
            return
        self._published_succeeded()

    def _published_succeeded(self) -> None:
        if self._publish_failing and not self._unsent:
            self._publish_failing = False
            log.log(min(self._failing_level, logging.INFO), "device state published again")
        self._published_once = True

    async def _resend_loop(self) -> None:
        while True:
            await self._unsent_wakeup.wait()
            self._unsent_wakeup.clear()
            while self._unsent and self._publish is not None:
                topic, payload = next(iter(self._unsent.items()))
                try:
                    async with asyncio.timeout(5.0):
                        await self._publish(topic, payload, True)
                except (EdgehubError, TimeoutError, OSError):
                    await asyncio.sleep(self.retry_interval)
                    continue
                if self._unsent.get(topic) is payload:
                    del self._unsent[topic]
                self._published_succeeded()

    async def republish_all(self) -> None:
        """Send every description and state again (e.g. the broker lost its retained store)."""
        for entry in self.all():
            await self._publish_description(entry)
            await self._publish_state(entry)

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> DeviceRegistry:
        self._task = asyncio.create_task(self._resend_loop(), name="device-registry-publish")
        return self

    async def __aexit__(self, *exc: object) -> None:
        task, self._task = self._task, None
        await cancel_and_wait(task)
        for entry in self._entries.values():
            await self._close_driver(entry)
