"""``edgehub doctor``: the self-checks an installer would run, in words an installer follows.

Each check answers ok / warn / fail with what it saw and, when not ok, what to do about it.
``fail`` means the box cannot do its job (the exit code is then 1); ``warn`` means it works but
something needs attention (WAN down: orders still flow, the outbox waits). The same checks run
from the CLI (``edgehub doctor --config FILE``) and from the API (``POST /api/v1/doctor``);
checks about devices and roles read the running hub — in the daemon directly, from the CLI
through the daemon's own API — because only the daemon holds the devices open.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import sqlite3
import subprocess
import time
import urllib.parse
import uuid
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any, Literal

from edgehub.bus.session import MqttSession
from edgehub.config import Address, Config
from edgehub.errors import MqttError, MqttRefused
from edgehub.store.orders import latest_received_at
from edgehub.store.schema import SCHEMA_VERSION
from edgehub.sysinfo import disk_usage

Status = Literal["ok", "warn", "fail"]
StatusReader = Callable[[], Awaitable[Mapping[str, Any] | None]]
DeviceProbe = Callable[[str], Awaitable[tuple[bool, str]]]

# A box without a real-time clock boots in 1970 (or at its last fake-hwclock save) until NTP
# answers; anything before this release's year is certainly wrong.
EARLIEST_SANE_TIME = 1735689600.0  # 2025-01-01T00:00:00Z
# Device states that can serve a role (drivers.base.Health.usable: ready or degraded).
USABLE_DEVICE_STATES = frozenset({"ready", "degraded"})  # drivers.base.Health.usable


class DaemonUnreadable(Exception):
    """The running daemon's API could not be read from outside (the CLI's view of the hub).

    ``http_status`` is None when nothing answered at ``address`` (the daemon is not running, or
    listens elsewhere); otherwise the daemon answered but not with what was asked: 401 (the token
    sent is not the hub's), 429 (this address sent too many wrong tokens and is refused for a
    while), or anything else. ``address`` is the one really tried (a wildcard listen address is
    reached on loopback).
    """

    def __init__(self, address: str, http_status: int | None = None, detail: str = "",
                 retry_after: str | None = None) -> None:
        what = f"HTTP {http_status}" if http_status is not None else "no answer"
        super().__init__(f"{address}: {what}{f': {detail}' if detail else ''}")
        self.address = address
        self.http_status = http_status
        self.detail = detail
        self.retry_after = retry_after

    @property
    def answered(self) -> bool:
        return self.http_status is not None

    @property
    def refused_login(self) -> bool:
        """401 or 429: asking again only counts against the address's allowance of wrong tokens."""
        return self.http_status in (401, 429)


@dataclass(frozen=True)
class Check:
    name: str
    status: Status
    message: str
    action: str = ""


@dataclass(frozen=True)
class DiskLimits:
    fail_below_bytes: int = 100 * 1024 * 1024
    warn_below_bytes: int = 500 * 1024 * 1024
    fail_below_ratio: float = 0.05
    warn_below_ratio: float = 0.15


def device_rows(section: Any) -> list[dict[str, Any]]:
    """Flatten the devices status section, whatever shape its entries take, into plain rows.

    Accepts ``{"devices": [...]}`` or a list; an entry may be flat or split into ``info`` and
    ``health`` (DeviceRegistry entries). Unknown fields are kept.
    """
    entries = section.get("devices", []) if isinstance(section, Mapping) else section
    rows = []
    for entry in entries if isinstance(entries, list) else []:
        if not isinstance(entry, Mapping):
            continue
        row: dict[str, Any] = {}
        for part in ("info", "health"):
            if isinstance(entry.get(part), Mapping):
                row.update(entry[part])
        row.update({k: v for k, v in entry.items() if k not in ("info", "health")})
        rows.append(row)
    return rows


def role_rows(section: Any) -> list[dict[str, Any]]:
    """Flatten the roles status section into ``{"role", "primary", "spares", "serving", ...}`` rows."""
    roles = section.get("roles", section) if isinstance(section, Mapping) else section
    if isinstance(roles, Mapping):
        roles = [{"role": name, **value} if isinstance(value, Mapping) else {"role": name, "serving": value}
                 for name, value in roles.items()]
    rows = []
    for entry in roles if isinstance(roles, list) else []:
        if isinstance(entry, Mapping):
            row = dict(entry)
            row.setdefault("role", row.get("name", "?"))
            # Roles report ``devices`` (primary first) and ``device`` (serving now, or None).
            devices = [str(d) for d in row.get("devices") or []]
            row.setdefault("primary", devices[0] if devices else None)
            row.setdefault("spares", devices[1:])
            row.setdefault("serving", row.get("device"))
            rows.append(row)
    return rows


def _device_id(device: Any) -> str | None:
    """A role row's device, given as its id or as a device row, or None."""
    if not device:
        return None
    return str(device.get("id") if isinstance(device, Mapping) else device)


def _healthy_state(state: Any) -> bool:
    return str(state).lower() in USABLE_DEVICE_STATES


class Doctor:
    """Runs every check; constructed with what it may read, does its I/O only in ``run()``."""

    def __init__(self, config: Config, *, broker_address: Address | None = None,
                 read_status: StatusReader | None = None, probe_device: DeviceProbe | None = None,
                 daemon_expected: bool = False, clock: Callable[[], float] = time.time,
                 disk_limits: DiskLimits | None = None, timeout_s: float = 3.0) -> None:
        self.config = config
        self.broker_address = broker_address or config.broker.listen
        self.read_status = read_status
        self.probe_device = probe_device
        self.daemon_expected = daemon_expected
        self.clock = clock
        self.disk_limits = disk_limits or DiskLimits()
        self.timeout_s = timeout_s

    async def run(self) -> list[Check]:
        status: Mapping[str, Any] | None = None
        problem: Exception | None = None
        if self.read_status is not None:
            try:
                status = await self.read_status()
            except Exception as exc:  # why is reported by the daemon check, and device checks say so
                problem = exc
        checks: list[Check] = []
        if self.daemon_expected:
            checks.append(daemon_check(self.config, status, problem))
        qr_gateway = asyncio.ensure_future(self._qr_gateway())  # alongside the others
        time_server = asyncio.ensure_future(self._time_server())
        gathered = await asyncio.gather(
            self._broker(), asyncio.to_thread(self._journal), asyncio.to_thread(self._disk_space),
            asyncio.to_thread(self._disk_write), asyncio.to_thread(self._clock), self._cloud(status),
        )
        checks.extend(c for group in gathered for c in ([group] if isinstance(group, Check) else group))
        checks.append(await time_server)
        checks.extend(await qr_gateway)
        checks.append(self._https())
        if self.config.pair is not None:
            checks.extend(await asyncio.to_thread(self._pair, status))
        if _is_standby(status):
            checks.append(Check("devices", "ok", "this box is the pair's standby: the serving box drives the "
                                "devices and roles; they are checked there"))
            return checks
        checks.extend(await self._devices(status, problem))
        checks.extend(self._roles(status))
        return checks

    # --- the checks ------------------------------------------------------------------------

    async def _qr_gateway(self) -> list[Check]:
        """QR pay (docs/payments.md): the keys load and a TLS connection to the gateway can be made."""
        qr = self.config.payments.qr
        if not qr.enabled:
            return []
        from edgehub.errors import ConfigError
        from edgehub.qrpay import make_acquirer

        acquirer = make_acquirer(qr)
        try:
            async with asyncio.timeout(self.timeout_s + qr.connect_timeout_s), acquirer:
                why = await acquirer.reachable()
        except ConfigError as exc:
            return [Check("qr-gateway", "fail", f"QR pay cannot start: {'; '.join(exc.problems)}",
                          "give the application's RSA2 private key and the gateway's public key ([payments.qr])")]
        except (OSError, TimeoutError, ValueError) as exc:
            why = _reason(exc)
        if why is not None:
            return [Check("qr-gateway", "warn", f"the {qr.acquirer} gateway {qr.gateway_url} cannot be reached: "
                          f"{why}; QR payments are refused (take cash or card)",
                          "check the WAN, DNS and the firewall towards the gateway")]
        return [Check("qr-gateway", "ok", f"{qr.acquirer} keys loaded; {qr.gateway_url} answers over TLS")]

    def _restart_broker(self) -> str:
        """How Mosquitto is started again on this box: by the hub itself (managed, ``make run``)
        or by systemd (a provisioned box)."""
        if self.config.broker.mode == "managed":
            return ("edgehub runs its own Mosquitto here (broker.mode = managed) and starts it again by "
                    "itself; if it stays down, restart edgehub: Ctrl-C where it runs, then `make run` "
                    "(or `edgehub run`) again")
        return "start Mosquitto: sudo systemctl restart mosquitto, then sudo systemctl status mosquitto"

    async def _broker(self) -> Check:
        address = self.broker_address
        managed = self.config.broker.mode == "managed"
        if address.port == 0:
            return Check("broker", "warn", "the broker port is chosen at start (listen port 0)",
                         "run the self-check from the box's page, which asks the running hub")
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(address.host, address.port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            return Check("broker", "fail", f"nothing answers on {address}: {_reason(exc)}", self._restart_broker())
        b = self.config.broker
        # The hub's own login, as the hub makes it (MQTT 5), under a client id of its own.
        client = MqttSession(address.host, address.port, username=b.hub_user, password=b.hub_password,
                             client_id=f"edgehub-doctor-{uuid.uuid4().hex[:12]}", connect_timeout_s=self.timeout_s)
        try:
            async with asyncio.timeout(self.timeout_s + 1):
                async with client:
                    pass
        except MqttRefused as exc:
            if exc.reason_code in (0x86, 0x87):  # bad user name or password, not authorized
                action = ("another program answers on the hub's broker port (another edgehub's Mosquitto?): "
                          "stop it, or give broker.listen a free port" if managed else
                          f"rewrite the broker's password file: edgehub broker write-config --config "
                          f"{self.config.source} && sudo systemctl reload mosquitto")
                return Check("broker", "fail", f"the broker at {address} refuses the hub's password", action)
            return Check("broker", "fail", str(exc),
                         "look at the hub's log (the lines with component=broker)" if managed
                         else "look at sudo journalctl -u mosquitto -n 50")
        except (MqttError, TimeoutError, OSError) as exc:
            return Check("broker", "fail", f"no MQTT answer from {address}: {_reason(exc)}", self._restart_broker())
        return Check("broker", "ok", f"connected to {address} and logged in as {b.hub_user}")

    def _https(self) -> Check:
        """How the page and the API are served, and the fingerprint to compare with the browser's."""
        api = self.config.api
        if api.tls_cert_file is not None:
            from edgehub.api.tls import fingerprint

            if api.tls_made_by_hub and not api.tls_cert_file.exists():
                return Check("https", "warn", f"the box's certificate {api.tls_cert_file} is not made yet: the hub "
                                              "makes it at its next start", "start the hub: systemctl restart edgehub")
            try:
                print_ = fingerprint(api.tls_cert_file)
            except (OSError, ValueError) as exc:
                return Check("https", "fail", f"cannot read the box's certificate {api.tls_cert_file}: {exc}",
                             "make a new one: sudo edgehub provision --from /boot/firmware/edgehub-provision.toml")
            return Check("https", "ok", f"the page and API are HTTPS on {api.listen}; the certificate's "
                                        f"fingerprint is {print_} (the browser must show the same)")
        if api.listen.is_loopback:
            return Check("https", "ok", f"plain HTTP on loopback only ({api.listen})")
        return Check("https", "warn", f"plain HTTP on {api.listen} (api.plain_http): the token, PIN and session "
                                      "cross the store LAN in clear",
                     "give api.tls_cert_file and api.tls_key_file (edgehub provision makes them) and remove "
                     "plain_http")

    def _journal(self) -> Check:
        path = self.config.journal.path
        aside = sorted(path.parent.glob(f"{path.name}.corrupt-*")) if path.parent.is_dir() else []
        aside = [p for p in aside if not p.name.endswith(("-wal", "-shm"))]
        if not path.exists():
            return Check("journal", "warn", f"no journal at {path} yet",
                         "start edgehub once; it creates the journal")
        try:
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                rows = conn.execute("PRAGMA quick_check").fetchall()
                (version,) = conn.execute("PRAGMA user_version").fetchone()
            finally:
                conn.close()
        except sqlite3.Error as exc:
            rows, version = [(f"cannot be read: {exc}",)], 0
        if rows != [("ok",)]:
            return Check("journal", "fail", f"the journal {path} is damaged ({rows[0][0]})",
                         "restart edgehub: it moves the damaged file aside and starts a new journal; "
                         "then send a support bundle (edgehub bundle) so the old orders can be recovered")
        if version > SCHEMA_VERSION:
            return Check("journal", "fail", f"the journal is schema {version}, newer than this edgehub "
                         f"({SCHEMA_VERSION})", "install the newer edgehub again")
        if aside:
            return Check("journal", "warn", f"the journal is sound; an earlier damaged one was kept as "
                         f"{aside[-1].name}",
                         "send a support bundle so support can recover it, then delete it")
        return Check("journal", "ok", f"{path.name} passed its integrity check (schema {version})")

    def _disk_space(self) -> Check:
        data_dir = self.config.paths.data_dir
        try:
            usage = disk_usage(data_dir)
        except OSError as exc:
            return Check("disk-space", "fail", f"cannot read the disk of {data_dir}: {_reason(exc)}",
                         "check that the SD card or eMMC is mounted")
        lim = self.disk_limits
        free = f"{usage.free_bytes / 1e6:.0f} MB free of {usage.total_bytes / 1e6:.0f} MB"
        if usage.free_bytes < lim.fail_below_bytes or usage.free_ratio < lim.fail_below_ratio:
            return Check("disk-space", "fail", f"the disk is nearly full: {free}",
                         "send a support bundle, then free space (old logs: journalctl --vacuum-size=50M)")
        if usage.free_bytes < lim.warn_below_bytes or usage.free_ratio < lim.warn_below_ratio:
            return Check("disk-space", "warn", f"the disk is getting full: {free}",
                         "check that the box can reach the cloud so the outbox drains")
        return Check("disk-space", "ok", free)

    def _disk_write(self) -> Check:
        data_dir = self.config.paths.data_dir
        probe = data_dir / f".doctor-write-test-{os.getpid()}"
        block = os.urandom(64 * 1024)
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.write(fd, block)
                os.fsync(fd)
            finally:
                os.close(fd)
            ok = probe.read_bytes() == block
        except OSError as exc:
            return Check("disk-write", "fail", f"cannot write to {data_dir}: {_reason(exc)}",
                         "the data folder must be writable by edgehub; if the card is read-only or worn "
                         "out, replace it (systemd-tmpfiles --create fixes folder ownership)")
        finally:
            with contextlib.suppress(OSError):
                probe.unlink()
        if not ok:
            return Check("disk-write", "fail", f"{data_dir} returned different bytes than were written",
                         "the SD card is failing: replace it")
        return Check("disk-write", "ok", f"wrote, synced and read back 64 KiB in {data_dir}")

    def _clock(self) -> Check:
        now = self.clock()
        stamp = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime(now))
        fix = "connect the box to the internet so NTP sets the clock, or set it: timedatectl set-time"
        if now < EARLIEST_SANE_TIME:
            return Check("clock", "fail", f"the clock says {stamp}, which cannot be right", fix)
        newest = self._newest_journal_time()
        if newest is not None and now < newest - 300:
            return Check("clock", "fail", f"the clock ({stamp}) is behind the last order journaled "
                         f"({time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime(newest))})", fix)
        synced = _ntp_synchronized()
        if synced is False:
            return Check("clock", "warn", f"the clock says {stamp} but is not synchronised by NTP",
                         "let the box reach an NTP server (UDP 123) or check: timedatectl status")
        return Check("clock", "ok", f"{stamp}{', NTP synchronised' if synced else ''}")

    async def _time_server(self) -> Check:
        """The store's time server (edgehub/clock/): chrony's state, and an NTP answer from the
        box on loopback as a till on the LAN would get it."""
        from edgehub.clock import read_state, summary
        from edgehub.clock.ntp import query

        clock = self.config.clock
        state = await read_state(clock, self.clock(), timeout=self.timeout_s)
        if not state.running:
            if not clock.serve:
                return Check("time-server", "ok", f"the box serves no time (clock.serve = false); {state.error}")
            return Check("time-server", "warn", f"the store's terminals get no time from the box: {state.error}",
                         "apt-get install chrony; edgehub clock write-config; systemctl restart chrony")
        line = summary(clock, state)
        if not clock.serve:
            return Check("time-server", "ok", line)
        try:
            answer = await query("127.0.0.1", clock.port, timeout=self.timeout_s)
        except (OSError, TimeoutError, ValueError) as exc:
            return Check("time-server", "warn", f"chrony runs but does not answer NTP on UDP {clock.port}: "
                         f"{_reason(exc)}", f"check {clock.config_file} (edgehub clock write-config) and "
                         "systemctl restart chrony")
        if not answer.usable:
            return Check("time-server", "warn", f"{line}, but it answers as not synchronised (leap {answer.leap}, "
                         f"stratum {answer.stratum}): terminals refuse that time",
                         "edgehub clock write-config (it sets local stratum); systemctl restart chrony")
        if state.synchronised:
            return Check("time-server", "ok", f"{line}; tills get stratum {answer.stratum}")
        return Check("time-server", "warn", f"{line}: the store stays in step with the box, which drifts from "
                     "true time until an upstream answers", "check the WAN and that UDP 123 to the [clock] servers "
                     "is open: edgehub clock status")

    def _newest_journal_time(self) -> float | None:
        path = self.config.journal.path
        if not path.exists():
            return None
        with contextlib.suppress(sqlite3.Error):
            conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
            try:
                return latest_received_at(conn)
            finally:
                conn.close()
        return None

    async def _cloud(self, status: Mapping[str, Any] | None = None) -> list[Check]:
        target = cloud_address(self.config)
        uplink = status.get("uplink") if status is not None else None
        if target is None and isinstance(uplink, Mapping) and uplink.get("enabled"):
            # The running hub has a cloud its config file does not name: make run's simulated one.
            sim_link: Mapping[str, Any] = uplink.get("link") or {}
            state = str(sim_link.get("state", "?"))
            return [Check("cloud", "ok" if state == "online" else "warn",
                          f"the running hub sends to {sim_link.get('url', '?')} (link {state}), a cloud the config "
                          "file does not name (edgehub run --sim-cloud)",
                          "" if state == "online" else "look at the hub's output for the simulated cloud")]
        if target is None:
            keeps = (" (and its journal keeps everything: retention deletes only what a cloud has)"
                     if self.config.journal.keep_days else "")
            return [Check("cloud", "ok", f"no cloud is configured: the box works on its own{keeps}")]
        host, port = target
        try:
            async with asyncio.timeout(self.timeout_s):
                await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except (OSError, TimeoutError) as exc:
            return [Check("wan", "warn", f"cannot resolve {host}: {_reason(exc)}",
                          "the store keeps working and the outbox keeps every order; check the router's "
                          "internet connection and DNS"),
                    Check("cloud", "warn", "cloud broker not checked (no WAN)", "fix the WAN first")]
        try:
            async with asyncio.timeout(self.timeout_s):
                _, writer = await asyncio.open_connection(host, port)
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
        except (OSError, TimeoutError) as exc:
            return [Check("wan", "ok", f"{host} resolves"),
                    Check("cloud", "warn", f"the cloud broker {host}:{port} does not answer: {_reason(exc)}",
                          "the store keeps working and the outbox waits; check the firewall allows "
                          f"outgoing TCP {port}, or ask support whether the cloud is down")]
        wan = Check("wan", "ok", f"{host} resolves")
        # TCP answers; whether the box can sign in (TLS, password or enrollment token) only the
        # running hub's uplink knows: it holds the connection.
        link = uplink.get("link") if isinstance(uplink, Mapping) else None
        if not isinstance(link, Mapping) or not (isinstance(uplink, Mapping) and uplink.get("enabled")):
            return [wan, Check("cloud", "ok", f"{host}:{port} answers")]
        state, error = str(link.get("state", "?")), str(link.get("last_error") or "")
        if state == "online":
            ping = link.get("ping_ms")
            return [wan, Check("cloud", "ok", f"{host}:{port} answers and the hub is connected"
                                              f"{f' (ping {ping} ms)' if ping is not None else ''}")]
        if state == "suspect":
            return [wan, Check("cloud", "warn", f"the hub is connected to {host}:{port}, but a ping is "
                                                f"{link.get('ping_overdue_s')} s overdue and nothing came back for "
                                                f"{link.get('quiet_s')} s",
                               "the WAN may be dropping packets: the link is given up after [cloud] down_after_s "
                               "and tried again every probe_every_s; the outbox keeps everything meanwhile")]
        if error:
            return [wan, Check("cloud", "warn", f"{host}:{port} answers, but the hub cannot connect: {error}",
                               "check [cloud] in edgehub.toml (username and password or enrollment token, "
                               "ca_file for TLS) with support; the outbox keeps everything meanwhile")]
        return [wan, Check("cloud", "ok", f"{host}:{port} answers; the hub is {state}")]

    def _pair(self, status: Mapping[str, Any] | None) -> list[Check]:
        """A box of a pair (docs/pair.md): its part, its copies, the other box, keepalived."""
        from edgehub.pair import vrrp

        pair_cfg = self.config.pair
        assert pair_cfg is not None
        checks: list[Check] = []
        conf = vrrp.conf_path(self.config)
        if pair_cfg.vrrp == "external":
            if not conf.exists():
                checks.append(Check("keepalived", "fail", f"{conf} is not written: the floating address "
                                    f"{pair_cfg.address} is held by nobody on this box",
                                    "run `edgehub pair write-config` (provisioning does), then "
                                    "`systemctl enable --now edgehub-vrrp`"))
            else:
                checks.append(_keepalived_config_check(conf))
        pair = status.get("pair") if isinstance(status, Mapping) else None
        if not isinstance(pair, Mapping):
            checks.append(Check("pair", "warn", "the pair's state needs the running edgehub's status",
                                "start edgehub, then run the self-check again"))
            return checks
        refused = (pair.get("refused") or {}).get("reason") if isinstance(pair.get("refused"), Mapping) else ""
        if refused:
            checks.append(Check("pair", "fail", f"the other box at {pair.get('peer')} is REFUSED: {refused}",
                                "see docs/pair.md, \"Refused\": nothing was copied either way"))
        role = pair.get("role")
        if role == "primary":
            if pair.get("copies") == 2:
                standby = pair.get("standby") or {}
                checks.append(Check("copies", "ok", f"two copies: this box ({pair.get('box')}) serves, "
                                    f"{standby.get('box')} holds every record up to {standby.get('acked_seq')}"))
            else:
                since = _clock(pair.get("one_copy_since"))
                checks.append(Check("copies", "warn", f"ONE COPY since {since}: orders taken since are on this "
                                    f"box only ({pair.get('one_copy_reason') or 'the standby is not in sync'})",
                                    f"bring the other box back ({pair.get('peer')}: power, cable, its own "
                                    "`edgehub doctor`); it catches up by itself"))
        elif role == "standby":
            following = pair.get("following") or {}
            state = following.get("state")
            if state == "in sync":
                checks.append(Check("copies", "ok", f"this box ({pair.get('box')}) is the standby of "
                                    f"{following.get('primary')}, in sync at record {following.get('seq')}"))
            elif state in ("catching up", "snapshot", "salvage"):
                checks.append(Check("copies", "warn", f"this box is the standby, {state} "
                                    f"({following.get('lag_records', '?')} records behind)",
                                    "wait a minute and run the check again"))
            elif state != "refused":
                checks.append(Check("copies", "warn", f"this box is the standby but does not follow the serving "
                                    f"box at {pair.get('peer')}: {following.get('last_error') or state}",
                                    "check that the other box runs and that both are on the store LAN"))
        else:
            checks.append(Check("copies", "warn", f"this box is {role} (a takeover or step-down is under way)",
                                "run the check again in a few seconds"))
        if pair.get("fit") is False:
            checks.append(Check("floating-address", "warn", f"this box may not take the floating address now: "
                                f"{pair.get('unfit_reason')}", "fix that; keepalived reads it at once"))
        else:
            where = "is on this box" if pair.get("holds_address") else "is on the other box"
            checks.append(Check("floating-address", "ok", f"{pair.get('address')} {where}"))
        return checks

    async def _devices(self, status: Mapping[str, Any] | None,
                       problem: Exception | None = None) -> list[Check]:
        if status is None and isinstance(problem, DaemonUnreadable) and problem.answered:
            # edgehub runs but did not give its status: "start edgehub" would be wrong advice.
            return [Check("devices", "warn", "device checks need the running edgehub's status, "
                                             "which it did not give (see the daemon check)",
                          "fix what the daemon check says, then run the self-check again")]
        if status is None or status.get("devices") is None:
            return [Check("devices", "ok" if status is not None else "warn",
                          "no device registry is configured" if status is not None
                          else "device checks need the running edgehub", "" if status is not None
                          else "start edgehub, then run the self-check again")]
        rows = device_rows(status["devices"])
        if not rows:
            return [Check("devices", "warn", "no devices found",
                          "plug in the printers, scanners and pinpads; check cables and power")]
        checks = []
        for row in rows:
            device_id = str(row.get("id") or row.get("device_id") or "?")
            # A device from the config has no model of its own to tell ("configured").
            label = " ".join(str(row[k]) for k in ("kind", "model")
                             if row.get(k) and row.get(k) != "configured") or "device"
            if self.probe_device is not None:
                try:
                    async with asyncio.timeout(self.timeout_s + 2):
                        ok, reason = await self.probe_device(device_id)
                except Exception as exc:
                    ok, reason = False, _reason(exc)
            else:
                ok, reason = _healthy_state(row.get("state")), str(row.get("reason") or row.get("state"))
            if ok and (row.get("state") == "degraded" or reason not in ("", "ready", "ok", "None")):
                checks.append(Check(f"device {device_id}", "warn", f"{label} answers but: {reason}",
                                    "look at the device (paper low, cover, cable) before the rush"))
            elif ok:
                checks.append(Check(f"device {device_id}", "ok", f"{label} answers"))
            else:
                # "failed" is also a printer that answered "paper end": say what it said.
                checks.append(Check(f"device {device_id}", "fail", f"{label} is not usable: {reason}",
                                    "check its power, cable and paper; unplug and plug it in again"))
        return checks

    def _roles(self, status: Mapping[str, Any] | None) -> list[Check]:
        if status is None or status.get("roles") is None:
            return []
        healthy = {str(r.get("id") or r.get("device_id")) for r in device_rows(status.get("devices") or [])
                   if _healthy_state(r.get("state"))}
        checks = []
        for row in role_rows(status["roles"]):
            role = str(row["role"])
            serving = _device_id(row.get("serving"))
            ids = [d for d in map(_device_id, [row.get("primary"), *(row.get("spares") or [])]) if d]
            ready = [d for d in dict.fromkeys(ids) if d in healthy and d != serving]
            spares = f"; ready to take over: {', '.join(ready)}" if ready else "; no other healthy device bound"
            if serving is not None and serving in healthy:
                checks.append(Check(f"role {role}", "ok", f"served by {serving}{spares}"))
            elif ready:
                checks.append(Check(f"role {role}", "warn",
                                    f"not served right now ({row.get('reason') or 'no device chosen yet'}); "
                                    f"healthy and bound: {', '.join(ready)}",
                                    "run the check again in a minute; if it stays, send a support bundle"))
            else:
                checks.append(Check(f"role {role}", "fail", f"no healthy device can serve {role}",
                                    f"bind a working device to {role} on the box's page, or fix its device"))
        return checks


# --- the daemon, seen from the CLI ------------------------------------------------------------


def api_address(config: Config) -> str:
    """The address the CLI really connects to for the daemon's API (a wildcard means loopback)."""
    return urllib.parse.urlsplit(config.api.local_url("/")).netloc


def token_origin(config: Config) -> str:
    """Where the config's API token comes from: ``[api] token_file`` (the file) or ``token`` inline."""
    if config.api.token_file is not None:
        return str(config.api.token_file.resolve())
    return f"{config.source.resolve()} ([api] token)"


def daemon_check(config: Config, status: Mapping[str, Any] | None,
                 problem: BaseException | None = None) -> Check:
    """The ``daemon`` check: running and answering, not running, or running but refusing the CLI."""
    if status is not None:
        return Check("daemon", "ok", f"edgehub {status.get('version', '?')} is running for store "
                                     f"{status.get('store_id', '?')}, up {status.get('uptime_s', 0):.0f} s")
    if config.broker.mode == "managed":  # development: `make run` in a terminal, not systemd
        logs = "its output in the terminal it runs in"
        start = f"start it: make run (or edgehub run --config {config.source})"
    else:
        logs, start = "journalctl -u edgehub -n 50", "start it: systemctl start edgehub"
    if not isinstance(problem, DaemonUnreadable):
        if problem is None:
            return Check("daemon", "fail", f"edgehub does not answer on {api_address(config)}",
                         f"{start}; then look at {logs}")
        return Check("daemon", "fail", f"the running edgehub's status could not be read: {_reason(problem)}",
                     f"look at {logs}")
    where = problem.address
    if problem.http_status is None:
        return Check("daemon", "fail", f"edgehub does not answer on {where}"
                                       f"{f' ({problem.detail})' if problem.detail else ''}",
                     f"{start}; then look at {logs}")
    if problem.http_status == 401:
        return Check("daemon", "fail", f"edgehub answers on {where} but refuses the token (HTTP 401): the token "
                                       f"in {token_origin(config)} is not the hub's",
                     "give the config edgehub runs with (systemctl cat edgehub shows its --config); if the "
                     "token was changed since edgehub started, restart it: systemctl restart edgehub")
    if problem.http_status == 429:
        wait = problem.retry_after or "60"
        return Check("daemon", "fail", f"edgehub answers on {where} but is refusing this address for now "
                                       "(HTTP 429): too many wrong tokens were sent from it",
                     f"wait {wait} s and run this again; if it comes back, find what keeps sending a wrong "
                     "token from this box (an old script or config)")
    return Check("daemon", "fail", f"{where} answers, but not with edgehub's status: HTTP {problem.http_status}"
                                   f"{f' ({problem.detail})' if problem.detail else ''}",
                 f"check [api] listen in the config is where edgehub listens; look at {logs}")


def connect_problem(address: str, exc: BaseException) -> DaemonUnreadable:
    """Nothing (or nothing in time) answered at ``address``."""
    os_error = getattr(exc, "os_error", None)  # aiohttp.ClientConnectorError wraps the OSError
    if isinstance(os_error, OSError) and os_error.errno:
        detail = os.strerror(os_error.errno).lower()
    else:
        detail = _reason(exc)
    return DaemonUnreadable(address, None, detail)


def answer_problem(address: str, http_status: int, body: bytes, headers: Mapping[str, str]) -> DaemonUnreadable:
    """The daemon answered ``http_status`` instead of what was asked; its ``{"error": ...}`` as detail."""
    detail = ""
    with contextlib.suppress(ValueError, AttributeError):
        detail = str(json.loads(body).get("error") or "")
    return DaemonUnreadable(address, http_status, detail, headers.get("Retry-After"))


def failing_reader(problem: Exception) -> StatusReader:
    """A status reader that reports ``problem`` again without asking (a 401 or 429 asked again
    would count once more against this address's allowance of wrong tokens)."""

    async def read() -> Mapping[str, Any] | None:
        raise problem

    return read


# --- helpers ---------------------------------------------------------------------------------


def _is_standby(status: Mapping[str, Any] | None) -> bool:
    pair = status.get("pair") if isinstance(status, Mapping) else None
    return isinstance(pair, Mapping) and pair.get("role") == "standby"


def _clock(at: Any) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(at)) if isinstance(at, int | float) else "?"


def _keepalived_config_check(conf: Any) -> Check:
    """keepalived's own check of the config edgehub wrote (``keepalived --config-test``)."""
    from edgehub.pair.vrrp import keepalived_binary

    binary = keepalived_binary()
    if binary is None:
        return Check("keepalived", "fail", "keepalived is not installed",
                     "apt-get install keepalived (the image has it)")
    try:
        result = subprocess.run([binary, "--config-test", "--use-file", str(conf)], capture_output=True,
                                text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return Check("keepalived", "warn", f"cannot run {binary} --config-test: {_reason(exc)}")
    if result.returncode != 0:
        said = " | ".join((result.stdout + result.stderr).strip().splitlines()[-3:])
        return Check("keepalived", "fail", f"keepalived refuses {conf}: {said}",
                     "run `edgehub pair write-config` again")
    return Check("keepalived", "ok", f"{conf} passes keepalived's own check")


def cloud_address(config: Config) -> tuple[str, int] | None:
    """The cloud broker's host and port, if the config has an uplink (``[uplink]``/``[cloud]``)."""
    for name in ("uplink", "cloud"):
        section = getattr(config, name, None)
        if section is None or getattr(section, "enabled", True) is False:
            continue
        host, port = getattr(section, "host", None), getattr(section, "port", None)
        if isinstance(host, str) and host and isinstance(port, int):
            return host, port
        for attr in ("broker", "address", "url", "host"):
            value = getattr(section, attr, None)
            if isinstance(value, Address):
                return value.host, value.port
            if isinstance(value, str) and value:
                port = getattr(section, "port", None)
                host = value.split("://", 1)[-1].rsplit("/", 1)[0]
                if ":" in host and not host.endswith("]"):
                    host, _, p = host.rpartition(":")
                    port = int(p) if p.isdigit() else port
                return host.strip("[]"), int(port or 8883)
    return None


def _ntp_synchronized() -> bool | None:
    try:
        result = subprocess.run(["timedatectl", "show", "-p", "NTPSynchronized", "--value"],
                                capture_output=True, text=True, timeout=3)
    except (OSError, subprocess.TimeoutExpired):
        return None
    value = result.stdout.strip()
    return {"yes": True, "no": False}.get(value) if result.returncode == 0 else None


def _reason(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError):
        return "no answer in time"
    if isinstance(exc, OSError) and exc.strerror:
        return exc.strerror
    return str(exc) or type(exc).__name__


def failed(checks: Iterable[Check]) -> bool:
    return any(c.status == "fail" for c in checks)


def as_json(checks: list[Check]) -> dict[str, Any]:
    return {"ok": not failed(checks), "checks": [asdict(c) for c in checks]}


def as_text(checks: list[Check]) -> str:
    width = max((len(c.name) for c in checks), default=8)
    lines = []
    for c in checks:
        lines.append(f"{c.status.upper():4}  {c.name:<{width}}  {c.message}")
        if c.action and c.status != "ok":
            lines.append(f"{'':4}  {'':<{width}}  -> {c.action}")
    verdict = "some checks FAILED" if failed(checks) else "all checks passed"
    warnings = sum(c.status == "warn" for c in checks)
    return "\n".join([*lines, "", f"{verdict}{f' ({warnings} warnings)' if warnings else ''}"]) + "\n"


def dumps(checks: list[Check]) -> str:
    return json.dumps(as_json(checks), indent=2)


def api_status_reader(config: Config) -> StatusReader:
    """Reads the running daemon's /api/v1/status with the box token (the CLI's view of the hub).

    Raises ``DaemonUnreadable`` saying whether nothing answered or what the daemon answered
    instead (401 wrong token, 429 too many wrong tokens ...), as ``edgehub sync`` reports it.
    """

    async def read() -> Mapping[str, Any] | None:
        import aiohttp

        from edgehub.api.tls import client_context

        url = config.api.local_url("/api/v1/status")
        address = api_address(config)
        try:
            connector = aiohttp.TCPConnector(ssl=client_context(config.api) or False)
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=5), connector=connector) as http:
                async with http.get(url, headers={"Authorization": f"Bearer {config.api.token}"}) as response:
                    body = await response.read()
                    if response.status != 200:
                        raise answer_problem(address, response.status, body, response.headers)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise connect_problem(address, exc) from exc
        try:
            doc = json.loads(body)
        except ValueError:
            doc = None
        if not isinstance(doc, dict):
            raise DaemonUnreadable(address, 200, "the answer is not edgehub's status")
        return doc

    return read




def command(config_path: str, json_output: bool = False) -> int:
    """``edgehub doctor --config FILE [--json]``: 0 when nothing failed, 1 otherwise."""
    import sys

    from edgehub.config import load_config

    config = load_config(config_path)
    doctor = Doctor(config, read_status=api_status_reader(config), daemon_expected=True)
    checks = asyncio.run(doctor.run())
    sys.stdout.write(dumps(checks) + "\n" if json_output else as_text(checks))
    return 1 if failed(checks) else 0
