"""``edgehub pair``: the installer's tools for a box of a pair (docs/pair.md).

- ``write-config``: keepalived's config and heartbeat check from ``[pair]`` (provisioning runs
  it; run it again after changing ``[pair]``).
- ``status``: what this box is in the pair, read from the running daemon.
- ``resync``: on a standby that refuses the serving box's journal as diverged, set this box's
  journal aside (kept, never deleted) and take a fresh copy. Nothing of the serving box's is
  touched; what this box's journal held is in the set-aside file for support.
"""

from __future__ import annotations

import argparse
import json
import sys
import urllib.error
import urllib.request
from typing import Any

from edgehub.errors import EdgehubError

BOX_CONFIG = "/etc/edgehub/edgehub.toml"


def add_parser(sub: Any) -> None:
    from edgehub.clihelp import command as help_command

    p = help_command(
        sub, "pair", "a box of a pair: keepalived's config, this box's part, a refused standby's resync",
        "A store may run two boxes: one serves, the other holds a copy of every acked order and takes the "
        "store's floating address over when the first dies (docs/pair.md). These are the installer's tools "
        "on a box with [pair] in its config.",
        ["edgehub pair status", "sudo edgehub pair write-config", "sudo edgehub pair resync --yes"],
    )
    pair_sub = p.add_subparsers(dest="pair_cmd", required=True)
    c = help_command(
        pair_sub, "write-config", "write keepalived.conf and its heartbeat check from [pair]",
        "Write keepalived's config (the floating address, the adverts to the other box, the files the hub "
        "tells keepalived its fitness and priority through) and the heartbeat check keepalived runs, from "
        "[pair] of the config. Provisioning runs it; run it again after changing [pair], then "
        "`systemctl restart keepalived`.",
        ["sudo edgehub pair write-config", "edgehub pair write-config --config box-a.toml --script-user root"],
    )
    c.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the box's edgehub.toml")
    c.add_argument("--script-user", default="root", metavar="USER", help="the user keepalived runs the check as")
    c.set_defaults(func=_write_config)
    c = help_command(
        pair_sub, "status", "this box's part in the pair, from the running daemon",
        "What this box is in the pair (serving or standby), whether every acked order is on both boxes (or, "
        "loudly, since when on one only), what the standby holds or what this box follows, and why the other "
        "box is refused if it is. Read from the running edgehub through its API.",
        ["edgehub pair status", "edgehub pair status --json"],
    )
    c.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the box's edgehub.toml")
    c.add_argument("--json", action="store_true", help="print the status's pair section as JSON")
    c.set_defaults(func=_status)
    c = help_command(
        pair_sub, "resync", "on the standby: set this journal aside and take a fresh copy",
        "On a standby that refuses the serving box's journal as diverged (docs/pair.md, Refused): set this "
        "box's journal aside (kept as journal.sqlite.resync-<time>, never deleted) and take a fresh copy of "
        "the serving box's. Nothing of the serving box's journal is touched. Refused on the box that serves.",
        ["sudo edgehub pair resync", "sudo edgehub pair resync --yes"],
    )
    c.add_argument("--config", default=BOX_CONFIG, metavar="FILE", help="the box's edgehub.toml")
    c.add_argument("--yes", action="store_true", help="do not ask")
    c.set_defaults(func=_resync)


def _load(path: str) -> Any:
    from edgehub.config import load_config

    config = load_config(path)
    if config.pair is None:
        raise EdgehubError(f"{path}: no [pair]: this box is not one of a pair")
    return config


def _write_config(args: argparse.Namespace) -> int:
    from edgehub.pair.vrrp import write_config

    conf, script = write_config(_load(args.config), args.script_user)
    print(f"keepalived config  {conf}\nheartbeat check    {script}")
    return 0


def _request(config: Any, method: str, path: str) -> tuple[int, dict[str, Any]]:
    from edgehub.api.tls import client_context

    request = urllib.request.Request(config.api.local_url(path), method=method,
                                     headers={"Authorization": f"Bearer {config.api.token}"})
    try:
        with urllib.request.urlopen(request, timeout=30, context=client_context(config.api)) as response:
            return response.status, json.loads(response.read() or b"{}")
    except urllib.error.HTTPError as exc:
        body = exc.read()
        try:
            return exc.code, json.loads(body)
        except ValueError:
            return exc.code, {"error": body.decode(errors="replace")}


def _status(args: argparse.Namespace) -> int:
    config = _load(args.config)
    try:
        code, doc = _request(config, "GET", "/api/v1/status")
    except OSError as exc:
        print(f"edgehub does not answer on {config.api.listen}: {exc}", file=sys.stderr)
        return 1
    pair = doc.get("pair") if code == 200 else None
    if not isinstance(pair, dict):
        print(f"no pair state from the daemon (HTTP {code}): {doc.get('error', '')}", file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(pair, indent=2))
        return 0
    print(f"box {pair.get('box')}: {pair.get('role')}; floating address {pair.get('address')} "
          f"{'here' if pair.get('holds_address') else 'on the other box'}")
    if pair.get("role") == "primary":
        standby = pair.get("standby") or {}
        copies = pair.get("copies")
        print(f"copies: {copies}" + ("" if copies == 2 else f" (ONE since {pair.get('one_copy_since')}: "
                                                             f"{pair.get('one_copy_reason')})"))
        print(f"standby: {standby.get('box') or '-'} {standby.get('state')} at record {standby.get('acked_seq')} "
              f"of {pair.get('seq')}")
    else:
        following = pair.get("following") or {}
        print(f"following {following.get('primary') or pair.get('peer')}: {following.get('state')} at record "
              f"{following.get('seq')}")
    refused = (pair.get("refused") or {}).get("reason")
    if refused:
        print(f"REFUSED: {refused}")
    return 0


def _resync(args: argparse.Namespace) -> int:
    config = _load(args.config)
    if not args.yes:
        if not sys.stdin.isatty():
            print("edgehub pair resync: give --yes (no terminal to ask on)", file=sys.stderr)
            return 2
        answer = input(f"Set this box's journal {config.journal.path} aside and copy the serving box's? [y/N] ")
        if answer.strip().lower() not in ("y", "yes"):
            return 1
    try:
        code, doc = _request(config, "POST", "/api/v1/pair/resync")
    except OSError as exc:
        print(f"edgehub does not answer on {config.api.listen}: {exc}", file=sys.stderr)
        return 1
    if code != 200:
        print(f"resync refused (HTTP {code}): {doc.get('error', '')}", file=sys.stderr)
        return 1
    print(f"journal set aside as {doc.get('set_aside')}; taking a copy of the serving box's")
    return 0

