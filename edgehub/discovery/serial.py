"""Serial discovery: the kernel's port list, the configured ports, and the drivers' active probes.

Which ports: USB serial adapters and CDC-ACM devices (``ttyUSB*``, ``ttyACM*``) from pyserial's
port list, everything under ``/dev/serial/by-id``, and ``[discovery] serial_ports``. Built-in
UARTs (``ttyS*``) are only probed when configured: writing probe bytes into whatever hangs on
them is not our business.

Identity: the ``/dev/serial/by-id`` name when there is one (it carries the adapter's vendor,
model and serial number and survives replugging into another port), else the adapter's USB
serial number, else the port path. The tty name (``ttyUSB0``) is only the address.

What is on a port: a USB-COM barcode scanner is known by its vendor id (it only talks when it
scans, so there is nothing to probe); anything else gets each driver's ``probe_serial`` in
turn (scales answer a request). A port is probed once per appearance, never while a driver of
ours has it open, and an unknown device is not probed again until it is replugged.
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


class SerialDiscovery:
    """Finds devices on serial ports. Constructor does no I/O."""

    def __init__(
        self,
        probes: Iterable[SerialProbe],
        *,
        scanner_vendor_ids: Iterable[int] = (),
        ports: Iterable[str] = (),
        by_id_dir: str | Path = "/dev/serial/by-id",
        list_ports: Callable[[], list[Any]] | None = None,
        probe_timeout: float = 0.5,
    ) -> None:
        self.probes = list(probes)
        self.scanner_vendor_ids = set(scanner_vendor_ids)
        self.ports = list(ports)
        self.by_id_dir = Path(by_id_dir)
        self._list_ports = list_ports
        self.probe_timeout = probe_timeout
        # What each port (as it appears now) turned out to be; None: nothing we know.
        self._known: dict[_Port, DeviceInfo | None] = {}
        # The last scan's word on each port that gave no device, for a person (``edgehub discover``).
        self.notes: dict[str, str] = {}

    def _candidates(self) -> list[_Port]:
        by_id: dict[str, str] = {}
        try:
            for link in sorted(self.by_id_dir.iterdir()):
                target = os.path.realpath(link)
                if os.path.exists(target):
                    by_id.setdefault(target, link.name)
        except OSError:
            pass  # no /dev/serial/by-id: no USB serial device plugged in, or not Linux
        listed: dict[str, Any] = {}
        try:
            comports = self._list_ports or _comports
            for info in comports():
                listed[os.path.realpath(info.device)] = info
        except Exception as exc:  # pyserial's scan reads sysfs; a broken entry must not stop us
            log.debug("listing serial ports failed: %s", exc)
        paths: dict[str, None] = {}
        for path in (*self.ports, *by_id, *(p for p in listed if _AUTO_PORT.match(p))):
            real = os.path.realpath(path)
            if os.path.exists(real):
                paths.setdefault(real, None)
            elif path in self.ports:
                self.notes[path] = "does not exist"  # asked for by name: say so
        result = []
        for path in paths:
            info = listed.get(path)
            vid = getattr(info, "vid", None)
            pid = getattr(info, "pid", None)
            serial = getattr(info, "serial_number", None) or ""
            name = by_id.get(path, "")
            if name:
                identity = f"serial-{_id_part(name)}"
            elif vid is not None and serial:
                identity = f"usb-{vid:04x}-{pid or 0:04x}-{_id_part(serial)}"
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
        if port.vid is not None and port.vid in self.scanner_vendor_ids:
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
