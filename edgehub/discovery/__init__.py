"""Discovery: finds devices on USB, serial ports and the LAN and keeps the registry current.

One match table is built from every driver's declarations (``drivers.ALL_DRIVERS``: USB ids
and classes, zeroconf types, TCP ports, serial probes); the three finders only ask it. What a
finder sees goes to ``DeviceRegistry.upsert``; a USB or serial device that is no longer listed
goes to ``mark_gone`` ("unplugged"). LAN devices are never declared gone by a missed sweep:
the watchdog reports an unreachable printer as ``failed`` and a printer with a new IP is the
same device (same MAC) at a new address.

``[[device]]`` entries from the config are put in the registry first, as they are (static).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import ALL_DRIVERS
from drivers.base import DeviceInfo, Driver, UsbMatch
from edgehub.config import DiscoveryConfig, StaticDeviceConfig
from edgehub.devices.registry import DeviceRegistry
from edgehub.discovery.lan import (
    LanDiscovery,
    NeighbourLookup,
    hub_service_info,
    local_ipv4_addresses,
    neighbour_macs,
)
from edgehub.discovery.serial import SerialDiscovery, SerialProbe
from edgehub.discovery.usb import UsbDiscovery, UsbUnavailable
from edgehub.tasks import cancel_and_wait

__all__ = ["Discovery", "MatchTable", "static_device_info"]

log = logging.getLogger("edgehub.discovery")


@dataclass(frozen=True)
class MatchTable:
    """Every driver's declarations in one place."""

    usb: list[tuple[UsbMatch, type[Driver]]] = field(default_factory=list)
    zeroconf: dict[str, list[type[Driver]]] = field(default_factory=dict)
    tcp_ports: dict[int, list[type[Driver]]] = field(default_factory=dict)
    serial_probes: list[SerialProbe] = field(default_factory=list)
    scanner_vendor_ids: frozenset[int] = frozenset()

    @classmethod
    def build(cls, drivers: Iterable[type[Driver]] = ALL_DRIVERS) -> MatchTable:
        table = cls()
        scanner_vids: set[int] = set()
        for driver in drivers:
            table.usb.extend((m, driver) for m in driver.usb_matches)
            for t in driver.zeroconf_types:
                table.zeroconf.setdefault(t, []).append(driver)
            for port in driver.tcp_ports:
                table.tcp_ports.setdefault(port, []).append(driver)
            probe = getattr(driver, "probe_serial", None)
            if probe is not None:
                table.serial_probes.append(probe)
            if driver.kind == "scanner":
                scanner_vids.update(m.vendor_id for m in driver.usb_matches if m.vendor_id is not None)
        return MatchTable(
            table.usb, table.zeroconf, table.tcp_ports, table.serial_probes, frozenset(scanner_vids)
        )


def _id_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.strip().removeprefix("/dev/"))[:96]


_KINDS = {
    "escpos": "printer",
    "hid_scanner": "scanner",
    "serial_scanner": "scanner",
    "mt8217": "scale",
    "cas": "scale",
    "zvt": "pinpad",
}


def static_device_info(device: StaticDeviceConfig, macs: dict[str, str] | None = None) -> DeviceInfo:
    """A ``[[device]]`` entry as ``DeviceInfo``; without an ``id``, one from the address
    (MAC for a LAN host we have talked to, the by-id name for a serial port)."""
    device_id = device.id
    if not device_id:
        if device.transport == "tcp":
            host = device.address.rsplit(":", 1)[0] if device.address.count(":") == 1 else device.address
            host = host.strip("[]")
            mac = (macs or {}).get(host)
            device_id = (
                f"mac-{mac.replace(':', '')}" if mac else f"tcp-{_id_part(device.address).replace(':', '-')}"
            )
        elif device.transport == "serial":
            device_id = "serial-" + _id_part(
                Path(device.address).name if "/by-id/" in device.address else device.address
            )
        else:
            device_id = "usb-" + _id_part(device.extra.get("serial_number") or device.address)
    extra = dict(device.extra)
    return DeviceInfo(
        device_id=device_id,
        kind=_KINDS.get(device.driver, "printer"),  # type: ignore[arg-type]
        transport=device.transport,  # type: ignore[arg-type]  # checked by the config loader
        address=device.address,
        driver=device.driver,
        model=device.model or "configured",
        vendor=extra.pop("vendor", ""),
        serial_number=extra.pop("serial_number", ""),
        extra=extra,
    )


class Discovery:
    """The discovery component. Constructor does no I/O; ``async with`` owns the finder tasks
    and, unless one is passed in, the one AsyncZeroconf of the process."""

    def __init__(
        self,
        registry: DeviceRegistry,
        config: DiscoveryConfig,
        devices: Iterable[StaticDeviceConfig] = (),
        *,
        table: MatchTable | None = None,
        usb_backend: object | None = None,
        zeroconf: Any = None,
        by_id_dir: str | Path = "/dev/serial/by-id",
        list_ports: Callable[[], list[Any]] | None = None,
        neighbours: NeighbourLookup = neighbour_macs,
        advertise: tuple[str, int, str] | None = None,  # (store id, API port, version)
    ) -> None:
        self.registry = registry
        self.config = config
        self.static = tuple(devices)
        self.table = table or MatchTable.build()
        self.usb = UsbDiscovery(
            self.table.usb, backend=usb_backend, poll_interval=min(2.0, config.scan_interval_s)
        )
        self.serial = SerialDiscovery(
            self.table.serial_probes,
            scanner_vendor_ids=self.table.scanner_vendor_ids,
            ports=config.serial_ports,
            by_id_dir=by_id_dir,
            list_ports=list_ports,
        )
        self.lan = LanDiscovery(
            config.subnets, zeroconf_types=tuple(self.table.zeroconf), neighbours=neighbours
        )
        self._neighbours = neighbours
        self._zeroconf = zeroconf
        self._own_zeroconf = False
        self._advertise = advertise
        self._advertised: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.notes: list[str] = []  # scan_once: what was not looked at, or gave nothing
        self._seen: dict[str, set[str]] = {"usb": set(), "serial": set()}
        self.static_ids: set[str] = set()

    # -- lifecycle -------------------------------------------------------------------------
    async def __aenter__(self) -> Discovery:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        macs = await self._neighbours() if any(d.transport == "tcp" and not d.id for d in self.static) else {}
        for device in self.static:
            entry = await self.registry.upsert(static_device_info(device, macs), static=True)
            self.static_ids.add(entry.device_id)
        cfg = self.config
        if cfg.usb:
            self._spawn(self._usb_loop(), "discovery-usb")
        if cfg.serial:
            self._spawn(self._serial_loop(), "discovery-serial")
        if cfg.lan:
            if self._zeroconf is None:
                from zeroconf.asyncio import AsyncZeroconf

                self._zeroconf, self._own_zeroconf = AsyncZeroconf(), True
            self._spawn(self.lan.browse(self._zeroconf, self._found_lan), "discovery-zeroconf")
            if cfg.subnets:
                self._spawn(self._sweep_loop(), "discovery-sweep")
            if cfg.advertise and self._advertise is not None:
                # In the background: mDNS probing takes about a second and must not delay READY.
                self._spawn(self._announce(), "discovery-announce")

    def _spawn(self, coro: Any, name: str) -> None:
        self._tasks.append(asyncio.create_task(self._guard(coro, name), name=name))

    @staticmethod
    async def _guard(coro: Any, name: str) -> None:
        try:
            await coro
        except asyncio.CancelledError:
            raise
        except Exception:  # one broken finder must not take the others (or the hub) down
            log.exception("%s stopped", name)

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        if self._zeroconf is not None:
            if self._advertised is not None:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(3.0):
                        await self._zeroconf.async_unregister_service(self._advertised)
                self._advertised = None
            if self._own_zeroconf:
                with contextlib.suppress(Exception):
                    async with asyncio.timeout(5.0):
                        await self._zeroconf.async_close()
                self._zeroconf, self._own_zeroconf = None, False

    async def _announce(self) -> None:
        assert self._advertise is not None and self._zeroconf is not None
        store_id, port, version = self._advertise
        addresses = local_ipv4_addresses()
        if not addresses:
            log.info("no LAN address to announce the hub on")
            return
        info = hub_service_info(store_id, port, addresses, version)
        try:
            async with asyncio.timeout(10.0):
                await self._zeroconf.async_register_service(info, allow_name_change=True)
        except Exception as exc:
            log.warning("cannot announce the hub as %s: %s", info.name, exc)
            return
        self._advertised = info
        log.info("announced as %s on %s", info.name, ", ".join(addresses))

    # -- finders ---------------------------------------------------------------------------
    async def _apply(self, source: str, found: list[DeviceInfo]) -> None:
        """Make the registry match what ``source`` lists now."""
        ids = set()
        for info in found:
            if info.device_id in self.static_ids:
                continue  # configured by hand: the config wins over what discovery guesses
            ids.add(info.device_id)
            await self.registry.upsert(info)
        for gone in self._seen[source] - ids:
            await self.registry.mark_gone(gone, "unplugged")
        self._seen[source] = ids

    async def _usb_loop(self) -> None:
        try:
            await self.usb.watch(lambda found: self._apply("usb", found))
        except UsbUnavailable as exc:
            log.warning("USB discovery off: %s", exc)

    def _busy_serial(self) -> set[str]:
        # Ports one of our drivers holds (or a configured device owns) must never be probed.
        return {
            e.info.address
            for e in self.registry.all()
            if e.info.transport == "serial" and (e.driver is not None or e.static or e.present)
        }

    async def _serial_loop(self) -> None:
        while True:
            found = await self.serial.scan(self._busy_serial())
            await self._apply("serial", found)
            await asyncio.sleep(min(2.0, self.config.scan_interval_s))

    def _static_address(self, address: str) -> bool:
        return any(d.address == address for d in self.static)

    async def _found_lan(self, info: DeviceInfo) -> None:
        if info.device_id in self.static_ids or self._static_address(info.address):
            return
        await self.registry.upsert(info)

    async def _sweep_loop(self) -> None:
        while True:
            for info in await self.lan.sweep():
                await self._found_lan(info)
            # A sweep pokes every address of the subnet: far less often than the USB poll.
            await asyncio.sleep(max(60.0, self.config.scan_interval_s * 12))

    # -- one-shot (``edgehub discover``) ---------------------------------------------------
    async def scan_once(
        self, browse_seconds: float = 3.0, progress: Callable[[str], None] | None = None
    ) -> list[DeviceInfo]:
        """Everything findable now, without touching the registry's tasks. What was not looked
        at, or looked at and found empty, is left in ``notes`` for the person who asked."""
        say = progress or (lambda _text: None)
        self.notes = []
        found: dict[str, DeviceInfo] = {}
        macs = await self._neighbours() if any(d.transport == "tcp" and not d.id for d in self.static) else {}
        for device in self.static:
            info = static_device_info(device, macs)
            found[info.device_id] = info
        cfg = self.config
        if cfg.usb:
            say("scanning USB")
            try:
                for info in await self.usb.scan():
                    found.setdefault(info.device_id, info)
            except (UsbUnavailable, TimeoutError) as exc:
                say(f"USB skipped: {exc}")
                self.notes.append(f"USB: not scanned ({exc})")
        else:
            self.notes.append("USB: not scanned (turned off)")
        if cfg.serial:
            say("probing serial ports")
            busy = {d.address for d in self.static if d.transport == "serial"}
            for info in await self.serial.scan(busy):
                found.setdefault(info.device_id, info)
            self.notes += [f"serial {path}: {note}" for path, note in sorted(self.serial.notes.items())]
        else:
            self.notes.append("serial: not probed (turned off)")
        if cfg.lan:
            lan: list[DeviceInfo] = []

            async def collect(info: DeviceInfo) -> None:
                lan.append(info)

            from zeroconf.asyncio import AsyncZeroconf

            zc = self._zeroconf or AsyncZeroconf()
            try:
                say(f"browsing mDNS for {browse_seconds:g}s")
                browse = asyncio.create_task(self.lan.browse(zc, collect))
                sweep = self.lan.sweep(lambda done, total: say(f"sweeping port 9100: {done}/{total} hosts"))
                lan.extend(await sweep)
                await asyncio.sleep(max(0.0, browse_seconds))
                await cancel_and_wait(browse)
            finally:
                if zc is not self._zeroconf:
                    await zc.async_close()
            for info in lan:
                if not self._static_address(info.address):
                    found.setdefault(info.device_id, info)
        else:
            self.notes.append("LAN: not searched (turned off)")
        return sorted(found.values(), key=lambda i: (i.kind, i.device_id))
