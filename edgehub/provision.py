"""First-boot provisioning of a store box: ``edgehub provision``.

Reads a small provisioning TOML (from the FAT boot partition, or asked for on a terminal),
checks it completely, then makes the box ready to run:

- generates the secrets the box needs (API token, the hub's and each terminal's MQTT password,
  each kitchen screen's screen secret) into files of mode 0600 under ``CONFIG_DIR/secrets``, and
  the box's HTTPS key and self-signed certificate under ``CONFIG_DIR/tls``; existing ones are kept,
- takes the one-time cloud enrollment token (and any cloud password) into a secret file and out
  of the boot partition file, which any laptop can read, as soon as it is stored,
- writes ``CONFIG_DIR/edgehub.toml`` atomically, after checking it with the daemon's own loader,
- writes Mosquitto's config, password file and ACL (``edgehub.broker.write_config``) and the
  store time server's chrony file (``edgehub.clock.write_config``),
- leaves a marker (``CONFIG_DIR/provisioned.json``) naming the store the box belongs to.

Running it again with the same file changes nothing: same config, same secrets, broker files
untouched. That is what lets the systemd unit run it on every boot while the file is there, and
an installer add a terminal by editing the file and rebooting.

Exit codes: 0 ok, 1 failure while writing (message says what), 2 bad input (every problem listed
as ``FILE: key: what is wrong``).
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import fcntl
import grp
import hashlib
import hmac
import ipaddress
import json
import os
import pwd
import re
import secrets
import socket
import struct
import sys
import tomllib
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from edgehub.config import (
    ID_RE,
    RESERVED_PREFIX,
    Address,
    addresses_overlap,
    control_char_problem,
    load_config,
    parse_address,
    role_kind,
    role_name_problem,
)
from edgehub.errors import ConfigError, EdgehubError
from edgehub.files import atomic_write

DEFAULT_CONFIG_DIR = Path("/etc/edgehub")
DEFAULT_STATE_DIR = Path("/var/lib/edgehub")
SERVICE_USER = "edgehub"
BROKER_GROUP = "mosquitto"
HUB_USER = "edgehub-hub"
MARKER = "provisioned.json"
TERMINAL_KINDS = ("pos", "handheld", "kds", "kiosk", "pager", "display")
SCREEN_KINDS = ("kds", "display")  # kinds with a page on the box, opened with a screen secret
# TLS only: the enrollment token is the box's way into the chain's cloud (mqtt:// is for tests,
# through the config file, never through provisioning).
CLOUD_SCHEMES = ("mqtts",)
MAX_FILE_BYTES = 64 * 1024  # a provisioning file is a few hundred bytes
# Keys of the boot file's [cloud] table that are secrets: taken out of the file once stored.
CLOUD_SECRET_KEYS = ("enrollment_token", "password")
# 32 random bytes, URL-safe: no quoting trouble in TOML, MQTT clients or HTTP headers.
SECRET_BYTES = 32
# The values that edgehub-provision.toml.example (next to the real file on the boot partition)
# ships with and an installer must replace; the example marks each with "# placeholder". A copy
# that was not filled in is refused like any bad input: provisioning it would store the
# placeholder as the real enrollment token (and take it out of the file) and lock the box to a
# store that is not its own. tests/box/test_provision.py reads the example to keep the two in step.
PLACEHOLDERS: Mapping[str, str] = {
    "store.id": "your-store-id",
    "cloud.url": "mqtts://cloud.example.com:8883",
    "cloud.enrollment_token": "paste-the-one-time-token-from-the-cloud-console",
}

INPUT_KEYS: Mapping[str, frozenset[str]] = {
    "store": frozenset({"id", "name"}),
    "cloud": frozenset({"url", "username", *CLOUD_SECRET_KEYS}),
    "api": frozenset({"listen"}),
    "broker": frozenset({"lan_listen"}),
    # One box of a pair (docs/pair.md): the same table on both boxes but for box, this_box,
    # other_box and prefer; the same secret on both.
    "pair": frozenset({"box", "address", "this_box", "other_box", "interface", "router_id", "prefer", "secret"}),
}
PAIR_PORT = 7411
PAIR_SECRET_FILE = "pair-secret"


class ProvisionError(EdgehubError):
    """The provisioning input is wrong; ``problems`` are ``FILE: key: what is wrong`` lines."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class Terminal:
    id: str
    kind: str
    stations: tuple[str, ...] | None = None  # kds: the stations it shows and drives
    pinpad_roles: tuple[str, ...] | None = None  # pos/kiosk: where it may start payments


@dataclass(frozen=True)
class Request:
    """What the installer asked for, checked."""

    store_id: str
    store_name: str
    terminals: tuple[Terminal, ...]
    api_listen: str = "0.0.0.0:8080"
    lan_listen: str | None = "0.0.0.0:1883"
    cloud_url: str | None = None
    cloud_username: str | None = None
    cloud_secrets: Mapping[str, str] = field(default_factory=dict, repr=False)
    pair: PairRequest | None = None


@dataclass(frozen=True)
class PairRequest:
    """``[pair]`` of the boot file: this box is one of two (docs/pair.md)."""

    box: str
    address: str  # the floating address with its prefix, what terminals use
    this_box: str
    other_box: str
    interface: str = "eth0"
    router_id: int = 0  # 0: derived from the store id
    prefer: str = "primary"
    secret: str = field(default="", repr=False)  # from the boot file, or "" when already stored


@dataclass(frozen=True)
class Layout:
    """Where a box keeps things; tests point it at temporary folders."""

    config_dir: Path = DEFAULT_CONFIG_DIR
    state_dir: Path = DEFAULT_STATE_DIR
    run_dir: Path = Path("/run/edgehub")
    # The hub's own loopback listener. Not 1883: the LAN listener (0.0.0.0:1883) already holds
    # that port on every address, and Mosquitto refuses to start with both ("Address in use").
    broker_listen: str = "127.0.0.1:1884"
    # A pair box's keepalived.conf: where Debian's keepalived.service reads it.
    keepalived_config: Path = Path("/etc/keepalived/keepalived.conf")

    @property
    def config_file(self) -> Path:
        return self.config_dir / "edgehub.toml"

    @property
    def secrets_dir(self) -> Path:
        return self.config_dir / "secrets"

    @property
    def broker_dir(self) -> Path:
        return self.config_dir / "mosquitto"

    @property
    def chrony_file(self) -> Path:
        """The store time server's chrony file: in Debian chrony's conf.d on a box (chrony reads
        it from there; AppArmor lets chronyd read only /etc/chrony), beside the config elsewhere."""
        if self.config_dir == DEFAULT_CONFIG_DIR:
            return Path("/etc/chrony/conf.d/edgehub.conf")
        return self.config_dir / "chrony" / "edgehub.conf"

    @property
    def marker(self) -> Path:
        return self.config_dir / MARKER

    @property
    def tls_cert(self) -> Path:
        return self.config_dir / "tls" / "box.crt"

    @property
    def tls_key(self) -> Path:
        return self.config_dir / "tls" / "box.key"


@dataclass
class Outcome:
    config_changed: bool = False
    broker_written: bool = False
    new_secrets: list[str] = field(default_factory=list)
    token_removed: bool = False
    notes: list[str] = field(default_factory=list)


# --- reading and checking the input -------------------------------------------------------------


def read_request_file(path: Path, layout: Layout) -> Request:
    """Parse and check a provisioning file; ProvisionError lists every problem."""
    try:
        with path.open("rb") as f:
            raw = f.read(MAX_FILE_BYTES + 1)
        if len(raw) > MAX_FILE_BYTES:
            raise ProvisionError([f"{path}: larger than {MAX_FILE_BYTES // 1024} KiB; a provisioning file is a few "
                                  "lines (is this the right file?)"])
        # utf-8-sig: Notepad on the installer's laptop may have put a BOM in front.
        text = raw.decode("utf-8-sig")
    except FileNotFoundError:
        raise ProvisionError([f"{path}: file not found"]) from None
    except OSError as exc:
        raise ProvisionError([f"{path}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ProvisionError([f"{path}: not UTF-8 text: {exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ProvisionError([f"{path}: not valid TOML: {exc}"]) from exc
    except RecursionError:
        raise ProvisionError([f"{path}: not valid TOML: arrays or tables nested too deeply"]) from None
    return check_request(data, str(path), layout)


def check_request(data: Mapping[str, Any], where: str, layout: Layout) -> Request:
    problems: list[str] = []

    def problem(key: str, message: str) -> None:
        problems.append(f"{where}: {key}: {message}")

    for key in data:
        if key not in INPUT_KEYS and key != "terminal":
            problem(key, f"unknown table (known: {', '.join(sorted([*INPUT_KEYS, 'terminal']))})")
    tables: dict[str, Mapping[str, Any]] = {}
    for name, known in INPUT_KEYS.items():
        value = data.get(name, {})
        if not isinstance(value, dict):
            problem(name, f"must be a table, got {type(value).__name__}")
            value = {}
        for key in value:
            if key not in known:
                problem(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        tables[name] = value

    def text(table: str, key: str, required: bool = False) -> str | None:
        value = tables[table].get(key)
        if value is None:
            if required:
                problem(f"{table}.{key}", "missing required key")
            return None
        if not isinstance(value, str):
            problem(f"{table}.{key}", f"must be a string, got {type(value).__name__} {value!r}")
            return None
        if any(ord(c) < 32 or ord(c) == 127 for c in value):
            problem(f"{table}.{key}", "must not contain control characters")
            return None
        return value

    if "store" not in data:
        problem("store", "missing required table")
    store_id = text("store", "id", required="store" in data) or ""
    if store_id and not ID_RE.match(store_id):
        problem(
            "store.id",
            f"{store_id!r} must be lowercase letters, digits and dashes (max 63), "
            "starting with a letter or digit",
        )
    store_name = text("store", "name") or ""

    for dotted, placeholder in PLACEHOLDERS.items():
        table, _, key = dotted.partition(".")
        value = tables.get(table, {}).get(key)
        if isinstance(value, str) and value.strip() == placeholder:
            problem(
                dotted,
                f"{placeholder!r} is the placeholder from edgehub-provision.toml.example; "
                "put in this store's real value",
            )

    addresses: dict[str, str | None] = {}
    parsed: dict[str, Address] = {}
    for table, key in (("api", "listen"), ("broker", "lan_listen")):
        value = text(table, key)
        if value is not None:
            try:
                address = parse_address(value)
            except ValueError as exc:
                problem(f"{table}.{key}", f"bad address: {exc}")
            else:
                if address.port == 0:
                    # Port 0 means "any free port": terminals and the installer could not find it.
                    problem(f"{table}.{key}", f"{value!r}: port 0 is not a fixed port; give one from 1 to 65535")
                else:
                    parsed[f"{table}.{key}"] = address
        addresses[f"{table}.{key}"] = value
    for key, message in _port_clashes(parsed, layout):
        problem(key, message)

    cloud_url = text("cloud", "url", required="cloud" in data)
    if cloud_url:
        parts = urlsplit(cloud_url)
        if parts.scheme == "mqtt":
            problem("cloud.url", f"{cloud_url!r}: plain mqtt:// would send the enrollment token in clear; "
                    "use mqtts://host:8883")
        elif parts.scheme not in CLOUD_SCHEMES or not parts.hostname:
            problem("cloud.url", f"{cloud_url!r} must look like mqtts://host:port")
    cloud_username = text("cloud", "username")
    cloud_secrets = {k: v for k in CLOUD_SECRET_KEYS if (v := text("cloud", k))}
    if "enrollment_token" in tables["cloud"] and not cloud_secrets.get("enrollment_token"):
        problem("cloud.enrollment_token", "must not be empty")
    if ("password" in cloud_secrets) != (cloud_username is not None):
        problem(
            "cloud.password" if cloud_username is None else "cloud.username",
            "give cloud.username and cloud.password together",
        )
    already_enrolled = any((layout.secrets_dir / _cloud_secret_name(k)).exists() for k in CLOUD_SECRET_KEYS)
    if cloud_url and not cloud_secrets and not already_enrolled:
        problem("cloud", "needs enrollment_token (one-time, from the cloud console) or username and password")

    terminals: list[Terminal] = []
    raw = data.get("terminal", [])
    if not isinstance(raw, list):
        problem("terminal", "must be an array of tables: [[terminal]]")
        raw = []
    seen: set[str] = set()
    for i, entry in enumerate(raw):
        key = f"terminal[{i}]"
        if not isinstance(entry, dict):
            problem(key, "must be a table")
            continue
        for k in entry:
            if k not in ("id", "kind", "stations", "pinpad_roles"):
                problem(f"{key}.{k}", "unknown key (known: id, kind, stations, pinpad_roles)")
        tid, kind = entry.get("id"), entry.get("kind", "pos")
        if not isinstance(tid, str) or not ID_RE.match(tid):
            problem(
                f"{key}.id",
                "missing required key"
                if tid is None
                else f"{tid!r}: {control_char_problem(tid)}" if control_char_problem(tid)
                else f"{tid!r} must be lowercase letters, digits and dashes (max 63)",
            )
            tid = None
        elif tid in seen or tid == HUB_USER or tid.startswith(RESERVED_PREFIX):
            problem(f"{key}.id", f"{tid!r} is used twice" if tid in seen
                    else f"{tid!r} is reserved for the box's own clients")
            tid = None
        if kind not in TERMINAL_KINDS:
            problem(f"{key}.kind", f"{kind!r} must be one of {', '.join(TERMINAL_KINDS)}")
        stations = _name_list(entry, "stations", key, problem, _station_problem)
        pinpads = _name_list(entry, "pinpad_roles", key, problem, _pinpad_problem)
        if stations is not None and kind != "kds":
            problem(f"{key}.stations", "only kitchen screens (kind = \"kds\") have stations")
        if pinpads is not None and kind not in ("pos", "handheld", "kiosk"):
            problem(f"{key}.pinpad_roles", f"a terminal of kind {kind!r} never takes a payment (only pos, "
                    "handheld and kiosk do)")
        if tid:
            seen.add(tid)
            terminals.append(Terminal(tid, str(kind), stations, pinpads))

    pair = _pair_request(tables["pair"], "pair" in data, text, problem, layout)

    # The box belongs to one store: its journal numbers that store's messages. Changing it is a
    # wipe-and-reprovision, not something a typo in the boot file may do.
    previous = _read_marker(layout).get("store_id")
    if previous and store_id and previous != store_id:
        problem(
            "store.id",
            f"this box is provisioned for store {previous!r}, not {store_id!r}; to move it "
            f"to another store remove {layout.marker} and {layout.state_dir} first",
        )

    if problems:
        raise ProvisionError(problems)
    return Request(
        store_id=store_id,
        store_name=store_name,
        terminals=tuple(terminals),
        api_listen=addresses["api.listen"] or Request.api_listen,
        lan_listen=addresses["broker.lan_listen"] or Request.lan_listen,
        cloud_url=cloud_url,
        cloud_username=cloud_username,
        cloud_secrets=cloud_secrets,
        pair=pair,
    )


def _pair_request(table: Mapping[str, Any], given: bool, text: Callable[..., str | None],
                  problem: Callable[[str, str], None], layout: Layout) -> PairRequest | None:
    if not given:
        return None
    from edgehub.config import IFNAME_RE, MIN_PAIR_SECRET, PAIR_PREFER

    box = text("pair", "box", required=True)
    if box and not ID_RE.match(box):
        problem("pair.box", f"{box!r} must be lowercase letters, digits and dashes (max 63)")
    address = text("pair", "address", required=True)
    network = None
    if address:
        try:
            network = ipaddress.ip_interface(address)
        except ValueError:
            network = None
        if network is None or "/" not in address or network.ip.version != 4:
            problem("pair.address", f"{address!r} must be the floating IPv4 address with its prefix, "
                    "e.g. \"192.168.1.10/24\"")
            network = None
    hosts = {}
    for key in ("this_box", "other_box"):
        value = text("pair", key, required=True)
        if value is None:
            continue
        try:
            host = ipaddress.ip_address(value)
        except ValueError:
            problem(f"pair.{key}", f"{value!r} is not an IP address (the box's own fixed LAN address)")
            continue
        if network is not None and (host == network.ip or host not in network.network):
            problem(f"pair.{key}", f"{value} must be another address of {network.network} than the floating one")
        hosts[key] = value
    if len(hosts) == 2 and hosts["this_box"] == hosts["other_box"]:
        problem("pair.other_box", "is this box's own address (pair.this_box)")
    interface = text("pair", "interface") or "eth0"
    if not IFNAME_RE.match(interface):
        problem("pair.interface", f"{interface!r} is not an interface name")
    router_id = table.get("router_id", 0)
    if isinstance(router_id, bool) or not isinstance(router_id, int) or not 0 <= router_id <= 255:
        problem("pair.router_id", "must be 1 to 255 (0 or left out: derived from the store id)")
        router_id = 0
    prefer = text("pair", "prefer") or "primary"
    if prefer not in PAIR_PREFER:
        problem("pair.prefer", f"must be one of {', '.join(PAIR_PREFER)}")
    secret = text("pair", "secret") or ""
    if secret and len(secret) < MIN_PAIR_SECRET:
        problem("pair.secret", f"must be at least {MIN_PAIR_SECRET} characters (the same on both boxes; "
                "e.g. `openssl rand -base64 33`)")
    if not secret and not (layout.secrets_dir / PAIR_SECRET_FILE).exists():
        problem("pair.secret", "missing: both boxes need the same pair secret (taken out of this file once stored)")
    if not (box and address and len(hosts) == 2):
        return None
    return PairRequest(box=box, address=address, this_box=hosts["this_box"], other_box=hosts["other_box"],
                       interface=interface, router_id=int(router_id), prefer=prefer, secret=secret)


def derived_secret(pair_secret: str, label: str) -> str:
    """A secret both boxes of a pair compute alike from their shared pair secret: terminals,
    kitchen screens and the installer use the same credentials on whichever box serves."""
    digest = hmac.new(pair_secret.encode(), f"edgehub-pair-secret/1:{label}".encode(), hashlib.sha256).digest()
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


def pair_router_id(store_id: str) -> int:
    """A VRRP router id from the store id (1-255): two stores' pairs on one LAN rarely collide,
    and ``pair.router_id`` says otherwise when they do."""
    return int.from_bytes(hashlib.sha256(store_id.encode()).digest()[:2], "big") % 255 + 1


def _name_list(entry: Mapping[str, Any], name: str, key: str, problem: Callable[[str, str], None],
               check: Callable[[str], str | None]) -> tuple[str, ...] | None:
    value = entry.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        problem(f"{key}.{name}", "must be a list of names, e.g. [\"grill\"]")
        return None
    for item in value:
        if reason := check(item):
            problem(f"{key}.{name}", reason)
            return None
    return tuple(value)


def _station_problem(name: str) -> str | None:
    from edgehub.config import STATION_RE

    return None if STATION_RE.match(name) else f"{name!r} is not a station name (lowercase letters, digits, - or _)"


def _pinpad_problem(name: str) -> str | None:
    if role_name_problem(name) or role_kind(name) != "pinpad":
        return f"{name!r} is not a pinpad role (pinpad or pinpad.name)"
    return None


def _port_clashes(parsed: Mapping[str, Address], layout: Layout) -> list[tuple[str, str]]:
    """The API must not want a port the broker listens on (the generated mosquitto.conf has the
    LAN listener and the hub's loopback listener): one of the two would fail to start."""
    api_given = "api.listen" in parsed
    api = parsed.get("api.listen") or parse_address(Request.api_listen)
    lan_given = "broker.lan_listen" in parsed
    lan = parsed.get("broker.lan_listen") or (parse_address(Request.lan_listen) if Request.lan_listen else None)
    hub = parse_address(layout.broker_listen)
    clashes: list[tuple[str, str]] = []
    if lan is not None and addresses_overlap(api, lan) and (api_given or lan_given):
        if api_given:
            where = "broker.lan_listen" if lan_given else f"the default broker.lan_listen {lan}"
            clashes.append(("api.listen", f"port {api.port} is also the broker's LAN listener ({where})"))
        else:
            clashes.append(
                ("broker.lan_listen", f"port {lan.port} is also the box page and API (default api.listen {api})")
            )
    if api_given and addresses_overlap(api, hub):
        clashes.append(("api.listen", f"port {api.port} is the broker's listener for the hub ({hub})"))
    return clashes


# The questions an installer without a laptop answers, each with the keys of check_request's
# problems that belong to it: a bad answer is asked again at once, alone.
QUESTIONS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("store.id", "store id (e.g. store-0042): ", ("store.id", "store")),
    ("store.name", "store name: ", ("store.name",)),
    ("cloud.url", "cloud url (mqtts://host:port, empty for none): ", ("cloud.url",)),
    ("cloud.enrollment_token", "one-time enrollment token: ", ("cloud.enrollment_token", "cloud")),
    ("terminal", "terminals as id:kind, comma separated (e.g. pos-1:pos, kds-grill:kds): ", ("terminal",)),
)


def _answer(data: dict[str, Any], key: str, answer: str) -> None:
    if key == "terminal":
        data["terminal"] = []
        for item in filter(None, (part.strip() for part in answer.split(","))):
            tid, _, kind = item.partition(":")
            data["terminal"].append({"id": tid.strip(), "kind": kind.strip() or "pos"})
        return
    table, _, name = key.partition(".")
    if table == "cloud" and name == "url" and not answer:
        data.pop("cloud", None)
        return
    data.setdefault(table, {})[name] = answer


def _problems_of(problems: list[str], keys: tuple[str, ...]) -> list[str]:
    """The problems (``WHERE: key: what``) of one question, without the WHERE."""
    mine: list[tuple[str, str]] = []
    for problem in problems:
        _, key, what = problem.split(": ", 2)
        if any(key == k or key.startswith((f"{k}.", f"{k}[")) for k in keys):
            mine.append((key, what))
    # A table's own problem ("cloud: needs enrollment_token") says no more than its key's.
    keys_seen = {key for key, _ in mine}
    return [f"{key}: {what}" for key, what in mine
            if not any(other.startswith(f"{key}.") for other in keys_seen)]


def ask_request(layout: Layout, ask: Callable[[str], str] = input,
                say: Callable[[str], None] = lambda text: print(text, file=sys.stderr)) -> Request:
    """Ask on the terminal for what the boot file would say (an installer without a laptop). Each
    answer is checked as it comes; a bad one is asked again, alone, with what is wrong."""
    data: dict[str, Any] = {"store": {}}
    for key, prompt, keys in QUESTIONS:
        if key == "cloud.enrollment_token" and "cloud" not in data:
            continue  # no cloud, no token
        while True:
            _answer(data, key, ask(prompt).strip())
            try:
                check_request(data, "<answers>", layout)
                break
            except ProvisionError as exc:
                wrong = _problems_of(exc.problems, keys)
            if not wrong:
                break
            for line in wrong:
                say(f"  {line}; try again")
    return check_request(data, "<answers>", layout)


# --- writing ------------------------------------------------------------------------------------


def _ids(user: str | None, group: str | None) -> tuple[int, int] | None:
    """uid/gid to chown to, when we are root and they exist (not in tests, not on a laptop)."""
    if os.geteuid() != 0:
        return None
    try:
        uid = pwd.getpwnam(user).pw_uid if user else 0
        gid = grp.getgrnam(group).gr_gid if group else 0
    except KeyError:
        return None
    return uid, gid


def _cloud_secret_name(key: str) -> str:
    return {"enrollment_token": "cloud-enrollment-token", "password": "cloud-password"}[key]


def _ensure_dir(path: Path, mode: int, owner: tuple[int, int] | None) -> None:
    path.mkdir(parents=True, exist_ok=True)
    os.chmod(path, mode)
    if owner is not None:
        os.chown(path, *owner)


def _secret_file(path: Path, value: str | None, owner: tuple[int, int] | None, outcome: Outcome) -> None:
    """Keep an existing secret; write ``value`` (a given or a pair's derived secret, which
    replaces another) or a fresh random one when there is none."""
    current = path.read_text(encoding="utf-8").strip() if path.exists() else ""
    wanted = value if value is not None else (current or secrets.token_urlsafe(SECRET_BYTES))
    if wanted != current:
        atomic_write(path, wanted + "\n", 0o600, owner)
        outcome.new_secrets.append(path.name)
    else:
        # Existing file: still make sure nobody widened it.
        os.chmod(path, 0o600)
        if owner is not None:
            os.chown(path, *owner)


def _toml_str(value: str) -> str:
    # A JSON string is a valid TOML basic string, except that TOML wants DEL escaped too.
    return json.dumps(value, ensure_ascii=False).replace("\x7f", "\\u007f")


def render_config(request: Request, layout: Layout) -> str:
    """The box's edgehub.toml. Secrets are referenced by file, never inline."""
    q = _toml_str
    lines = [
        "# Written by `edgehub provision`; run it again rather than editing this file by hand",
        "# (the provisioning file on the boot partition is the source). Secrets are in secrets/.",
        "",
        "[store]",
        f"id = {q(request.store_id)}",
        f"name = {q(request.store_name)}",
        "",
        "[paths]",
        f"data_dir = {q(str(layout.state_dir))}",
        f"run_dir = {q(str(layout.run_dir))}",
        "",
        "[broker]",
        *(["# managed: a box of a pair runs the store broker itself, with its LAN listener only while",
           "# it serves (docs/pair.md); Debian's mosquitto.service stays down (no files in /etc/edgehub/mosquitto).",
           'mode = "managed"']
          if request.pair else
          ["# external: Debian's mosquitto.service runs the files in config_dir (see the unit drop-in).",
           'mode = "external"']),
        f"listen = {q(layout.broker_listen)}",
        *([f"lan_listen = {q(request.lan_listen)}"] if request.lan_listen else []),
        *([] if request.pair else [f"config_dir = {q(str(layout.broker_dir))}"]),
        f"hub_user = {q(HUB_USER)}",
        'hub_password_file = "secrets/broker-hub"',
        "",
        "[api]",
        f"listen = {q(request.api_listen)}",
        'token_file = "secrets/api-token"',
        'tls_cert_file = "tls/box.crt"',
        'tls_key_file = "tls/box.key"',
        "",
        "[clock]",
        "# The store's time server: chrony reads this file (`edgehub clock write-config` rewrites it).",
        f"config_file = {q(str(layout.chrony_file))}",
        "",
    ]
    if request.pair is not None:
        pair = request.pair
        lines += [
            "[pair]",
            "# One of the store's two boxes (docs/pair.md); the other box has the same table but for",
            "# box, listen, peer and prefer.",
            f"box = {q(pair.box)}",
            f"listen = {q(f'{pair.this_box}:{PAIR_PORT}')}",
            f"peer = {q(f'{pair.other_box}:{PAIR_PORT}')}",
            f'secret_file = {q("secrets/" + PAIR_SECRET_FILE)}',
            f"address = {q(pair.address)}",
            f"interface = {q(pair.interface)}",
            f"router_id = {pair.router_id or pair_router_id(request.store_id)}",
            f"prefer = {q(pair.prefer)}",
            'vrrp = "external"',
            f"keepalived_config = {q(str(layout.keepalived_config))}",
            "",
        ]
    if request.cloud_url:
        lines += ["[cloud]", "enabled = true", f"url = {q(request.cloud_url)}"]
        if request.cloud_username:
            lines.append(f"username = {q(request.cloud_username)}")
        for key in CLOUD_SECRET_KEYS:
            # Kept from an earlier run, or stored by this one (before the config is written).
            if key in request.cloud_secrets or (layout.secrets_dir / _cloud_secret_name(key)).exists():
                lines.append(f"{key}_file = {q('secrets/' + _cloud_secret_name(key))}")
        lines.append("")
    for terminal in request.terminals:
        lines += [
            "[[terminal]]",
            f"id = {q(terminal.id)}",
            f"kind = {q(terminal.kind)}",
            f"password_file = {q('secrets/terminal-' + terminal.id)}",
        ]
        if terminal.kind in SCREEN_KINDS:
            lines.append(f"screen_token_file = {q('secrets/screen-' + terminal.id)}")
        if terminal.stations is not None:
            lines.append(f"stations = [{', '.join(q(s) for s in terminal.stations)}]")
        if terminal.pinpad_roles is not None:
            lines.append(f"pinpad_roles = [{', '.join(q(r) for r in terminal.pinpad_roles)}]")
        lines.append("")
    return "\n".join(lines)


def _write_if_changed(path: Path, text: str, mode: int, check: Callable[[Path], None] | None = None) -> bool:
    if path.exists() and path.read_text(encoding="utf-8") == text:
        return False
    tmp = path.with_name(f".{path.name}.check.tmp")
    if check is not None:
        # Check the new file with the daemon's own loader before it replaces the old one; it
        # sits in the same folder so relative secret paths resolve the same way.
        tmp.write_text(text, encoding="utf-8")
        try:
            check(tmp)
        finally:
            tmp.unlink(missing_ok=True)
    atomic_write(path, text, mode)
    return True


def strip_boot_secrets(path: Path, layout: Layout) -> bool:
    """Take the cloud secrets out of the boot partition file; keep everything else as written.

    Line-based so the installer's comments and layout survive; the result is parsed again and
    must equal the original minus those keys, else the file is left alone (and we say so).
    """
    raw = path.read_bytes()
    text = raw.decode("utf-8-sig")
    before = tomllib.loads(text)
    cloud = before.get("cloud", {})
    pair = before.get("pair", {})
    if not any(k in cloud for k in CLOUD_SECRET_KEYS) and "secret" not in pair:
        return False
    taken = {"cloud": CLOUD_SECRET_KEYS, "pair": ("secret",)}
    header_re = re.compile(r"^\s*\[\[?\s*([A-Za-z0-9_.\"' -]+?)\s*\]\]?\s*(#.*)?$")
    table = ""
    out: list[str] = []
    for line in text.splitlines(keepends=True):
        if m := header_re.match(line):
            table = m.group(1)
        kept = True
        for name, keys in taken.items():
            key_re = re.compile(r"^\s*(?:" + name + r"\s*\.\s*)?(" + "|".join(keys) + r")\s*=")
            m = key_re.match(line)
            dotted = line.lstrip().startswith(name)
            if m and (table == name or (table == "" and dotted)):
                ending = "\r\n" if line.endswith("\r\n") else "\n"
                stored = layout.secrets_dir / (_cloud_secret_name(m.group(1)) if name == "cloud" else PAIR_SECRET_FILE)
                out.append(f"# {m.group(1)}: taken by edgehub provision, kept in {stored}{ending}")
                kept = False
                break
        if kept:
            out.append(line)
    new_text = "".join(out)
    expected = {**before, "cloud": {k: v for k, v in cloud.items() if k not in CLOUD_SECRET_KEYS}}
    if "pair" in before:
        expected["pair"] = {k: v for k, v in pair.items() if k != "secret"}
    if "cloud" not in before:
        del expected["cloud"]
    try:
        ok = tomllib.loads(new_text) == expected
    except tomllib.TOMLDecodeError:
        ok = False
    if not ok:
        raise EdgehubError(
            f"{path}: could not take the secrets out of this file safely; "
            f"they are stored in {layout.secrets_dir}: delete the "
            f"{', '.join(CLOUD_SECRET_KEYS)} and pair.secret lines by hand"
        )
    atomic_write(path, new_text, path.stat().st_mode & 0o7777)
    return True


def _read_marker(layout: Layout) -> dict[str, Any]:
    try:
        value = json.loads(layout.marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return value if isinstance(value, dict) else {}


def _write_broker_files(layout: Layout) -> None:
    from edgehub.broker import write_config
    from edgehub.clock import write_config as write_clock_config

    config = load_config(layout.config_file)
    try:
        write_clock_config(config)  # the store's time server (chrony reads it from its conf.d)
    except OSError as exc:  # no chrony on this box: the store goes without the box's time
        print(f"warning: {config.clock.config_file} not written ({exc.strerror or exc}): "
              "install chrony, then run `edgehub clock write-config`", file=sys.stderr)
    files = write_config(config)
    # Mosquitto reads these after dropping to its own user: root:mosquitto 0640.
    owner = _ids(None, BROKER_GROUP)
    if owner is not None:
        for path in (files.passwd, files.acl):
            os.chown(path, *owner)


def wanted_secrets(request: Request, layout: Layout | None = None) -> list[tuple[str, str | None]]:
    """The secret files a box needs, by name under secrets/, with the value the request brings
    (None: a random one made once and kept). The boot file's come first (the cloud's, a pair's
    secret): they leave the boot file as soon as they are stored (``boot_secret_count``). On a
    box of a pair the terminals', the screens' and the API token are derived from the pair
    secret: the same on both boxes (docs/box.md)."""
    wanted: list[tuple[str, str | None]] = [(_cloud_secret_name(k), v) for k, v in request.cloud_secrets.items()]
    pair_secret = ""
    if request.pair is not None:
        wanted.append((PAIR_SECRET_FILE, request.pair.secret or None))
        pair_secret = request.pair.secret
        stored = layout.secrets_dir / PAIR_SECRET_FILE if layout is not None else None
        if not pair_secret and stored is not None and stored.exists():
            pair_secret = stored.read_text(encoding="utf-8").strip()

    def shared(label: str) -> str | None:
        return derived_secret(pair_secret, label) if pair_secret else None

    wanted += [("api-token", shared("api-token")), ("broker-hub", None)]
    for terminal in request.terminals:
        wanted.append((f"terminal-{terminal.id}", shared(f"terminal-{terminal.id}")))
        if terminal.kind in SCREEN_KINDS:
            wanted.append((f"screen-{terminal.id}", shared(f"screen-{terminal.id}")))
    return wanted


def boot_secret_count(request: Request) -> int:
    """How many of ``wanted_secrets`` come from the boot file (stored first, then taken out)."""
    return len(request.cloud_secrets) + (1 if request.pair is not None else 0)


def takes_boot_secrets(request: Request) -> bool:
    return bool(request.cloud_secrets) or (request.pair is not None and bool(request.pair.secret))


def plan(request: Request, layout: Layout, source: Path | None = None) -> tuple[Outcome, str]:
    """What ``provision`` would do, and the config it would write, without writing anything
    (``--dry-run``)."""
    outcome = Outcome()
    for name, value in wanted_secrets(request, layout):
        path = layout.secrets_dir / name
        current = path.read_text(encoding="utf-8").strip() if path.exists() else ""
        if not current or (value is not None and value != current):
            outcome.new_secrets.append(name)
    if not (layout.tls_cert.exists() and layout.tls_key.exists()):
        outcome.new_secrets.append("tls/box.key")
    text = render_config(request, layout)
    written = layout.config_file.read_text(encoding="utf-8") if layout.config_file.exists() else None
    outcome.config_changed = written != text
    broker_files = [layout.broker_dir / name for name in ("mosquitto.conf", "passwd", "acl")]
    outcome.broker_written = (outcome.config_changed or bool(outcome.new_secrets)
                              or not all(p.exists() for p in broker_files))
    outcome.token_removed = source is not None and takes_boot_secrets(request)
    return outcome, text


def provision(request: Request, layout: Layout, source: Path | None = None) -> Outcome:
    """Make the box match ``request``; safe to run any number of times."""
    outcome = Outcome()
    service_owner = _ids(SERVICE_USER, SERVICE_USER)
    _ensure_dir(layout.config_dir, 0o755, _ids(None, None))
    _ensure_dir(layout.secrets_dir, 0o750, _ids(None, SERVICE_USER))
    _ensure_dir(layout.broker_dir, 0o750, _ids(None, BROKER_GROUP))
    _ensure_dir(layout.state_dir, 0o750, service_owner)

    # The cloud secrets first, and out of the boot file as soon as they are stored: whatever
    # fails after this, the one-time token no longer sits on a partition any laptop can read.
    secrets_wanted = wanted_secrets(request, layout)
    first = boot_secret_count(request)
    for name, value in secrets_wanted[:first]:
        _secret_file(layout.secrets_dir / name, value, service_owner, outcome)
    if source is not None and first and takes_boot_secrets(request):
        outcome.token_removed = strip_boot_secrets(source, layout)
    for name, value in secrets_wanted[first:]:
        _secret_file(layout.secrets_dir / name, value, service_owner, outcome)
    pair = request.pair
    if pair is not None:
        from edgehub.api.tls import make_pair_certificate

        pair_secret = (layout.secrets_dir / PAIR_SECRET_FILE).read_text(encoding="utf-8").strip()
        _ensure_dir(layout.tls_cert.parent, 0o755, _ids(None, None))
        addresses = [pair.address.partition("/")[0], pair.this_box, pair.other_box]
        if make_pair_certificate(layout.tls_cert, layout.tls_key, request.store_id, pair_secret.encode(),
                                 addresses, service_owner):
            outcome.new_secrets.append("tls/box.key")
            outcome.notes.append("the page's certificate is the pair's: the same on both boxes")
    elif not (layout.tls_cert.exists() and layout.tls_key.exists()):
        from edgehub.api.tls import make_certificate

        _ensure_dir(layout.tls_cert.parent, 0o755, _ids(None, None))
        make_certificate(layout.tls_cert, layout.tls_key, request.store_id, box_addresses(), service_owner)
        outcome.new_secrets.append("tls/box.key")

    def check(path: Path) -> None:
        load_config(path)  # raises ConfigError: our bug, reported as such by main()

    text = render_config(request, layout)
    outcome.config_changed = _write_if_changed(layout.config_file, text, 0o644, check)

    broker_files = [layout.broker_dir / name for name in ("mosquitto.conf", "passwd", "acl")]
    if pair is not None:
        # The node runs the broker (files under the run dir); Debian's unit must stay down.
        for old_file in broker_files:
            old_file.unlink(missing_ok=True)
        from edgehub.pair.vrrp import write_config as write_keepalived

        write_keepalived(load_config(layout.config_file))
        outcome.notes.append(f"keepalived config written to {layout.keepalived_config}")
    elif outcome.config_changed or outcome.new_secrets or not all(p.exists() for p in broker_files):
        _write_broker_files(layout)
        outcome.broker_written = True

    digest = hashlib.sha256(layout.config_file.read_bytes()).hexdigest()
    old = _read_marker(layout)
    marker = {
        "store_id": request.store_id,
        "first_provisioned": old.get("first_provisioned") or datetime.now(UTC).isoformat(timespec="seconds"),
        "source": str(source) if source else "<answers>",
        "config_sha256": digest,
    }
    if marker != old:
        atomic_write(layout.marker, json.dumps(marker, indent=2) + "\n", 0o644)
    return outcome


# --- the summary --------------------------------------------------------------------------------


def box_addresses() -> list[str]:
    """IPv4 addresses of this box's interfaces (not loopback): what an installer types."""
    found: list[str] = []
    siocgifaddr = 0x8915
    with contextlib.suppress(OSError), socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        for _, name in socket.if_nameindex():
            if name == "lo":
                continue
            try:
                raw = fcntl.ioctl(sock.fileno(), siocgifaddr, struct.pack("256s", name.encode()[:15]))
            except OSError:
                continue  # interface without an IPv4 address
            found.append(socket.inet_ntoa(raw[20:24]))
    return found


def summary(request: Request, layout: Layout, outcome: Outcome, dry_run: bool = False) -> str:
    port = parse_address(request.api_listen).port
    addresses = box_addresses() or [socket.gethostname() + ".local"]

    def did(done: bool, yes: str, no: str) -> str:
        return (f" (would be {yes})" if dry_run else f" ({yes})") if done else f" ({no})"

    head = (f"edgehub provision --dry-run: nothing was written; for store {request.store_id} it would do this"
            if dry_run else f"edgehub provisioned: store {request.store_id}")
    new = ", ".join(outcome.new_secrets) or "none (existing secrets kept)"
    lines = [
        f"{head} ({request.store_name or 'no name'}), {len(request.terminals)} terminal(s)",
        f"  config     {layout.config_file}" + did(outcome.config_changed, "written", "unchanged"),
        f"  secrets    {layout.secrets_dir}/ (files of mode 0600; never printed)",
        f"  new        {('would make ' if dry_run and outcome.new_secrets else '') + new}",
        f"  broker     {layout.broker_dir}/" + did(outcome.broker_written, "rewritten", "unchanged"),
    ]
    if request.cloud_url:
        lines.append(f"  cloud      {request.cloud_url}")
    if request.pair is not None:
        pair = request.pair
        lines.append(f"  pair       box {pair.box} ({pair.prefer} at first start), this box {pair.this_box}, "
                     f"the other box {pair.other_box}; terminals use {pair.address.partition('/')[0]}")
        addresses = [pair.address.partition("/")[0]]
    if outcome.token_removed:
        which = "cloud and pair" if request.pair is not None and request.cloud_secrets else (
            "pair" if request.pair is not None else "cloud")
        lines.append(f"  boot file  {which} secrets {'would be ' if dry_run else ''}taken out of it")
    for address in addresses:
        lines.append(f"  box page   https://{address}:{port}/")
    if layout.tls_cert.exists():
        from edgehub.api.tls import fingerprint

        lines.append(f"  https      {fingerprint(layout.tls_cert)} (the browser must show the same)")
    lines.append(f"  log in     on the box page with the API token: sudo cat {layout.secrets_dir / 'api-token'}")
    for terminal in request.terminals:
        if terminal.kind in SCREEN_KINDS:
            station = terminal.stations[0] if terminal.stations else "{station}"
            page = f"kds/{station}" if terminal.kind == "kds" else "pickup"
            lines.append(f"  screen     {terminal.id}: https://{addresses[0]}:{port}/{page}?token=<the "
                         f"secret in {layout.secrets_dir}/screen-{terminal.id}>")
    lines.append("  screens    open its link once on each kitchen screen; the box page lists every station's "
                 "link (Orders and kitchen)")
    if request.lan_listen:
        lan_port = parse_address(request.lan_listen).port
        lines.append(f"  terminals  connect to mqtt://{addresses[0]}:{lan_port} with their own password "
                     f"({layout.secrets_dir}/terminal-ID)")
    lines += [f"  note       {note}" for note in outcome.notes]
    return "\n".join(lines)


# --- the command --------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    from edgehub.clihelp import Help

    parser = argparse.ArgumentParser(
        prog="edgehub provision", formatter_class=Help,
        description="Provision this box: its config, secrets and broker files from a provisioning TOML (on a "
                    "box, the file on the boot partition; the image's first-boot unit runs this), or from "
                    "answers asked on the terminal. Running it again with the same input changes nothing. "
                    "Exit 0 done, 1 failed while writing, 2 bad input (nothing changed).",
        epilog="examples:\n"
               "  sudo edgehub provision --from /boot/firmware/edgehub-provision.toml\n"
               "  sudo edgehub provision --from edgehub-provision.toml --dry-run   # check, show, write nothing\n"
               "  sudo edgehub provision                                           # asks on the terminal",
    )
    parser.add_argument(
        "--from",
        dest="source",
        type=Path,
        metavar="FILE",
        help="provisioning file (on a box: /boot/firmware/edgehub-provision.toml; without it: asked on the "
             "terminal)",
    )
    parser.add_argument("--config-dir", type=Path, default=DEFAULT_CONFIG_DIR, metavar="DIR",
                        help="where edgehub.toml, secrets/ and mosquitto/ go")
    parser.add_argument("--state-dir", type=Path, default=DEFAULT_STATE_DIR, metavar="DIR",
                        help="the hub's data directory (journal, outbox)")
    parser.add_argument(
        "--non-interactive", action="store_true", help="never ask; without --from this is an error"
    )
    parser.add_argument("--dry-run", action="store_true",
                        help="check the input and show what would be written (the config in full), write nothing")
    return parser


def main(argv: Sequence[str]) -> int:
    args = build_parser().parse_args(list(argv))
    # Absolute before anything uses them: they go into edgehub.toml, where a relative path would
    # resolve against the config file's folder, not against where this command was run.
    layout = Layout(
        config_dir=Path(os.path.abspath(args.config_dir)), state_dir=Path(os.path.abspath(args.state_dir))
    )
    try:
        if args.source is not None:
            request = read_request_file(args.source, layout)
        elif args.non_interactive or not sys.stdin.isatty():
            print("edgehub provision: give --from FILE (no terminal to ask on)", file=sys.stderr)
            return 2
        else:
            request = ask_request(layout)
        if args.dry_run:
            outcome, text = plan(request, layout, args.source)
            print(summary(request, layout, outcome, dry_run=True))
            print(f"--- {layout.config_file} as it would be written ---\n{text}", end="")
            return 0
        outcome = provision(request, layout, args.source)
    except ProvisionError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        print("edgehub provision: nothing was changed", file=sys.stderr)
        return 2
    except (EOFError, KeyboardInterrupt):
        print("\nedgehub provision: stopped before every question was answered; nothing was changed",
              file=sys.stderr)
        return 2
    except ConfigError as exc:
        # The file we generated failed the daemon's loader: a bug here, not the installer's.
        print(
            "edgehub provision: the generated config does not pass `edgehub config check`:", file=sys.stderr
        )
        for line in exc.problems:
            print(f"  {line}", file=sys.stderr)
        return 1
    except (EdgehubError, OSError) as exc:
        print(f"edgehub provision: {exc}", file=sys.stderr)
        return 1
    print(summary(request, layout, outcome))
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
