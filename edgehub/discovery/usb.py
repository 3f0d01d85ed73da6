"""USB discovery: enumerate through pyusb, match against the drivers' declarations.

``scan()`` lists every USB device (in a worker thread: libusb blocks) and turns each one a
driver declares into a ``DeviceInfo``. The id is the USB serial number (``usb-04b8-0e28-SN``),
so a printer replugged into another port keeps its id; a device without a serial number gets
its physical port path instead (``usb-04b8-0e28-port-1-1.2``), stable as long as it stays in
that port (and across reboots: the path is the hub port it is plugged into). Cheap devices of
one model often all carry the same serial string: when two plugged-in devices share vendor,
product and serial, both are told apart by their port path (``usb-0416-5011-SN-port-1-1.3``),
and that serial is remembered (``shared``, kept on disk by the caller) so each keeps that id
when the other is unplugged or the box restarts with one of them. ``address`` is
``bus:address`` (it changes on every replug, which is fine).

A HID keyboard (or keyboard-like HID device) that no driver takes may be a generic barcode
scanner: ``notes`` names it with its ids, for ``edgehub discover`` to tell the installer about
``[discovery] scanner_usb_ids``.

``watch()`` calls back on every change: pyudev netlink events (``usb`` subsystem) on a real
box wake a rescan; without udev (containers, tests with ``SimUsbBackend``) it polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import replace
from typing import Any

from drivers.base import DeviceInfo, Driver, UsbMatch

__all__ = ["SharedSerial", "UsbDiscovery", "UsbUnavailable", "usb_matches"]

#: (vendor id, product id, serial string) that more than one device has carried.
SharedSerial = tuple[int, int, str]

log = logging.getLogger("edgehub.discovery.usb")


LIBUSB_MISSING = "libusb is not installed: sudo apt-get install libusb-1.0-0"


class UsbUnavailable(Exception):
    """libusb is missing: USB devices cannot be listed (said once, then USB is skipped)."""


def usb_matches(match: UsbMatch, vendor_id: int, product_id: int, classes: set[int]) -> bool:
    if match.vendor_id is not None and match.vendor_id != vendor_id:
        return False
    if match.product_id is not None and match.product_id != product_id:
        return False
    return match.interface_class is None or match.interface_class in classes


def _id_part(text: str) -> str:
    """A serial number as part of a device id: only characters every id consumer accepts."""
    return "".join(c if c.isalnum() or c in "._-" else "_" for c in text.strip())[:64]


class UsbDiscovery:
    """Lists USB devices a driver takes. ``backend`` is handed to ``usb.core.find`` (tests
    pass ``SimUsbBackend``). Constructor does no I/O."""

    def __init__(
        self,
        table: list[tuple[UsbMatch, type[Driver]]],
        backend: object | None = None,
        poll_interval: float = 2.0,
        timeout: float = 10.0,
        hotplug: Callable[[], Any] | None = None,
        shared: Iterable[SharedSerial] = (),
        on_shared: Callable[[SharedSerial], None] | None = None,
    ) -> None:
        self.table = table
        self.backend = backend
        self.poll_interval = poll_interval
        self.timeout = timeout
        # Serial strings seen on two devices at once: those devices are told apart by port path.
        self.shared: set[SharedSerial] = set(shared)
        self._on_shared = on_shared
        # HID keyboards no driver took in the last scan, by "vvvv:pppp": for a person.
        self.notes: dict[str, str] = {}
        # Where hotplug events come from: a started pyudev-like monitor (``fileno()``,
        # ``poll(timeout=0)`` → device with ``.action`` or None). Default: udev netlink on a real
        # bus; none for a test backend, which is polled.
        self.hotplug = hotplug

    def _driver_for(self, vendor_id: int, product_id: int, classes: set[int]) -> type[Driver] | None:
        # A precise match (vendor + class or product) beats "any printer-class device".
        best: tuple[int, type[Driver]] | None = None
        for match, cls in self.table:
            if usb_matches(match, vendor_id, product_id, classes):
                score = sum(x is not None for x in (match.vendor_id, match.product_id, match.interface_class))
                if best is None or score > best[0]:
                    best = (score, cls)
        return best[1] if best else None

    def _scan_blocking(self) -> list[DeviceInfo]:
        import usb.core
        import usb.util

        try:
            devices = list(usb.core.find(find_all=True, backend=self.backend))
        except usb.core.NoBackendError as exc:
            raise UsbUnavailable(LIBUSB_MISSING) from exc
        found: list[DeviceInfo] = []
        self.notes = {}
        for dev in devices:
            try:
                info = self._describe(dev)
            except (usb.core.USBError, ValueError, NotImplementedError) as exc:
                # No permission, or it vanished between listing and reading: next scan retries.
                log.debug("skipping USB device %s: %s", dev, exc)
                continue
            if info is not None:
                found.append(info)
        return self._tell_apart(found)

    def _tell_apart(self, found: list[DeviceInfo]) -> list[DeviceInfo]:
        """Devices sharing vendor, product and serial get their port path in the id."""
        counts: dict[SharedSerial, int] = {}
        for info in found:
            if info.serial_number:
                key = (int(info.extra["vid"], 16), int(info.extra["pid"], 16), info.serial_number)
                counts[key] = counts.get(key, 0) + 1
        for key, n in counts.items():
            if n > 1 and key not in self.shared:
                self.shared.add(key)
                log.warning("USB devices %04x:%04x share the serial number %r: each is known by its port "
                            "from now on (keep each in its port)", *key)
                if self._on_shared is not None:
                    self._on_shared(key)
        out = []
        for info in found:
            key = (int(info.extra["vid"], 16), int(info.extra["pid"], 16), info.serial_number)
            if info.serial_number and key in self.shared:
                info = replace(info, device_id=f"{info.device_id}-port-{info.extra['port']}")
            out.append(info)
        return out

    def _describe(self, dev: Any) -> DeviceInfo | None:
        import usb.core
        import usb.util

        vid, pid = int(dev.idVendor), int(dev.idProduct)
        classes = {int(dev.bDeviceClass)} if dev.bDeviceClass else set()
        for cfg in dev:
            for intf in cfg:
                classes.add(int(intf.bInterfaceClass))
        cls = self._driver_for(vid, pid, classes)
        if cls is None:
            protocols = {int(intf.bInterfaceProtocol) for cfg in dev for intf in cfg if int(intf.bInterfaceClass) == 3}
            if protocols - {2}:  # a HID interface that is not a mouse: a keyboard, or keyboard-like
                try:
                    product = str(usb.util.get_string(dev, dev.iProduct) or "") if dev.iProduct else ""
                except (usb.core.USBError, ValueError, NotImplementedError):
                    product = ""
                what = "a HID keyboard" if 1 in protocols else "a HID device"
                self.notes[f"{vid:04x}:{pid:04x}"] = (
                    f"{what}{f' ({product!r})' if product else ''} no driver takes: if it is a barcode "
                    f'scanner, add "{vid:04x}:{pid:04x}" to [discovery] scanner_usb_ids'
                )
            return None

        def string(index: int) -> str:
            if not index:
                return ""
            try:
                return str(usb.util.get_string(dev, index) or "")
            except (usb.core.USBError, ValueError, NotImplementedError):
                return ""

        serial, vendor, model = string(dev.iSerialNumber), string(dev.iManufacturer), string(dev.iProduct)
        ports = getattr(dev, "port_numbers", None) or (getattr(dev, "port_number", 0),)
        port_path = f"{dev.bus}-{'.'.join(str(p) for p in ports)}"
        device_id = f"usb-{vid:04x}-{pid:04x}-" + (_id_part(serial) if serial else f"port-{port_path}")
        return DeviceInfo(
            device_id=device_id,
            kind=cls.kind,
            transport="usb",
            address=f"{dev.bus}:{dev.address}",
            driver=cls.name,
            model=model,
            vendor=vendor,
            serial_number=serial,
            extra={"vid": f"{vid:04x}", "pid": f"{pid:04x}", "port": port_path},
        )

    async def scan(self) -> list[DeviceInfo]:
        """Every USB device a driver takes, now."""
        async with asyncio.timeout(self.timeout):
            return await asyncio.to_thread(self._scan_blocking)

    async def watch(self, on_change: Callable[[list[DeviceInfo]], Awaitable[None]]) -> None:
        """Scan now and after every hotplug event (or every ``poll_interval``), forever."""
        if self.hotplug is not None:
            monitor = self.hotplug()
        else:
            monitor = self._udev_monitor() if self.backend is None else None
        events: asyncio.Queue[str] | None = None
        loop = asyncio.get_running_loop()
        if monitor is not None:
            events = asyncio.Queue(maxsize=64)

            def readable() -> None:
                assert monitor is not None and events is not None
                for device in iter(lambda: monitor.poll(timeout=0), None):
                    if not events.full():
                        events.put_nowait(device.action or "change")

            loop.add_reader(monitor.fileno(), readable)
        try:
            await self._watch(on_change, events)
        finally:
            if monitor is not None:
                loop.remove_reader(monitor.fileno())

    async def _watch(
        self, on_change: Callable[[list[DeviceInfo]], Awaitable[None]], events: asyncio.Queue[str] | None
    ) -> None:
        last: list[DeviceInfo] | None = None
        while True:
            try:
                found = await self.scan()
            except TimeoutError:
                log.warning("listing USB devices took over %gs; retrying", self.timeout)
                found = last or []
            if found != last:
                await on_change(found)
                last = found
            if events is not None:
                with contextlib.suppress(TimeoutError):
                    # A hotplug event wakes us at once; the timeout still rescans now and then.
                    async with asyncio.timeout(self.poll_interval * 5):
                        await events.get()
                    await asyncio.sleep(0.3)  # let the kernel finish enumerating (strings, interfaces)
                    while not events.empty():
                        events.get_nowait()
            else:
                await asyncio.sleep(self.poll_interval)

    def _udev_monitor(self) -> Any:
        """A started pyudev netlink monitor for USB events, or None where there is no udev."""
        try:
            import pyudev

            monitor = pyudev.Monitor.from_netlink(pyudev.Context())
            monitor.filter_by(subsystem="usb")
            monitor.start()
        except Exception as exc:  # no netlink in a container, no libudev: polling works too
            log.info("no udev hotplug events (%s); polling USB every %gs", exc, self.poll_interval)
            return None
        return monitor
