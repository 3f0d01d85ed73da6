"""The contract every device driver follows.

A driver module declares what it matches (USB ids or interface class, zeroconf service types,
TCP ports, or an active serial probe), how it talks to the device, and how it reports health.
Discovery builds one table from all declarations; the watchdog only ever calls ``health()``.
"""

from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

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


# How long a field check waits for a person (the scan of a scanner's check) unless told, and at most.
FIELD_CHECK_WAIT_S = 30.0
FIELD_CHECK_MAX_WAIT_S = 120.0


@dataclass(frozen=True)
class FieldStep:
    """One thing the installer's field check did with the device, and what came back."""

    name: str
    ok: bool
    detail: str
    raw: bytes = b""  # the bytes the device sent for this step, shown as hex

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "ok": self.ok, "detail": self.detail, "raw_hex": self.raw.hex(" ")}


@dataclass(frozen=True)
class FieldCheck:
    """What ``edgehub device test`` found: the steps, and the profile they point to (keys of a
    ``[[device]]`` profile, e.g. ``status``; empty when the check infers nothing)."""

    steps: tuple[FieldStep, ...]
    profile: dict[str, Any] = field(default_factory=dict)

    @property
    def ok(self) -> bool:
        return bool(self.steps) and all(step.ok for step in self.steps)

    def to_dict(self) -> dict[str, Any]:
        return {"ok": self.ok, "steps": [step.to_dict() for step in self.steps], "profile": dict(self.profile)}


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

    async def field_check(self, wait_s: float) -> FieldCheck:
        """The installer's check of a unit in the store (``edgehub device test``): the device
        is asked what a real store needs of it, within ``wait_s`` seconds for a step that waits
        on a person (a scan). Drivers of each kind override this; the default asks health once."""
        health = await self.health()
        detail = health.state + (f": {health.reason}" if health.reason else "")
        return FieldCheck((FieldStep("health", health.usable, detail),))

    async def __aenter__(self) -> Driver:
        await self.open()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()
