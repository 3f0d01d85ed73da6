"""The box's configuration: one TOML file, validated completely before anything starts.

``load_config(path)`` returns a frozen ``Config`` or raises ``ConfigError`` listing *every*
problem as ``FILE:LINE: key.path: what is wrong`` (the line where it can be found), so an
installer fixes a file in one pass. Relative paths are taken from the config file's folder.
"""

from __future__ import annotations

import ipaddress
import re
import tomllib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from edgehub.errors import ConfigError

# Identifiers are matched whole: ``\Z``, not ``$``, which also matches before a trailing newline
# (an id with one reached the ACL and the password file as two lines).
ID_RE = re.compile(r"^[a-z0-9][a-z0-9-]{0,62}\Z")
# Terminal ids starting with this are refused: the box's own MQTT clients use it (the hub's
# client id is ``edgehub-hub-{store}``), and on the LAN listener a terminal's client id is its id.
RESERVED_PREFIX = "edgehub-"
LOG_LEVELS = ("debug", "info", "warning", "error")
# What [log] components may name: edgehub's components (the loggers edgehub.<name>[.<part>]; a test
# keeps this list equal to the code's loggers) and, with a dot, any full logger name below
# edgehub or drivers.
LOG_COMPONENTS = ("api", "broker", "bus", "clock", "devices", "discovery", "front", "hub", "intake", "journal",
                  "kitchen", "online", "outbox", "pair", "qrpay", "reports", "roles", "sdnotify", "sim", "support",
                  "uplink")


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def local_url(self, path: str = "/", scheme: str = "http") -> str:
        """How a process on this box reaches an HTTP listener here: a wildcard means loopback."""
        return f"{scheme}://{self.local()}{path}"

    def local(self) -> Address:
        """Where a process on this box reaches a listener here: a wildcard means loopback."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)
        return Address(host, self.port)

    @property
    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


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
    # Per client: the hub's backlog during a restart at the rush needs a few MiB; this bounds
    # what a client that subscribes and goes away can make the broker hold.
    max_queued_mib: int = 32
    # Connections on the LAN listener (terminals, screens); the hub's loopback listener has its own.
    max_connections: int = 256

    @property
    def terminal_address(self) -> Address:
        """Where a terminal on this box connects: the LAN listener (reached over loopback when
        it listens on every address), else the hub's own listener (development, tests)."""
        return self.lan_listen.local() if self.lan_listen is not None else self.listen


@dataclass(frozen=True)
class ApiConfig:
    listen: Address
    token: str = field(repr=False)
    # Optional digits-only PIN an installer types on the box's page instead of the long token.
    installer_pin: str = field(default="", repr=False)
    token_file: Path | None = None  # where the token was read from (api.token_file), if not inline
    # HTTPS with the box's own certificate (edgehub provision makes it). A listener off loopback
    # with none named (a config from before HTTPS) uses ``{data_dir}/tls/``, where the hub makes
    # one at its first start (``tls_made_by_hub``), unless plain_http says plain HTTP is meant.
    tls_cert_file: Path | None = None
    tls_key_file: Path | None = None
    plain_http: bool = False
    tls_made_by_hub: bool = False

    @property
    def tls(self) -> bool:
        return self.tls_cert_file is not None

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    def local_url(self, path: str = "/") -> str:
        return self.listen.local_url(path, self.scheme)


MAX_COMMIT_WINDOW_MS = 50  # every ack waits up to this for its group commit


def commit_window_problem(value: float) -> str | None:
    """What is wrong with ``journal.commit_window_ms`` (also the benchmarks' ``--commit-window-ms``)."""
    return None if 0 <= value <= MAX_COMMIT_WINDOW_MS else f"must be 0 to {MAX_COMMIT_WINDOW_MS} ms"


def _keep_days_problem(value: float) -> str | None:
    return None if value == 0 or 7 <= value <= 3650 else "must be 0 (keep everything) or 7 to 3650 days"


@dataclass(frozen=True)
class JournalConfig:
    path: Path
    commit_window_ms: float = 2.0
    keep_days: float = 90.0  # 0: keep everything (edgehub/store/retention.py)


# Bytes of an MQTT PUBLISH besides its payload that an order's packet is allowed: the fixed
# header, topic, packet id and MQTT 5 properties (a response topic, correlation data).
PUBLISH_HEADROOM = 4096


@dataclass(frozen=True)
class LimitsConfig:
    max_order_bytes: int = 65_536
    max_lines: int = 200
    max_qty: int = 999
    max_text: int = 200
    # Orders (and re-sends) one terminal may send: a bucket of order_burst, refilled at
    # orders_per_s; beyond it the order is acked "rejected" with "slow down" (edgehub/quota.py).
    orders_per_s: float = 50.0
    order_burst: int = 500


# pos: a till; handheld: a waiter's handheld (orders at the table, what a till may do); kds: a
# kitchen screen; kiosk: a self-order kiosk, which guests use; pager: a pager system's gateway;
# display: a customer display at the pass.
TERMINAL_KINDS = ("pos", "handheld", "kds", "kiosk", "pager", "display")
# Kinds with a page on the box, opened with the terminal's screen secret: kitchen screens
# (/kds/{station}) and customer displays (/pickup).
SCREEN_KINDS = ("kds", "display")
# What a bump bar (a keyboard by another name) or keyboard does on a kitchen screen, each action
# with the ``KeyboardEvent.key`` names that trigger it; ``select`` is positional: its Nth key
# selects the Nth ticket of the page. "Space" stands for " ". docs/kitchen.md, Bump bars.
SCREEN_KEY_ACTIONS = ("select", "bump", "start", "recall", "next_page", "prev_page", "next", "prev",
                      "raise", "lower")
DEFAULT_SCREEN_KEYS: Mapping[str, tuple[str, ...]] = {
    "select": ("1", "2", "3", "4", "5", "6", "7", "8", "9"),
    "bump": ("Enter",),
    "start": (" ",),
    "recall": ("r", "Backspace"),
    "next_page": ("PageDown",),
    "prev_page": ("PageUp",),
    "next": ("ArrowRight", "ArrowDown"),
    "prev": ("ArrowLeft", "ArrowUp"),
    "raise": ("+",),
    "lower": ("-",),
}


@dataclass(frozen=True)
class TerminalConfig:
    id: str
    kind: str
    password: str = field(repr=False)
    # kds: the stations the screen shows and drives (None: every station, as before per-screen
    # stations existed). pos/handheld/kiosk: the pinpad roles it may start payments on (None: every one).
    stations: tuple[str, ...] | None = None
    pinpad_roles: tuple[str, ...] | None = None
    # kds/display: the secret of its web page (/kds/{station} or /pickup); a kitchen screen's
    # drives only its stations.
    screen_token: str = field(default="", repr=False)
    # kds/display: the page's type size (1 = the default, readable from about 2 m), whether it
    # sounds on a new or late ticket (kds) or a ready order (display), and (kds) the keys.
    screen_scale: float = 1.0
    screen_sound: bool = True
    screen_keys: Mapping[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SCREEN_KEYS))

    def drives(self, station: str) -> bool:
        return self.kind == "kds" and (self.stations is None or station in self.stations)

    def may_pay_on(self, role: str) -> bool:
        return self.kind in ("pos", "handheld", "kiosk") and (self.pinpad_roles is None or role in self.pinpad_roles)


@dataclass(frozen=True)
class LogConfig:
    level: str = "info"
    components: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class StationConfig:
    """One kitchen station (grill, wok, bar, cold ...): when its tickets turn amber and red,
    and which printer role (if any) prints its tickets in large type."""

    name: str
    amber_after_s: float = 480.0
    red_after_s: float = 720.0
    printer_role: str | None = None


MAX_UNLISTED_STATIONS = 256


@dataclass(frozen=True)
class KitchenConfig:
    """``[kitchen]``: where order lines go and how long a ticket may wait.

    A line goes to its own ``station`` if it names one, else to the station a rule gives its sku
    or category, else to ``default_station``. A station not listed in ``stations`` still gets
    tickets (nothing is dropped), with the kitchen-wide thresholds and no printer.
    """

    default_station: str = "kitchen"
    amber_after_s: float = 480.0
    red_after_s: float = 720.0
    stations: Mapping[str, StationConfig] = field(default_factory=dict)
    sku_rules: Mapping[str, str] = field(default_factory=dict)
    category_rules: Mapping[str, str] = field(default_factory=dict)
    # A screen secret that drives every station (optional; each kds terminal has its own, which
    # drives only its stations). Never the API token: docs/security.md.
    screen_token: str = field(default="", repr=False)
    # An open ticket untouched this long is closed as ``expired`` (docs/kitchen.md).
    expire_open_after_h: float = 12.0
    # Open tickets per station held in memory for screens; older ones stay in the journal.
    max_open_per_station: int = 500
    # A ready order's number stays on the pickup board this long unless it is served first.
    ready_on_board_s: float = 600.0

    # Stations not listed, as met (an order line may name any station); bounded, as they come
    # from terminals. Looked up for every ticket event at the rush.
    _unlisted: dict[str, StationConfig] = field(default_factory=dict, init=False, repr=False, compare=False)

    def station(self, name: str) -> StationConfig:
        found = self.stations.get(name) or self._unlisted.get(name)
        if found is not None:
            return found
        found = StationConfig(name, self.amber_after_s, self.red_after_s, None)
        if len(self._unlisted) < MAX_UNLISTED_STATIONS:
            self._unlisted[name] = found
        return found


ROLE_KINDS: dict[str, str] = {
    "kitchen-printer": "printer",
    "receipt-printer": "printer",
    "scale": "scale",
    "scanner": "scanner",
    "pinpad": "pinpad",
}
ROLE_RE = re.compile(r"^(kitchen-printer|receipt-printer|scale|scanner|pinpad)(\.[a-z0-9][a-z0-9_-]{0,31})?\Z")
DEVICE_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}\Z")


def role_kind(role: str) -> str:
    """The device kind a role takes (``kitchen-printer.grill`` → ``printer``)."""
    return ROLE_KINDS[role.partition(".")[0]]


def role_name_problem(name: str) -> str | None:
    if ROLE_RE.match(name):
        return None
    return (f"{name!r} must be one of {', '.join(ROLE_KINDS)}, optionally with .name "
            "(lowercase letters, digits, - or _), e.g. kitchen-printer.grill")


def role_devices_problem(devices: list[Any]) -> str | None:
    for device in devices:
        if not isinstance(device, str) or not DEVICE_ID_RE.match(device):
            return f"{device!r} is not a device id (letters, digits and . _ : -)"
    if len(set(devices)) != len(devices):
        return "lists a device twice"
    return None


@dataclass(frozen=True)
class RoleConfig:
    """A role and the devices that may serve it: primary first, then spares in order."""

    name: str
    devices: tuple[str, ...] = ()
    failback_after_s: float = 30.0

    @property
    def kind(self) -> str:
        return role_kind(self.name)


@dataclass(frozen=True)
class DiscoveryConfig:
    """``[discovery]``: where the box looks for devices and how often the watchdog asks them."""

    usb: bool = True
    serial: bool = True
    lan: bool = True
    subnets: tuple[str, ...] = ()  # CIDRs swept for raw-9100 printers (mDNS finds the rest)
    serial_ports: tuple[str, ...] = ()  # ports probed besides the ones the kernel lists
    probe_interval_s: float = 0.3  # watchdog interval for printers (others are probed less often)
    printer_missed_probes: int = 2  # probes in a row a printer leaves unanswered before it is failed
    scan_interval_s: float = 5.0  # USB/serial polling (when no hotplug events) and LAN sweeps
    advertise: bool = True  # announce the hub as _edgehub._tcp on the store LAN
    # USB ids ("vvvv" or "vvvv:pppp", hex) taken as barcode scanners besides the known makers':
    # HID ones are read as keyboards (hid_scanner), USB-COM ones as serial scanners.
    scanner_usb_ids: tuple[str, ...] = ()


DEVICE_DRIVERS = ("escpos", "hid_scanner", "serial_scanner", "mt8217", "cas", "zvt")
# The kind of device each driver drives (each driver class's ``kind``; a test keeps them equal):
# what a role bound to a configured [[device]] is checked against.
DEVICE_KINDS = {"escpos": "printer", "hid_scanner": "scanner", "serial_scanner": "scanner", "mt8217": "scale",
                "cas": "scale", "zvt": "pinpad"}
# What only a ZVT terminal takes: its password (secret: inline or in a file), currency (ISO 4217)
# and how the watchdog probes it (drivers.zvt.PROBE_METHODS; a test keeps them equal).
ZVT_KEYS = ("currency", "password", "password_file", "probe", "probe_interval_s")
ZVT_PROBES = ("link", "status")
# Driver settings a [[device]] may carry (serial framing, CAS mode, USB identity, printer confirm,
# a ZVT terminal's own).
DEVICE_EXTRA_KEYS = ("baudrate", "bytesize", "confirm", "mode", "parity", "serial_number", "stopbits", "vendor",
                     *ZVT_KEYS)
# A printer's profile keys (drivers.escpos_profile.PROFILE_KEYS; a test keeps them equal).
PRINTER_PROFILE_KEYS = ("profile", "paper_mm", "columns", "dots", "codepage", "cjk", "status", "flow_control")
# How an escpos printer confirms a job (drivers.escpos.CONFIRM_MODES; a test keeps them equal).
PRINTER_CONFIRM_MODES = ("auto", "process-id", "status")


@dataclass(frozen=True)
class StaticDeviceConfig:
    """A ``[[device]]`` the installer names: no discovery needed (printers that advertise
    nothing, a pinpad on the LAN). ``id`` defaults to one derived from the address."""

    driver: str
    transport: str
    address: str
    id: str = ""
    model: str = ""
    extra: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class CloudConfig:
    """``[cloud]``: the uplink to the chain's cloud broker (MQTT 5) and the outbox's policy.

    The outbox policy (telemetry TTL and quota, disk thresholds) applies even with the link
    disabled: rows wait in the outbox either way. See docs/cloud.md.
    """

    enabled: bool = False
    url: str = ""
    tls: bool = True
    host: str = ""
    port: int = 8883
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    username: str = ""
    password: str = field(default="", repr=False)
    client_id: str = ""
    keepalive_s: int = 30
    connect_timeout_s: float = 10.0
    # Liveness (docs/cloud.md, "Connection"): a ping after ping_interval_s without a byte from the
    # cloud; ``suspect`` once it is ping_timeout_s overdue; down after down_after_s without a byte.
    ping_interval_s: float = 4.0
    ping_timeout_s: float = 2.0
    down_after_s: float = 9.0
    # While the route is silent, a TCP connect this often (no back-off); refused connections back
    # off up to reconnect_max_s.
    probe_every_s: float = 1.0
    reconnect_max_s: float = 30.0
    max_inflight: int = 200
    live_slots: int = 32
    replay_rate: float = 500.0
    replay_batch: int = 250
    reconcile_every_s: float = 3600.0
    telemetry_ttl_h: float = 72.0
    telemetry_quota_mib: float = 64.0
    disk_warn_free_mib: int = 512
    disk_hard_free_mib: int = 128
    telemetry_every_s: float = 60.0  # the box's own sample (edgehub/uplink/telemetry.py); 0: none


@dataclass(frozen=True)
class QrConfig:
    """``[payments.qr]``: scan-to-pay (付款码) through the chain's payment gateway (docs/payments.md).
    Keys are read from files at start and never logged; ``acquirer = ""`` turns QR pay off."""

    acquirer: str = ""
    gateway_url: str = ""
    app_id: str = ""
    private_key_file: Path | None = None  # the merchant application's RSA private key (PEM)
    gateway_public_key_file: Path | None = None  # the gateway's RSA public key (PEM), checks its answers
    ca_file: Path | None = None  # CA bundle for the gateway's TLS certificate; none: the system's
    subject: str = ""  # what the guest's wallet shows for the order; empty: the store's name
    connect_timeout_s: float = 3.0
    answer_timeout_s: float = 10.0
    poll_interval_s: float = 3.0
    pay_deadline_s: float = 60.0
    scan_wait_s: float = 60.0
    not_found_after_s: float = 300.0

    @property
    def enabled(self) -> bool:
        return bool(self.acquirer)


@dataclass(frozen=True)
class PaymentsConfig:
    """``[payments]``: tenders besides cards (cash with its drawer, QR codes) and the store's currency."""

    currency: str = "CNY"
    drawer_role: str = "receipt-printer"  # the printer role whose drawer a cash payment opens; "": none
    drawer_open_level: str = "high"  # the level of kick-connector pin 3 (DLE EOT 1 bit 2) that means open
    qr: QrConfig = field(default_factory=QrConfig)


@dataclass(frozen=True)
class ReportsConfig:
    """``[reports]``: the day's close. A business day starts at ``day_starts_at`` local time (a
    restaurant that closes at 02:00 counts those hours to the evening before)."""

    day_starts_at: str = "05:00"
    timezone: str = ""  # an IANA name such as Asia/Shanghai; empty: the box's local time
    print_role: str = "receipt-printer"  # where the close prints; "": not printed
    print_at_close: bool = True

    @property
    def day_start_minutes(self) -> int:
        hours, _, minutes = self.day_starts_at.partition(":")
        return int(hours) * 60 + int(minutes)


PAIR_PREFER = ("primary", "standby")
PAIR_VRRP_MODES = ("external", "managed")


@dataclass(frozen=True)
class PairConfig:
    """``[pair]``: this box is one of two boxes of the store (docs/pair.md). The box that serves
    holds the store's floating ``address``; the other follows its journal record by record and
    takes the address (and the store) over when the first one dies."""

    box: str  # this box's name (the other box has its own)
    listen: Address  # this box's pair link, on its own fixed LAN address (also VRRP's source)
    peer: Address  # the other box's pair link, on its own fixed LAN address
    secret: bytes = field(repr=False)  # shared by both boxes (pair.secret_file)
    address: str  # the floating address terminals use, CIDR ("192.168.1.10/24")
    interface: str  # the LAN interface that carries it
    router_id: int  # VRRP virtual router id, unique on the LAN (1-255)
    prefer: str = "primary"  # the box that takes the address when both start together
    vrrp: str = "external"  # external: keepalived under systemd; managed: the hub starts it
    advert_ms: int = 100  # VRRP advert interval: the standby takes over ~3.6 adverts after the last
    standby_timeout_ms: int = 500  # a standby that confirms nothing this long: serve alone (loudly)
    peer_timeout_ms: int = 1500  # a link silent this long is gone
    backlog_mib: int = 64  # records kept in memory for a standby that returns
    failback: bool = False  # the preferred box takes the store back once in sync (never mid-rush otherwise)
    failback_after_s: float = 60.0  # how long it must have been in sync first
    failback_quiet_s: float = 10.0  # and how long without an order (never in the middle of a rush)
    keepalived_config: Path | None = None  # where `edgehub pair write-config` puts keepalived.conf

    @property
    def vip(self) -> str:
        return self.address.partition("/")[0]


@dataclass(frozen=True)
class ClockConfig:
    """``[clock]``: the box serves time to the store's LAN (chrony, docs/box.md). ``servers`` and
    ``pools`` are where it takes time from while the WAN is up; with none reachable it serves its
    own clock at ``local_stratum``, so tills and screens stay in step with it and each other."""

    serve: bool = True
    servers: tuple[str, ...] = ("ntp.aliyun.com", "ntp.tencent.com")
    pools: tuple[str, ...] = ("cn.pool.ntp.org",)
    allow: tuple[str, ...] = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
    local_stratum: int = 10
    port: int = 123
    command_port: int = 323
    config_file: Path = Path("/etc/edgehub/chrony/edgehub.conf")  # default: beside edgehub.toml
    check_every_s: float = 30.0


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
    kitchen: KitchenConfig = field(default_factory=KitchenConfig)
    roles: tuple[RoleConfig, ...] = ()
    discovery: DiscoveryConfig = field(default_factory=DiscoveryConfig)
    devices: tuple[StaticDeviceConfig, ...] = ()
    cloud: CloudConfig = field(default_factory=CloudConfig)
    payments: PaymentsConfig = field(default_factory=PaymentsConfig)
    reports: ReportsConfig = field(default_factory=ReportsConfig)
    clock: ClockConfig = field(default_factory=ClockConfig)
    pair: PairConfig | None = None

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

    def entries(self, data: Mapping[str, Any], name: str) -> Iterator[tuple[str, dict[str, Any]]]:
        """``[[name]]``: each entry that is a table, with its path ``name[i]``; the rest reported."""
        raw = data.get(name, [])
        if not isinstance(raw, list):
            self.problem(name, f"must be an array of tables: [[{name}]]")
            return
        for i, entry in enumerate(raw):
            if isinstance(entry, dict):
                yield f"{name}[{i}]", entry
            else:
                self.problem(f"{name}[{i}]", "must be a table")

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
        if (isinstance(value, bool) and bool not in kinds) or not isinstance(value, kinds):
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


def control_char_problem(value: str) -> str | None:
    """Control characters (a newline, NUL, ESC …) in an id or secret: each value ends up in a
    generated file (ACL, password file, TOML), a topic or a log line, where one would split it."""
    for i, c in enumerate(value):
        if ord(c) < 32 or 127 <= ord(c) < 160 or c in "\u2028\u2029":
            return f"must not contain control characters (found {c!r} at position {i})"
    return None


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
        elif problem := control_char_problem(value):
            ck.problem(f"{path}_file", f"{secret_path}: {problem}")
            return ""
        return str(value)
    if inline is None:
        if required:
            ck.problem(path, f"missing required key (or {key}_file)")
        return ""
    if not inline:
        ck.problem(path, "must not be empty")
    elif problem := control_char_problem(inline):
        ck.problem(path, problem)
        return ""
    return str(inline)


MAX_CONFIG_CHARS = 1 << 20


def load_config(path: str | Path) -> Config:
    source = Path(path)
    try:
        text = source.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{source}: not UTF-8 text: {exc}"]) from exc
    if len(text) > MAX_CONFIG_CHARS:
        raise ConfigError([f"{source}: {len(text)} characters; a config is at most {MAX_CONFIG_CHARS}"])
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError([f"{source}: not valid TOML: {exc}"]) from exc
    except RecursionError:
        raise ConfigError([f"{source}: not valid TOML: arrays or tables nested too deeply"]) from None
    return parse_config(data, source, text)


def parse_config(data: Mapping[str, Any], source: Path, text: str = "") -> Config:
    ck = _Checker(source, text)
    base = source.resolve().parent
    known_tables = {"store", "paths", "broker", "api", "journal", "limits", "log", "terminal", "kitchen",
                    "role", "discovery", "device", "cloud", "payments", "reports", "clock", "pair"}
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
         "max_queued_messages", "max_packet_kib", "max_queued_mib", "max_connections"},
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
        max_queued_mib=ck.get(t, "broker.max_queued_mib", int, 32,
                              check=lambda v: None if 1 <= v <= 1024 else f"must be 1 to 1024 MiB, got {v}"),
        max_connections=ck.get(t, "broker.max_connections", int, 256,
                               check=lambda v: None if 8 <= v <= 10_000 else f"must be 8 to 10000, got {v}"),
    )
    _listener_problems(ck, broker)

    t = ck.table(data, "api", {"listen", "token", "token_file", "installer_pin", "installer_pin_file",
                               "tls_cert_file", "tls_key_file", "plain_http"})
    api_listen = ck.get(t, "api.listen", str, "127.0.0.1:8080", check=_address_check)
    cert = ck.get(t, "api.tls_cert_file", str, None)
    key = ck.get(t, "api.tls_key_file", str, None)
    api = ApiConfig(
        listen=parse_address(api_listen) if api_listen else Address("127.0.0.1", 8080),
        token=_secret(ck, base, t, "api.token"),
        installer_pin=_secret(ck, base, t, "api.installer_pin", required=False),
        token_file=base / t["token_file"] if isinstance(t.get("token_file"), str) else None,
        tls_cert_file=base / cert if cert else None,
        tls_key_file=base / key if key else None,
        plain_http=bool(ck.get(t, "api.plain_http", bool, False)),
    )
    if (cert is None) != (key is None):
        ck.problem("api.tls_key_file" if key is None else "api.tls_cert_file",
                   "give both tls_cert_file and tls_key_file (edgehub provision makes them)")
    if cert is None and key is None and not api.plain_http and not api.listen.is_loopback:
        # Off loopback the token, PIN and session must not cross the LAN in clear: a config without
        # a certificate (written before HTTPS) gets one the hub makes in its data directory.
        api = replace(api, tls_cert_file=data_dir / "tls" / "box.crt",
                                  tls_key_file=data_dir / "tls" / "box.key", tls_made_by_hub=True)
    if api.installer_pin and not (api.installer_pin.isascii() and api.installer_pin.isdigit()
                                  and len(api.installer_pin) >= 6):
        ck.problem("api.installer_pin", "must be digits only, at least 6 of them (a TOML string, e.g. \"482913\")")
    if api.token and len(api.token) < 16:
        ck.problem("api.token", "must be at least 16 characters (generate one with `edgehub provision`)")

    t = ck.table(data, "journal", {"path", "commit_window_ms", "keep_days"})
    journal = JournalConfig(
        path=base / ck.get(t, "journal.path", str, str(data_dir / "journal.sqlite")),
        commit_window_ms=float(ck.get(t, "journal.commit_window_ms", (int, float), 2.0,
                                      check=commit_window_problem)),
        keep_days=float(ck.get(t, "journal.keep_days", (int, float), 90.0, check=_keep_days_problem)),
    )

    t = ck.table(data, "limits", {"max_order_bytes", "max_lines", "max_qty", "max_text", "orders_per_s",
                                  "order_burst"})
    limits = LimitsConfig(
        max_order_bytes=ck.get(t, "limits.max_order_bytes", int, 65_536, check=_positive),
        max_lines=ck.get(t, "limits.max_lines", int, 200, check=_positive),
        max_qty=ck.get(t, "limits.max_qty", int, 999, check=_positive),
        max_text=ck.get(t, "limits.max_text", int, 200, check=_positive),
        orders_per_s=float(ck.get(t, "limits.orders_per_s", (int, float), 50.0,
                                  check=lambda v: None if 0 <= v <= 100_000
                                  else f"must be 0 (no quota) to 100000, got {v}")),
        order_burst=ck.get(t, "limits.order_burst", int, 500,
                           check=lambda v: None if 1 <= v <= 1_000_000 else f"must be 1 to 1000000, got {v}"),
    )
    if limits.max_order_bytes > broker.max_packet_kib * 1024 - PUBLISH_HEADROOM:
        # An order the hub would take must fit in a packet the broker takes, with its topic and
        # MQTT 5 properties: else it is refused by the broker, without a word to the hub.
        ck.problem("limits.max_order_bytes", f"must be at most broker.max_packet_kib x 1024 - {PUBLISH_HEADROOM} "
                                             f"({broker.max_packet_kib * 1024 - PUBLISH_HEADROOM}): room for the "
                                             "PUBLISH packet's topic and properties")

    t = ck.table(data, "log", {"level", "components"})

    def level_check(v: Any) -> str | None:
        return None if v in LOG_LEVELS else f"must be one of {', '.join(LOG_LEVELS)}"

    components = ck.get(t, "log.components", dict, {})
    for name, value in (components or {}).items():
        if not isinstance(value, str) or level_check(value):
            ck.problem(f"log.components.{name}", f"must be one of {', '.join(LOG_LEVELS)}")
        elif "." not in name and name not in LOG_COMPONENTS:
            ck.problem(f"log.components.{name}", f"{name!r} is not a component (known: {', '.join(LOG_COMPONENTS)}; "
                       "or a full logger name such as edgehub.kitchen.screens or drivers.escpos)")
        elif "." in name and not name.startswith(("edgehub.", "drivers")):
            ck.problem(f"log.components.{name}", f"{name!r}: a logger name with a dot starts with edgehub. or "
                       "drivers.")
    log = LogConfig(level=ck.get(t, "log.level", str, "info", check=level_check),
                    components=dict(components or {}))

    terminals = _terminals(ck, base, data, broker.hub_user)
    screen_tokens: dict[str, str] = {}
    for i, terminal in enumerate(terminals):
        if not terminal.screen_token:
            continue
        if terminal.screen_token == api.token:
            ck.problem(f"terminal[{i}].screen_token", "must not be the API token: a kitchen tablet keeps it where "
                       "anyone at the pass can read it")
        elif terminal.screen_token in screen_tokens:
            ck.problem(f"terminal[{i}].screen_token", f"is also {screen_tokens[terminal.screen_token]}'s")
        screen_tokens[terminal.screen_token] = terminal.id

    kitchen = _kitchen(ck, base, data, api.token)
    roles = _roles(ck, data)
    discovery = _discovery(ck, data)
    devices = _static_devices(ck, base, data)
    cloud = _cloud(ck, base, data, store.id)
    payments = _payments(ck, base, data)
    reports = _reports(ck, data)
    clock = _clock(ck, base, data)
    _cross_references(ck, api, broker, roles, devices)
    pair = _pair(ck, base, data, broker, api)

    if ck.problems:
        raise ConfigError(ck.problems)
    return Config(source=source, store=store, paths=paths, broker=broker, api=api, journal=journal,
                  limits=limits, log=log, terminals=tuple(terminals), kitchen=kitchen, roles=roles,
                  discovery=discovery, devices=devices, cloud=cloud, payments=payments, reports=reports,
                  clock=clock, pair=pair)


TERMINAL_KEYS = ("id", "kind", "password", "password_file", "stations", "pinpad_roles", "screen_token",
                 "screen_token_file", "screen_scale", "screen_sound", "screen_keys")
SCREEN_KEYS = ("screen_token", "screen_token_file", "screen_scale", "screen_sound")


def _terminals(ck: _Checker, base: Path, data: Mapping[str, Any], hub_user: str) -> list[TerminalConfig]:
    terminals: list[TerminalConfig] = []
    seen: set[str] = set()
    for prefix, entry in ck.entries(data, "terminal"):
        for key in entry:
            if key not in TERMINAL_KEYS:
                ck.problem(f"{prefix}.{key}", f"unknown key (known: {', '.join(TERMINAL_KEYS)})")
        tid = ck.get(entry, f"{prefix}.id", str, check=_id_check)
        if tid and (tid in seen or tid == hub_user):
            ck.problem(f"{prefix}.id", f"{tid!r} is used twice")
        elif tid and tid.startswith(RESERVED_PREFIX):
            ck.problem(f"{prefix}.id", f"{tid!r}: ids starting with {RESERVED_PREFIX!r} are the box's own clients")
        seen.add(tid or "")
        kind = ck.get(entry, f"{prefix}.kind", str, "pos", check=lambda v: None if v in TERMINAL_KINDS
                      else f"must be one of {', '.join(TERMINAL_KINDS)}")
        password = _secret(ck, base, entry, f"{prefix}.password")
        stations = ck.get(entry, f"{prefix}.stations", list, None, check=_stations_problem)
        pinpads = ck.get(entry, f"{prefix}.pinpad_roles", list, None, check=_pinpad_roles_problem)
        screen_token = _secret(ck, base, entry, f"{prefix}.screen_token", required=False)
        scale = float(ck.get(entry, f"{prefix}.screen_scale", (int, float), 1.0, check=lambda v: None
                             if 0.5 <= v <= 3 else f"must be from 0.5 to 3 (1 = the default size), got {v}"))
        sound = bool(ck.get(entry, f"{prefix}.screen_sound", bool, True))
        keys = _screen_keys(ck, entry, f"{prefix}.screen_keys")
        if kind != "kds":
            for key in ("stations", "screen_keys"):
                if key in entry:
                    ck.problem(f"{prefix}.{key}", f"only kitchen screens (kind = \"kds\") have {key}")
        if kind not in SCREEN_KINDS:
            for key in SCREEN_KEYS:
                if key in entry:
                    ck.problem(f"{prefix}.{key}", f"only kitchen screens and customer displays (kind = \"kds\" "
                               f"or \"display\") have {key}")
        if kind not in ("pos", "handheld", "kiosk") and "pinpad_roles" in entry:
            ck.problem(f"{prefix}.pinpad_roles", f"a terminal of kind {kind!r} never takes a payment "
                       "(only pos, handheld and kiosk do)")
        if screen_token and len(screen_token) < 16:
            ck.problem(f"{prefix}.screen_token", "must be at least 16 characters")
        terminals.append(TerminalConfig(
            id=tid or "", kind=kind or "pos", password=password,
            stations=tuple(stations) if stations is not None else None,
            pinpad_roles=tuple(pinpads) if pinpads is not None else None,
            screen_token=screen_token, screen_scale=scale, screen_sound=sound, screen_keys=keys))
    return terminals


def _screen_keys(ck: _Checker, entry: Mapping[str, Any], path: str) -> dict[str, tuple[str, ...]]:
    """A kitchen screen's keys: the defaults, with the actions the table names replaced. A key
    bound to two actions is a problem (a bump bar's key must do one thing)."""
    keys = dict(DEFAULT_SCREEN_KEYS)
    table = ck.get(entry, path, dict, None)
    if table is None:
        return keys
    for action, names in table.items():
        where = f"{path}.{action}"
        if action not in SCREEN_KEY_ACTIONS:
            ck.problem(where, f"unknown action (known: {', '.join(SCREEN_KEY_ACTIONS)})")
            continue
        if not isinstance(names, list) or not all(isinstance(n, str) and 0 < len(n) <= 24 for n in names):
            ck.problem(where, f"must be a list of key names such as [\"Enter\", \"b\"], got {names!r}")
            continue
        if action == "select" and len(names) > 9:
            ck.problem(where, f"has {len(names)} keys; select takes at most 9 (one per position)")
            continue
        keys[action] = tuple(" " if n == "Space" else n for n in names)
    owner: dict[str, str] = {}
    for action, names in keys.items():
        for name in names:
            folded = name.lower() if len(name) == 1 else name
            if folded in owner and owner[folded] != action:
                shown = "Space" if name == " " else name
                ck.problem(path, f"key {shown!r} is bound to both {owner[folded]} and {action}")
            owner[folded] = action
    return keys


def _stations_problem(values: list[Any]) -> str | None:
    for value in values:
        if not isinstance(value, str) or _station_check(value):
            return f"{value!r} is not a station name (lowercase letters, digits, - or _, max 32)"
    return None


def _pinpad_roles_problem(values: list[Any]) -> str | None:
    for value in values:
        if not isinstance(value, str) or role_name_problem(value) or role_kind(value) != "pinpad":
            return f"{value!r} is not a pinpad role (pinpad or pinpad.name)"
    return None


def _listener_problems(ck: _Checker, broker: BrokerConfig) -> None:
    """The hub's listener is the box's own (client ids are free there: the hub, edgehub doctor,
    an installer's mosquitto_sub); terminals use the LAN listener, where Mosquitto binds each
    client id to its user. So the hub's listener stays on loopback, on a port of its own."""
    if not broker.listen.is_loopback:
        ck.problem("broker.listen", f"{broker.listen} must be a loopback address (127.0.0.1 or ::1): it is the "
                   "hub's own listener; terminals on the store LAN connect to broker.lan_listen")
    lan = broker.lan_listen
    if lan is not None and lan.port == broker.listen.port and (
            lan.host in ("0.0.0.0", "::") or lan.local() == broker.listen.local()):
        ck.problem("broker.lan_listen", f"{lan} shares port {lan.port} with broker.listen ({broker.listen}); "
                   "give the hub's listener a port of its own, e.g. listen = \"127.0.0.1:1884\"")


def _roles(ck: _Checker, data: Mapping[str, Any]) -> tuple[RoleConfig, ...]:
    """``[[role]]`` entries: which devices serve a role, primary first (none: no roles bound)."""
    roles: list[RoleConfig] = []
    seen: set[str] = set()
    for prefix, entry in ck.entries(data, "role"):
        for key in entry:
            if key not in {"name", "devices", "failback_after_s"}:
                ck.problem(f"{prefix}.{key}", "unknown key (known: devices, failback_after_s, name)")
        name = ck.get(entry, f"{prefix}.name", str, check=role_name_problem)
        if name and name in seen:
            ck.problem(f"{prefix}.name", f"{name!r} is bound twice")
        seen.add(name or "")
        devices = ck.get(entry, f"{prefix}.devices", list, [], check=role_devices_problem)
        failback = ck.get(entry, f"{prefix}.failback_after_s", (int, float), 30.0,
                          check=lambda v: None if 0 <= v <= 86_400 else "must be 0 to 86400 seconds")
        if name:
            roles.append(RoleConfig(name, tuple(devices or ()), float(failback)))
    return tuple(roles)


def _printer_role_problem(role: str) -> str | None:
    """A station's ``printer_role`` names a role (what the API binds), and one that prints."""
    if (problem := role_name_problem(role)) is not None:
        return f"is not a role: {problem}"
    if (kind := role_kind(role)) != "printer":
        return (f"{role!r} is a {kind} role; a station's tickets print on kitchen-printer or receipt-printer "
                "(optionally with .name)")
    return None


def _cross_references(ck: _Checker, api: ApiConfig, broker: BrokerConfig, roles: tuple[RoleConfig, ...],
                      devices: tuple[StaticDeviceConfig, ...]) -> None:
    """What one part of the file names in another: the devices a role binds (a configured device
    of another kind can never serve it), and the listeners (two on one port: one fails to start)."""
    configured = {d.id: d for d in devices if d.id}
    for i, role in enumerate(roles):
        for device_id in role.devices:
            device = configured.get(device_id)
            kind = DEVICE_KINDS.get(device.driver) if device is not None else None
            if device is not None and kind != role.kind:
                ck.problem(f"role[{i}].devices", f"{device_id!r} is a {kind} ([[device]] with driver "
                           f"{device.driver!r}), but {role.name} takes a {role.kind}")
    for key, other in (("broker.listen", broker.listen), ("broker.lan_listen", broker.lan_listen)):
        if other is not None and addresses_overlap(api.listen, other) and api.listen.port != 0:
            ck.problem("api.listen", f"{api.listen} and {key} {other} share port {other.port}: one of the two "
                       "listeners cannot start; give the box's page another port")


def addresses_overlap(a: Address, b: Address) -> bool:
    """Would listeners on ``a`` and ``b`` fight over one port (a wildcard covers every address)?"""
    if a.port != b.port:
        return False

    def ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
        return None if host == "localhost" else ipaddress.ip_address(host)

    x, y = ip(a.host), ip(b.host)
    if x is None or y is None:  # localhost: 127.0.0.1 and/or ::1
        other = y if x is None else x
        return other is None or other.is_unspecified or other.is_loopback
    return x == y or x.is_unspecified or y.is_unspecified


STATION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")  # the same rule as an order line's station


def _station_check(value: str) -> str | None:
    return None if STATION_RE.match(value) else (
        f"{value!r} must be a station name: lowercase letters, digits, - or _ (max 32)")


def _seconds(value: int | float) -> str | None:
    return None if 0 < value <= 86_400 else f"must be more than 0 and at most 86400 seconds, got {value}"


def _kitchen(ck: _Checker, base: Path, data: Mapping[str, Any], api_token: str) -> KitchenConfig:
    t = ck.table(data, "kitchen", {"default_station", "amber_after_s", "red_after_s", "stations", "rules",
                                   "screen_token", "screen_token_file", "expire_open_after_h",
                                   "max_open_per_station", "ready_on_board_s"})
    default_station = ck.get(t, "kitchen.default_station", str, "kitchen", check=_station_check) or "kitchen"
    amber = float(ck.get(t, "kitchen.amber_after_s", (int, float), 480.0, check=_seconds))
    red = float(ck.get(t, "kitchen.red_after_s", (int, float), 720.0, check=_seconds))
    if amber >= red:
        ck.problem("kitchen.red_after_s", f"must be later than amber_after_s ({amber:g}), got {red:g}")
    expire_h = float(ck.get(t, "kitchen.expire_open_after_h", (int, float), 12.0, check=lambda v: None
                            if 1 <= v <= 168 else f"must be from 1 to 168 hours (a week), got {v}"))
    max_open = int(ck.get(t, "kitchen.max_open_per_station", int, 500, check=lambda v: None
                          if 50 <= v <= 5000 else f"must be from 50 to 5000 tickets, got {v}"))
    on_board = float(ck.get(t, "kitchen.ready_on_board_s", (int, float), 600.0, check=lambda v: None
                            if 10 <= v <= 7200 else f"must be from 10 to 7200 seconds, got {v}"))
    screen_token = _secret(ck, base, t, "kitchen.screen_token", required=False)
    if screen_token and len(screen_token) < 16:
        ck.problem("kitchen.screen_token", "must be at least 16 characters")
    if screen_token and screen_token == api_token:
        ck.problem("kitchen.screen_token", "must not be the API token: a kitchen tablet keeps it where anyone "
                   "at the pass can read it")

    stations: dict[str, StationConfig] = {}
    raw_stations = ck.get(t, "kitchen.stations", dict, {}) or {}
    for name, entry in raw_stations.items():
        path = f"kitchen.stations.{name}"
        if _station_check(name):
            ck.problem(path, _station_check(name) or "")
            continue
        if not isinstance(entry, dict):
            ck.problem(path, f"must be a table, got {_kind(entry)}")
            continue
        known = {"amber_after_s", "red_after_s", "printer_role"}
        for key in entry:
            if key not in known:
                ck.problem(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        s_amber = float(ck.get(entry, f"{path}.amber_after_s", (int, float), amber, check=_seconds))
        s_red = float(ck.get(entry, f"{path}.red_after_s", (int, float), red, check=_seconds))
        if s_amber >= s_red:
            ck.problem(f"{path}.red_after_s",
                       f"must be later than amber_after_s ({s_amber:g}), got {s_red:g}")
        role = ck.get(entry, f"{path}.printer_role", str, None, check=_printer_role_problem)
        stations[name] = StationConfig(name, s_amber, s_red, role)

    rules = ck.get(t, "kitchen.rules", dict, {}) or {}
    for key in rules:
        if key not in ("sku", "category"):
            ck.problem(f"kitchen.rules.{key}", "unknown key (known: category, sku)")
    found: dict[str, dict[str, str]] = {}
    for kind in ("sku", "category"):
        table = ck.get(rules, f"kitchen.rules.{kind}", dict, {}) or {}
        found[kind] = {}
        for match, station in table.items():
            path = f"kitchen.rules.{kind}.{match}"
            if not isinstance(station, str):
                ck.problem(path, f"must be a station name, got {_kind(station)} {station!r}")
            elif problem := _station_check(station):
                ck.problem(path, problem)
            else:
                found[kind][match] = station
    return KitchenConfig(default_station=default_station, amber_after_s=amber, red_after_s=red,
                         stations=stations, sku_rules=found["sku"], category_rules=found["category"],
                         screen_token=screen_token, expire_open_after_h=expire_h,
                         max_open_per_station=max_open, ready_on_board_s=on_board)


def _cidr_problem(values: list[Any]) -> str | None:
    for value in values:
        if not isinstance(value, str):
            return f"{value!r} is not a CIDR string like \"192.168.1.0/24\""
        try:
            net = ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            return f"{value!r} is not a subnet: {exc}"
        if net.version != 4 or net.num_addresses > 4096:
            return f"{value!r}: only IPv4 subnets up to /20 are swept (4096 addresses)"
    return None


def _discovery(ck: _Checker, data: Mapping[str, Any]) -> DiscoveryConfig:
    t = ck.table(data, "discovery", {"usb", "serial", "lan", "subnets", "serial_ports", "probe_interval_s",
                                     "printer_missed_probes", "scan_interval_s", "advertise",
                                     "scanner_usb_ids"})
    ports = ck.get(t, "discovery.serial_ports", list, [],
                   check=lambda v: None if all(isinstance(p, str) and p.startswith("/") for p in v)
                   else "must be a list of absolute device paths, e.g. \"/dev/ttyUSB0\"")
    return DiscoveryConfig(
        usb=ck.get(t, "discovery.usb", bool, True),
        serial=ck.get(t, "discovery.serial", bool, True),
        lan=ck.get(t, "discovery.lan", bool, True),
        subnets=tuple(ck.get(t, "discovery.subnets", list, [], check=_cidr_problem) or ()),
        serial_ports=tuple(ports or ()),
        probe_interval_s=float(ck.get(t, "discovery.probe_interval_s", (int, float), 0.3,
                                      check=lambda v: None if 0.05 <= v <= 60
                                      else "must be 0.05 to 60 seconds")),
        printer_missed_probes=int(ck.get(t, "discovery.printer_missed_probes", int, 2,
                                         check=lambda v: None if 1 <= v <= 20 else "must be 1 to 20 probes")),
        scan_interval_s=float(ck.get(t, "discovery.scan_interval_s", (int, float), 5.0,
                                     check=lambda v: None if 0.1 <= v <= 3600
                                     else "must be 0.1 to 3600 seconds")),
        advertise=ck.get(t, "discovery.advertise", bool, True),
        scanner_usb_ids=tuple(ck.get(t, "discovery.scanner_usb_ids", list, [], check=_usb_ids_problem) or ()),
    )


USB_ID_RE = re.compile(r"^[0-9a-fA-F]{4}(:[0-9a-fA-F]{4})?$")


def parse_usb_id(text: str) -> tuple[int, int | None]:
    """``"0416"`` → (0x0416, None); ``"0416:c141"`` → (0x0416, 0xC141). ValueError otherwise."""
    if not USB_ID_RE.match(text):
        raise ValueError(f"{text!r} is not a USB id: 4 hex digits of the vendor, optionally :4 of the product")
    vendor, _, product = text.partition(":")
    return int(vendor, 16), int(product, 16) if product else None


def _usb_ids_problem(values: list[Any]) -> str | None:
    for value in values:
        if not isinstance(value, str) or not USB_ID_RE.match(value):
            return (f"{value!r} is not a USB id: \"vvvv\" or \"vvvv:pppp\" in hex, as lsusb shows it "
                    "(e.g. \"0416:c141\")")
    return None


def _device_address_problem(transport: str, address: str) -> str | None:
    if transport == "tcp":
        text = address if ":" in address.strip("[]") or address.startswith("[") else f"{address}:0"
        try:
            parse_address(text)
        except ValueError as exc:
            return f"bad address for tcp: {exc} (host or host:port)"
    elif transport == "serial":
        if not address.startswith("/"):
            return f"{address!r} must be a device path like /dev/ttyUSB0 or /dev/serial/by-id/..."
    elif transport == "usb":
        if not re.fullmatch(r"\d{1,3}:\d{1,3}|[^\s]{1,126}", address):
            return (f"{address!r} must be the USB serial number, vendor:product in hex (\"0416:c141\", the "
                    "first such device) or bus:address")
    return None


def _zvt_problem(key: str, value: Any) -> str | None:
    """What is wrong with a ZVT terminal's ``key``, or None."""
    if key == "password":
        if not isinstance(value, str) or len(value) != 6 or not value.isdigit():
            return 'must be the terminal\'s six-digit password in quotes, e.g. "000000"'
    elif key == "currency":
        from drivers.zvt import currency_of

        if isinstance(value, bool) or not isinstance(value, str | int):
            return 'must be an ISO 4217 code, e.g. "CNY" or 156'
        try:
            currency_of(value)
        except ValueError as exc:
            return str(exc)
    elif key == "probe":
        if value not in ZVT_PROBES:
            return (f"must be one of {', '.join(map(repr, ZVT_PROBES))}, got {value!r} (\"status\" sends a status "
                    "enquiry, which may start the terminal's due end-of-day or update)")
    elif key == "probe_interval_s":
        if isinstance(value, bool) or not isinstance(value, int | float) or not 0.5 <= value <= 3600:
            return "must be 0.5 to 3600 seconds"
    return None


def _static_devices(ck: _Checker, base: Path, data: Mapping[str, Any]) -> tuple[StaticDeviceConfig, ...]:
    """``[[device]]`` entries. Driver settings (baudrate, parity, mode…) go to the driver as
    ``info.extra``; they must be plain strings, numbers or booleans. A ZVT terminal's
    ``password_file`` is read here, so the driver gets ``password`` either way."""
    devices: list[StaticDeviceConfig] = []
    seen: set[str] = set()
    for prefix, entry in ck.entries(data, "device"):
        device_id = ck.get(entry, f"{prefix}.id", str, "",
                           check=lambda v: None if DEVICE_ID_RE.match(v) else
                           f"{v!r} is not a device id (letters, digits and . _ : -)")
        if device_id and device_id in seen:
            ck.problem(f"{prefix}.id", f"{device_id!r} is used twice")
        seen.add(device_id or "")
        driver = ck.get(entry, f"{prefix}.driver", str,
                        check=lambda v: None if v in DEVICE_DRIVERS
                        else f"must be one of {', '.join(DEVICE_DRIVERS)}")
        transport = ck.get(entry, f"{prefix}.transport", str,
                           check=lambda v: None if v in ("tcp", "serial", "usb")
                           else "must be tcp, serial or usb")
        address = ck.get(entry, f"{prefix}.address", str)
        if transport and address is not None and (problem := _device_address_problem(transport, address)):
            ck.problem(f"{prefix}.address", problem)
        model = ck.get(entry, f"{prefix}.model", str, "")
        extra: dict[str, str] = _input_device_settings(ck, prefix, driver, entry)
        for key, value in entry.items():
            if key in {"id", "driver", "transport", "address", "model"} or key in INPUT_DEVICE_KEYS:
                continue
            if key in PRINTER_PROFILE_KEYS:
                continue  # _printer_profile's
            if key not in DEVICE_EXTRA_KEYS:
                ck.problem(f"{prefix}.{key}", "unknown key (known: address, driver, id, model, transport, "
                           f"{', '.join(sorted((*DEVICE_EXTRA_KEYS, *INPUT_DEVICE_KEYS, *PRINTER_PROFILE_KEYS)))})")
            elif key == "confirm" and driver and driver != "escpos":
                ck.problem(f"{prefix}.confirm", f"only escpos printers take confirm, this is a {driver}")
            elif key == "confirm" and value not in PRINTER_CONFIRM_MODES:
                ck.problem(f"{prefix}.confirm", f"must be one of {', '.join(map(repr, PRINTER_CONFIRM_MODES))}, "
                           f'got {value!r} ("status" for printers that ignore GS ( H)')
            elif key in ZVT_KEYS and driver and driver != "zvt":
                ck.problem(f"{prefix}.{key}", f"only zvt pinpads take {key}, this is a {driver}")
            elif key in ("password", "password_file"):
                if key == "password_file" or "password_file" not in entry:
                    password = _secret(ck, base, entry, f"{prefix}.password")
                    if password and (problem := _zvt_problem("password", password)):
                        ck.problem(f"{prefix}.password", problem)
                    elif password:
                        extra["password"] = password
            elif key in ZVT_KEYS and (problem := _zvt_problem(key, value)):
                ck.problem(f"{prefix}.{key}", problem)
            elif isinstance(value, bool):
                extra[key] = "true" if value else "false"
            elif isinstance(value, (str, int, float)):
                extra[key] = str(value)
            else:
                ck.problem(f"{prefix}.{key}", f"must be a string, number or boolean, got {_kind(value)}")
        extra.update(_printer_profile(ck, prefix, entry, driver, transport))
        if driver and transport and address:
            devices.append(StaticDeviceConfig(driver=driver, transport=transport, address=address,
                                              id=device_id or "", model=model or "", extra=extra))
    return tuple(devices)


# Scanner and scale settings of a [[device]] (drivers/serial_scanner.py, drivers/scale_mt8217.py;
# a test keeps the terminators and units equal to the drivers').
INPUT_DEVICE_KEYS = ("idle_ms", "terminator", "unit")
SCANNER_TERMINATORS = ("auto", "cr", "lf", "crlf", "tab", "none")
MT8217_UNITS = ("kg", "lb")


def _input_device_settings(ck: _Checker, prefix: str, driver: str | None,
                           entry: Mapping[str, Any]) -> dict[str, str]:
    """A scanner's or scale's own [[device]] keys, checked against the driver they belong to."""
    found: dict[str, str] = {}
    terminator = ck.get(entry, f"{prefix}.terminator", str, None,
                        check=lambda v: None if v in SCANNER_TERMINATORS else
                        f"must be one of {', '.join(map(repr, SCANNER_TERMINATORS))}: what the scanner sends "
                        "after each code (\"none\": a pause of idle_ms ends it)")
    idle_ms = ck.get(entry, f"{prefix}.idle_ms", int, None,
                     check=lambda v: None if 20 <= v <= 2000 else "must be 20 to 2000 milliseconds")
    unit = ck.get(entry, f"{prefix}.unit", str, None,
                  check=lambda v: None if v in MT8217_UNITS else
                  f"must be one of {', '.join(map(repr, MT8217_UNITS))}: what the 8217 scale is set to")
    for key, value in (("terminator", terminator), ("idle_ms", idle_ms)):
        if value is None:
            continue
        if driver and driver != "serial_scanner":
            ck.problem(f"{prefix}.{key}", f"only serial_scanner devices take {key}, this is a {driver}")
        else:
            found[key] = str(value)
    if unit is not None:
        if driver == "cas":
            ck.problem(f"{prefix}.unit", "a CAS scale names its unit in every frame: remove unit")
        elif driver and driver != "mt8217":
            ck.problem(f"{prefix}.unit", f"only mt8217 scales take unit, this is a {driver}")
        else:
            found["unit"] = unit
    return found


def _printer_profile(
    ck: _Checker, prefix: str, entry: Mapping[str, Any], driver: str | None, transport: str | None
) -> dict[str, str]:
    """A printer's profile keys (drivers/escpos_profile.py): paper, code page, how Chinese
    prints, status mode, flow control. Checked here, handed to the driver as strings."""
    from drivers.escpos_profile import profile_problems

    given = {key: entry[key] for key in PRINTER_PROFILE_KEYS if key in entry}
    if not given:
        return {}
    if driver and driver != "escpos":
        for key in given:
            ck.problem(f"{prefix}.{key}", f"only escpos printers take {key}, this is a {driver}")
        return {}
    bad = dict(profile_problems(given))
    for key, message in bad.items():
        ck.problem(f"{prefix}.{key}", message)
    if "flow_control" not in bad and given.get("flow_control", "none") != "none" and transport != "serial":
        ck.problem(f"{prefix}.flow_control", f"only serial printers have flow control, this one is {transport}")
    return {key: str(value) for key, value in given.items() if key not in bad}


_CLOUD_KEYS = {
    "enabled", "url", "ca_file", "cert_file", "key_file", "username", "password", "password_file",
    "enrollment_token", "enrollment_token_file",
    "client_id", "keepalive_s", "connect_timeout_s", "ping_interval_s", "ping_timeout_s", "down_after_s",
    "probe_every_s", "reconnect_max_s",
    "max_inflight", "live_slots", "replay_rate", "replay_batch", "reconcile_every_s", "telemetry_ttl_h",
    "telemetry_quota_mib", "disk_warn_free_mib", "disk_hard_free_mib", "telemetry_every_s",
}


def parse_cloud_url(url: str) -> tuple[bool, str, int]:
    """``mqtts://host[:port]`` (TLS, default 8883) or ``mqtt://host[:port]`` (plain, tests only)."""
    scheme, sep, rest = url.partition("://")
    if not sep or scheme not in ("mqtt", "mqtts"):
        raise ValueError(f"{url!r} must start with mqtts:// (or mqtt:// for tests)")
    if "/" in rest.rstrip("/") or "@" in rest:
        raise ValueError(f"{url!r}: give only host and port (credentials go in username/password)")
    rest = rest.rstrip("/")
    if rest.startswith("["):
        host, _, port_text = rest[1:].partition("]")
        port_text = port_text.removeprefix(":")
    else:
        host, _, port_text = rest.partition(":")
    if not host or not re.match(r"^[A-Za-z0-9.:-]+$", host):
        raise ValueError(f"{url!r}: {host!r} is not a host name or address")
    tls = scheme == "mqtts"
    if not port_text:
        return tls, host, 8883 if tls else 1883
    if not port_text.isdigit() or not 0 < int(port_text) <= 65535:
        raise ValueError(f"{url!r}: port {port_text!r} is not a number from 1 to 65535")
    return tls, host, int(port_text)


def _cloud(ck: _Checker, base: Path, data: Mapping[str, Any], store_id: str) -> CloudConfig:
    t = ck.table(data, "cloud", _CLOUD_KEYS)
    enabled = bool(ck.get(t, "cloud.enabled", bool, False))
    url = ck.get(t, "cloud.url", str, "")
    tls, host, port = True, "", 8883
    if url:
        try:
            tls, host, port = parse_cloud_url(url)
        except ValueError as exc:
            ck.problem("cloud.url", str(exc))
    elif enabled:
        ck.problem("cloud.url", "missing: an enabled uplink needs url = \"mqtts://host:8883\"")

    def readable(key: str) -> Path | None:
        value = ck.get(t, f"cloud.{key}", str, None)
        if value is None:
            return None
        path = base / str(value)
        if enabled and not path.is_file():
            ck.problem(f"cloud.{key}", f"{path} does not exist or is not a file")
        return path

    ca_file, cert_file, key_file = readable("ca_file"), readable("cert_file"), readable("key_file")
    if (cert_file is None) != (key_file is None):
        ck.problem("cloud.cert_file" if cert_file is None else "cloud.key_file",
                   "give both cert_file and key_file (the box's TLS client certificate and its key)")
    if not tls and (ca_file or cert_file):
        ck.problem("cloud.url", "TLS files are given but the url is mqtt:// (use mqtts://)")

    def number(key: str, default: float, low: float, high: float,
               kind: type | tuple[type, ...] = (int, float)) -> Any:
        return ck.get(t, f"cloud.{key}", kind, default,
                      check=lambda v: None if low <= v <= high else f"must be {low:g} to {high:g}, got {v}")

    client_id = ck.get(t, "cloud.client_id", str, f"edgehub-{store_id}",
                       check=lambda v: None if 0 < len(v) <= 64 else "must be 1 to 64 characters")
    username = ck.get(t, "cloud.username", str, "")
    password = _secret(ck, base, t, "cloud.password", required=False)
    # The one-time token from the cloud console (what `edgehub provision` stores): until the chain
    # issues the box a client certificate, the box signs in as its client id with the token.
    token = _secret(ck, base, t, "cloud.enrollment_token", required=False)
    if token and password:
        ck.problem("cloud.enrollment_token", "give either enrollment_token or password, not both")
    elif token:
        username, password = username or client_id, token
    cfg = CloudConfig(
        enabled=enabled, url=url, tls=tls, host=host, port=port,
        ca_file=ca_file, cert_file=cert_file, key_file=key_file,
        username=username, password=password, client_id=client_id,
        keepalive_s=number("keepalive_s", 30, 5, 3600, int),
        connect_timeout_s=float(number("connect_timeout_s", 10.0, 0.5, 300)),
        ping_interval_s=float(number("ping_interval_s", 4.0, 0.2, 3600)),
        ping_timeout_s=float(number("ping_timeout_s", 2.0, 0.1, 600)),
        down_after_s=float(number("down_after_s", 9.0, 0.5, 3600)),
        probe_every_s=float(number("probe_every_s", 1.0, 0.1, 60)),
        reconnect_max_s=float(number("reconnect_max_s", 30.0, 0.1, 3600)),
        max_inflight=number("max_inflight", 200, 1, 65535, int),
        live_slots=number("live_slots", 32, 1, 65535, int),
        replay_rate=float(number("replay_rate", 500.0, 0, 1_000_000)),
        replay_batch=number("replay_batch", 250, 1, 10_000, int),
        reconcile_every_s=float(number("reconcile_every_s", 3600.0, 0, 7 * 86_400)),
        telemetry_ttl_h=float(number("telemetry_ttl_h", 72.0, 0.001, 24 * 365)),
        telemetry_quota_mib=float(number("telemetry_quota_mib", 64.0, 0, 1_000_000)),
        disk_warn_free_mib=number("disk_warn_free_mib", 512, 0, 10_000_000, int),
        disk_hard_free_mib=number("disk_hard_free_mib", 128, 0, 10_000_000, int),
        telemetry_every_s=float(number("telemetry_every_s", 60.0, 0, 86_400)),
    )
    if cfg.live_slots > cfg.max_inflight:
        ck.problem("cloud.live_slots", f"must not exceed max_inflight ({cfg.max_inflight})")
    if cfg.disk_hard_free_mib > cfg.disk_warn_free_mib:
        ck.problem("cloud.disk_hard_free_mib",
                   f"must not exceed disk_warn_free_mib ({cfg.disk_warn_free_mib})")
    if cfg.ping_interval_s + cfg.ping_timeout_s > cfg.down_after_s:
        # Else a quiet, healthy link is declared down before its ping could even be overdue.
        ck.problem("cloud.down_after_s", f"must be at least ping_interval_s + ping_timeout_s "
                                         f"({cfg.ping_interval_s + cfg.ping_timeout_s:g})")
    return cfg


QR_ACQUIRERS = ("alipay",)
CURRENCY_RE = re.compile(r"^[A-Z]{3}$")
_QR_KEYS = {"acquirer", "gateway_url", "app_id", "private_key_file", "gateway_public_key_file", "ca_file",
            "subject", "connect_timeout_s", "answer_timeout_s", "poll_interval_s", "pay_deadline_s",
            "scan_wait_s", "not_found_after_s"}


def _payments(ck: _Checker, base: Path, data: Mapping[str, Any]) -> PaymentsConfig:
    t = ck.table(data, "payments", {"currency", "drawer_role", "drawer_open_level", "qr"})
    currency = ck.get(t, "payments.currency", str, "CNY",
                      check=lambda v: None if CURRENCY_RE.match(v) else f"{v!r} is not an ISO 4217 code like CNY")
    drawer_role = ck.get(t, "payments.drawer_role", str, "receipt-printer",
                         check=lambda v: None if v == "" or (ROLE_RE.match(v) and role_kind(v) == "printer")
                         else f"{v!r} must be a printer role (receipt-printer, receipt-printer.till-1 …) or \"\"")
    level = ck.get(t, "payments.drawer_open_level", str, "high",
                   check=lambda v: None if v in ("low", "high") else "must be \"low\" or \"high\"")
    path = "payments.qr"
    q = t.get("qr", {})
    if not isinstance(q, dict):
        ck.problem(path, f"must be a table, got {_kind(q)}")
        q = {}
    for key in q:
        if key not in _QR_KEYS:
            ck.problem(f"{path}.{key}", f"unknown key (known: {', '.join(sorted(_QR_KEYS))})")
    acquirer = ck.get(q, f"{path}.acquirer", str, "", check=lambda v: None if v in ("", *QR_ACQUIRERS)
                      else f"must be one of {', '.join(QR_ACQUIRERS)} (or \"\" for no QR pay)")
    url = ck.get(q, f"{path}.gateway_url", str, "https://openapi.alipay.com/gateway.do" if acquirer else "",
                 check=lambda v: None if v == "" or v.startswith("https://")
                 else f"{v!r} must be an https:// address (money never goes over plain HTTP)")

    def key_file(key: str, required: bool) -> Path | None:
        value: str | None = ck.get(q, f"{path}.{key}", str, None)
        if value is None:
            if required and acquirer:
                ck.problem(f"{path}.{key}", f"missing: QR pay through {acquirer} needs it")
            return None
        file_ = base / value
        if acquirer and not file_.is_file():
            ck.problem(f"{path}.{key}", f"{file_} does not exist or is not a file")
        return file_

    def seconds(key: str, default: float, low: float, high: float) -> float:
        return float(ck.get(q, f"{path}.{key}", (int, float), default,
                            check=lambda v: None if low <= v <= high else f"must be {low:g} to {high:g} seconds"))

    app_id = ck.get(q, f"{path}.app_id", str, "")
    if acquirer and not app_id:
        ck.problem(f"{path}.app_id", f"missing: the application id {acquirer} gave the chain")
    qr = QrConfig(
        acquirer=acquirer or "",
        gateway_url=url or "",
        app_id=app_id or "",
        private_key_file=key_file("private_key_file", True),
        gateway_public_key_file=key_file("gateway_public_key_file", True),
        ca_file=key_file("ca_file", False),
        subject=ck.get(q, f"{path}.subject", str, "", check=lambda v: None if len(v) <= 256
                       else "must be at most 256 characters") or "",
        connect_timeout_s=seconds("connect_timeout_s", 3.0, 0.1, 30),
        answer_timeout_s=seconds("answer_timeout_s", 10.0, 0.2, 120),
        poll_interval_s=seconds("poll_interval_s", 3.0, 0.05, 30),
        pay_deadline_s=seconds("pay_deadline_s", 60.0, 0.5, 600),
        scan_wait_s=seconds("scan_wait_s", 60.0, 1, 600),
        not_found_after_s=seconds("not_found_after_s", 300.0, 1, 86_400),
    )
    if acquirer and currency != "CNY":
        ck.problem("payments.currency", f"QR pay through {acquirer} takes CNY only, got {currency}")
    return PaymentsConfig(currency=currency or "CNY", drawer_role=drawer_role if drawer_role is not None
                          else "receipt-printer", drawer_open_level=level or "high", qr=qr)


TIME_OF_DAY_RE = re.compile(r"^([01][0-9]|2[0-3]):[0-5][0-9]$")


def _reports(ck: _Checker, data: Mapping[str, Any]) -> ReportsConfig:
    t = ck.table(data, "reports", {"day_starts_at", "timezone", "print_role", "print_at_close"})
    starts = ck.get(t, "reports.day_starts_at", str, "05:00",
                    check=lambda v: None if TIME_OF_DAY_RE.match(v) else f"{v!r} must be HH:MM, e.g. \"05:00\"")

    def zone_check(value: str) -> str | None:
        if value == "":
            return None
        import zoneinfo

        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            return f"{value!r} is not a time zone this box knows (e.g. \"Asia/Shanghai\")"
        return None

    zone = ck.get(t, "reports.timezone", str, "", check=zone_check)
    role = ck.get(t, "reports.print_role", str, "receipt-printer",
                  check=lambda v: None if v == "" or (ROLE_RE.match(v) and role_kind(v) == "printer")
                  else f"{v!r} must be a printer role or \"\"")
    return ReportsConfig(day_starts_at=starts or "05:00", timezone=zone or "",
                         print_role=role if role is not None else "receipt-printer",
                         print_at_close=bool(ck.get(t, "reports.print_at_close", bool, True)))


# A host name or address chrony may be given as an upstream, optionally with :port ([v6]:port):
# no spaces, quotes or anything that would end the directive in the file it goes into.
NTP_HOST_RE = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9][A-Za-z0-9.-]{0,252})(:[0-9]{1,5})?\Z")


def _ntp_hosts_problem(values: list[Any]) -> str | None:
    for value in values:
        m = NTP_HOST_RE.match(value) if isinstance(value, str) else None
        if m is None:
            return f"{value!r} is not a host name or address (optionally :port), e.g. \"ntp.aliyun.com\""
        if m.group(2) and not 0 < int(m.group(2)[1:]) <= 65535:
            return f"{value!r}: port {m.group(2)[1:]} is not 1 to 65535"
    return None


def _allow_problem(values: list[Any]) -> str | None:
    for value in values:
        if not isinstance(value, str):
            return f"{value!r} is not a subnet like \"192.168.1.0/24\""
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError as exc:
            return f"{value!r} is not a subnet: {exc}"
    return None


def _clock(ck: _Checker, base: Path, data: Mapping[str, Any]) -> ClockConfig:
    t = ck.table(data, "clock", {"serve", "servers", "pools", "allow", "local_stratum", "port", "command_port",
                                 "config_file", "check_every_s"})
    d = ClockConfig()

    def port(key: str, default: int) -> int:
        value: int = ck.get(t, f"clock.{key}", int, default,
                            check=lambda v: None if 0 < v <= 65535 else f"must be 1 to 65535, got {v}")
        return value

    config_file = ck.get(t, "clock.config_file", str, None)
    return ClockConfig(
        serve=bool(ck.get(t, "clock.serve", bool, True)),
        servers=tuple(ck.get(t, "clock.servers", list, list(d.servers), check=_ntp_hosts_problem) or ()),
        pools=tuple(ck.get(t, "clock.pools", list, list(d.pools), check=_ntp_hosts_problem) or ()),
        allow=tuple(ck.get(t, "clock.allow", list, list(d.allow), check=_allow_problem) or ()),
        local_stratum=ck.get(t, "clock.local_stratum", int, 10,
                             check=lambda v: None if 1 <= v <= 15 else f"must be 1 to 15, got {v}"),
        port=port("port", 123),
        command_port=port("command_port", 323),
        config_file=base / (config_file or "chrony/edgehub.conf"),
        check_every_s=float(ck.get(t, "clock.check_every_s", (int, float), 30.0,
                                   check=lambda v: None if 1 <= v <= 3600 else f"must be 1 to 3600 s, got {v}")),
    )


_PAIR_KEYS = {"box", "listen", "peer", "secret", "secret_file", "address", "interface", "router_id", "prefer",
              "vrrp", "advert_ms", "standby_timeout_ms", "peer_timeout_ms", "backlog_mib", "failback",
              "failback_after_s", "failback_quiet_s", "keepalived_config"}
MIN_PAIR_SECRET = 32
IFNAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.:@-]{0,14}\Z")


def _unicast_address(value: str) -> str | None:
    """A pair link address: a literal IP of this LAN, not a wildcard (VRRP sends from it)."""
    if problem := _address_check(value):
        return problem
    host = parse_address(value).host
    if host in ("0.0.0.0", "::", "localhost"):
        return f"{host} is not one box's address: give the box's own fixed LAN address"
    if parse_address(value).port == 0:
        return "give a fixed port (both boxes must know it)"
    return None


def _cidr_address(value: str) -> str | None:
    try:
        interface = ipaddress.ip_interface(value)
    except ValueError:
        return f"{value!r} is not an address with its prefix length, e.g. \"192.168.1.10/24\""
    if "/" not in value:
        return f"{value!r} needs its prefix length, e.g. \"{value}/24\""
    if interface.ip.version != 4:
        return "only IPv4 floating addresses are supported (VRRP for IPv4 through keepalived)"
    return None


def _pair(ck: _Checker, base: Path, data: Mapping[str, Any], broker: BrokerConfig,
          api: ApiConfig) -> PairConfig | None:
    if "pair" not in data:
        return None
    t = ck.table(data, "pair", _PAIR_KEYS)
    box = ck.get(t, "pair.box", str, check=_id_check)
    listen = ck.get(t, "pair.listen", str, check=_unicast_address)
    peer = ck.get(t, "pair.peer", str, check=_unicast_address)
    secret = _secret(ck, base, t, "pair.secret")
    if secret and len(secret) < MIN_PAIR_SECRET:
        ck.problem("pair.secret_file" if "secret_file" in t else "pair.secret",
                   f"must be at least {MIN_PAIR_SECRET} characters (edgehub provision makes one; the same "
                   "file goes on both boxes)")
    address = ck.get(t, "pair.address", str, check=_cidr_address)
    interface = ck.get(t, "pair.interface", str,
                       check=lambda v: None if IFNAME_RE.match(v) else f"{v!r} is not an interface name")
    router_id = ck.get(t, "pair.router_id", int,
                       check=lambda v: None if 1 <= v <= 255 else f"must be 1 to 255, got {v}")

    def number(key: str, default: float, low: float, high: float, kind: type | tuple[type, ...] = int) -> Any:
        return ck.get(t, f"pair.{key}", kind, default,
                      check=lambda v: None if low <= v <= high else f"must be {low:g} to {high:g}, got {v}")

    advert_ms = number("advert_ms", 100, 50, 40950)
    if isinstance(advert_ms, int) and advert_ms % 10:
        ck.problem("pair.advert_ms", "must be a multiple of 10 (VRRP counts centiseconds)")
    prefer = ck.get(t, "pair.prefer", str, "primary",
                    check=lambda v: None if v in PAIR_PREFER else f"must be one of {', '.join(PAIR_PREFER)}")
    vrrp = ck.get(t, "pair.vrrp", str, "external",
                  check=lambda v: None if v in PAIR_VRRP_MODES else f"must be one of {', '.join(PAIR_VRRP_MODES)}")
    keepalived = ck.get(t, "pair.keepalived_config", str, None)
    if listen and peer and not _unicast_address(listen) and not _unicast_address(peer):
        mine, theirs = parse_address(listen), parse_address(peer)
        if mine.host == theirs.host:
            ck.problem("pair.peer", f"is this box's own address {mine.host} (pair.listen): give the other box's")
        if address and not _cidr_address(address):
            vip = ipaddress.ip_interface(address)
            for key, host in (("pair.listen", mine.host), ("pair.peer", theirs.host)):
                if ipaddress.ip_address(host) == vip.ip:
                    ck.problem("pair.address", f"is {key}'s address: the floating address must be a third one")
                elif ipaddress.ip_address(host) not in vip.network:
                    ck.problem(key, f"{host} is not in the floating address's network {vip.network}: both boxes "
                               "and the floating address are on the one store LAN")
    if broker.mode != "managed":
        ck.problem("broker.mode", "a pair runs the store broker with the hub (\"managed\"): a box that stops "
                   "serving closes its terminals' connections and runs without its LAN listener while it "
                   "is the standby (docs/pair.md)")
    # Terminals and kitchen screens reach whichever box holds the floating address.
    if broker.lan_listen is None:
        ck.problem("broker.lan_listen", "a pair needs the LAN listener on 0.0.0.0 (terminals connect to the "
                   "floating address, which moves between the boxes)")
    elif address and not _cidr_address(address) and broker.lan_listen.host not in (
            "0.0.0.0", "::", ipaddress.ip_interface(address).ip.compressed):
        ck.problem("broker.lan_listen", f"listens on {broker.lan_listen.host} only: a pair needs 0.0.0.0 (or the "
                   "floating address), so terminals reach whichever box serves")
    if address and not _cidr_address(address) and api.listen.host not in (
            "0.0.0.0", "::", ipaddress.ip_interface(address).ip.compressed):
        ck.problem("api.listen", f"listens on {api.listen.host} only: a pair needs 0.0.0.0 (kitchen screens and "
                   "the page follow the floating address)")
    if None in (box, listen, peer, address, interface, router_id) or not secret:
        return None
    return PairConfig(
        box=box, listen=parse_address(listen), peer=parse_address(peer), secret=secret.encode(), address=address,
        interface=interface, router_id=router_id, prefer=prefer or "primary", vrrp=vrrp or "external",
        advert_ms=advert_ms or 100,
        standby_timeout_ms=number("standby_timeout_ms", 500, 50, 60_000),
        peer_timeout_ms=number("peer_timeout_ms", 1500, 200, 60_000),
        backlog_mib=number("backlog_mib", 64, 1, 4096),
        failback=bool(ck.get(t, "pair.failback", bool, False)),
        failback_after_s=float(number("failback_after_s", 60.0, 1, 86_400, (int, float))),
        failback_quiet_s=float(number("failback_quiet_s", 10.0, 1, 3600, (int, float))),
        keepalived_config=base / keepalived if keepalived else None,
    )
