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
    p = sub.add_parser("pair", help="a box of a pair: keepalived config, state, resync (docs/pair.md)")
    pair_sub = p.add_subparsers(dest="pair_cmd", required=True)
    c = pair_sub.add_parser("write-config", help="write keepalived.conf and its heartbeat check from [pair]")
    c.add_argument("--config", default=BOX_CONFIG)
    c.add_argument("--script-user", default="root", help="the user keepalived runs the check as")
    c.set_defaults(func=_write_config)
    c = pair_sub.add_parser("status", help="this box's part in the pair, from the running daemon")
    c.add_argument("--config", default=BOX_CONFIG)
    c.add_argument("--json", action="store_true")
    c.set_defaults(func=_status)
    c = pair_sub.add_parser("resync", help="on the standby: set this journal aside and take a fresh copy")
    c.add_argument("--config", default=BOX_CONFIG)
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

