"""Support bundles: one tar.gz with what support needs to understand a box, and no secret in it.

Inside: recent logs (journald when it has them, else the hub's in-memory ring of recent lines),
the config, devices, roles with their history, the outbox summary, the full status, the
self-check, and each device's last field check with the bytes it saw (``field_checks.json``).
Secrets are removed twice: by key name (``token``, ``password``, ``pin``, ``key``, ``secret``,
``credential`` ...) in the config text, and then by value — every file in the
bundle is scanned for every secret the config holds (also JSON-escaped and URL-encoded), so a
password that leaked into a log line or an error message is caught too.
"""

from __future__ import annotations

import dataclasses
import io
import json
import re
import shutil
import sqlite3
import subprocess
import tarfile
import time
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from edgehub import __version__
from edgehub.config import Config
from edgehub.devices.tables import field_check_results
from edgehub.doctor import DaemonUnreadable, answer_problem, api_address, connect_problem, daemon_check
from edgehub.errors import EdgehubError
from edgehub.store.outbox import waiting_by_stream

_T = TypeVar("_T")

REDACTED = "[REDACTED]"
# Whole words only for the short ones: "pin" must not catch "pinpad" nor "key" "keepalive".
# A payment gateway's merchant application id (payments.qr.app_id) is kept out of bundles too.
SECRET_NAME = re.compile(r"(token|passw|secret|credential|apikey|(^|_)pin($|_)|(^|_)psk($|_)|(^|_)key($|_)"
                         r"|^app_id$)", re.IGNORECASE)
_TOML_SECRET_LINE = re.compile(
    r"""^(?P<head>\s*(?P<key>[A-Za-z0-9_-]+)\s*=\s*)(?P<value>"(?:[^"\\]|\\.)*"|'[^']*'|[^#\s]+)(?P<tail>.*)$"""
)
MAX_LOG_LINES = 5000


def _is_secret_name(name: str) -> bool:
    return bool(SECRET_NAME.search(name))


def config_secrets(config: Config) -> set[str]:
    """Every secret value in the config: fields with secret-looking names, at any depth.

    For ``*_file`` fields holding a path (a TLS key, a cloud credential file) the file's content
    counts as a secret too.
    """
    found: set[str] = set()

    def walk(value: Any, name: str) -> None:
        if dataclasses.is_dataclass(value) and not isinstance(value, type):
            for f in dataclasses.fields(value):
                walk(getattr(value, f.name), f.name)
        elif isinstance(value, Mapping):
            for key, item in value.items():
                walk(item, str(key) if not _is_secret_name(name) else name)
        elif isinstance(value, list | tuple | set | frozenset):
            for item in value:
                walk(item, name)
        elif _is_secret_name(name):
            if isinstance(value, str | bytes) and value:
                found.add(value.decode(errors="replace") if isinstance(value, bytes) else value)
            elif isinstance(value, Path) and value.is_file() and value.stat().st_size < 64 * 1024:
                text = value.read_text(errors="replace").strip()
                if text:
                    found.add(text)

    walk(config, "")
    return found


def redact_config_text(text: str) -> str:
    """The TOML text with every secret-named key's value replaced (comments and layout kept)."""
    out = []
    for line in text.splitlines(keepends=True):
        m = _TOML_SECRET_LINE.match(line.rstrip("\n"))
        if m and _is_secret_name(m.group("key")) and not m.group("key").endswith("_file"):
            newline = "\n" if line.endswith("\n") else ""
            line = f'{m.group("head")}"{REDACTED}"{m.group("tail")}{newline}'
        out.append(line)
    return "".join(out)


def _forms(secret: str) -> set[bytes]:
    """The ways a secret can be spelled in a file: raw, JSON-escaped, URL-encoded."""
    forms = {secret, json.dumps(secret)[1:-1], json.dumps(secret, ensure_ascii=False)[1:-1],
             urllib.parse.quote(secret, safe=""), urllib.parse.quote_plus(secret)}
    return {f.encode() for f in forms if f}


def redact(files: Mapping[str, bytes], secrets: Iterable[str]) -> dict[str, bytes]:
    """Replace every spelling of every secret in every file; longest first, so none survives in part."""
    patterns = sorted({form for s in secrets if s for form in _forms(s)}, key=len, reverse=True)
    out = {}
    for name, data in files.items():
        for pattern in patterns:
            data = data.replace(pattern, REDACTED.encode())
        out[name] = data
    return out


def journal_logs(unit: str = "edgehub", lines: int = MAX_LOG_LINES) -> str | None:
    """Recent lines of the unit from journald, or None where journald has nothing (dev, tests)."""
    if shutil.which("journalctl") is None:
        return None
    try:
        result = subprocess.run(["journalctl", "-u", unit, "-n", str(lines), "--no-pager", "-o", "short-iso"],
                                capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = result.stdout
    if result.returncode != 0 or not [ln for ln in text.splitlines() if ln and not ln.startswith("-- ")]:
        return None
    return text


def _json(doc: Any) -> bytes:
    return (json.dumps(doc, indent=2, sort_keys=True, default=str, ensure_ascii=False) + "\n").encode()


def collect(config: Config, *, status: Mapping[str, Any] | None, doctor: Mapping[str, Any] | None,
            outbox: Mapping[str, Any] | None, recent_log: str | None, broker_log: Iterable[str] = (),
            role_history: Mapping[str, Any] | None = None, clock: float | None = None,
            daemon_note: str | None = None, field_checks: list[Any] | None = None) -> dict[str, bytes]:
    """The bundle's files (before redaction). Blocking: reads the config and journald.

    ``daemon_note`` says why there is no status when it was not read from the hub (not running,
    or running but refusing the token); without one, no status means the hub was not running.
    """
    created = clock if clock is not None else time.time()
    files: dict[str, bytes] = {}
    try:
        files["config/edgehub.toml"] = redact_config_text(config.source.read_text(encoding="utf-8")).encode()
    except (OSError, UnicodeDecodeError) as exc:
        files["config/edgehub.toml"] = f"# could not read {config.source}: {exc}\n".encode()
    status = dict(status or {})
    note = daemon_note or "the hub was not running when this bundle was made"
    files["status.json"] = _json(status or {"note": note})
    devices = status.get("devices")
    files["devices.json"] = _json(devices if devices is not None else {"note": "no device registry"})
    roles = status.get("roles")
    files["roles.json"] = _json({"roles": roles if roles is not None else "not configured",
                                 "history": role_history})
    files["outbox.json"] = _json({"outbox": outbox, "uplink": status.get("uplink")})
    files["field_checks.json"] = _json(field_checks if field_checks is not None
                                       else {"note": "the journal holds no field checks, or cannot be read"})
    if doctor is not None:
        files["doctor.json"] = _json(doctor)
    journal = journal_logs()
    if journal is not None:
        files["logs/journal.log"] = journal.encode()
    if recent_log is not None:
        files["logs/recent.log"] = recent_log.encode()
    broker_lines = list(broker_log)
    if broker_lines:
        files["logs/mosquitto.log"] = ("\n".join(broker_lines) + "\n").encode()
    files["README.txt"] = (
        f"edgehub support bundle\nstore: {config.store.id}\nversion: {__version__}\n"
        f"created: {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime(created))}\n"
        f"logs: {'journald' if journal is not None else 'in-memory ring of recent lines'}\n"
        f"{f'hub: {daemon_note}{chr(10)}' if daemon_note else ''}"
        f"Secrets (tokens, passwords, PINs, keys) are replaced by {REDACTED}.\n"
    ).encode()
    return files


def pack(files: Mapping[str, bytes], prefix: str, clock: float | None = None) -> bytes:
    """A tar.gz of ``files`` under ``prefix/``, built in memory (bundles are small)."""
    buffer = io.BytesIO()
    mtime = int(clock if clock is not None else time.time())
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for name, data in sorted(files.items()):
            info = tarfile.TarInfo(f"{prefix}/{name}")
            info.size = len(data)
            info.mtime = mtime
            info.mode = 0o600
            tar.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


def bundle_name(config: Config, clock: float | None = None) -> str:
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(clock if clock is not None else time.time()))
    return f"edgehub-{config.store.id}-{stamp}"


def build(config: Config, files: Mapping[str, bytes], clock: float | None = None) -> tuple[str, bytes]:
    """Redact and pack: returns (file name, tar.gz bytes)."""
    name = bundle_name(config, clock)
    return f"{name}.tar.gz", pack(redact(files, config_secrets(config)), name, clock)


def _read_journal(config: Config, read: Callable[[sqlite3.Connection], _T]) -> _T | None:
    """``read`` on the journal opened read-only (the hub is not running); None when there is no
    journal. Raises ``sqlite3.Error`` when it cannot be read."""
    path = config.journal.path
    if not path.exists():
        return None
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
    try:
        return read(conn)
    finally:
        conn.close()


def _outbox_summary(config: Config, now: float) -> dict[str, Any] | None:
    try:
        rows = _read_journal(config, waiting_by_stream)
    except sqlite3.Error as exc:
        return {"error": f"cannot read the journal: {exc}"}
    if rows is None:
        return None
    streams = [{"stream": s, "depth": n, "oldest_age_s": round(max(0.0, now - oldest), 1)}
               for s, n, oldest in rows]
    return {"streams": streams, "total": sum(s["depth"] for s in streams)}


def _field_checks(config: Config) -> list[Any] | None:
    """Every device's last field check, read from the journal (the hub is not running)."""
    try:
        rows = _read_journal(config, field_check_results)
    except sqlite3.Error:
        return None  # an older journal without the table, or unreadable
    if rows is None:
        return None
    checks: list[Any] = []
    for device_id, text in rows:
        try:
            checks.append(json.loads(text))
        except ValueError as exc:
            checks.append({"device_id": device_id, "unreadable": str(exc)})
    return checks


async def _from_daemon(config: Config) -> tuple[str, bytes] | DaemonUnreadable:
    """The running daemon's own bundle (it has the devices, roles and recent log lines), or why
    it could not be had: nothing answers, or the daemon refused (401 wrong token, 429 ...)."""
    import aiohttp

    from edgehub.api.tls import client_context

    url = config.api.local_url("/api/v1/bundle")
    address = api_address(config)
    try:
        connector = aiohttp.TCPConnector(ssl=client_context(config.api) or False)
        async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60), connector=connector) as http:
            async with http.get(url, headers={"Authorization": f"Bearer {config.api.token}"}) as response:
                body = await response.read()
                if response.status != 200:
                    return answer_problem(address, response.status, body, response.headers)
                disposition = response.headers.get("Content-Disposition", "")
                name = disposition.partition('filename="')[2].rstrip('"') or f"{bundle_name(config)}.tar.gz"
                return name, body
    except (aiohttp.ClientError, TimeoutError, OSError) as exc:
        return connect_problem(address, exc)


def why_not_from_daemon(config: Config, problem: DaemonUnreadable) -> tuple[str, str]:
    """Why the bundle was made without the daemon, and what to do (the doctor's daemon check):
    not running is told apart from running but refusing the token or rate-limiting."""
    check = daemon_check(config, None, problem)
    if not problem.answered:
        return f"edgehub is not answering on {problem.address}", check.action
    return check.message, check.action


def default_folder(config: Config) -> Path:
    """Where ``edgehub bundle`` puts a bundle without -o: beside the box's data, never the
    current folder (a bundle dropped into a checkout is an untracked file full of logs)."""
    return config.paths.data_dir / "bundles"


def command(config_path: str, output: str | None = None) -> int:
    """``edgehub bundle --config FILE [-o FILE]``: from the daemon if it runs, else made here."""
    import asyncio
    import sys

    from edgehub.config import load_config
    from edgehub.doctor import Doctor, api_status_reader, as_json, failing_reader

    config = load_config(config_path)
    made = asyncio.run(_from_daemon(config))
    source, hint = "the running edgehub", ""
    if isinstance(made, DaemonUnreadable):
        note, hint = why_not_from_daemon(config, made)
        source = f"this command ({note}: no device states, no in-memory log)"
        # A refused token is not asked again: each try counts against this address's allowance.
        reader = failing_reader(made) if made.refused_login else api_status_reader(config)
        doctor = Doctor(config, read_status=reader, daemon_expected=True)
        checks = asyncio.run(doctor.run())
        files = collect(config, status=None, doctor=as_json(checks),
                        outbox=_outbox_summary(config, time.time()), recent_log=None, daemon_note=note,
                        field_checks=_field_checks(config))
        name, data = build(config, files)
    else:
        name, data = made
        # The daemon redacted it already; a second pass costs little and guards an older daemon.
        data = _redact_archive(data, config)
    target = Path(output) if output else default_folder(config) / name
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
    except OSError as exc:
        raise EdgehubError(f"cannot write the bundle to {target}: {exc.strerror or exc}; "
                           "give another place with -o FILE") from exc
    sys.stdout.write(f"wrote {target.resolve()} ({len(data)} bytes) from {source}\n")
    if hint:
        sys.stdout.write(f"  -> {hint}\n")
    return 0


def _redact_archive(data: bytes, config: Config) -> bytes:
    files: dict[str, bytes] = {}
    prefix = ""
    with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile():
                handle = tar.extractfile(member)
                if handle is not None:
                    prefix, _, rest = member.name.partition("/")
                    files[rest] = handle.read()
    return pack(redact(files, config_secrets(config)), prefix or bundle_name(config))
