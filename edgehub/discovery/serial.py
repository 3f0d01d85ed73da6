"""Serial discovery: the kernel's port list, the configured ports, and the drivers' active probes.

Which ports: USB serial adapters and CDC-ACM devices (``ttyUSB*``, ``ttyACM*``) from pyserial's
port list, everything under ``/dev/serial/by-id`` and ``/dev/serial/by-path`` (udev makes both
for USB serial devices only), and ``[discovery] serial_ports``. Built-in
UARTs (``ttyS*``) are only probed when configured: writing probe bytes into whatever hangs on
them is not our business.

Identity, most stable first:

- an adapter with a USB serial number of its own: its ``/dev/serial/by-id`` name (vendor,
  model and serial; it survives replugging into another port), else ``usb-vid-pid-serial``;
- an adapter without one (CH340, PL2303 and most cheap cables), or one whose serial string
  another plugged-in adapter carries too: its ``/dev/serial/by-path`` name, the USB port it
  sits in (``serial-path-platform-…-usb-0_1.2_1.0-port0``). Such adapters share one by-id name,
  so udev links it to whichever came last, and their ttyUSB numbers follow enumeration order,
  which changes between reboots; the port path does not, as long as each stays in its port;
- a built-in UART (ttyS*, ttyAMA*, ttySC* of an RS-232 HAT; probed only when named in
  ``[discovery] serial_ports``): its device path, which is fixed for a built-in port.

The tty name (``ttyUSB0``) is only ever the address.

What is on a port: a USB-COM barcode scanner is known by its USB ids (a maker's vendor id, or
the ids named in ``[discovery] scanner_usb_ids``; it only talks when it scans, so there is
nothing to probe); anything else gets each driver's ``probe_serial`` in turn (scales answer a
request). A port is probed once per appearance, never while a driver of ours has it open, and
an unknown device is not probed again until it is replugged.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from drivers.base import DeviceInfo
from edgehub.discovery.usb import SharedSerial

__all__ = ["SerialDiscovery", "SerialProbe"]

log = logging.getLogger("edgehub.discovery.serial")

#: ``probe(port, timeout)`` → what is there, or None. Each driver with ``probe_serial`` gives one.
SerialProbe = Callable[[str, float], Awaitable[DeviceInfo | None]]

_AUTO_PORT = re.compile(r"^/dev/tty(USB|ACM)\d+$")


@dataclass(frozen=True)
class _Port:
    path: str  # the real tty
    identity: str  # the stable device id
    by_id: str = ""
    vid: int | None = None
    pid: int | None = None
    serial_number: str = ""
    description: str = ""


def _id_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.strip())[:96]


def _path_id_part(name: str) -> str:
    # A by-path name tells ports apart at its end (…-usb-0:1.2:1.0-port0): keep the end.
    return re.sub(r"[^A-Za-z0-9._-]", "_", name.strip())[-96:]


class SerialDiscovery:
    """Finds devices on serial ports. Constructor does no I/O."""

    def __init__(
        self,
        probes: Iterable[SerialProbe],
        *,
        scanner_usb_ids: Iterable[tuple[int, int | None]] = (),
        ports: Iterable[str] = (),
        by_id_dir: str | Path = "/dev/serial/by-id",
        by_path_dir: str | Path = "/dev/serial/by-path",
        list_ports: Callable[[], list[Any]] | None = None,
        probe_timeout: float = 0.5,
        shared: Iterable[SharedSerial] = (),
        on_shared: Callable[[SharedSerial], None] | None = None,
    ) -> None:
        self.probes = list(probes)
        # (vendor, product or None) of USB-COM scanners.
        self.scanner_usb_ids = set(scanner_usb_ids)
        self.ports = list(ports)
        self.by_id_dir = Path(by_id_dir)
        self.by_path_dir = Path(by_path_dir)
        self.shared: set[SharedSerial] = set(shared)
        self._on_shared = on_shared
        self._list_ports = list_ports
        self.probe_timeout = probe_timeout
        # What each port (as it appears now) turned out to be; None: nothing we know.
        self._known: dict[_Port, DeviceInfo | None] = {}
        # The last scan's word on each port that gave no device, for a person (``edgehub discover``).
        self.notes: dict[str, str] = {}

    @staticmethod
    def _links(directory: Path) -> dict[str, str]:
        """tty (real path) -> the name of the udev link to it in ``directory``."""
        links: dict[str, str] = {}
        try:
            for link in sorted(directory.iterdir()):
                target = os.path.realpath(link)
                if os.path.exists(target):
                    links.setdefault(target, link.name)
        except OSError:
            pass  # no such directory: no USB serial device plugged in, or not Linux
        return links

    def _candidates(self) -> list[_Port]:
        by_id = self._links(self.by_id_dir)
        by_path = self._links(self.by_path_dir)
        listed: dict[str, Any] = {}
        try:
            comports = self._list_ports or _comports
            for info in comports():
                listed[os.path.realpath(info.device)] = info
        except Exception as exc:  # pyserial's scan reads sysfs; a broken entry must not stop us
            log.debug("listing serial ports failed: %s", exc)
        paths: dict[str, None] = {}
        for path in (*self.ports, *by_id, *by_path, *(p for p in listed if _AUTO_PORT.match(p))):
            real = os.path.realpath(path)
            if os.path.exists(real):
                paths.setdefault(real, None)
            elif path in self.ports:
                self.notes[path] = "does not exist"  # asked for by name: say so
        # Adapters plugged in now that carry the same serial string cannot be told apart by it.
        seen: dict[SharedSerial, int] = {}
        for path in paths:
            info = listed.get(path)
            vid, serial = getattr(info, "vid", None), getattr(info, "serial_number", None) or ""
            if vid is not None and serial:
                key = (vid, getattr(info, "pid", None) or 0, serial)
                seen[key] = seen.get(key, 0) + 1
        for key, n in seen.items():
            if n > 1 and key not in self.shared:
                self.shared.add(key)
                log.warning("serial adapters %04x:%04x share the serial number %r: each is known by its USB "
                            "port from now on (keep each in its port)", *key)
                if self._on_shared is not None:
                    self._on_shared(key)
        result = []
        for path in paths:
            info = listed.get(path)
            vid = getattr(info, "vid", None)
            pid = getattr(info, "pid", None)
            serial = getattr(info, "serial_number", None) or ""
            name = by_id.get(path, "")
            own_serial = bool(serial) and (vid, pid or 0, serial) not in self.shared
            if own_serial and name:
                identity = f"serial-{_id_part(name)}"
            elif own_serial and vid is not None:
                identity = f"usb-{vid:04x}-{pid or 0:04x}-{_id_part(serial)}"
            elif path in by_path:
                identity = f"serial-path-{_path_id_part(by_path[path])}"
            elif name:
                identity = f"serial-{_id_part(name)}"  # no by-path link (no udev port path): by-id is all
            else:
                identity = f"serial-{_id_part(path.removeprefix('/dev/'))}"
            result.append(
                _Port(path, identity, name, vid, pid, serial, getattr(info, "description", "") or "")
            )
        return result

    async def scan(self, busy: set[str] = frozenset()) -> list[DeviceInfo]:  # type: ignore[assignment]
        """What is on the serial ports now. ``busy`` addresses (open by one of our drivers) are
        reported from memory and never probed."""
        self.notes = {}
        ports = await asyncio.to_thread(self._candidates)
        current = set(ports)
        for gone in [p for p in self._known if p not in current]:
            del self._known[gone]  # unplugged: probe it again when it comes back
        todo = [p for p in ports if p not in self._known and p.path not in busy]
        results = await asyncio.gather(*(self._identify(p) for p in todo))
        for port, info in zip(todo, results, strict=True):
            if port.path in self.notes:  # in use: not probed, so not known either
                continue
            self._known[port] = info
            if info is None:
                self.notes[port.path] = "no known device answers"
                log.info(
                    "serial port %s (%s): no known device answers", port.path, port.by_id or "no by-id name"
                )
        return [info for p in ports if (info := self._known.get(p)) is not None]

    async def _identify(self, port: _Port) -> DeviceInfo | None:
        extra = {"by_id": port.by_id} if port.by_id else {}
        if await asyncio.to_thread(_in_use, port.path):
            # The hub's drivers open their ports exclusively: a probe's bytes would reach a
            # scale or pinpad in service (``edgehub discover`` beside a running hub).
            self.notes[port.path] = "in use by another program (a running edgehub?): not probed"
            return None
        if port.vid is not None and (
            (port.vid, None) in self.scanner_usb_ids or (port.vid, port.pid) in self.scanner_usb_ids
        ):
            return DeviceInfo(
                device_id=port.identity,
                kind="scanner",
                transport="serial",
                address=port.path,
                driver="serial_scanner",
                model=port.description,
                serial_number=port.serial_number,
                extra=extra,
            )
        for probe in self.probes:
            try:
                async with asyncio.timeout(self.probe_timeout * 4 + 1.0):
                    info = await probe(port.path, self.probe_timeout)
            except TimeoutError:
                info = None
            except Exception as exc:  # a probe is a guess; a failing guess only means "not this"
                log.debug("probe %r on %s failed: %s", probe, port.path, exc)
                info = None
            if info is not None:
                return replace(
                    info,
                    device_id=port.identity,
                    address=port.path,
                    serial_number=info.serial_number or port.serial_number,
                    extra={**info.extra, **extra},
                )
        return None


def _comports() -> list[Any]:
    from serial.tools import list_ports

    return list(list_ports.comports())


def _in_use(path: str) -> bool:
    """Another process holds ``path`` open exclusively (pyserial's ``exclusive``: an flock)."""
    import fcntl

    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
    except OSError:
        return False  # the probes will say what is wrong with it
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    except OSError:
        return False
    finally:
        os.close(fd)  # closing drops a lock we took
    return False
