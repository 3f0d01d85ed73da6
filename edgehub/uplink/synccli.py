"""``edgehub sync``: send everything in the outbox to the cloud now, through the running hub.

Asks the hub's API (``POST /api/v1/sync``, then ``GET`` for progress), shows a progress bar on a
terminal and one plain line per second otherwise (logs, ssh without a tty), then the
reconciliation: per stream, what the store counts against what the cloud reports. Exit 0 when
everything went and the cloud agrees, 1 when it did not (or the hub cannot be reached), 2 for
bad arguments or config.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from edgehub.errors import EdgehubError


class SyncFailed(EdgehubError):
    """The hub could not be asked, or answered with an error."""


class HubApi:
    def __init__(self, base: str, token: str, timeout: float = 10.0) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout

    def call(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                body = {}
            raise SyncFailed(f"{method} {self.base}{path}: HTTP {exc.code}: "
                             f"{body.get('error', exc.reason)}") from None
        except (OSError, ValueError) as exc:
            raise SyncFailed(f"cannot reach the hub at {self.base} ({exc}); is `edgehub run` running?") from exc


def _bar(p: dict[str, Any], width: int = 30) -> str:
    total, sent = int(p.get("total") or 0), int(p.get("sent") or 0)
    done = width if total == 0 else min(width, width * sent // total)
    eta = p.get("eta_s")
    return (f"[{'#' * done}{'.' * (width - done)}] {sent}/{total} rows  {p.get('rate_per_s', 0):g}/s"
            f"{f'  eta {eta:g} s' if isinstance(eta, int | float) and eta else ''}  link {p.get('link')}")


def _line(p: dict[str, Any]) -> str:
    eta = p.get("eta_s")
    return (f"sync: {p.get('sent', 0)}/{p.get('total', 0)} rows sent, {p.get('remaining', 0)} to go, "
            f"{p.get('rate_per_s', 0):g}/s{f', eta {eta:g} s' if isinstance(eta, int | float) else ''}, "
            f"link {p.get('link')}")


def reconcile_report(result: dict[str, Any] | None) -> list[str]:
    if not result:
        return ["reconciliation: no answer yet (the cloud answers once the link is up)"]
    lines = [f"reconciliation: {result.get('status')}" + (f" ({result['error']})" if result.get("error") else "")]
    streams = result.get("streams") or {}
    if streams:
        lines.append(f"  {'stream':<10} {'status':<14} {'acked':>9} {'cloud':>9} {'pending':>9} "
                     f"{'last acked seq':>15} {'cloud last seq':>15}")
        for name, s in sorted(streams.items()):
            lines.append(f"  {name:<10} {s['status']:<14} {s['store_acked']:>9} {s['cloud_count']:>9} "
                         f"{s['store_pending']:>9} {s['store_last_acked_stream_seq']:>15} "
                         f"{s['cloud_last_stream_seq']:>15}")
    return lines


def run_sync(api: HubApi, timeout: float, out: TextIO, tty: bool, as_json: bool = False,
             poll_s: float = 0.2) -> int:
    _, progress = api.call("POST", "/api/v1/sync")
    deadline = time.monotonic() + timeout
    last_line = 0.0
    while progress.get("state") != "done":
        if time.monotonic() > deadline:
            if tty and not as_json:
                out.write("\n")
            print(f"sync: not finished within {timeout:g} s: {progress.get('remaining')} rows still "
                  f"waiting, link {progress.get('link')}", file=out)
            return 1
        now = time.monotonic()
        if not as_json:
            if tty:
                out.write("\r" + _bar(progress))
                out.flush()
            elif now - last_line >= 1.0:
                print(_line(progress), file=out, flush=True)
                last_line = now
        time.sleep(poll_s)
        _, progress = api.call("GET", "/api/v1/sync")
    # The reconciliation follows the drain: give it a moment to report.
    wait_until = time.monotonic() + min(10.0, max(0.0, deadline - time.monotonic()))
    while progress.get("reconcile") is None and time.monotonic() < wait_until:
        time.sleep(poll_s)
        _, progress = api.call("GET", "/api/v1/sync")
    result = progress.get("reconcile")
    if as_json:
        print(json.dumps(progress), file=out)
    else:
        if tty:
            out.write("\r" + _bar(progress) + "\n")
        print(f"sync: done, {progress.get('total')} rows up to seq {progress.get('target_seq')} "
              f"acknowledged by the cloud", file=out)
        for line in reconcile_report(result):
            print(line, file=out)
    return 0 if result is not None and result.get("status") == "ok" else 1


def command(args: argparse.Namespace) -> int:
    from edgehub.config import load_config

    config = load_config(args.config)
    api = HubApi(config.api.listen.local_url(""), config.api.token)
    try:
        return run_sync(api, args.timeout, sys.stdout, sys.stdout.isatty(), args.json)
    except SyncFailed as exc:
        print(f"edgehub sync: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: Any) -> None:
    p = sub.add_parser("sync", help="send the outbox to the cloud now and reconcile (through the running hub)")
    p.add_argument("--config", required=True, help="path to edgehub.toml (for the API address and token)")
    p.add_argument("--timeout", type=float, default=600.0, help="seconds to wait for the drain (default 600)")
    p.add_argument("--json", action="store_true", help="print the final progress and reconciliation as JSON")
    p.set_defaults(func=command)
