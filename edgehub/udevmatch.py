"""``python -m edgehub.udevmatch VID PID``: udev asks whether a USB device is a scanner the box's
config names, so 99-edgehub.rules can give it to the edgehub user like a maker's scanner.

A generic barcode scanner carries its chip maker's vendor id, which no rule can list; the
installer names it in ``/etc/edgehub/edgehub.toml`` (``[discovery] scanner_usb_ids``, or a
``hid_scanner`` / ``serial_scanner`` ``[[device]]`` at ``vendor:product``). udev runs this for HID
keyboards only (``IMPORT{program}``) and reads ``EDGEHUB_KIND=scanner`` from its output; for
anything else, or a config it cannot read, it prints nothing. It reads the TOML itself rather
than through the config loader: a problem elsewhere in the file must not take the scanner away,
and udev waits for the answer while the device is being added.
"""

from __future__ import annotations

import sys
import tomllib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from edgehub.config import USB_ID_RE, parse_usb_id

BOX_CONFIG = Path("/etc/edgehub/edgehub.toml")


def named_scanners(doc: dict[str, Any]) -> set[tuple[int, int | None]]:
    """(vendor, product or None) of every scanner the config names by USB id."""
    found: set[tuple[int, int | None]] = set()
    discovery = doc.get("discovery")
    ids = discovery.get("scanner_usb_ids", []) if isinstance(discovery, dict) else []
    devices = doc.get("device", [])
    ids = list(ids) if isinstance(ids, list) else []
    for device in devices if isinstance(devices, list) else []:
        if (isinstance(device, dict) and device.get("driver") in ("hid_scanner", "serial_scanner")
                and device.get("transport") == "usb"):
            ids.append(device.get("address"))
    for text in ids:
        if isinstance(text, str) and USB_ID_RE.match(text):
            found.add(parse_usb_id(text))
    return found


def kind(vendor: str, product: str, config: Path = BOX_CONFIG) -> str | None:
    """``"scanner"`` when the config names ``vendor:product`` (hex, as udev's $attr gives them)."""
    try:
        vid, pid = int(vendor, 16), int(product, 16)
        doc = tomllib.loads(config.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # no config yet, unreadable, not TOML, or bad ids from udev
        return None
    scanners = named_scanners(doc)
    return "scanner" if (vid, None) in scanners or (vid, pid) in scanners else None


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if len(args) not in (2, 3):
        print("usage: python -m edgehub.udevmatch VENDOR PRODUCT [CONFIG]", file=sys.stderr)
        return 2
    found = kind(args[0], args[1], Path(args[2]) if len(args) == 3 else BOX_CONFIG)
    if found is not None:
        print(f"EDGEHUB_KIND={found}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
