"""Discovery: finds devices on USB, serial ports and the LAN and keeps the registry current.

One match table is built from every driver's declarations (``drivers.ALL_DRIVERS``: USB ids
and classes, zeroconf types, TCP ports, serial probes); the three finders only ask it. What a
finder sees goes to ``DeviceRegistry.upsert``; a USB or serial device that is no longer listed
goes to ``mark_gone`` ("unplugged"). LAN devices are never declared gone by a missed sweep:
the watchdog reports an unreachable printer as ``failed`` and a printer with a new IP is the
same device (same MAC) at a new address.

``[[device]]`` entries from the config are put in the registry first, as they are (static).

What discovery must remember across restarts is one small file in the data directory:
``usb-shared-serials.json``, the USB (vendor, product, serial) triples seen on two devices at
once (see ``discovery/usb.py``); it is written only when a new one is seen.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from drivers import ALL_DRIVERS
from drivers.base import DeviceInfo, Driver, UsbMatch
from drivers.hid_scanner import HID_CLASS, HidScanner
from edgehub.component import Component
from edgehub.config import DiscoveryConfig, StaticDeviceConfig, parse_usb_id
from edgehub.context import Context
from edgehub.devices.registry import DeviceRegistry
from edgehub.discovery.lan import (
    LanDiscovery,
    NeighbourLookup,
    hub_service_info,
    local_ipv4_addresses,
    neighbour_macs,
)
from edgehub.discovery.serial import SerialDiscovery, SerialProbe
from edgehub.discovery.usb import SharedSerial, UsbDiscovery, UsbUnavailable
from edgehub.tasks import cancel_and_wait

__all__ = ["SHARED_SERIALS_FILE", "Discovery", "MatchTable", "setup", "static_device_info"]

log = logging.getLogger("edgehub.discovery")

SHARED_SERIALS_FILE = "usb-shared-serials.json"


@dataclass(frozen=True)
class MatchTable:
    """Every driver's declarations in one place, plus the scanner ids the installer named."""

    usb: list[tuple[UsbMatch, type[Driver]]] = field(default_factory=list)
    zeroconf: dict[str, list[type[Driver]]] = field(default_factory=dict)
    tcp_ports: dict[int, list[type[Driver]]] = field(default_factory=dict)
    serial_probes: list[SerialProbe] = field(default_factory=list)
    # (vendor, product or None for any) of barcode scanners, for USB-COM ports.
    scanner_usb_ids: frozenset[tuple[int, int | None]] = frozenset()

    @classmethod
    def build(cls, drivers: Iterable[type[Driver]] = ALL_DRIVERS, scanner_usb_ids: Iterable[str] = ()) -> MatchTable:
        """``scanner_usb_ids``: ``[discovery] scanner_usb_ids`` ("vvvv" or "vvvv:pppp")."""
        table = cls()
        scanners: set[tuple[int, int | None]] = set()
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
                scanners.update((m.vendor_id, m.product_id) for m in driver.usb_matches if m.vendor_id is not None)
        for text in scanner_usb_ids:
            vendor, product = parse_usb_id(text)
            # A named HID device is a scanner before anything else matches it (its chip maker's
            # id may be a printer clone's too): vendor, product and class score highest.
            table.usb.append((UsbMatch(vendor, product, HID_CLASS), HidScanner))
            scanners.add((vendor, product))
        return MatchTable(table.usb, table.zeroconf, table.tcp_ports, table.serial_probes, frozenset(scanners))


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
            device_id = "usb-" + _id_part(
                device.extra.get("serial_number") or device.address.replace(":", "-")
            )
    extra = dict(device.extra)
    serial_number = extra.pop("serial_number", "")
    if device.transport == "usb":
        # The address is a serial number (what config/edgehub.toml documents), vendor:product,
        # or bus:address; the drivers find the device by serial number first.
        if re.fullmatch(r"[0-9a-fA-F]{4}:[0-9a-fA-F]{4}", device.address):
            vid, pid = device.address.lower().split(":")
            extra.setdefault("vid", vid)
            extra.setdefault("pid", pid)
        elif not re.fullmatch(r"\d{1,3}:\d{1,3}", device.address):
            serial_number = serial_number or device.address
    return DeviceInfo(
        device_id=device_id,
        kind=_KINDS.get(device.driver, "printer"),  # type: ignore[arg-type]
        transport=device.transport,  # type: ignore[arg-type]  # checked by the config loader
        address=device.address,
        driver=device.driver,
        model=device.model or "configured",
        vendor=extra.pop("vendor", ""),
        serial_number=serial_number,
        extra=extra,
    )


def setup(ctx: Context, cfg: DiscoveryConfig, static: Iterable[StaticDeviceConfig], registry: DeviceRegistry, *,
          usb_backend: object | None, advertise: tuple[str, int, str]) -> Discovery:
    """``static``: the ``[[device]]`` entries; ``registry``: what it fills; ``advertise``: (store
    id, page port, version) for the box's zeroconf record."""
    return Discovery(registry, cfg, static, usb_backend=usb_backend, advertise=advertise, state_dir=ctx.data_dir)


class Discovery(Component):
    """The discovery component. Constructor does no I/O; ``async with`` owns the finder tasks
    and, unless one is passed in, the one AsyncZeroconf of the process."""

    name = "discovery"

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
        by_path_dir: str | Path = "/dev/serial/by-path",
        list_ports: Callable[[], list[Any]] | None = None,
        neighbours: NeighbourLookup = neighbour_macs,
        advertise: tuple[str, int, str] | None = None,  # (store id, API port, version)
        state_dir: Path | None = None,
    ) -> None:
        self.registry = registry
        self.config = config
        self.static = tuple(devices)
        self.table = table or MatchTable.build(scanner_usb_ids=config.scanner_usb_ids)
        # Where the shared-serial memory is kept (the data directory); None: in memory only.
        self._shared_file = state_dir / SHARED_SERIALS_FILE if state_dir is not None else None
        shared = _read_shared(self._shared_file)
        self.usb = UsbDiscovery(
            self.table.usb, backend=usb_backend, poll_interval=min(2.0, config.scan_interval_s),
            shared=shared, on_shared=self._remember_shared,
        )
        self.serial = SerialDiscovery(
            self.table.serial_probes,
            scanner_usb_ids=self.table.scanner_usb_ids,
            ports=config.serial_ports,
            by_id_dir=by_id_dir,
            by_path_dir=by_path_dir,
            list_ports=list_ports,
            shared=shared,
            on_shared=self._remember_shared,
        )
        self.lan = LanDiscovery(
            config.subnets, zeroconf_types=tuple(self.table.zeroconf), neighbours=neighbours, held=self._held_lan
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

    def _remember_shared(self, key: SharedSerial) -> None:
        """A serial string seen on two devices: kept on disk, so ids stay put after a restart."""
        self.usb.shared.add(key)
        self.serial.shared.add(key)
        if self._shared_file is None:
            return
        known = sorted(self.usb.shared | self.serial.shared)
        doc = [{"vid": f"{v:04x}", "pid": f"{p:04x}", "serial": s} for v, p, s in known]
        try:
            _write_atomically(self._shared_file, json.dumps(doc, indent=1, ensure_ascii=False) + "\n")
        except OSError as exc:
            log.warning("cannot keep the shared USB serials in %s: %s", self._shared_file, exc)

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
        # Ports one of our drivers holds (or a configured device owns) must never be probed; a
        # configured /dev/serial/by-id/… name is compared as the tty it points to.
        return _real_ttys(
            e.info.address
            for e in self.registry.all()
            if e.info.transport == "serial" and (e.driver is not None or e.static or e.present)
        )

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

    def _held_lan(self) -> set[str]:
        # LAN printers the hub knows (configured or found): the sweep must not open a second
        # connection to them, which many printers answer by dropping the hub's own.
        from drivers.escpos import host_port

        known = [e.info.address for e in self.registry.all() if e.info.transport == "tcp" and e.present]
        known += [d.address for d in self.static if d.transport == "tcp"]
        held = set()
        for address in known:
            host, port = host_port(address)
            held.add(f"[{host}]:{port}" if ":" in host else f"{host}:{port}")
        return held

    async def _sweep_loop(self) -> None:
        told: set[str] = set()
        while True:
            for info in await self.lan.sweep():
                await self._found_lan(info)
            for note in self.lan.notes:
                if note not in told:
                    told.add(note)
                    log.warning("LAN sweep: %s", note)
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
                self.notes += [f"USB {ids}: {note}" for ids, note in sorted(self.usb.notes.items())]
            except (UsbUnavailable, TimeoutError) as exc:
                say(f"USB skipped: {exc}")
                self.notes.append(f"USB: not scanned ({exc})")
        else:
            self.notes.append("USB: not scanned (turned off)")
        if cfg.serial:
            say("probing serial ports")
            busy = _real_ttys(d.address for d in self.static if d.transport == "serial")
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
                self.notes += [f"LAN {note}" for note in self.lan.notes]
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


def _real_ttys(addresses: Iterable[str]) -> set[str]:
    """The ttys serial addresses name, links (``/dev/serial/by-id/…``) resolved, as the serial
    finder lists ports (a few lstat calls on /dev: quick enough for the event loop)."""
    return {os.path.realpath(address) for address in addresses}


def _read_shared(path: Path | None) -> set[SharedSerial]:
    """The shared-serial memory; a missing or broken file is an empty memory (said once)."""
    if path is None or not path.exists():
        return set()
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
        return {(int(d["vid"], 16), int(d["pid"], 16), str(d["serial"])) for d in doc}
    except (OSError, ValueError, KeyError, TypeError) as exc:
        log.warning("ignoring %s: %s (devices sharing a serial number may get new ids)", path, exc)
        return set()


def _write_atomically(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
