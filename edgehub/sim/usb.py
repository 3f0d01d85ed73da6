"""Simulated USB devices behind a pyusb backend: ``usb.core.find(backend=SimUsbBackend(...))``.

The test machines (and a developer laptop) have no USB gadget or kernel emulation, so USB is
simulated one level up, where pyusb meets libusb: ``SimUsbBackend`` implements pyusb's
``IBackend`` over a list of simulated devices that can be plugged and unplugged at runtime.

- ``SimUsbPrinter``: a printer-class device (interface class 7/1/2, bulk OUT 0x01, bulk IN 0x82)
  that answers GET_DEVICE_ID and runs the same ``PrinterCore`` as the TCP and pty printers.
- ``SimHidScanner``: a barcode scanner in HID keyboard mode (interrupt IN 0x81) that answers
  GET_DESCRIPTOR for its report descriptor and delivers keyboard reports; ``type_text()``
  queues a scan. Profiles (``HID_SCANNER_PROFILES``): a boot keyboard on a scanner maker's id
  (interface 3/1/1, 8-byte reports); a composite scanner whose keyboard report carries report
  id 1 beside a consumer-control report 2 (interface 3/0/0, 9-byte reports: HID 1.11 6.2.2.7);
  a generic scanner on a chip maker's vendor id (Nuvoton 0x0416) that no maker table knows.

After ``unplug()`` every transfer on an old handle fails with ENODEV, as libusb reports it, and a
replugged device gets a new address, as on a real bus.
"""

from __future__ import annotations

import array
import errno
import itertools
import queue
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import usb.backend
import usb.core

from edgehub.sim.printer import PrinterCore, PrinterSession

__all__ = [
    "HID_SCANNER_PROFILES",
    "SimHidScanner",
    "SimUsbBackend",
    "SimUsbDevice",
    "SimUsbPrinter",
    "hid_reports_for",
    "keyboard_report_descriptor",
]


def _no_device() -> usb.core.USBError:
    return usb.core.USBError("No such device (it may have been disconnected)", -4, errno.ENODEV)


def _timed_out() -> usb.core.USBTimeoutError:
    return usb.core.USBTimeoutError("Operation timed out", -7, errno.ETIMEDOUT)


def _stall() -> usb.core.USBError:
    return usb.core.USBError("Pipe error", -9, errno.EPIPE)


@dataclass
class _EndpointDescriptor:
    bEndpointAddress: int
    bmAttributes: int  # 2 bulk, 3 interrupt
    wMaxPacketSize: int = 64
    bInterval: int = 0
    bLength: int = 7
    bDescriptorType: int = 5
    bRefresh: int = 0
    bSynchAddress: int = 0
    extra_descriptors: list[int] = field(default_factory=list)


@dataclass
class _InterfaceDescriptor:
    bInterfaceNumber: int
    bInterfaceClass: int
    bInterfaceSubClass: int
    bInterfaceProtocol: int
    endpoints: list[_EndpointDescriptor]
    bAlternateSetting: int = 0
    iInterface: int = 0
    bLength: int = 9
    bDescriptorType: int = 4
    extra_descriptors: list[int] = field(default_factory=list)

    @property
    def bNumEndpoints(self) -> int:
        return len(self.endpoints)


@dataclass
class _ConfigurationDescriptor:
    interfaces: list[_InterfaceDescriptor]
    bConfigurationValue: int = 1
    iConfiguration: int = 0
    bmAttributes: int = 0xC0
    bMaxPower: int = 50
    bLength: int = 9
    bDescriptorType: int = 2
    extra_descriptors: list[int] = field(default_factory=list)

    @property
    def bNumInterfaces(self) -> int:
        return len(self.interfaces)

    @property
    def wTotalLength(self) -> int:
        return 9 + sum(9 + 7 * len(i.endpoints) for i in self.interfaces)


@dataclass
class _DeviceDescriptor:
    idVendor: int
    idProduct: int
    bDeviceClass: int
    bus: int
    address: int
    bcdUSB: int = 0x0200
    bDeviceSubClass: int = 0
    bDeviceProtocol: int = 0
    bMaxPacketSize0: int = 64
    bcdDevice: int = 0x0100
    iManufacturer: int = 1
    iProduct: int = 2
    iSerialNumber: int = 3
    bNumConfigurations: int = 1
    bLength: int = 18
    bDescriptorType: int = 1
    port_number: int = 1
    port_numbers: tuple[int, ...] = (1,)
    speed: int = 2  # full speed, like most POS peripherals


class SimUsbDevice:
    """A simulated device: descriptors, string descriptors and plug state. Subclasses add I/O."""

    def __init__(
        self,
        vendor_id: int,
        product_id: int,
        interfaces: list[_InterfaceDescriptor],
        *,
        manufacturer: str,
        product: str,
        serial_number: str,
        kernel_driver_active: bool = False,
    ) -> None:
        self.vendor_id = vendor_id
        self.product_id = product_id
        self.manufacturer = manufacturer
        self.product = product
        self.serial_number = serial_number
        self.configuration = _ConfigurationDescriptor(interfaces)
        self.kernel_driver = {i.bInterfaceNumber: kernel_driver_active for i in interfaces}
        self.bus = 1
        self.address = 0
        self.port = 0  # the root hub port it is plugged into
        self.plugged = False
        self.generation = 0  # bumped on every plug and unplug, so stale handles fail

    def descriptor(self) -> _DeviceDescriptor:
        return _DeviceDescriptor(
            self.vendor_id, self.product_id, 0, self.bus, self.address,
            port_number=self.port, port_numbers=(self.port,),
        )

    def string(self, index: int) -> str | None:
        return {1: self.manufacturer, 2: self.product, 3: self.serial_number}.get(index)

    def control_in(
        self, bm_request_type: int, b_request: int, w_value: int, w_index: int, length: int
    ) -> bytes:
        if bm_request_type == 0x80 and b_request == 6 and w_value >> 8 == 3:  # GET_DESCRIPTOR string
            index = w_value & 0xFF
            if index == 0:
                return b"\x04\x03\x09\x04"  # language ids: en-US
            text = self.string(index)
            if text is None:
                raise _stall()
            body = text.encode("utf-16-le")
            return bytes((2 + len(body), 3)) + body
        if bm_request_type == 0x80 and b_request == 0:  # GET_STATUS: every USB device answers it
            return b"\x00\x00"  # bus-powered, no remote wakeup
        raise _stall()

    def control_out(
        self, bm_request_type: int, b_request: int, w_value: int, w_index: int, data: bytes
    ) -> int:
        return len(data)

    def opened(self, handle: _Handle) -> None:
        """A host opened the device."""

    def closed(self, handle: _Handle) -> None:
        """A host closed the device (or it was unplugged under it)."""

    def bulk_out(self, handle: _Handle, ep: int, data: bytes, timeout_ms: int) -> int:
        raise _stall()

    def read_in(self, handle: _Handle, ep: int, size: int, timeout_ms: int) -> bytes:
        raise _stall()


class SimUsbPrinter(SimUsbDevice):
    """An ESC/POS printer on USB (printer class 7/1/2), e.g. an Epson TM-T20 on 04b8:0e28."""

    def __init__(
        self,
        core: PrinterCore | None = None,
        *,
        vendor_id: int = 0x04B8,
        product_id: int = 0x0E28,
        serial_number: str = "SIM-USB-PRN-1",
        kernel_driver_active: bool = True,  # on Linux usblp binds printer-class interfaces
        bidirectional: bool = True,
    ) -> None:
        """``bidirectional`` False: printer class protocol 1 (unidirectional), a bulk OUT endpoint
        and no bulk IN: it can print but never answer (USB printer class spec 1.1, 4.2)."""
        self.core = core or PrinterCore(serial_number=serial_number)
        endpoints = [_EndpointDescriptor(0x01, 2)] + ([_EndpointDescriptor(0x82, 2)] if bidirectional else [])
        interface = _InterfaceDescriptor(0, 7, 1, 2 if bidirectional else 1, endpoints)
        super().__init__(
            vendor_id,
            product_id,
            [interface],
            manufacturer=self.core.manufacturer,
            product=self.core.model,
            serial_number=serial_number,
            kernel_driver_active=kernel_driver_active,
        )

    def control_in(
        self, bm_request_type: int, b_request: int, w_value: int, w_index: int, length: int
    ) -> bytes:
        if bm_request_type == 0xA1 and b_request == 0:  # printer class GET_DEVICE_ID
            body = self.core.device_id.encode("ascii")
            return (len(body) + 2).to_bytes(2, "big") + body
        if bm_request_type == 0xA1 and b_request == 1:  # GET_PORT_STATUS: paper ok, selected, no error
            return bytes((0x18 if not self.core.stopped else 0x00,))
        return super().control_in(bm_request_type, b_request, w_value, w_index, length)

    def opened(self, handle: _Handle) -> None:
        handle.session = self.core.session()

    def closed(self, handle: _Handle) -> None:
        if handle.session is not None:
            handle.session.close()

    def bulk_out(self, handle: _Handle, ep: int, data: bytes, timeout_ms: int) -> int:
        if ep != 0x01 or handle.session is None:
            raise _stall()
        handle.session.feed(data)
        return len(data)

    def read_in(self, handle: _Handle, ep: int, size: int, timeout_ms: int) -> bytes:
        if ep != 0x82 or handle.session is None:
            raise _stall()
        deadline = time.monotonic() + max(1, timeout_ms) / 1000
        while True:
            if not handle.valid():
                raise _no_device()
            handle.pending += handle.session.take_output()
            if handle.pending:
                data = bytes(handle.pending[:size])
                del handle.pending[:size]
                return data
            if time.monotonic() >= deadline:
                raise _timed_out()
            time.sleep(0.002)


# HID usage ids of a US keyboard: char -> (usage, shift)
_HID_KEYS: dict[str, tuple[int, bool]] = {
    **{chr(ord("a") + i): (0x04 + i, False) for i in range(26)},
    **{chr(ord("A") + i): (0x04 + i, True) for i in range(26)},
    **{str(d): (0x1E + d - 1, False) for d in range(1, 10)},
    "0": (0x27, False),
    "\n": (0x28, False),
    "\r": (0x28, False),
    "\t": (0x2B, False),
    " ": (0x2C, False),
    **{ch: (0x2D + i, False) for i, ch in enumerate("-=[]\\")},
    **{ch: (0x2D + i, True) for i, ch in enumerate("_+{}|")},
    ";": (0x33, False),
    ":": (0x33, True),
    "'": (0x34, False),
    '"': (0x34, True),
    "`": (0x35, False),
    "~": (0x35, True),
    ",": (0x36, False),
    "<": (0x36, True),
    ".": (0x37, False),
    ">": (0x37, True),
    "/": (0x38, False),
    "?": (0x38, True),
    **{ch: (0x1E + i, True) for i, ch in enumerate("!@#$%^&*(")},
    ")": (0x27, True),
}
LEFT_SHIFT = 0x02


def hid_reports_for(text: str, *, enter: bool = True, report_id: int | None = None) -> list[bytes]:
    """Boot keyboard reports for typing ``text`` (key down, key up per character) plus Enter,
    each after its ``report_id`` byte when the device numbers its reports."""
    prefix = bytes([report_id]) if report_id is not None else b""
    reports: list[bytes] = []
    for ch in text + ("\n" if enter else ""):
        if ch not in _HID_KEYS:
            raise ValueError(f"a US-layout HID keyboard cannot type {ch!r}")
        usage, shift = _HID_KEYS[ch]
        reports.append(prefix + bytes((LEFT_SHIFT if shift else 0, 0, usage, 0, 0, 0, 0, 0)))
        reports.append(prefix + bytes(8))
    return reports


def keyboard_report_descriptor(report_id: int | None = None) -> bytes:
    """A keyboard's report descriptor, in the boot layout (HID 1.11 Appendix B.1): modifiers,
    a reserved byte, six key slots, five LED outputs. With ``report_id`` it is numbered, and a
    consumer-control report (id + 1, one 16-bit usage) follows, as on composite scanners."""
    numbered = bytes((0x85, report_id)) if report_id is not None else b""
    keyboard = (
        b"\x05\x01\x09\x06\xa1\x01" + numbered  # Generic Desktop / Keyboard, Application
        + b"\x05\x07\x19\xe0\x29\xe7\x15\x00\x25\x01\x75\x01\x95\x08\x81\x02"  # 8 modifier bits
        + b"\x95\x01\x75\x08\x81\x01"  # reserved byte (constant)
        + b"\x95\x05\x75\x01\x05\x08\x19\x01\x29\x05\x91\x02"  # 5 LEDs (output)
        + b"\x95\x01\x75\x03\x91\x01"  # LED padding
        + b"\x95\x06\x75\x08\x15\x00\x25\x65\x05\x07\x19\x00\x29\x65\x81\x00"  # 6 key slots
        + b"\xc0"
    )
    if report_id is None:
        return keyboard
    consumer = (
        b"\x05\x0c\x09\x01\xa1\x01" + bytes((0x85, report_id + 1))  # Consumer Control
        + b"\x15\x00\x26\x3c\x02\x19\x00\x2a\x3c\x02\x75\x10\x95\x01\x81\x00\xc0"
    )
    return keyboard + consumer


#: The HID scanners a store may meet: name -> ``SimHidScanner`` arguments.
HID_SCANNER_PROFILES: dict[str, dict[str, Any]] = {
    "hid-boot": {},
    "hid-report-id": {"report_id": 1, "vendor_id": 0x1EAB, "product_id": 0x1D06, "serial_number": "SIM-SCN-RID",
                      "manufacturer": "Newland", "product": "HR22 composite"},
    "hid-unknown-vendor": {"vendor_id": 0x0416, "product_id": 0xC141, "serial_number": "",
                           "manufacturer": "", "product": "USB Barcode Scanner"},
}


class SimHidScanner(SimUsbDevice):
    """A barcode scanner in HID keyboard mode (by default a Honeywell on 0c2e:0b61, boot
    reports); ``report_id`` makes it a composite device that numbers its reports."""

    def __init__(
        self,
        *,
        vendor_id: int = 0x0C2E,
        product_id: int = 0x0B61,
        serial_number: str = "SIM-SCN-1",
        manufacturer: str = "Honeywell",
        product: str = "Voyager 1200g",
        kernel_driver_active: bool = True,  # usbhid binds it as a keyboard
        report_id: int | None = None,
    ) -> None:
        self.report_id = report_id
        self.report_descriptor = keyboard_report_descriptor(report_id)
        length = len(self.report_descriptor)
        hid_descriptor = [9, 0x21, 0x11, 0x01, 0, 1, 0x22, length & 0xFF, length >> 8]
        # A composite keyboard interface is no boot device (subclass 0): it keeps report protocol.
        subclass, protocol = (1, 1) if report_id is None else (0, 0)
        interface = _InterfaceDescriptor(
            0, 3, subclass, protocol,
            [_EndpointDescriptor(0x81, 3, wMaxPacketSize=8 if report_id is None else 16, bInterval=1)],
            extra_descriptors=hid_descriptor,
        )
        super().__init__(
            vendor_id,
            product_id,
            [interface],
            manufacturer=manufacturer,
            product=product,
            serial_number=serial_number,
            kernel_driver_active=kernel_driver_active,
        )
        self.reports: queue.Queue[bytes] = queue.Queue()

    @classmethod
    def from_profile(cls, name: str, **overrides: Any) -> SimHidScanner:
        """The scanner of profile ``name`` (``HID_SCANNER_PROFILES``); ValueError for an unknown one."""
        if name not in HID_SCANNER_PROFILES:
            raise ValueError(f"no HID scanner profile {name!r} (known: {', '.join(HID_SCANNER_PROFILES)})")
        return cls(**{**HID_SCANNER_PROFILES[name], **overrides})

    def type_text(self, text: str) -> None:
        """Queue the reports of one scan: ``text`` then Enter, shift held for capitals."""
        for report in hid_reports_for(text, report_id=self.report_id):
            self.reports.put(report)

    def send_report(self, report: bytes) -> None:
        """Queue one report as it is (a consumer key of a composite device, a broken report)."""
        self.reports.put(report)

    def string(self, index: int) -> str | None:
        if index == 3 and not self.serial_number:
            return None  # no serial number string: generic scanners often have none
        return super().string(index)

    def descriptor(self) -> _DeviceDescriptor:
        desc = super().descriptor()
        if not self.serial_number:
            desc.iSerialNumber = 0
        return desc

    def control_out(
        self, bm_request_type: int, b_request: int, w_value: int, w_index: int, data: bytes
    ) -> int:
        return len(data)  # SET_IDLE, SET_PROTOCOL, SET_REPORT(LEDs): accepted

    def control_in(
        self, bm_request_type: int, b_request: int, w_value: int, w_index: int, length: int
    ) -> bytes:
        if bm_request_type == 0xA1 and b_request == 0x03:  # GET_PROTOCOL: 0 boot, 1 report
            return b"\x00" if self.report_id is None else b"\x01"
        if bm_request_type == 0x81 and b_request == 6 and w_value == 0x2200 and w_index == 0:
            return self.report_descriptor[:length]  # GET_DESCRIPTOR(report) on the interface
        return super().control_in(bm_request_type, b_request, w_value, w_index, length)

    def read_in(self, handle: _Handle, ep: int, size: int, timeout_ms: int) -> bytes:
        if ep != 0x81:
            raise _stall()
        deadline = time.monotonic() + max(1, timeout_ms) / 1000
        while True:
            if not handle.valid():
                raise _no_device()
            try:
                return self.reports.get(timeout=min(0.01, max(0.0, deadline - time.monotonic())))[:size]
            except queue.Empty:
                if time.monotonic() >= deadline:
                    raise _timed_out() from None


class _Handle:
    """An open device, valid until the device is unplugged (even if it is plugged back in)."""

    def __init__(self, device: SimUsbDevice) -> None:
        self.device = device
        self.generation = device.generation
        self.session: PrinterSession | None = None
        self.pending = bytearray()
        self.configuration = 1
        self.claimed: set[int] = set()

    def valid(self) -> bool:
        return self.device.plugged and self.device.generation == self.generation


class SimUsbBackend(usb.backend.IBackend):  # type: ignore[misc]  # pyusb ships no type hints
    """A pyusb backend over simulated devices. Give it to ``usb.core.find(backend=...)``."""

    def __init__(self, devices: Iterable[SimUsbDevice] = ()) -> None:
        super().__init__()
        self._lock = threading.RLock()
        self._devices: list[SimUsbDevice] = []
        self._handles: list[_Handle] = []
        self._addresses = itertools.count(2)  # address 1 is the root hub on a real bus
        for device in devices:
            self.plug(device)

    @property
    def devices(self) -> list[SimUsbDevice]:
        with self._lock:
            return list(self._devices)

    def plug(self, device: SimUsbDevice, port: int | None = None) -> SimUsbDevice:
        """Plug a device into ``port`` (by default a free one); it gets the next free address,
        like on a real bus (a device plugged into the same port again keeps its port path)."""
        with self._lock:
            if device.plugged:
                return device
            taken = {d.port for d in self._devices}
            device.port = port if port is not None else next(p for p in itertools.count(1) if p not in taken)
            device.address = next(self._addresses)
            device.plugged = True
            device.generation += 1
            self._devices.append(device)
            return device

    def unplug(self, device: SimUsbDevice) -> None:
        """Pull the cable: open handles fail with ENODEV from now on."""
        with self._lock:
            if not device.plugged:
                return
            device.plugged = False
            device.generation += 1
            self._devices.remove(device)
            for handle in [h for h in self._handles if h.device is device]:
                self._handles.remove(handle)
                device.closed(handle)

    # -- IBackend ----------------------------------------------------------------------------
    def enumerate_devices(self) -> Iterator[SimUsbDevice]:
        return iter(self.devices)

    def get_parent(self, dev: SimUsbDevice) -> None:
        return None

    def get_device_descriptor(self, dev: SimUsbDevice) -> _DeviceDescriptor:
        return dev.descriptor()

    def get_configuration_descriptor(self, dev: SimUsbDevice, config: int) -> _ConfigurationDescriptor:
        if config != 0:
            raise IndexError(f"configuration {config} does not exist")
        return dev.configuration

    def get_interface_descriptor(
        self, dev: SimUsbDevice, intf: int, alt: int, config: int
    ) -> _InterfaceDescriptor:
        interfaces = self.get_configuration_descriptor(dev, config).interfaces
        if intf >= len(interfaces) or alt != 0:
            raise IndexError(f"interface {intf} alt {alt} does not exist")
        return interfaces[intf]

    def get_endpoint_descriptor(
        self, dev: SimUsbDevice, ep: int, intf: int, alt: int, config: int
    ) -> _EndpointDescriptor:
        endpoints = self.get_interface_descriptor(dev, intf, alt, config).endpoints
        if ep >= len(endpoints):
            raise IndexError(f"endpoint {ep} does not exist")
        return endpoints[ep]

    def open_device(self, dev: SimUsbDevice) -> _Handle:
        with self._lock:
            if not dev.plugged:
                raise _no_device()
            handle = _Handle(dev)
            self._handles.append(handle)
            dev.opened(handle)
            return handle

    def close_device(self, dev_handle: _Handle) -> None:
        with self._lock:
            if dev_handle in self._handles:
                self._handles.remove(dev_handle)
                dev_handle.device.closed(dev_handle)

    def _check(self, handle: _Handle) -> SimUsbDevice:
        if not handle.valid():
            raise _no_device()
        return handle.device

    def set_configuration(self, dev_handle: _Handle, config_value: int) -> None:
        self._check(dev_handle)
        dev_handle.configuration = config_value

    def get_configuration(self, dev_handle: _Handle) -> int:
        self._check(dev_handle)
        return dev_handle.configuration

    def set_interface_altsetting(self, dev_handle: _Handle, intf: int, altsetting: int) -> None:
        self._check(dev_handle)

    def claim_interface(self, dev_handle: _Handle, intf: int) -> None:
        device = self._check(dev_handle)
        if device.kernel_driver.get(intf, False):
            raise usb.core.USBError("Resource busy", -6, errno.EBUSY)
        dev_handle.claimed.add(intf)

    def release_interface(self, dev_handle: _Handle, intf: int) -> None:
        dev_handle.claimed.discard(intf)

    def is_kernel_driver_active(self, dev_handle: _Handle, intf: int) -> bool:
        return self._check(dev_handle).kernel_driver.get(intf, False)

    def detach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        self._check(dev_handle).kernel_driver[intf] = False

    def attach_kernel_driver(self, dev_handle: _Handle, intf: int) -> None:
        self._check(dev_handle).kernel_driver[intf] = True

    def bulk_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        return self._check(dev_handle).bulk_out(dev_handle, ep, bytes(data), timeout)

    def intr_write(
        self, dev_handle: _Handle, ep: int, intf: int, data: array.array[int], timeout: int
    ) -> int:
        return self._check(dev_handle).bulk_out(dev_handle, ep, bytes(data), timeout)

    def _read(self, dev_handle: _Handle, ep: int, buff: array.array[int], timeout: int) -> int:
        data = self._check(dev_handle).read_in(dev_handle, ep, len(buff), timeout)
        buff[: len(data)] = array.array("B", data)
        return len(data)

    def bulk_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(dev_handle, ep, buff, timeout)

    def intr_read(self, dev_handle: _Handle, ep: int, intf: int, buff: array.array[int], timeout: int) -> int:
        return self._read(dev_handle, ep, buff, timeout)

    def ctrl_transfer(
        self,
        dev_handle: _Handle,
        bmRequestType: int,  # pyusb names these parameters in camelCase
        bRequest: int,
        wValue: int,
        wIndex: int,
        data: array.array[int],
        timeout: int,
    ) -> int:
        device = self._check(dev_handle)
        if bmRequestType & 0x80:
            reply = device.control_in(bmRequestType, bRequest, wValue, wIndex, len(data))[: len(data)]
            data[: len(reply)] = array.array("B", reply)
            return len(reply)
        return device.control_out(bmRequestType, bRequest, wValue, wIndex, bytes(data))

    def clear_halt(self, dev_handle: _Handle, ep: int) -> None:
        self._check(dev_handle)

    def reset_device(self, dev_handle: _Handle) -> None:
        self._check(dev_handle)
