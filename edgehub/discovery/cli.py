"""``edgehub discover``: list every device the box can find now, with the driver that takes it.

Progress goes to stderr (a sweep of a /24 takes a few seconds), the table or JSON to stdout.
Nothing is registered and no role changes: it is a look, not a start.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import ipaddress
import json
import sys

from edgehub.config import Config, DiscoveryConfig, load_config

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's private type
    from edgehub.clihelp import command as help_command

    p = help_command(
        sub, "discover", "find USB, serial and LAN devices and show which driver takes them",
        "List every device this box can find now and the driver that takes it: USB (libusb), serial "
        "ports (each identified by an active probe), the LAN (mDNS, and a port 9100 sweep of the given "
        "subnets), and the config's own [[device]] entries. With --config of a running hub, the devices it "
        "drives come from the hub instead of being probed again. Nothing is registered and no role "
        "changes: it is a look, not a start. Progress on stderr, the table (or JSON) on stdout.",
        ["edgehub discover", "edgehub discover --config config/dev.toml        # beside make run",
         "edgehub discover --subnet 192.168.1.0/24 --no-usb --json",
         "edgehub discover --serial-port /dev/ttyS0"],
    )
    p.add_argument("--config", metavar="FILE", help="edgehub.toml: its [discovery] and [[device]] tables, and "
                   "the hub running on it")
    p.add_argument("--json", action="store_true", help="print the devices as JSON")
    p.add_argument(
        "--subnet", action="append", default=[], metavar="CIDR",
        help="sweep this subnet for port 9100 printers (repeat for more)"
    )
    p.add_argument(
        "--serial-port", action="append", default=[], metavar="PATH",
        help="probe this serial port too (repeat for more)"
    )
    p.add_argument("--no-usb", action="store_true", help="do not look on USB")
    p.add_argument("--no-serial", action="store_true", help="do not probe serial ports")
    p.add_argument("--no-lan", action="store_true", help="no mDNS browse and no port 9100 sweep")
    p.add_argument("--browse-seconds", type=float, default=3.0, metavar="SECONDS",
                   help="how long to listen for mDNS answers")
    p.set_defaults(func=command)


def running_hub_devices(config: Config) -> tuple[list[dict[str, str]], str]:
    """The devices the hub running on ``config`` drives now (from its API), and a note on where
    they came from; nothing when no hub holds that config's data directory."""
    import json as json_
    import urllib.error
    import urllib.request

    from edgehub.instance import InstanceLock

    holder = InstanceLock(config.paths.data_dir).holder()
    if holder is None:
        return [], ""
    from edgehub.api.tls import client_context

    request = urllib.request.Request(config.api.local_url("/api/v1/devices"),
                                     headers={"Authorization": f"Bearer {config.api.token}"})
    try:
        with urllib.request.urlopen(request, timeout=5, context=client_context(config.api)) as response:
            entries = json_.load(response).get("devices", [])
    except (OSError, ValueError) as exc:
        return [], f"a hub runs on this config ({holder.describe()}) but its device list could not be read: {exc}"
    rows = [{"kind": str(e.get("kind", "")), "model": str(e.get("model") or e.get("vendor") or ""),
             "transport": str(e.get("transport", "")), "address": str(e.get("address", "")),
             "id": str(e.get("device_id", "")), "driver": str(e.get("driver", "")),
             "found_by": f"running hub ({e.get('state', '?')})"} for e in entries]
    return rows, (f"{len(rows)} devices come from the running hub ({holder.describe()}); it drives them, so "
                  "they were not probed again")


def command(args: argparse.Namespace) -> int:
    from edgehub.bus.topics import Topics
    from edgehub.devices.registry import DeviceRegistry
    from edgehub.discovery import Discovery

    state_dir = None
    hub_rows: list[dict[str, str]] = []
    hub_note = ""
    if args.config:
        config = load_config(args.config)
        disc, devices, store = config.discovery, config.devices, config.store.id
        state_dir = config.paths.data_dir  # the hub's memory of USB serials that devices share
        # A hub running on this config drives its devices (the simulated ones of `make run` too):
        # they are listed from it, not probed again (a serial device answers one master at a time).
        hub_rows, hub_note = running_hub_devices(config)
        held = {row["address"] for row in hub_rows}
        devices = tuple(d for d in devices if d.address not in held)
    else:
        disc, devices, store = DiscoveryConfig(), (), "discover"
    for cidr in args.subnet:
        try:
            ipaddress.ip_network(cidr, strict=False)
        except ValueError as exc:
            print(f"--subnet {cidr}: {exc}", file=sys.stderr)
            return 2
    disc = dataclasses.replace(
        disc,
        usb=disc.usb and not args.no_usb,
        serial=disc.serial and not args.no_serial,
        lan=disc.lan and not args.no_lan,
        subnets=(*disc.subnets, *args.subnet),
        serial_ports=(*disc.serial_ports, *args.serial_port),
    )
    tty = sys.stderr.isatty()

    def progress(text: str) -> None:
        if tty:
            print(f"\r\x1b[K{text}", end="", file=sys.stderr, flush=True)
        else:
            print(text, file=sys.stderr, flush=True)

    notes: list[str] = []

    async def run() -> list[dict[str, str]]:
        registry = DeviceRegistry(Topics(store), None)
        discovery = Discovery(registry, disc, devices, state_dir=state_dir)
        found = await discovery.scan_once(args.browse_seconds, progress)
        notes.extend(discovery.notes)
        return [
            {
                "kind": i.kind,
                "model": i.model or i.vendor,
                "transport": i.transport,
                "address": i.address,
                "id": i.device_id,
                "driver": i.driver,
                "found_by": "this scan",
            }
            for i in found
        ]

    rows = asyncio.run(run())
    found = {row["id"] for row in hub_rows}
    rows = hub_rows + [row for row in rows if row["id"] not in found]
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    # What was not looked at, or found empty: on stderr, after the progress line is gone.
    for note in notes + ([hub_note] if hub_note else []):
        print(note, file=sys.stderr)
    if not args.config:
        print("devices a running hub drives are listed with --config FILE (the hub's config), "
              "e.g. edgehub discover --config config/dev.toml", file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no devices found")
        return 0
    cols = ("kind", "model", "transport", "address", "id", "driver", "found_by")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())
    return 0
