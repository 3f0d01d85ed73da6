"""Devices: the registry of every device the box knows, and the watchdog that probes them."""

from edgehub.devices.registry import DeviceEntry, DeviceEvent, DeviceRegistry
from edgehub.devices.watchdog import Watchdog, WatchdogTiming

__all__ = ["DeviceEntry", "DeviceEvent", "DeviceRegistry", "Watchdog", "WatchdogTiming"]
