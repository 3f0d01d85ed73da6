"""The store against every scanner and scale profile at once: one real hub, each simulated unit
(a real unit's habits, docs/devices.md) bound to a role of its own, and a till that hears each
scan and each weight on the role's topic, in grams and in the unit the scale weighs in. Also
``SimStore`` as ``make run SIM=…`` starts it, with a HID scanner on a simulated USB bus."""

from __future__ import annotations

import asyncio
import contextlib
import json
from pathlib import Path
from typing import Any

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.sim.scale import SCALE_PROFILES, ScaleSim
from edgehub.sim.scanner import SERIAL_SCANNER_PROFILES, SerialScannerSim
from edgehub.sim.store import SimStore, with_sim_devices
from edgehub.sim.usb import HID_SCANNER_PROFILES, SimHidScanner, SimUsbBackend
from tests.conftest import Terminal, write_config

# What 1234 g reads as on each scale profile: unit and the number as shown.
SHOWN = {"mt8217": ("kg", "01.234"), "mt8217-padded-n": ("kg", "1.234"), "mt8217-lb": ("lb", "02.72"),
         "cas": ("kg", "1.234"), "cas-g": ("g", "1234"), "cas-lb": ("lb", "2.72"), "cas-jin": ("jin", "2.468"),
         "cas-continuous": ("kg", "001.234"), "cas-continuous-jin": ("jin", "002.468")}


def scale_entry(name: str, sim: ScaleSim) -> str:
    spec = SCALE_PROFILES[name]
    settings = ""
    if spec["protocol"] == "mt8217" and spec.get("unit"):
        settings = f'unit = "{spec["unit"]}"\n'  # what the field check tells the installer to set
    if spec["protocol"] == "cas-continuous":
        settings = 'mode = "continuous"\n'
    driver = "mt8217" if spec["protocol"] == "mt8217" else "cas"
    return (f'[[device]]\nid = "scale-{name}"\ndriver = "{driver}"\ntransport = "serial"\naddress = "{sim.port}"\n'
            f'{settings}\n[[role]]\nname = "scale.{name}"\ndevices = ["scale-{name}"]\n\n')


class Till:
    """A POS terminal listening to every role event."""

    def __init__(self, terminal: Terminal) -> None:
        self.terminal = terminal
        self.events: dict[str, list[dict[str, Any]]] = {}
        self.changed = asyncio.Event()

    async def listen(self) -> None:
        while True:
            message = await self.terminal.acks.get()  # the terminal's one reader hands every message here
            role = message.topic.split("/")[4]
            self.events.setdefault(role, []).append(json.loads(message.payload))
            self.changed.set()

    async def wait(self, role: str, check: Any, what: str, timeout: float = 10.0) -> dict[str, Any]:
        try:
            async with asyncio.timeout(timeout):
                while True:
                    for event in self.events.get(role, []):
                        if check(event):
                            return event
                    self.changed.clear()
                    await self.changed.wait()
        except TimeoutError:
            raise AssertionError(f"{role}: never {what}; got {self.events.get(role)}") from None


async def test_every_scanner_and_scale_profile_in_one_store(tmp_path: Path) -> None:
    backend = SimUsbBackend()
    hid = {name: backend.plug(SimHidScanner.from_profile(name)) for name in HID_SCANNER_PROFILES}
    async with contextlib.AsyncExitStack() as stack:
        scales = {name: await stack.enter_async_context(ScaleSim.from_profile(name, weight_g=0))
                  for name in SCALE_PROFILES}
        serial = {name: await stack.enter_async_context(SerialScannerSim.from_profile(name))
                  for name in SERIAL_SCANNER_PROFILES}
        extra = "[discovery]\nusb = false\nserial = false\nlan = false\nadvertise = false\n\n"
        extra += "".join(scale_entry(name, sim) for name, sim in scales.items())
        for name, sim in serial.items():
            extra += (f'[[device]]\nid = "scanner-{name}"\ndriver = "serial_scanner"\ntransport = "serial"\n'
                      f'address = "{sim.port}"\n\n[[role]]\nname = "scanner.{name}"\ndevices = ["scanner-{name}"]\n\n')
        for name, dev in hid.items():
            address = dev.serial_number or f"{dev.vendor_id:04x}:{dev.product_id:04x}"
            extra += (f'[[device]]\nid = "scanner-{name}"\ndriver = "hid_scanner"\ntransport = "usb"\n'
                      f'address = "{address}"\n\n[[role]]\nname = "scanner.{name}"\ndevices = ["scanner-{name}"]\n\n')
        config = load_config(write_config(tmp_path / "box", extra=extra))
        await stack.enter_async_context(MosquittoProcess(config, die_with_parent=False))
        hub = await stack.enter_async_context(Hub(config, usb_backend=backend))
        async with asyncio.timeout(10):
            await hub.ready.wait()
        till = Till(await stack.enter_async_context(Terminal(config, "pos-1")))
        await till.terminal.client.subscribe(till.terminal.topics.role_event("+", "+"), qos=1)
        listener = asyncio.create_task(till.listen())
        try:
            for sim in scales.values():
                sim.weight_g = 1234  # put the same weight on every platter
            for name in SCALE_PROFILES:
                unit, shown = SHOWN[name]
                event = await till.wait(f"scale.{name}", lambda e: e.get("grams") == 1234, "1234 g")
                got = (event["unit"], event["value"], event["state"], event["sellable"])
                assert got == (unit, shown, "stable", True), name
            for name in SERIAL_SCANNER_PROFILES:
                serial[name].scan("6901234567892")
                await till.wait(f"scanner.{name}", lambda e: e.get("code") == "6901234567892", "the scan")
            for name, dev in hid.items():
                async with asyncio.timeout(10):  # the hub opens the HID scanner once the watchdog saw it
                    while (entry := hub.registry.get(f"scanner-{name}")) is None or entry.health.state != "ready":
                        await asyncio.sleep(0.05)
                dev.type_text("Abc-123")
                await till.wait(f"scanner.{name}", lambda e: e.get("code") == "Abc-123", "the scan")
        finally:
            listener.cancel()
            await asyncio.gather(listener, return_exceptions=True)


async def test_sim_store_with_profiles_as_make_run_starts_it(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path / "box", extra="[discovery]\nadvertise = false\n"))
    async with SimStore(profiles={"scale": "mt8217-lb", "scanner": "hid-report-id"}) as sim:
        assert sim.usb_backend is not None and isinstance(sim.scanner, SimHidScanner)
        store_config = with_sim_devices(config, sim)
        scale_entry_ = next(d for d in store_config.devices if d.id == "sim-scale-1")
        assert scale_entry_.extra == {"unit": "lb"}  # read as lb: the store's profile says so
        async with MosquittoProcess(store_config, die_with_parent=False), Hub(store_config,
                                                                              usb_backend=sim.usb_backend) as hub:
            async with asyncio.timeout(10):
                await hub.ready.wait()
            async with Terminal(store_config, "pos-1") as pos:
                till = Till(pos)
                await pos.client.subscribe(pos.topics.role_event("+", "+"), qos=1)
                listener = asyncio.create_task(till.listen())
                try:
                    assert sim.scale is not None
                    sim.scale.weight_g = 500
                    event = await till.wait("scale", lambda e: e.get("grams") == 499, "500 g as 1.10 lb")
                    assert (event["unit"], event["value"]) == ("lb", "01.10")  # 1.10 lb = 498.95 g
                    async with asyncio.timeout(10):
                        while (e := hub.registry.get("sim-scanner-1")) is None or e.health.state != "ready":
                            await asyncio.sleep(0.05)
                    sim.scanner.type_text("4006381333931")
                    await till.wait("scanner", lambda e: e.get("code") == "4006381333931", "the scan")
                finally:
                    listener.cancel()
                    await asyncio.gather(listener, return_exceptions=True)
