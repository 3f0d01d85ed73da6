"""A role is bound to a device id, not an address: the device unplugged and found again at a new
address (another USB port, a new IP or port, another tty) serves its role again, and tickets
print on it there. Real discovery, registry, watchdog, roles, journal and Mosquitto."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from pathlib import Path
from typing import Any, cast

from drivers.base import DeviceInfo, Driver
from edgehub.config import DiscoveryConfig
from edgehub.devices.factory import DriverFactory
from edgehub.discovery import Discovery
from edgehub.discovery.lan import LanDiscovery
from edgehub.roles.roles import Reply
from edgehub.sim.printer import PrinterCore, PrinterSim
from edgehub.sim.scale import ScaleSim
from edgehub.sim.usb import SimUsbBackend, SimUsbPrinter
from tests.roles.conftest import FAST_PRINTER, Store, copies, printer_info, running_store, ticket

ROLE = "kitchen-printer.grill"
USB_ID = "usb-04b8-0e28-PRN-77"
LAN_ID = "mac-02005e000042"
SCALE_BY_ID = "usb-Mettler_Toledo_8217_Adapter_A1B2-if00-port0"


def roles_toml(primary: str) -> str:
    return f"""
[[role]]
name = "{ROLE}"
devices = ["{primary}", "prn-spare"]
failback_after_s = 0.2

[[role]]
name = "scale"
devices = ["serial-{SCALE_BY_ID}"]
"""


async def print_one(store: Store, number: int) -> None:
    queue = store.roles.printqueue
    before = queue.stats.printed
    await queue.submit(ROLE, ticket(number), f"t-{number}", Reply(None, None, None))
    await store.wait_for(lambda: queue.stats.printed > before, what=f"ticket {number} printed")


async def test_usb_printer_replugged_into_another_port_serves_its_role_again(tmp_path: Path) -> None:
    backend = SimUsbBackend()
    core = PrinterCore(serial_number="PRN-77")
    usb_printer = SimUsbPrinter(core, serial_number="PRN-77")
    backend.plug(usb_printer)
    factory = DriverFactory(backend, FAST_PRINTER)
    cfg = DiscoveryConfig(usb=True, serial=False, lan=False, scan_interval_s=0.1)
    driver_factory = cast(Callable[[DeviceInfo], Driver], factory)  # the registry awaits it
    async with (
        running_store(tmp_path / "box", roles_toml(USB_ID), driver_factory=driver_factory) as store,
        PrinterSim() as spare,
        Discovery(store.registry, cfg, usb_backend=backend),
    ):
        await store.add(printer_info("prn-spare", spare))
        await store.wait_for(lambda: store.roles.serving(ROLE) == USB_ID, what="USB printer serves")
        entry = store.registry.get(USB_ID)
        assert entry is not None and (entry.info.driver, entry.info.transport) == ("escpos", "usb")
        first_address = entry.info.address
        await print_one(store, 1)
        assert [t.text for t in core.printed if "JOB 0001" in t.text]

        backend.unplug(usb_printer)
        await store.wait_for(lambda: store.roles.serving(ROLE) == "prn-spare", what="role on the spare")
        await print_one(store, 2)
        assert copies(spare) == [(2, False)]

        backend.plug(usb_printer)  # another port: a new bus address, the same serial number
        await store.wait_for(lambda: store.roles.serving(ROLE) == USB_ID, what="role back on the USB printer")
        assert store.registry.get(USB_ID) is entry and entry.info.address != first_address
        await print_one(store, 3)
        assert any("JOB 0003" in t.text for t in core.printed)
        assert copies(spare) == [(2, False)]
        assert [e.device_id for e in store.registry.all() if e.info.kind == "printer"] == ["prn-spare", USB_ID]


async def test_lan_printer_with_a_new_address_serves_its_role_again(tmp_path: Path) -> None:
    async def neighbours() -> dict[str, str]:
        return {"127.0.0.1": "02:00:5e:00:00:42"}  # what the kernel's neighbour table says

    lan = LanDiscovery(neighbours=neighbours, connect_timeout=2.0, reply_timeout=2.0)
    core = PrinterCore(serial_number="LAN-1")
    async with running_store(tmp_path / "box", roles_toml(LAN_ID)) as store, PrinterSim() as spare:
        await store.add(printer_info("prn-spare", spare))
        async with PrinterSim(core) as first:
            info = await lan.identify("127.0.0.1", first.port)
            assert info is not None and (info.device_id, info.driver) == (LAN_ID, "escpos")
            await store.add(info)
            await store.wait_for(lambda: store.roles.serving(ROLE) == LAN_ID, what="LAN printer serves")
            await print_one(store, 1)
        # Switched off: the watchdog fails it, the role moves.
        await store.wait_for(lambda: store.roles.serving(ROLE) == "prn-spare", what="role on the spare")
        await print_one(store, 2)
        async with PrinterSim(core) as second:  # back with a new address (here: a new port)
            again = await lan.identify("127.0.0.1", second.port)
            assert again is not None and again.device_id == LAN_ID and again.address != info.address
            await store.registry.upsert(again)
            await store.wait_for(lambda: store.roles.serving(ROLE) == LAN_ID, what="role back")
            await print_one(store, 3)
        numbers = [n for t in core.printed for n in (1, 3) if f"JOB 000{n}" in t.text]
        assert numbers == [1, 3] and copies(spare) == [(2, False)]


async def test_serial_scale_on_another_tty_serves_its_role_again(tmp_path: Path) -> None:
    by_id = tmp_path / "by-id"
    by_id.mkdir()
    scale_id = f"serial-{SCALE_BY_ID}"
    cfg = DiscoveryConfig(usb=False, serial=True, lan=False, scan_interval_s=0.1)
    async with running_store(tmp_path / "box", roles_toml(LAN_ID)) as store:
        discovery = Discovery(store.registry, cfg, by_id_dir=by_id, list_ports=list)
        async with discovery:
            async with ScaleSim("mt8217", weight_g=1250) as scale:
                (by_id / SCALE_BY_ID).symlink_to(scale.port)
                await store.wait_for(lambda: store.roles.serving("scale") == scale_id, what="scale serves")
                entry = store.registry.get(scale_id)
                assert entry is not None and entry.info.driver == "mt8217"
                first = scale.port
                scale.unplug()
                (by_id / SCALE_BY_ID).unlink()  # udev removes the link with the device
                await store.wait_for(lambda: store.roles.serving("scale") is None, what="scale role down")

                def reason() -> str:
                    state: dict[str, Any] = next(r for r in store.roles.status_now() if r["role"] == "scale")
                    return str(state["reason"])

                # A probe may find the port closed before discovery sees the device gone; gone it is then.
                await store.wait_for(lambda: f"{scale_id} gone" in reason(), what="the role says the scale is gone")
            async with contextlib.AsyncExitStack() as held:
                # Pseudo-terminal numbers are the whole machine's: hold any that comes back as the
                # first one, so the scale returns on another tty.
                scale = await held.enter_async_context(ScaleSim("mt8217", weight_g=800))
                while scale.port == first:
                    scale = await held.enter_async_context(ScaleSim("mt8217", weight_g=800))
                (by_id / SCALE_BY_ID).symlink_to(scale.port)
                await store.wait_for(lambda: store.roles.serving("scale") == scale_id, what="scale serves again")
                assert store.registry.get(scale_id) is entry and entry.info.address == scale.port
        await asyncio.sleep(0)
