"""``edgehub sync``: send everything in the outbox to the cloud now, through the running hub.

Asks the hub's API (``POST /api/v1/sync``, then ``GET`` for progress), shows a progress bar on a
terminal and one plain line per second otherwise (logs, ssh without a tty), then the
reconciliation: per stream, what the store counts against what the cloud reports. While the
hub has no cloud link (WAN down) it says so, once each time the link is found down, and waits for
it up to ``--timeout``. Exit 0 when everything went and the cloud agrees, 1 when it did not (not
done within the timeout, link or not; a mismatch; the hub cannot be reached), 2 for bad
arguments or config.
"""

from __future__ import annotations

import argparse
import json
import shutil
import ssl
import sys
import time
import urllib.error
import urllib.request
from typing import Any, TextIO

from edgehub.errors import EdgehubError


class SyncFailed(EdgehubError):
    """The hub could not be asked, or answered with an error."""


class HubApi:
    def __init__(self, base: str, token: str, timeout: float = 10.0, context: ssl.SSLContext | None = None) -> None:
        self.base = base.rstrip("/")
        self.token = token
        self.timeout = timeout
        self.context = context  # the box's own certificate, when its API is HTTPS

    def call(self, method: str, path: str) -> tuple[int, dict[str, Any]]:
        request = urllib.request.Request(f"{self.base}{path}", method=method,
                                         headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout, context=self.context) as response:
                return response.status, json.load(response)
        except urllib.error.HTTPError as exc:
            try:
                body = json.load(exc)
            except ValueError:
                body = {}
            raise SyncFailed(f"{method} {self.base}{path}: HTTP {exc.code}: "
                             f"{body.get('error', exc.reason)}") from None
        except (OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            if isinstance(reason, ConnectionRefusedError):
                reason = "connection refused"
            raise SyncFailed(f"cannot reach the hub at {self.base} ({reason}); is `edgehub run` running? "
                             "(make run in a checkout; systemctl start edgehub on a box)") from exc


WAITING = "waiting_for_link"
# While the link is down a plain progress line would say the same thing every second.
WAITING_LINE_EVERY_S = 10.0
# "Waiting for the cloud link" is said once the link has been down this long: "sync now" skips
# the reconnect backoff, so a link that was merely between two tries is up a moment later.
WAITING_GRACE_S = 1.0


def _bar(p: dict[str, Any], columns: int = 80) -> str:
    """The progress bar, redrawn in place: it must fit the terminal (``columns``), or each redraw
    wraps and scrolls. The bar shrinks first (30 to 10 marks), then the least useful parts go."""
    total, sent = int(p.get("total") or 0), int(p.get("sent") or 0)
    eta = p.get("eta_s")
    counts = f"{sent}/{total} rows"
    if p.get("state") == WAITING:
        tails = [f"  waiting for the cloud link (link {p.get('link')})", "  waiting for the cloud link",
                 "  waiting for the link", "  waiting", ""]
    else:
        rate = f"  {p.get('rate_per_s', 0):g}/s"
        eta_text = f"  eta {eta:g} s" if isinstance(eta, int | float) and eta else ""
        link = f"  link {p.get('link')}"
        tails = [rate + eta_text + link, rate + eta_text, eta_text or rate, ""]
    room = columns - 1
    for tail in tails:
        width = min(30, room - len(counts) - len(tail) - 3)
        if width >= 10:
            break
    width = max(width, 10)
    done = width if total == 0 else min(width, width * sent // total)
    return f"[{'#' * done}{'.' * (width - done)}] {counts}{tail}"[:room]


def _line(p: dict[str, Any]) -> str:
    eta = p.get("eta_s")
    head = f"sync: {p.get('sent', 0)}/{p.get('total', 0)} rows sent, {p.get('remaining', 0)} to go, "
    if p.get("state") == WAITING:
        return f"{head}waiting for the cloud link (link {p.get('link')})"
    return (f"{head}{p.get('rate_per_s', 0):g}/s{f', eta {eta:g} s' if isinstance(eta, int | float) else ''}, "
            f"link {p.get('link')}")


def _link_down(p: dict[str, Any]) -> str:
    """Why nothing moves: the hub has no cloud link (since when, and the last error)."""
    since = f" since {p['link_since']}" if p.get("link_since") else ""
    error = f" ({p['link_error']})" if p.get("link_error") else ""
    return f"the hub has no cloud link (link {p.get('link')}{since}){error}"


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
             poll_s: float = 0.2, columns: int = 80) -> int:
    _, progress = api.call("POST", "/api/v1/sync")
    deadline = time.monotonic() + timeout
    last_line = float("-inf")
    waiting_since: float | None = None  # the link was found down then, and still is
    told = False  # ... and the user was told so
    bar_drawn, bar_width = False, 0
    while progress.get("state") != "done":
        if time.monotonic() > deadline:
            if bar_drawn:
                out.write("\n")
            why = (f"; {_link_down(progress)}" if progress.get("state") == WAITING
                   else f", link {progress.get('link')}")
            print(f"sync: not finished within {timeout:g} s: {progress.get('remaining')} rows still "
                  f"waiting{why}", file=out)
            return 1
        now = time.monotonic()
        if not as_json:
            waiting = progress.get("state") == WAITING
            if not waiting:
                waiting_since, told = None, False
            elif waiting_since is None:
                waiting_since = now
            elif not told and now - waiting_since >= WAITING_GRACE_S:
                if bar_drawn:
                    out.write("\n")
                    bar_drawn, bar_width = False, 0
                print(f"sync: waiting for the cloud link: {_link_down(progress)}; the rows go as soon "
                      f"as it is up (giving up {max(0.0, deadline - now):.0f} s from now)", file=out, flush=True)
                told, last_line = True, now
            if tty:
                bar = _bar(progress, columns)
                out.write("\r" + bar.ljust(bar_width))  # over all of a longer bar before it
                out.flush()
                bar_drawn, bar_width = True, len(bar)
            elif now - last_line >= (WAITING_LINE_EVERY_S if waiting else 1.0):
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
            out.write("\r" + _bar(progress, columns).ljust(bar_width) + "\n")
        print(f"sync: done, {progress.get('total')} rows up to seq {progress.get('target_seq')} "
              f"acknowledged by the cloud", file=out)
        for line in reconcile_report(result):
            print(line, file=out)
    return 0 if result is not None and result.get("status") == "ok" else 1


def command(args: argparse.Namespace) -> int:
    from edgehub.config import load_config

    config = load_config(args.config)
    from edgehub.api.tls import client_context

    api = HubApi(config.api.local_url(""), config.api.token, context=client_context(config.api))
    try:
        return run_sync(api, args.timeout, sys.stdout, sys.stdout.isatty(), args.json,
                        columns=shutil.get_terminal_size().columns)
    except SyncFailed as exc:
        print(f"edgehub sync: {exc}", file=sys.stderr)
        return 1


def add_parser(sub: Any) -> None:
    from edgehub.clihelp import command as help_command

    p = help_command(
        sub, "sync", "send the outbox to the cloud now and reconcile (through the running hub)",
        "Ask the running hub to send everything in its outbox to the cloud now, show the progress (a bar "
        "that fits the terminal, or a line a second when not on one), then the reconciliation: per "
        "stream, what the store counts against what the cloud holds. While the hub has no cloud link it "
        "says so and waits up to --timeout. Exit 0 when everything went and the cloud agrees, 1 when "
        "not, 2 for a bad config.",
        ["edgehub sync                              # on a provisioned box",
         "edgehub sync --config config/dev.toml     # make run's simulated cloud",
         "edgehub sync --timeout 60 --json"],
    )
    p.add_argument("--config", default="/etc/edgehub/edgehub.toml", metavar="FILE",
                   help="the edgehub.toml the hub runs with, for its API address and token")
    p.add_argument("--timeout", type=float, default=600.0, metavar="SECONDS", help="seconds to wait for the drain")
    p.add_argument("--json", action="store_true", help="print the final progress and reconciliation as JSON")
    p.set_defaults(func=command)
