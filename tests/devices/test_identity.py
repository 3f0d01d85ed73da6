"""Device identity as real hardware breaks it: chip makers' vendor ids on things that are not
printers, two devices with one serial string, serial adapters without any, a printer configured
by its serial number, a port configured by its /dev/serial/by-id name. Each test failed before
(a scanner taken for a printer, two printers merged, ids swapping at reboot, a configured
printer never found, probe bytes written into a configured pinpad)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest

from drivers.base import Health
from drivers.escpos import EscposPrinter, PrinterTiming
from edgehub.bus.topics import Topics
from edgehub.config import DiscoveryConfig, StaticDeviceConfig
from edgehub.devices import DeviceRegistry, Watchdog, WatchdogTiming
from edgehub.devices.factory import DriverFactory
from edgehub.discovery import SHARED_SERIALS_FILE, Discovery, static_device_info
from edgehub.sim.scale import PtyPort, ScaleSim
from edgehub.sim.usb import (
    SimHidScanner,
    SimUsbBackend,
    SimUsbDevice,
    SimUsbPrinter,
    _EndpointDescriptor,
    _InterfaceDescriptor,
)

TIMING = PrinterTiming(connect=0.5, status_reply=0.3, frame_rest=0.1, settle=0.02)


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    try:
        async with asyncio.timeout(timeout):
            while not check():
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


def stm32_virtual_com_port() -> SimUsbDevice:
    """An STM32 board's USB CDC-ACM port (0483:5740): communications and data interfaces."""
    return SimUsbDevice(
        0x0483, 0x5740,
        [_InterfaceDescriptor(0, 0x02, 0x02, 0x01, [_EndpointDescriptor(0x82, 3)]),
         _InterfaceDescriptor(1, 0x0A, 0x00, 0x00, [_EndpointDescriptor(0x01, 2), _EndpointDescriptor(0x81, 2)])],
        manufacturer="STMicroelectronics", product="STM32 Virtual ComPort", serial_number="205A3B7C4E53",
    )


def usb_config(**overrides: object) -> DiscoveryConfig:
    return DiscoveryConfig(usb=True, serial=False, lan=False, scan_interval_s=0.1, **overrides)  # type: ignore[arg-type]


async def test_chip_makers_ids_are_no_printers_and_a_named_scanner_is_taken() -> None:
    backend = SimUsbBackend()
    backend.plug(stm32_virtual_com_port())
    scanner = backend.plug(SimHidScanner.from_profile("hid-unknown-vendor"))
    backend.plug(SimUsbPrinter(vendor_id=0x0416, product_id=0x5011, serial_number="CLONE-1"))  # class 7
    registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(backend, TIMING))
    discovery = Discovery(registry, usb_config(), usb_backend=backend)
    found = await discovery.scan_once(0)
    assert [(i.driver, i.extra["vid"], i.extra["pid"]) for i in found] == [("escpos", "0416", "5011")]
    assert any("0416:c141" in note and "scanner_usb_ids" in note for note in discovery.notes), discovery.notes

    named = Discovery(registry, usb_config(scanner_usb_ids=("0416:c141",)), usb_backend=backend)
    by_driver = {i.driver: i for i in await named.scan_once(0)}
    assert set(by_driver) == {"escpos", "hid_scanner"}
    scanner_id = by_driver["hid_scanner"].device_id
    assert scanner_id.startswith("usb-0416-c141-port-")  # no serial string: its port
    async with registry, named, Watchdog(registry, WatchdogTiming(scanner_interval=0.05)):
        await until(lambda: (e := registry.get(scanner_id)) is not None and e.health.state == "ready", "scanner")
        driver = await registry.open_driver(scanner_id)
        scanner.type_text("6901234567892")
        assert await driver.read_scan(3.0) == "6901234567892"  # type: ignore[attr-defined]


async def test_two_printers_with_one_serial_get_two_ids_that_survive_a_restart(tmp_path: Path) -> None:
    backend = SimUsbBackend()
    first = backend.plug(SimUsbPrinter(vendor_id=0x0416, product_id=0x5011, serial_number="Printer"))
    second = backend.plug(SimUsbPrinter(vendor_id=0x0416, product_id=0x5011, serial_number="Printer"))

    async def ids() -> dict[str, str]:
        registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(backend, TIMING))
        discovery = Discovery(registry, usb_config(), usb_backend=backend, state_dir=tmp_path)
        async with registry, discovery:
            await until(lambda: len(registry.all()) == len(backend.devices), "every printer found")
            return {e.info.address: e.device_id for e in registry.all() if e.present}

    both = await ids()
    assert len(set(both.values())) == 2, both  # not merged into one entry
    assert all(i.startswith("usb-0416-5011-Printer-port-") for i in both.values())
    first_id = both[f"1:{first.address}"]
    assert first_id.endswith(f"-port-1-{first.port}")
    assert (tmp_path / SHARED_SERIALS_FILE).exists()

    backend.unplug(second)  # the box restarts with only the first one plugged in, in its port
    backend.unplug(first)
    backend.plug(first, port=first.port)
    alone = await ids()
    assert list(alone.values()) == [first_id]


class FakePort(SimpleNamespace):
    """What pyserial's port list says about a USB serial adapter."""


async def test_serial_adapters_without_a_serial_number_keep_their_port_across_a_reboot(tmp_path: Path) -> None:
    by_id, by_path = tmp_path / "by-id", tmp_path / "by-path"
    by_id.mkdir()
    by_path.mkdir()
    ports = ("platform-xhci-hcd.0-usb-0:1.1:1.0-port0", "platform-xhci-hcd.0-usb-0:1.2:1.0-port0")
    cfg = DiscoveryConfig(usb=False, serial=True, lan=False, scan_interval_s=0.1)

    async def boot(in_ports: list[ScaleSim], enumerated: list[ScaleSim]) -> dict[str, int]:
        """One boot: the scales sit in the same USB ports, the kernel finds them in ``enumerated``
        order (which is what ttyUSB numbers follow, and whose by-id link udev keeps)."""
        for d in (by_id, by_path):
            for link in d.iterdir():
                link.unlink()
        for port, scale in zip(ports, in_ports, strict=True):
            (by_path / port).symlink_to(scale.port)
        # Both CH340s are "usb-1a86_USB_Serial-if00-port0": udev keeps the link of the last one.
        (by_id / "usb-1a86_USB_Serial-if00-port0").symlink_to(enumerated[-1].port)
        listed = [FakePort(device=s.port, vid=0x1A86, pid=0x7523, serial_number=None, description="USB Serial")
                  for s in enumerated]
        registry = DeviceRegistry(Topics("s1"), None)
        discovery = Discovery(registry, cfg, by_id_dir=by_id, by_path_dir=by_path, list_ports=lambda: listed)
        async with registry, discovery:
            await until(lambda: len(registry.all()) == 2, "both scales found")
            weights = {}
            for entry in registry.all():
                driver = await registry.open_driver(entry.device_id)
                weights[entry.device_id] = (await driver.read_weight()).grams  # type: ignore[attr-defined]
            return weights

    async with ScaleSim("mt8217", weight_g=1000) as left, ScaleSim("mt8217", weight_g=2000) as right:
        first = await boot([left, right], [left, right])
        second = await boot([left, right], [right, left])  # the next boot enumerates them the other way
    port_1, port_2 = (f"serial-path-platform-xhci-hcd.0-usb-0_1.{n}_1.0-port0" for n in (1, 2))
    assert first == second == {port_1: 1000, port_2: 2000}


async def test_a_usb_printer_configured_by_its_serial_number_prints() -> None:
    backend = SimUsbBackend()
    sim = backend.plug(SimUsbPrinter(serial_number="X5FA012345"))
    static = StaticDeviceConfig(driver="escpos", transport="usb", address="X5FA012345", id="receipt")
    info = static_device_info(static)
    assert info.serial_number == "X5FA012345"
    registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(backend, TIMING))
    async with registry, Discovery(registry, DiscoveryConfig(usb=False, serial=False, lan=False), [static]):
        driver = await registry.open_driver("receipt")
        assert isinstance(driver, EscposPrinter)
        assert await driver.health() == Health("ready")
        result = await driver.print_job("j1", b"hello\n")
        assert result.bytes_sent > 0 and "hello" in sim.core.printed[-1].text


async def test_a_hid_scanner_configured_by_vendor_and_product_scans() -> None:
    backend = SimUsbBackend()
    sim = backend.plug(SimHidScanner.from_profile("hid-unknown-vendor"))
    static = StaticDeviceConfig(driver="hid_scanner", transport="usb", address="0416:c141", id="front-scanner")
    registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(backend, TIMING))
    async with registry, Discovery(registry, DiscoveryConfig(usb=False, serial=False, lan=False), [static]):
        driver = await registry.open_driver("front-scanner")
        sim.type_text("ABC123")
        assert await driver.read_scan(3.0) == "ABC123"  # type: ignore[attr-defined]


class Recorder(PtyPort):
    """A pinpad on a serial port that records every byte it is sent (it answers nothing)."""

    def __init__(self) -> None:
        super().__init__()
        self.received = bytearray()

    def _received(self, data: bytes) -> None:
        self.received += data


@pytest.mark.parametrize("live", [False, True])
async def test_a_port_configured_by_its_by_id_name_is_never_probed(tmp_path: Path, live: bool) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    async with Recorder() as pinpad:
        link = by_id / "usb-Ingenico_Move5000_12345678-if00"
        link.symlink_to(pinpad.port)
        static = StaticDeviceConfig(driver="zvt", transport="serial", address=str(link), id="pinpad")
        cfg = DiscoveryConfig(usb=False, serial=True, lan=False, scan_interval_s=0.1)
        listed = [FakePort(device=pinpad.port, vid=0x0B00, pid=0x0080, serial_number="12345678", description="")]
        registry = DeviceRegistry(Topics("s1"), None)
        discovery = Discovery(registry, cfg, [static], by_id_dir=by_id, by_path_dir=tmp_path / "none",
                              list_ports=lambda: listed)
        async with registry, discovery:
            await asyncio.sleep(0.5)  # a few serial scans
        assert bytes(pinpad.received) == b""
        if live:  # `edgehub discover --config` beside the hub: the same rule
            await Discovery(registry, cfg, [static], by_id_dir=by_id, by_path_dir=tmp_path / "none",
                            list_ports=lambda: listed).scan_once(0)
            assert bytes(pinpad.received) == b""
