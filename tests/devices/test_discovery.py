"""Discovery: a simulated device appears, is taken by the right driver, disappears, and comes
back at a new address with the same id (USB replug, LAN printer on a new port, serial pty)."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from drivers.base import Health
from drivers.escpos import PrinterTiming
from edgehub.bus.topics import Topics
from edgehub.config import DiscoveryConfig, StaticDeviceConfig
from edgehub.devices import DeviceRegistry, Watchdog, WatchdogTiming
from edgehub.devices.factory import DriverFactory
from edgehub.discovery import Discovery, MatchTable, static_device_info
from edgehub.discovery.lan import LanDiscovery, is_escpos_printer
from edgehub.discovery.usb import UsbDiscovery
from edgehub.sim.printer import PrinterCore, PrinterSim
from edgehub.sim.scale import ScaleSim
from edgehub.sim.usb import SimHidScanner, SimUsbBackend, SimUsbPrinter

TIMING = PrinterTiming(connect=0.5, status_reply=0.2, frame_rest=0.1, settle=0.02)
FAST = DiscoveryConfig(usb=False, serial=False, lan=False, scan_interval_s=0.1)


async def until(check: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    """Wait for a condition discovery reaches by itself (a guard against a hang, not a timing)."""
    try:
        async with asyncio.timeout(timeout):
            while not check():  # state owned by the code under test: poll it
                await asyncio.sleep(0.02)
    except TimeoutError:
        raise AssertionError(f"never: {what}") from None


def events_of(registry: DeviceRegistry) -> list[tuple[str, str, str]]:
    seen: list[tuple[str, str, str]] = []
    registry.subscribe(lambda e: seen.append((e.kind, e.entry.device_id, e.entry.info.address)))
    return seen


def test_one_match_table_from_every_driver() -> None:
    table = MatchTable.build()
    drivers = {cls.name for _, cls in table.usb}
    assert {"escpos", "hid_scanner"} <= drivers
    assert set(table.zeroconf) == {"_pdl-datastream._tcp.local.", "_printer._tcp.local.", "_ipp._tcp.local."}
    assert {cls.name for cls in table.tcp_ports[9100]} == {"escpos"}
    assert len(table.serial_probes) == 2  # mt8217 and CAS answer a probe; scanners are passive
    assert (0x0C2E, None) in table.scanner_usb_ids


async def test_usb_printer_and_scanner_replug_keep_their_ids() -> None:
    backend = SimUsbBackend()
    printer = backend.plug(SimUsbPrinter(serial_number="PRN-77"))
    backend.plug(SimHidScanner(serial_number="SCN-9"))
    registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(backend, TIMING))
    seen = events_of(registry)
    cfg = DiscoveryConfig(usb=True, serial=False, lan=False, scan_interval_s=0.1)
    prn_id, scn_id = "usb-04b8-0e28-PRN-77", "usb-0c2e-0b61-SCN-9"
    async with (
        registry,
        Discovery(registry, cfg, usb_backend=backend),
        Watchdog(registry, WatchdogTiming(printer_interval=0.05, scanner_interval=0.05)) as watchdog,
    ):
        await until(
            lambda: registry.get(prn_id) is not None and registry.get(scn_id) is not None, "both found"
        )
        prn, scn = registry.get(prn_id), registry.get(scn_id)
        assert prn is not None and scn is not None
        assert (prn.info.kind, prn.info.driver, prn.info.transport) == ("printer", "escpos", "usb")
        assert (scn.info.kind, scn.info.driver) == ("scanner", "hid_scanner")
        first_address = prn.info.address
        await until(lambda: prn.health == Health("ready"), "printer ready over USB")
        await until(lambda: scn.health == Health("ready"), "scanner ready")

        backend.unplug(printer)
        await until(lambda: not prn.present, "printer gone")
        assert prn.health == Health("failed", "unplugged")
        assert ("gone", prn_id, first_address) in seen

        backend.plug(printer)  # another port: a new bus address, the same serial number
        await until(lambda: prn.present, "printer back")
        assert registry.get(prn_id) is prn
        assert prn.info.address != first_address
        assert ("moved", prn_id, prn.info.address) in seen
        await until(lambda: prn.health == Health("ready"), "printer ready at the new address")
        assert watchdog.probes[prn_id] > 0
        assert len([d for d in registry.all() if d.info.kind == "printer"]) == 1


async def test_lan_printer_on_a_new_port_keeps_its_id() -> None:
    async def neighbours() -> dict[str, str]:
        return {"127.0.0.1": "02:00:5e:00:00:42"}  # the MAC the kernel would have for the printer

    lan = LanDiscovery(neighbours=neighbours, connect_timeout=2.0, reply_timeout=2.0)  # CPU noise
    registry = DeviceRegistry(Topics("s1"), None, driver_factory=DriverFactory(printer_timing=TIMING))
    seen = events_of(registry)
    core = PrinterCore(serial_number="LAN-1")
    async with registry, Watchdog(registry, WatchdogTiming(printer_interval=0.05)):
        async with PrinterSim(core) as sim:
            info = await lan.identify("127.0.0.1", sim.port)
            assert info is not None and info.device_id == "mac-02005e000042" and info.driver == "escpos"
            entry = await registry.upsert(info)
            await until(lambda: entry.health == Health("ready"), "ready")
        await until(lambda: entry.health.state == "failed", "failed while it is off")
        async with PrinterSim(core) as sim:  # DHCP gave it a new address (here: a new port)
            again = await lan.identify("127.0.0.1", sim.port)
            assert again is not None and again.device_id == info.device_id
            assert await registry.upsert(again) is entry
            assert entry.info.address == f"127.0.0.1:{sim.port}"
            assert seen[-1] == ("moved", info.device_id, entry.info.address)
            await until(lambda: entry.health == Health("ready"), "ready at the new address")


async def garbage_server(reply: bytes) -> asyncio.Server:
    async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await reader.read(16)
            writer.write(reply)
            await writer.drain()
            await asyncio.sleep(1)
        finally:
            writer.close()

    return await asyncio.start_server(serve, "127.0.0.1", 0)


@pytest.mark.parametrize(
    "reply", [b"HTTP/1.1 400 Bad Request\r\n\r\n", b"\x12\x02", b"\x12\x12\x12\x12garbage"]
)
async def test_9100_probe_refuses_what_is_not_a_printer(reply: bytes) -> None:
    server = await garbage_server(reply)
    port = server.sockets[0].getsockname()[1]
    try:
        assert not await is_escpos_printer("127.0.0.1", port, 0.5, 0.3)
        lan = LanDiscovery(["127.0.0.1/32"], port=port, connect_timeout=0.5, reply_timeout=0.3)
        assert await lan.sweep() == []
    finally:
        server.close()


async def test_9100_sweep_finds_a_printer() -> None:
    async with PrinterSim() as sim:
        progress: list[tuple[int, int]] = []
        lan = LanDiscovery(["127.0.0.0/30"], port=sim.port, connect_timeout=0.5)
        found = await lan.sweep(lambda done, total: progress.append((done, total)))
    assert [(i.address, i.driver, i.kind) for i in found] == [(f"127.0.0.1:{sim.port}", "escpos", "printer")]
    assert progress[-1] == (2, 2)  # the two hosts of a /30


async def test_serial_scale_is_probed_and_keeps_its_by_id_identity(tmp_path: Path) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    name = "usb-Mettler_Toledo_8217_Adapter_A1B2-if00-port0"
    cfg = DiscoveryConfig(usb=False, serial=True, lan=False, scan_interval_s=0.1)
    registry = DeviceRegistry(Topics("s1"), None)
    seen = events_of(registry)
    expected_id = f"serial-{name}"
    async with registry, Discovery(registry, cfg, by_id_dir=by_id, list_ports=list):
        async with ScaleSim("mt8217", weight_g=1250) as scale:
            (by_id / name).symlink_to(scale.port)
            await until(lambda: registry.get(expected_id) is not None, "scale found")
            entry = registry.get(expected_id)
            assert entry is not None
            assert (entry.info.kind, entry.info.driver, entry.info.address) == ("scale", "mt8217", scale.port)
            assert entry.info.extra["by_id"] == name
            first = scale.port
            scale.unplug()
            (by_id / name).unlink()  # udev removes the by-id link with the device
            await until(lambda: not entry.present, "scale gone")
        async with ScaleSim("mt8217") as other_pty_holder, ScaleSim("mt8217") as scale:
            assert scale.port != first
            (by_id / name).symlink_to(scale.port)
            await until(lambda: entry.present, "scale back")
            assert registry.get(expected_id) is entry and entry.info.address == scale.port
            assert ("moved", expected_id, scale.port) in seen
            del other_pty_holder


async def test_static_devices_go_in_first_and_discovery_does_not_probe_them(tmp_path: Path) -> None:
    async with ScaleSim("mt8217") as scale:
        static = StaticDeviceConfig(driver="mt8217", transport="serial", address=scale.port, id="front-scale")
        cfg = DiscoveryConfig(
            usb=False, serial=True, lan=False, serial_ports=(scale.port,), scan_interval_s=0.1
        )
        registry = DeviceRegistry(Topics("s1"), None)
        async with registry, Discovery(registry, cfg, [static], by_id_dir=tmp_path, list_ports=list):
            await asyncio.sleep(0.3)  # a few serial scans
            assert [e.device_id for e in registry.all()] == ["front-scale"]
            assert registry.get("front-scale").static  # type: ignore[union-attr]
        assert scale.commands == []  # nobody wrote probe bytes into a configured device's port


def test_static_ids_without_an_id() -> None:
    tcp = StaticDeviceConfig(driver="escpos", transport="tcp", address="192.168.1.50")
    assert static_device_info(tcp, {"192.168.1.50": "00:11:22:33:44:55"}).device_id == "mac-001122334455"
    assert static_device_info(tcp, {}).device_id == "tcp-192.168.1.50"
    ser = StaticDeviceConfig(driver="cas", transport="serial", address="/dev/serial/by-id/usb-CAS_PD-II-if00")
    info = static_device_info(ser)
    assert (info.device_id, info.kind) == ("serial-usb-CAS_PD-II-if00", "scale")


class PipeMonitor:
    """Hotplug events as pyudev's netlink ``Monitor`` hands them over (a readable fd, then
    ``poll(timeout=0)`` until None). The kernel here has no USB to send real ones."""

    def __init__(self) -> None:
        self.r, self.w = os.pipe()
        os.set_blocking(self.r, False)
        self.actions: list[str] = []

    def fileno(self) -> int:
        return self.r

    def emit(self, action: str) -> None:
        self.actions.append(action)
        os.write(self.w, b"!")

    def poll(self, timeout: float = 0) -> SimpleNamespace | None:
        try:
            os.read(self.r, 1)
        except BlockingIOError:
            return None
        return SimpleNamespace(action=self.actions.pop(0))

    def close(self) -> None:
        os.close(self.r)
        os.close(self.w)


async def test_usb_hotplug_event_rescans_at_once() -> None:
    backend = SimUsbBackend()
    monitor = PipeMonitor()
    # Polling every hour: a rescan within the test can only come from a hotplug event.
    usb = UsbDiscovery(MatchTable.build().usb, backend=backend, poll_interval=3600, hotplug=lambda: monitor)
    seen: list[list[str]] = []

    async def on_change(found: list[Any]) -> None:
        seen.append(sorted(i.device_id for i in found))

    watch = asyncio.create_task(usb.watch(on_change))
    try:
        await until(lambda: seen == [[]], "first scan")
        printer = backend.plug(SimUsbPrinter(serial_number="HOT-1"))
        monitor.emit("add")
        await until(lambda: seen[-1:] == [["usb-04b8-0e28-HOT-1"]], "found after the add event")
        backend.unplug(printer)
        monitor.emit("remove")
        await until(lambda: seen[-1:] == [[]], "gone after the remove event")
        assert len(seen) == 3
    finally:
        watch.cancel()
        await asyncio.gather(watch, return_exceptions=True)
        monitor.close()
