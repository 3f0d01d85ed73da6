"""USB printers and scanners through the simulated pyusb backend: find by class, print, status,
unplug and replug."""

from __future__ import annotations

import errno

import pytest
import usb.core
import usb.util

from drivers.base import DeviceInfo
from drivers.escpos import EscposPrinter, PrinterTiming
from drivers.escpos_render import Ticket, render
from drivers.usb_transport import UsbTransport, find_printers, parse_device_id
from edgehub.errors import DeviceTimeout, DeviceUnavailable
from edgehub.sim.usb import SimHidScanner, SimUsbBackend, SimUsbPrinter, hid_reports_for

FAST = PrinterTiming(
    connect=1.0, status_reply=0.2, frame_rest=0.1, settle=0.02, confirm=2.0, poll_interval=0.1
)


def test_parse_device_id() -> None:
    body = b"MFG:EPSON;CMD:ESC/POS;MDL:TM-T20III;CLS:PRINTER;"
    assert parse_device_id((len(body) + 2).to_bytes(2, "big") + body) == {
        "MFG": "EPSON",
        "CMD": "ESC/POS",
        "MDL": "TM-T20III",
        "CLS": "PRINTER",
    }
    # Long key names, a length that does not count itself, trailing NULs.
    body = b"MANUFACTURER:Star;COMMAND SET:STAR;MODEL:TSP143;\x00\x00"
    assert parse_device_id(len(body).to_bytes(2, "big") + body) == {
        "MFG": "Star",
        "CMD": "STAR",
        "MDL": "TSP143",
    }
    assert parse_device_id(b"") == {}
    assert parse_device_id(b"\xff\xffgarbage without pairs") == {}


def test_finds_printers_by_class_7_and_reads_strings() -> None:
    printer, scanner = SimUsbPrinter(serial_number="PRN-A"), SimHidScanner()
    backend = SimUsbBackend([printer, scanner])
    (found,) = find_printers(backend)
    assert (found.idVendor, found.idProduct) == (0x04B8, 0x0E28)
    assert found.serial_number == "PRN-A" and found.manufacturer == "EPSON"
    hid = usb.core.find(backend=backend, custom_match=lambda d: d[0][(0, 0)].bInterfaceClass == 3)
    assert hid is not None and hid.serial_number == "SIM-SCN-1"
    intf = hid[0][(0, 0)]
    assert (intf.bInterfaceSubClass, intf.bInterfaceProtocol) == (1, 1)
    (ep,) = list(intf)
    assert (
        ep.bEndpointAddress == 0x81 and usb.util.endpoint_type(ep.bmAttributes) == usb.util.ENDPOINT_TYPE_INTR
    )


async def test_transport_detaches_kernel_driver_reads_device_id_and_times_out() -> None:
    printer = SimUsbPrinter()
    backend = SimUsbBackend([printer])
    (device,) = find_printers(backend)
    transport = await UsbTransport.open(device)
    assert printer.kernel_driver[0] is False  # usblp detached so we can claim the interface
    assert (await transport.device_id())["CMD"] == "ESC/POS"
    with pytest.raises(DeviceTimeout):
        await transport.read_exactly(1, 0.1)
    await transport.write(b"\x10\x04\x01\x10\x04\x04")
    assert await transport.read_exactly(2, 1.0) == b"\x12\x12"
    await transport.close()
    assert printer.kernel_driver[0] is True  # handed back to the kernel
    with pytest.raises(DeviceUnavailable, match="closed"):
        await transport.write(b"x")


async def test_usb_printer_prints_reports_status_and_survives_replug() -> None:
    printer = SimUsbPrinter(serial_number="PRN-USB-7")
    backend = SimUsbBackend([printer])
    info = DeviceInfo("prn-usb", "printer", "usb", "", "escpos", serial_number="PRN-USB-7")
    driver = EscposPrinter(info, timing=FAST, usb_backend=backend)
    try:
        result = await driver.print_job("usb-1", render(Ticket().title("Table 3").text("1x 宫保鸡丁")))
        assert result.job_id == "usb-1"
        (ticket,) = printer.core.printed
        assert ticket.text.splitlines() == ["Table 3", "1x 宫保鸡丁"] and ticket.cut

        printer.core.paper_near_end = True
        assert (await driver.health()).reason == "paper near end"
        printer.core.paper_out = True
        assert (await driver.health()).reason == "paper end"
        printer.core.reset()

        backend.unplug(printer)
        assert (await driver.health()).reason == "not reachable"
        with pytest.raises(DeviceUnavailable, match="not plugged in"):
            await driver.print_job("usb-2", b"x\n")

        backend.plug(printer)  # back on a new bus address; found again by serial number
        assert (await driver.health()).state == "ready"
        await driver.print_job("usb-2", render(Ticket().text("after replug")))
        assert [t.text for t in printer.core.printed] == ["after replug"]
    finally:
        await driver.close()


async def test_unplug_mid_conversation_is_device_unavailable() -> None:
    printer = SimUsbPrinter()
    backend = SimUsbBackend([printer])
    (device,) = find_printers(backend)
    transport = await UsbTransport.open(device)
    backend.unplug(printer)
    with pytest.raises(DeviceUnavailable, match="unplugged"):
        await transport.write(b"\x10\x04\x01")
    with pytest.raises(DeviceUnavailable, match="unplugged"):
        await transport.read_some(0.2)
    await transport.close()


def test_hid_scanner_types_boot_reports_with_shift() -> None:
    scanner = SimHidScanner()
    backend = SimUsbBackend([scanner])
    device = usb.core.find(backend=backend, idVendor=0x0C2E)
    assert device is not None
    with pytest.raises(usb.core.USBError) as busy:  # usbhid holds it, as on a real box
        device.read(0x81, 8, 20)
    assert busy.value.errno == errno.EBUSY
    assert device.is_kernel_driver_active(0)
    device.detach_kernel_driver(0)
    scanner.type_text("Ab1")
    reports = [bytes(device.read(0x81, 8, 100)) for _ in range(8)]
    assert reports == hid_reports_for("Ab1")
    assert reports[0] == bytes((0x02, 0, 0x04, 0, 0, 0, 0, 0))  # shift + a
    assert reports[2] == bytes((0x00, 0, 0x05, 0, 0, 0, 0, 0))  # b
    assert reports[4][2] == 0x1E and reports[6][2] == 0x28  # 1, Enter
    assert all(r == bytes(8) for r in reports[1::2])  # key up between keys
    with pytest.raises(usb.core.USBTimeoutError):
        device.read(0x81, 8, 20)
    backend.unplug(scanner)
    with pytest.raises(usb.core.USBError) as caught:
        device.read(0x81, 8, 20)
    assert caught.value.errno == errno.ENODEV
    with pytest.raises(ValueError):
        scanner.type_text("ü")


async def test_a_usb_printer_without_a_bulk_in_endpoint_prints_unconfirmed() -> None:
    """Issue 21: a USB printer without a bulk-IN endpoint can never answer DLE EOT, and the status
    read before every job meant it could never print."""
    printer = SimUsbPrinter(serial_number="ONE-WAY", bidirectional=False)
    backend = SimUsbBackend([printer])
    info = DeviceInfo("usb-ONE-WAY", "printer", "usb", "ONE-WAY", "escpos", serial_number="ONE-WAY")
    driver = EscposPrinter(info, usb_backend=backend, timing=PrinterTiming(status_reply=0.2, connect=2.0))
    try:
        assert (await driver.health()).state == "ready"  # it is there; it says nothing, by design
        result = await driver.print_job("one-way-1", render(Ticket().text("one-way printer")))
    finally:
        await driver.close()
    assert driver.status_mode == "none" and result.confirmed_by == "none" and not result.confirmed
    assert [t.lines[0].text for t in printer.core.printed] == ["one-way printer"]
