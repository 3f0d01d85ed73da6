"""A simulated store for ``make run`` / ``edgehub run --simulate``: devices without hardware.

``SimStore`` starts two kitchen printers and a receipt printer (``PrinterSim`` on loopback TCP),
a Mettler Toledo 8217 scale and a serial barcode scanner on pseudo-terminals, and a ZVT pinpad
on loopback TCP, and gives the ``[[device]]`` entries that point the hub at them. ``profiles``
picks another real unit's habits for a slot (``SIM_SLOTS``): ``{"scale": "cas-jin", "scanner":
"hid-report-id", "kitchen-1": "gbk-58"}`` (``edgehub run --simulate --sim-profile scale=cas-jin``;
``make run SIM="scale=cas-jin scanner=hid-report-id kitchen-2=silent"``). A printer slot's unit
(``SIM_PROFILES``) comes with the profile keys an installer gives it (``SIM_DEVICE_KEYS``, e.g.
``status = "none"`` for a silent one). A HID scanner lives on a simulated USB bus
(``usb_backend``, for the hub). The ids are
fixed, so role bindings in a dev config (``kitchen-printer.grill = ["sim-kitchen-1", …]``)
keep working across runs although the ports and ptys change; roles the config does not bind
get the simulated devices (``SIM_ROLES``). ``edgehub run --simulate`` uses it only when the
config names no real devices (``[[device]]``); ``edgehub sim store`` runs the devices alone.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from edgehub.config import Config, RoleConfig, StaticDeviceConfig
from edgehub.sim.pinpad import ZvtPinpadSim
from edgehub.sim.printer import SIM_DEVICE_KEYS, SIM_PROFILES, PrinterCore, PrinterSim
from edgehub.sim.scale import SCALE_PROFILES, ScaleSim
from edgehub.sim.scanner import SERIAL_SCANNER_PROFILES, SerialScannerSim
from edgehub.sim.usb import HID_SCANNER_PROFILES, SimHidScanner, SimUsbBackend

__all__ = ["SIM_ROLES", "SIM_SLOTS", "SimStore", "add_parser", "parse_profiles", "with_sim_devices"]

#: The store's device slots a profile can be chosen for, and the profiles of each.
SIM_SLOTS: dict[str, tuple[str, ...]] = {
    "scale": tuple(SCALE_PROFILES),
    "scanner": (*SERIAL_SCANNER_PROFILES, *HID_SCANNER_PROFILES),
    "kitchen-1": tuple(SIM_PROFILES),
    "kitchen-2": tuple(SIM_PROFILES),
    "receipt": tuple(SIM_PROFILES),
}


def parse_profiles(items: list[str]) -> dict[str, str]:
    """``["scale=cas-jin", …]`` → {"scale": "cas-jin"}; ValueError saying what is known."""
    profiles: dict[str, str] = {}
    for item in items:
        slot, sep, name = item.partition("=")
        if not sep or slot not in SIM_SLOTS:
            raise ValueError(f"{item!r}: give SLOT=PROFILE with SLOT one of {', '.join(SIM_SLOTS)}")
        if name not in SIM_SLOTS[slot]:
            raise ValueError(f"{item!r}: the {slot} profiles are {', '.join(SIM_SLOTS[slot])}")
        profiles[slot] = name
    return profiles


def _scale_settings(profile: str) -> dict[str, str]:
    """The [[device]] keys a store sets for this kind of scale (its profile, as an installer
    would after the field check)."""
    spec = SCALE_PROFILES[profile]
    if spec["protocol"] == "mt8217":
        return {"unit": spec.get("unit", "kg")}
    return {"mode": "continuous"} if spec["protocol"] == "cas-continuous" else {}


@dataclass
class SimStore:
    """The simulated devices; ``async with`` starts them, ``devices`` is for ``Config.devices``."""

    #: Loopback addresses for the three printers to listen on at port 9100, like LAN printers
    #: (so ``edgehub discover --subnet`` finds them by the real sweep); empty: free ports on
    #: 127.0.0.1.
    lan_hosts: tuple[str, ...] = ()
    kitchen: list[PrinterSim] = field(default_factory=list)
    receipt: PrinterSim | None = None
    scale: ScaleSim | None = None
    scanner: SerialScannerSim | SimHidScanner | None = None
    pinpad: ZvtPinpadSim | None = None
    devices: tuple[StaticDeviceConfig, ...] = ()
    #: A real unit's habits per slot (``SIM_SLOTS``): {"scale": "mt8217-lb", "scanner": "serial-lf"}.
    profiles: dict[str, str] = field(default_factory=dict)
    #: The simulated USB bus of a HID scanner, for ``Hub(usb_backend=…)``; None without one.
    usb_backend: SimUsbBackend | None = None
    _stack: contextlib.AsyncExitStack = field(default_factory=contextlib.AsyncExitStack)

    async def __aenter__(self) -> SimStore:
        stack = self._stack
        if self.lan_hosts and len(self.lan_hosts) != 3:
            raise ValueError(
                f"lan_hosts: give 3 addresses (two kitchen printers, a receipt printer), not {len(self.lan_hosts)}"
            )

        def where(n: int) -> dict[str, Any]:
            return {"host": self.lan_hosts[n], "port": 9100} if self.lan_hosts else {}

        try:
            parse_profiles([f"{slot}={name}" for slot, name in self.profiles.items()])  # says what is wrong
            for n in (1, 2):
                core = PrinterCore(serial_number=f"SIM-KITCHEN-{n}", profile=self.profiles.get(f"kitchen-{n}", "epson"))
                self.kitchen.append(await stack.enter_async_context(PrinterSim(core, **where(n - 1))))
            self.receipt = await stack.enter_async_context(PrinterSim(
                PrinterCore(serial_number="SIM-RECEIPT-1", profile=self.profiles.get("receipt", "epson")), **where(2)
            ))
            scale_profile = self.profiles.get("scale", "mt8217")
            scanner_profile = self.profiles.get("scanner", "serial-cr")
            self.scale = await stack.enter_async_context(ScaleSim.from_profile(scale_profile, weight_g=0))
            scanner_entry: StaticDeviceConfig
            if scanner_profile in HID_SCANNER_PROFILES:
                hid = SimHidScanner.from_profile(scanner_profile)
                self.usb_backend, self.scanner = SimUsbBackend([hid]), hid
                scanner_entry = StaticDeviceConfig(
                    driver="hid_scanner", transport="usb",
                    address=hid.serial_number or f"{hid.vendor_id:04x}:{hid.product_id:04x}",
                    id="sim-scanner-1", model=f"simulated HID scanner ({scanner_profile})")
            else:
                serial_scanner = await stack.enter_async_context(SerialScannerSim.from_profile(scanner_profile))
                self.scanner = serial_scanner
                scanner_entry = StaticDeviceConfig(
                    driver="serial_scanner", transport="serial", address=serial_scanner.port,
                    id="sim-scanner-1", model=f"simulated USB-COM scanner ({scanner_profile})")
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
                    model=f"simulated {p.core.model} ({p.core.profile.name})",
                    extra=dict(SIM_DEVICE_KEYS.get(p.core.profile.name, {})),
                )
                for n, p in enumerate(self.kitchen, start=1)
            ),
            StaticDeviceConfig(
                driver="escpos",
                transport="tcp",
                address=self.receipt.address,
                id="sim-receipt-1",
                model=f"simulated {self.receipt.core.model} ({self.receipt.core.profile.name})",
                extra=dict(SIM_DEVICE_KEYS.get(self.receipt.core.profile.name, {})),
            ),
            StaticDeviceConfig(
                driver="mt8217" if self.scale.protocol == "mt8217" else "cas",
                transport="serial",
                address=self.scale.port,
                id="sim-scale-1",
                model=f"simulated scale ({scale_profile})",
                extra=_scale_settings(scale_profile),
            ),
            scanner_entry,
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


#: The roles of the simulated store, each bound unless the config binds that role itself.
SIM_ROLES = (
    RoleConfig("kitchen-printer", ("sim-kitchen-1", "sim-kitchen-2"), 10.0),
    RoleConfig("receipt-printer", ("sim-receipt-1", "sim-kitchen-2"), 10.0),
    RoleConfig("scale", ("sim-scale-1",)),
    RoleConfig("scanner", ("sim-scanner-1",)),
    RoleConfig("pinpad", ("sim-pinpad-1",)),
)


def with_sim_devices(config: Config, sim: SimStore) -> Config:
    """``config`` with the simulated devices added and bound to the store's roles (those the
    config does not bind itself), and hardware discovery off (nothing real to find, and probing
    a developer's own serial ports would be rude)."""
    discovery = dataclasses.replace(config.discovery, usb=False, serial=False, lan=False)
    bound = {r.name for r in config.roles}
    roles = (*config.roles, *(r for r in SIM_ROLES if r.name not in bound))
    return dataclasses.replace(
        config, devices=(*config.devices, *sim.devices), discovery=discovery, roles=roles
    )


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's private type
    """``edgehub sim store``: the simulated devices on their own, to point ``discover`` or a hub at."""
    from edgehub.clihelp import command as help_command

    p = help_command(
        sub, "store", "run a simulated store's devices (printers, scale, scanner, pinpad)",
        "Run the simulated store's devices on their own: two kitchen printers and a receipt printer "
        "(ESC/POS on TCP), a Mettler Toledo 8217 scale and a barcode scanner on pseudo-terminals, a ZVT "
        "pinpad on TCP. They are printed as [[device]] entries for an edgehub.toml, with the "
        "`edgehub discover` line that finds them. Ctrl-C stops them.",
        ["edgehub sim store", "edgehub sim store --lan 127.0.0.2,127.0.0.3,127.0.0.4",
         "edgehub sim store --profile scale=cas-jin --profile scanner=serial-lf"],
    )
    p.add_argument("--profile", action="append", default=[], metavar="SLOT=PROFILE",
                   help="a real unit's habits for a device slot, e.g. scale=cas-jin or scanner=serial-lf "
                        f"(slots: {', '.join(SIM_SLOTS)}; profiles: docs/devices.md)")
    p.add_argument(
        "--lan",
        metavar="A,B,C",
        help="three loopback addresses for the printers to listen on at port 9100, like LAN printers "
        "(e.g. 127.0.0.2,127.0.0.3,127.0.0.4; default: free ports on 127.0.0.1)",
    )
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    hosts: tuple[str, ...] = ()
    if args.lan:
        hosts = tuple(h.strip() for h in args.lan.split(","))
        bad = [h for h in hosts if not h.startswith("127.")]
        if len(hosts) != 3 or bad:
            print(f"--lan {args.lan}: give three loopback addresses (127.x.y.z), comma-separated", file=sys.stderr)
            return 2

    try:
        profiles = parse_profiles(args.profile)
    except ValueError as exc:
        print(f"--profile {exc}", file=sys.stderr)
        return 2
    if any(name in HID_SCANNER_PROFILES for name in profiles.values()):
        print("--profile: a HID scanner lives on a simulated USB bus inside one process: use it with "
              "`edgehub run --simulate --sim-profile …`", file=sys.stderr)
        return 2

    async def run() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with SimStore(lan_hosts=hosts, profiles=profiles) as sim:
            print("# simulated devices, as [[device]] entries for edgehub.toml:")
            for d in sim.devices:
                print(f'[[device]]\nid = "{d.id}"\ndriver = "{d.driver}"\ntransport = "{d.transport}"\n'
                      f'address = "{d.address}"\n' + "".join(f'{k} = "{v}"\n' for k, v in d.extra.items()))
            serial = " ".join(f"--serial-port {d.address}" for d in sim.devices if d.transport == "serial")
            subnet = " ".join(f"--subnet {h}/32" for h in hosts) or "(start with --lan to sweep the printers)"
            print(f"# find them: edgehub discover --no-usb {serial} {subnet}", flush=True)
            await stop.wait()

    try:
        asyncio.run(run())
    except OSError as exc:
        print(f"cannot start the simulated devices: {exc}", file=sys.stderr)
        return 1
    return 0
