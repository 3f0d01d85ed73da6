"""``edgehub device test ID``: the installer's field check of one device, run by the running hub.

The check runs inside the hub (``POST /api/v1/devices/{id}/field-check``) on the driver the
hub holds open, so nothing else opens the device's port and a sale in progress finishes first.
This command asks for it, says what to do while it waits (scan a barcode), and prints each step
with the bytes the device sent and the profile keys the check points to.

Exit codes: 0 the check passed; 1 it failed, or the hub could not be asked; 2 bad arguments,
config, or no such device (the known ones are listed).
"""

from __future__ import annotations

import argparse
import json
import ssl
import sys
import urllib.error
import urllib.parse
import urllib.request
from typing import Any, TextIO

from drivers.base import FIELD_CHECK_MAX_WAIT_S as MAX_WAIT_S
from drivers.base import FIELD_CHECK_WAIT_S as DEFAULT_WAIT_S

__all__ = ["add_parser", "command", "format_check"]

BOX_CONFIG = "/etc/edgehub/edgehub.toml"
# Beyond the wait for a scan: a printer's test page, a slow hub.
_HTTP_SLACK_S = 90.0


class HubUnreachable(Exception):
    """The hub did not answer, or answered with an error (``status`` is the HTTP status, or 0)."""

    def __init__(self, message: str, status: int = 0) -> None:
        super().__init__(message)
        self.status = status


def _call(base: str, token: str, method: str, path: str, body: Any = None, timeout: float = 10.0,
          context: ssl.SSLContext | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(f"{base}{path}", data=data, method=method,
                                     headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout, context=context) as response:
            return json.load(response)
    except urllib.error.HTTPError as exc:
        try:
            error = json.load(exc).get("error", exc.reason)
        except (ValueError, AttributeError):
            error = exc.reason
        raise HubUnreachable(f"HTTP {exc.code}: {error}", exc.code) from None
    except (OSError, ValueError) as exc:
        raise HubUnreachable(f"cannot reach the hub at {base} ({exc}); is `edgehub run` running?") from exc


def _raw(hex_text: str, width: int = 16) -> list[str]:
    """Hex bytes in rows of ``width``, with their printable ASCII beside them."""
    data = bytes.fromhex(hex_text)
    rows = []
    for i in range(0, len(data), width):
        chunk = data[i:i + width]
        text = "".join(chr(b) if 0x20 <= b < 0x7F else "." for b in chunk)
        rows.append(f"{chunk.hex(' '):<{width * 3 - 1}}  {text}")
    return rows


def format_check(record: dict[str, Any]) -> list[str]:
    """A check as lines for a person: the verdict, each step with its raw bytes, the profile."""
    verdict = "PASS" if record.get("ok") else "FAIL"
    lines = [f"{record.get('kind', 'device')} {record['device_id']} ({record.get('driver')} at "
             f"{record.get('address')}): {verdict} in {record.get('seconds', 0):.2f} s"]
    for step in record.get("steps", []):
        mark = "ok  " if step.get("ok") else "FAIL"
        lines.append(f"  {mark}  {step.get('name', '?'):<9} {step.get('detail', '')}")
        for row in _raw(step.get("raw_hex", "")):
            lines.append(f"                  {row}")
    profile = record.get("profile") or {}
    if profile:
        keys = ", ".join(f'{k} = {json.dumps(v, ensure_ascii=False)}' for k, v in sorted(profile.items()))
        lines.append(f"  profile it points to ([[device]] keys): {keys}")
    return lines


def run_test(base: str, token: str, device_id: str, wait_s: float, out: TextIO, err: TextIO,
             as_json: bool = False, context: ssl.SSLContext | None = None) -> int:
    """``context``: the box's own certificate, when its API is HTTPS."""
    try:
        device = _call(base, token, "GET", f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}",
                       context=context)
    except HubUnreachable as exc:
        if exc.status != 404:
            print(f"edgehub device test: {exc}", file=err)
            return 1
        try:
            listed = _call(base, token, "GET", "/api/v1/devices", context=context)
            known = [d["device_id"] for d in listed.get("devices", [])]
        except HubUnreachable:
            known = []
        print(f"edgehub device test: the hub has no device {device_id!r}"
              + (f"; it has: {', '.join(known)}" if known else ""), file=err)
        return 2
    if device.get("kind") == "scanner" and not as_json:
        print(f"scan a barcode with {device_id} now (waiting up to {wait_s:g} s) …", file=err, flush=True)
    try:
        record = _call(base, token, "POST", f"/api/v1/devices/{urllib.parse.quote(device_id, safe='')}/field-check",
                       {"wait_s": wait_s}, timeout=wait_s + _HTTP_SLACK_S, context=context)
    except HubUnreachable as exc:
        print(f"edgehub device test: {exc}", file=err)
        return 1
    if as_json:
        print(json.dumps(record, indent=2, ensure_ascii=False), file=out)
    else:
        for line in format_check(record):
            print(line, file=out)
    return 0 if record.get("ok") else 1


def command(args: argparse.Namespace) -> int:
    from edgehub.config import load_config

    if not 0 < args.wait <= MAX_WAIT_S:
        print(f"--wait must be above 0 and at most {MAX_WAIT_S:g} seconds", file=sys.stderr)
        return 2
    from edgehub.api.tls import client_context

    config = load_config(args.config)
    base = config.api.local_url("").rstrip("/")
    return run_test(base, config.api.token, args.device_id, args.wait, sys.stdout, sys.stderr, args.json,
                    client_context(config.api))


def add_parser(sub: Any) -> None:
    from edgehub.clihelp import command as help_command

    p = help_command(sub, "device", "the devices of the running hub", "Tools for the devices the running hub drives.",
                     ["edgehub device test sim-scale-1 --config config/dev.toml"])
    device_sub = p.add_subparsers(dest="device_command", required=True, metavar="TOOL")
    c = help_command(
        device_sub, "test", "field-check one device in the store through the running hub (scale: one weighing; "
                            "scanner: one scan; printer: a test page and its status bytes)",
        "Field-check one device where it stands, inside the running hub, on the driver it holds open: each step "
        "prints what came back and the bytes the device sent, and at the end the [[device]] keys the check "
        "points to (docs/devices.md, the field check). Exit 0 passed, 1 failed or the hub could not be asked, "
        "2 no such device or bad arguments.",
        ["edgehub device test mt8217-0042                          # on a box: put 1.000 kg on the scale first",
         "edgehub device test honeywell-21034b0042 --wait 60      # then scan a barcode within 60 s",
         "edgehub device test sim-scale-1 --config config/dev.toml --json   # beside make run"])
    c.add_argument("device_id", metavar="ID", help="the device's id, as the box's page or `edgehub discover` shows it")
    c.add_argument("--config", default=BOX_CONFIG,
                   help=f"path to edgehub.toml, for the API address and token (default: the box's, {BOX_CONFIG})")
    c.add_argument("--wait", type=float, default=DEFAULT_WAIT_S,
                   help=f"seconds a scanner's check waits for a scan (default {DEFAULT_WAIT_S:g})")
    c.add_argument("--json", action="store_true", help="print the check as JSON")
    c.set_defaults(func=command)
