"""The contract every device driver follows.

A driver module declares what it matches (USB ids or interface class, zeroconf service types,
TCP ports, or an active serial probe), how it talks to the device, and how it reports health.
Discovery builds one table from all declarations; the watchdog only ever calls ``health()``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Literal

Kind = Literal["printer", "scanner", "scale", "pinpad"]
Transport = Literal["usb", "serial", "tcp"]
HealthState = Literal["ready", "degraded", "failed", "unknown"]


@dataclass(frozen=True)
class UsbMatch:
    """A USB device this driver takes: any field left ``None`` matches anything."""

    vendor_id: int | None = None
    product_id: int | None = None
    interface_class: int | None = None


@dataclass(frozen=True)
class DeviceInfo:
    """What discovery learned about a device. ``device_id`` is stable across replug and new IPs."""

    device_id: str
    kind: Kind
    transport: Transport
    address: str
    driver: str
    model: str = ""
    vendor: str = ""
    serial_number: str = ""
    extra: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Health:
    """A device's health as the watchdog sees it; ``reason`` is empty only when ``ready``."""

    state: HealthState
    reason: str = ""

    @property
    def usable(self) -> bool:
        return self.state in ("ready", "degraded")


class Driver(abc.ABC):
    """One open device. Constructors do no I/O; ``open()`` connects, ``close()`` releases."""

    name: ClassVar[str]
    kind: ClassVar[Kind]
    usb_matches: ClassVar[tuple[UsbMatch, ...]] = ()
    zeroconf_types: ClassVar[tuple[str, ...]] = ()
    tcp_ports: ClassVar[tuple[int, ...]] = ()

    def __init__(self, info: DeviceInfo) -> None:
        self.info = info

    @abc.abstractmethod
    async def open(self) -> None:
        """Connect to the device. Raises DeviceUnavailable when it cannot be reached."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release the device. Never raises."""

    @abc.abstractmethod
    async def health(self) -> Health:
        """Ask the device how it is (one bounded round trip). Never raises."""

    async def __aenter__(self) -> Driver:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
