"""Production drivers for registry entries: the right class with the right settings.

Most drivers only need their ``DeviceInfo``; a USB printer needs the pyusb backend (tests hand
in ``SimUsbBackend``), a HID scanner needs its pyusb device, found by serial number in a worker
thread, and serial drivers take their framing from ``info.extra`` (``[[device]]`` keys).
"""

from __future__ import annotations

import asyncio

from drivers import driver_class
from drivers.base import DeviceInfo, Driver
from drivers.escpos import EscposPrinter, PrinterTiming
from edgehub.errors import DeviceUnavailable

__all__ = ["DriverFactory"]


class DriverFactory:
    """``await factory(info)`` → an unopened driver. Constructor does no I/O."""

    def __init__(
        self, usb_backend: object | None = None, printer_timing: PrinterTiming | None = None
    ) -> None:
        self.usb_backend = usb_backend
        self.printer_timing = printer_timing

    async def __call__(self, info: DeviceInfo) -> Driver:
        cls = driver_class(info.driver)
        if cls is None:
            raise DeviceUnavailable(f"no driver called {info.driver!r}", info.device_id)
        if cls is EscposPrinter:
            return EscposPrinter(info, usb_backend=self.usb_backend, timing=self.printer_timing)
        if info.driver == "hid_scanner":
            from drivers.hid_scanner import HidScanner

            return HidScanner(info, usb_device=await self._find_usb(info))
        if info.driver == "serial_scanner":
            from drivers.serial_scanner import SerialScanner

            return SerialScanner(info, baudrate=int(info.extra.get("baudrate", 9600)))
        return cls(info)

    async def _find_usb(self, info: DeviceInfo) -> object:
        import usb.core

        from drivers.usb_transport import device_matcher

        match = device_matcher(info.serial_number, info.address)
        try:
            async with asyncio.timeout(5.0):
                dev = await asyncio.to_thread(usb.core.find, backend=self.usb_backend, custom_match=match)
        except TimeoutError as exc:
            raise DeviceUnavailable("listing USB devices took over 5s", info.device_id) from exc
        except usb.core.NoBackendError as exc:
            raise DeviceUnavailable("libusb is not installed: sudo apt-get install libusb-1.0-0",
                                    info.device_id) from exc
        if dev is None:
            raise DeviceUnavailable(
                f"USB device {info.serial_number or info.address} is not plugged in", info.device_id
            )
        return dev
