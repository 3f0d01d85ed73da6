"""A simulated store for ``make run`` / ``edgehub run --simulate``: devices without hardware.

``SimStore`` starts two kitchen printers and a receipt printer (``PrinterSim`` on loopback TCP),
a Mettler Toledo 8217 scale and a serial barcode scanner on pseudo-terminals, and a ZVT pinpad
on loopback TCP, and gives the ``[[device]]`` entries that point the hub at them. The ids are
fixed, so role bindings in a dev config (``kitchen-printer.grill = ["sim-kitchen-1", …]``)
keep working across runs although the ports and ptys change.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass, field

from edgehub.config import Config, StaticDeviceConfig
from edgehub.sim.pinpad import ZvtPinpadSim
from edgehub.sim.printer import PrinterCore, PrinterSim
from edgehub.sim.scale import ScaleSim
from edgehub.sim.scanner import SerialScannerSim

__all__ = ["SimStore", "with_sim_devices"]


@dataclass
class SimStore:
    """The simulated devices; ``async with`` starts them, ``devices`` is for ``Config.devices``."""

    kitchen: list[PrinterSim] = field(default_factory=list)
    receipt: PrinterSim | None = None
    scale: ScaleSim | None = None
    scanner: SerialScannerSim | None = None
    pinpad: ZvtPinpadSim | None = None
    devices: tuple[StaticDeviceConfig, ...] = ()
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> SimStore:
        stack = self._stack
        try:
            for n in (1, 2):
                core = PrinterCore(model="TM-T20III", serial_number=f"SIM-KITCHEN-{n}")
                self.kitchen.append(await stack.enter_async_context(PrinterSim(core)))
            self.receipt = await stack.enter_async_context(
                PrinterSim(PrinterCore(model="TM-m30III", serial_number="SIM-RECEIPT-1"))
            )
            self.scale = await stack.enter_async_context(ScaleSim("mt8217", weight_g=0))
            self.scanner = await stack.enter_async_context(SerialScannerSim())
            self.pinpad = await stack.enter_async_context(ZvtPinpadSim())
        except BaseException:
            await stack.aclose()
            raise
        self.devices = (
            *(
                StaticDeviceConfig(
                    driver="escpos",
                    transport="tcp",
                    address=p.address,
                    id=f"sim-kitchen-{n}",
                    model="simulated TM-T20III",
                )
                for n, p in enumerate(self.kitchen, start=1)
            ),
            StaticDeviceConfig(
                driver="escpos",
                transport="tcp",
                address=self.receipt.address,
                id="sim-receipt-1",
                model="simulated TM-m30III",
            ),
            StaticDeviceConfig(
                driver="mt8217",
                transport="serial",
                address=self.scale.port,
                id="sim-scale-1",
                model="simulated 8217 scale",
            ),
            StaticDeviceConfig(
                driver="serial_scanner",
                transport="serial",
                address=self.scanner.port,
                id="sim-scanner-1",
                model="simulated USB-COM scanner",
            ),
            StaticDeviceConfig(
                driver="zvt",
                transport="tcp",
                address=f"127.0.0.1:{self.pinpad.port}",
                id="sim-pinpad-1",
                model="simulated ZVT terminal",
            ),
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self._stack.aclose()


def with_sim_devices(config: Config, sim: SimStore) -> Config:
    """``config`` with the simulated devices added and hardware discovery off (nothing real to
    find, and probing a developer's own serial ports would be rude)."""
    discovery = dataclasses.replace(config.discovery, usb=False, serial=False, lan=False)
    return dataclasses.replace(config, devices=(*config.devices, *sim.devices), discovery=discovery)
