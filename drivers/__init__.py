"""Every device driver edgehub ships, in one list.

Discovery builds its one match table (USB ids and classes, zeroconf types, TCP ports, serial
probes) from these classes' declarations; the device registry opens drivers by ``name``.
"""

from __future__ import annotations

from drivers.base import DeviceInfo, Driver, Health, UsbMatch
from drivers.escpos import EscposPrinter
from drivers.hid_scanner import HidScanner
from drivers.scale_cas import CasScale
from drivers.scale_mt8217 import MT8217Scale
from drivers.serial_scanner import SerialScanner
from drivers.zvt import ZvtPinpad

__all__ = ["ALL_DRIVERS", "DeviceInfo", "Driver", "Health", "UsbMatch", "driver_class"]

# Order matters for serial probing: the active probes run in this order on each unknown port.
ALL_DRIVERS: tuple[type[Driver], ...] = (
    EscposPrinter,
    HidScanner,
    SerialScanner,
    MT8217Scale,
    CasScale,
    ZvtPinpad,
)


def driver_class(name: str) -> type[Driver] | None:
    """The driver class called ``name`` (``escpos``, ``mt8217``…), or None."""
    return next((cls for cls in ALL_DRIVERS if cls.name == name), None)
