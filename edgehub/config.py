"""The box's configuration: one TOML file, validated completely before anything starts.

``load_config(path)`` returns a frozen ``Config`` or raises ``ConfigError`` listing *every*
problem as ``FILE:LINE: key.path: what is wrong`` (the line where it can be found), so an
installer fixes a file in one pass. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgehub.errors import ConfigError

ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}$")
LOG_LEVELS = ("debug", "info", "warning", "error")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


@dataclass(frozen=True)
class StoreConfig:
    id: str
    name: str = ""


@dataclass(frozen=True)
class PathsConfig:
    data_dir: Path
    run_dir: Path


@dataclass(frozen=True)
class BrokerConfig:
    # managed: the hub starts its own private Mosquitto (development, tests, `make run`).
    # external: Mosquitto runs on its own (systemd on the box); the hub writes its config files.
    mode: str
    listen: Address
    lan_listen: Address | None
    config_dir: Path
    hub_user: str
    hub_password: str = field(repr=False)
    max_queued_messages: int = 100_000
    max_packet_kib: int = 256


@dataclass(frozen=True)
class ApiConfig:
    listen: Address
    token: str = field(repr=False)


@dataclass(frozen=True)
class JournalConfig:
    path: Path
    commit_window_ms: float = 2.0


@dataclass(frozen=True)
class LimitsConfig:
    max_order_bytes: int = 65_536
    max_lines: int = 200
    max_qty: int = 999
    max_text: int = 200


@dataclass(frozen=True)
class TerminalConfig:
    id: str
    kind: str
    password: str = field(repr=False)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    components: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Config:
    source: Path
    store: StoreConfig
    paths: PathsConfig
    broker: BrokerConfig
    api: ApiConfig
    journal: JournalConfig
    limits: LimitsConfig
    log: LogConfig
    terminals: tuple[TerminalConfig, ...]

    def terminal(self, terminal_id: str) -> TerminalConfig | None:
        return next((t for t in self.terminals if t.id == terminal_id), None)


# --- the checker -------------------------------------------------------------------------------


class _Locator:
    """Finds the line of ``table.key`` in the TOML text (tomllib keeps no positions)."""

    _HEADER = re.compile(r"^\s*\[(\[)?\s*([A-Za-z0-9_.-]+)\s*\]\]?")
    _KEY = re.compile(r"^\s*([A-Za-z0-9_-]+)\s*=")

    def __init__(self, text: str) -> None:
        self._lines: dict[str, int] = {}
        counts: dict[str, int] = {}
        table = ""
        for number, line in enumerate(text.splitlines(), start=1):
            if m := self._HEADER.match(line):
                name = m.group(2)
                if m.group(1):  # [[array]]: number the entries like the key paths do
                    index = counts.get(name, 0)
                    counts[name] = index + 1
                    name = f"{name}[{index}]"
                table = name
                self._lines.setdefault(table, number)
            elif m := self._KEY.match(line):
                key = f"{table}.{m.group(1)}" if table else m.group(1)
                self._lines.setdefault(key, number)

    def line(self, path: str) -> int | None:
        while path:
            if path in self._lines:
                return self._lines[path]
            path = path.rpartition(".")[0]
        return None


class _Checker:
    def __init__(self, source: Path, text: str) -> None:
        self.source = source
        self.locator = _Locator(text)
        self.problems: list[str] = []

    def problem(self, path: str, message: str) -> None:
        line = self.locator.line(path)
        where = f"{self.source}:{line}" if line else str(self.source)
        self.problems.append(f"{where}: {path}: {message}")

    def table(self, data: Mapping[str, Any], name: str, known: set[str], required: bool = False) -> dict[str, Any]:
        value = data.get(name)
        if value is None:
            if required:
                self.problem(name, "missing required table")
            return {}
        if not isinstance(value, dict):
            self.problem(name, f"must be a table, got {_kind(value)}")
            return {}
        for key in value:
            if key not in known:
                self.problem(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        return value

    def get(
        self,
        table: Mapping[str, Any],
        path: str,
        kind: type | tuple[type, ...],
        default: Any = ...,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        key = path.rpartition(".")[2]
        if key not in table:
            if default is ...:
                self.problem(path, "missing required key")
                return None
            return default
        value = table[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        # TOML booleans are not numbers, whatever Python thinks.
        if isinstance(value, bool) and bool not in kinds or not isinstance(value, kinds):
            wanted = " or ".join(_TYPE_NAMES.get(k, k.__name__) for k in kinds)
            self.problem(path, f"must be {wanted}, got {_kind(value)} {value!r}")
            return None if default is ... else default
        if check is not None and (message := check(value)):
            self.problem(path, message)
            return None if default is ... else default
        return value


_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "true or false", list: "a list"}


def _kind(value: Any) -> str:
    return {dict: "a table", list: "a list", str: "a string", bool: "a boolean", int: "an integer",
            float: "a number"}.get(type(value), type(value).__name__)


def parse_address(text: str) -> Address:
    """``host:port`` or ``[v6]:port`` with a literal IP (names are not resolved at check time)."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
    else:
        host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"{text!r} is not host:port (IPv6 as [addr]:port)")
    try:
        ipaddress.ip_address(host)
    except ValueError:
        if host != "localhost":
            raise ValueError(f"{host!r} is not an IP address") from None
    if not port.isdigit() or not 0 <= int(port) <= 65535:
        raise ValueError(f"port {port!r} is not a number from 0 to 65535")
    return Address(host, int(port))


def _address_check(value: str) -> str | None:
    try:
        parse_address(value)
    except ValueError as exc:
        return f"bad address: {exc}"
    return None


def _id_check(value: str) -> str | None:
    return None if ID_RE.match(value) else f"{value!r} must be lowercase letters, digits and dashes (max 63)"


def _positive(value: int | float) -> str | None:
    return None if value > 0 else f"must be greater than 0, got {value}"


def _secret(ck: _Checker, base: Path, table: Mapping[str, Any], path: str, required: bool = True) -> str:
    """A secret given inline (``key``) or, better, in a file (``key_file``) next to the config."""
    key = path.rpartition(".")[2]
    inline = ck.get(table, path, str, default=None)
    file_ = ck.get(table, f"{path}_file", str, default=None)
    if inline is not None and file_ is not None:
        ck.problem(path, f"give either {key} or {key}_file, not both")
        return ""
    if file_ is not None:
        secret_path = base / file_
        try:
            value = secret_path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            ck.problem(f"{path}_file", f"cannot read {secret_path}: {exc.strerror or exc}")
            return ""
        if not value:
            ck.problem(f"{path}_file", f"{secret_path} is empty")
        return value
    if inline is None:
        if required:
            ck.problem(path, f"missing required key (or {key}_file)")
        return ""
    if not inline:
        ck.problem(path, "must not be empty")
    return str(inline)


def load_config(path: str | Path) -> Config:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text: {exc}"]) from exc
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
    return parse_config(data, source, text)


def parse_config(data: Mapping[str, Any], source: Path, text: str = "") -> Config:
    ck = _Checker(source, text)
    base = source.resolve().parent
    known_tables = {"store", "paths", "broker", "api", "journal", "limits", "log", "terminal"}
    for key in data:
        if key not in known_tables:
            ck.problem(key, f"unknown table (known: {', '.join(sorted(known_tables))})")

    t = ck.table(data, "store", {"id", "name"}, required=True)
    store_id = ck.get(t, "store.id", str, check=_id_check) if "store" in data else None
    store = StoreConfig(id=store_id or "", name=ck.get(t, "store.name", str, ""))

    t = ck.table(data, "paths", {"data_dir", "run_dir"})
    data_dir = base / ck.get(t, "paths.data_dir", str, "/var/lib/edgehub")
    paths = PathsConfig(data_dir=data_dir, run_dir=base / ck.get(t, "paths.run_dir", str, str(data_dir / "run")))

    t = ck.table(
        data, "broker",
        {"mode", "listen", "lan_listen", "config_dir", "hub_user", "hub_password", "hub_password_file",
         "max_queued_messages", "max_packet_kib"},
    )
    mode = ck.get(t, "broker.mode", str, "managed",
                  check=lambda v: None if v in ("managed", "external") else "must be 'managed' or 'external'")
    listen = ck.get(t, "broker.listen", str, "127.0.0.1:1883", check=_address_check)
    lan = ck.get(t, "broker.lan_listen", str, None, check=_address_check)
    broker = BrokerConfig(
        mode=mode,
        listen=parse_address(listen) if listen else Address("127.0.0.1", 1883),
        lan_listen=parse_address(lan) if lan else None,
        config_dir=base / ck.get(t, "broker.config_dir", str, str(paths.run_dir / "mosquitto")),
        hub_user=ck.get(t, "broker.hub_user", str, "edgehub-hub", check=_id_check) or "edgehub-hub",
        hub_password=_secret(ck, base, t, "broker.hub_password"),
        max_queued_messages=ck.get(t, "broker.max_queued_messages", int, 100_000, check=_positive),
        max_packet_kib=ck.get(t, "broker.max_packet_kib", int, 256, check=_positive),
    )

    t = ck.table(data, "api", {"listen", "token", "token_file"})
    api_listen = ck.get(t, "api.listen", str, "127.0.0.1:8080", check=_address_check)
    api = ApiConfig(
        listen=parse_address(api_listen) if api_listen else Address("127.0.0.1", 8080),
        token=_secret(ck, base, t, "api.token"),
    )
    if api.token and len(api.token) < 16:
        ck.problem("api.token", "must be at least 16 characters (generate one with `edgehub provision`)")

    t = ck.table(data, "journal", {"path", "commit_window_ms"})
    journal = JournalConfig(
        path=base / ck.get(t, "journal.path", str, str(data_dir / "journal.sqlite")),
        commit_window_ms=float(ck.get(t, "journal.commit_window_ms", (int, float), 2.0,
                                      check=lambda v: None if 0 <= v <= 50 else "must be 0 to 50 ms")),
    )

    t = ck.table(data, "limits", {"max_order_bytes", "max_lines", "max_qty", "max_text"})
    limits = LimitsConfig(
        max_order_bytes=ck.get(t, "limits.max_order_bytes", int, 65_536, check=_positive),
        max_lines=ck.get(t, "limits.max_lines", int, 200, check=_positive),
        max_qty=ck.get(t, "limits.max_qty", int, 999, check=_positive),
        max_text=ck.get(t, "limits.max_text", int, 200, check=_positive),
    )
    if limits.max_order_bytes > broker.max_packet_kib * 1024:
        ck.problem("limits.max_order_bytes", "is larger than broker.max_packet_kib allows")

    t = ck.table(data, "log", {"level", "components"})
    level_check: Callable[[Any], str | None] = (
        lambda v: None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"
    )
    components = ck.get(t, "log.components", dict, {})
    for name, value in (components or {}).items():
        if not isinstance(value, str) or level_check(value):
            ck.problem(f"log.components.{name}", f"must be one of {', '.join(LOG_LEVELS)}")
    log = LogConfig(level=ck.get(t, "log.level", str, "info", check=level_check),
                    components=dict(components or {}))

    terminals: list[TerminalConfig] = []
    raw_terminals = data.get("terminal", [])
    if not isinstance(raw_terminals, list):
        ck.problem("terminal", "must be an array of tables: [[terminal]]")
        raw_terminals = []
    seen: set[str] = set()
    for i, entry in enumerate(raw_terminals):
        prefix = f"terminal[{i}]"
        if not isinstance(entry, dict):
            ck.problem(prefix, "must be a table")
            continue
        for key in entry:
            if key not in {"id", "kind", "password", "password_file"}:
                ck.problem(f"{prefix}.{key}", "unknown key (known: id, kind, password, password_file)")
        tid = ck.get(entry, f"{prefix}.id", str, check=_id_check)
        if tid and (tid in seen or tid == broker.hub_user):
            ck.problem(f"{prefix}.id", f"{tid!r} is used twice")
        seen.add(tid or "")
        kind = ck.get(entry, f"{prefix}.kind", str, "pos",
                      check=lambda v: None if v in ("pos", "kds", "kiosk") else "must be pos, kds or kiosk")
        terminals.append(TerminalConfig(id=tid or "", kind=kind, password=_secret(ck, base, entry, f"{prefix}.password")))

    if ck.problems:
        raise ConfigError(ck.problems)
    return Config(source=source, store=store, paths=paths, broker=broker, api=api, journal=journal,
                  limits=limits, log=log, terminals=tuple(terminals))
