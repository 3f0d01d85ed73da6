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

from edgehub.config import DiscoveryConfig, load_config

__all__ = ["add_parser", "command"]


def add_parser(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]  # argparse's private type
    p = sub.add_parser("discover", help="find USB, serial and LAN devices and show which driver takes them")
    p.add_argument("--config", help="edgehub.toml: its [discovery] and [[device]] tables")
    p.add_argument("--json", action="store_true", help="print the devices as JSON")
    p.add_argument(
        "--subnet", action="append", default=[], metavar="CIDR", help="sweep this subnet for port 9100"
    )
    p.add_argument(
        "--serial-port", action="append", default=[], metavar="PATH", help="probe this serial port too"
    )
    p.add_argument("--no-usb", action="store_true", help="do not look on USB")
    p.add_argument("--no-serial", action="store_true", help="do not probe serial ports")
    p.add_argument("--no-lan", action="store_true", help="no mDNS browse and no port 9100 sweep")
    p.add_argument("--browse-seconds", type=float, default=3.0, help="how long to listen for mDNS answers")
    p.set_defaults(func=command)


def command(args: argparse.Namespace) -> int:
    from edgehub.bus.topics import Topics
    from edgehub.devices.registry import DeviceRegistry
    from edgehub.discovery import Discovery

    state_dir = None
    if args.config:
        config = load_config(args.config)
        disc, devices, store = config.discovery, config.devices, config.store.id
        state_dir = config.paths.data_dir  # the hub's memory of USB serials that devices share
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
            }
            for i in found
        ]

    rows = asyncio.run(run())
    if tty:
        print("\r\x1b[K", end="", file=sys.stderr, flush=True)
    # What was not looked at, or found empty: on stderr, after the progress line is gone.
    for note in notes:
        print(note, file=sys.stderr)
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    if not rows:
        print("no devices found")
        return 0
    cols = ("kind", "model", "transport", "address", "id", "driver")
    widths = {c: max(len(c), *(len(r[c]) for r in rows)) for c in cols}
    print("  ".join(c.upper().ljust(widths[c]) for c in cols).rstrip())
    for row in rows:
        print("  ".join(row[c].ljust(widths[c]) for c in cols).rstrip())
    return 0
