"""LAN discovery: DNS-SD (one shared AsyncZeroconf) and a raw-9100 sweep of configured subnets.

Printers that advertise themselves (``_pdl-datastream._tcp``, ``_printer._tcp``, ``_ipp._tcp``)
are found by browsing; many cheap ESC/POS printers advertise nothing, so the subnets named in
``[discovery] subnets`` are also swept for TCP 9100 with bounded concurrency and short timeouts.

What a host on 9100 is, is asked once (``probe_printer``): ``DLE EOT 1`` answered with a valid
status byte (``byte & 0x93 == 0x12``), then 2-4, makes it a printer with status ``full`` or
``basic``; no answer, then an automatic status back frame after ``GS a``, ``asb``; nothing at
all, a printer that reports no status (``none``: a write-only LAN board) — found all the same,
with that status mode in its profile. Anything else (an HTTP server, bytes that are no status)
is not a printer, and nothing is ever bound to a role that cannot print a ticket.

The sweep is careful with what is not ours:

- it never opens a connection to a host the hub already knows as a printer (``held``): many
  printers take one connection at a time and drop the first for a second;
- an office printer is never sent a byte: a host with IPP (TCP 631) open, or one that
  advertises PCL/PostScript/PDF over DNS-SD, is left alone before anything is written;
- a host found not to be an ESC/POS printer is not asked again for ``recheck_s`` (an hour);
- a configured subnet the box has no address on is not swept (a routed sweep would hammer
  the gateway and give no MAC for identity): ``off_box_subnets`` names it for the log and doctor.

Identity is the MAC address from the kernel's neighbour table (``/proc/net/arp``, then
``ip neigh``), which is there once we have talked to the host; a printer that gets a new IP
from DHCP keeps its id and so its role. Without a MAC (routed subnet, loopback) the zeroconf
instance name is used, and as a last resort ``tcp-host-port``, which is not stable.

The hub advertises itself as ``_edgehub._tcp.local.`` so terminals and installers find it.
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import json
import logging
import re
import socket
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from drivers.base import DeviceInfo
from edgehub.tasks import cancel_and_wait

__all__ = [
    "HUB_SERVICE",
    "LanDiscovery",
    "is_escpos_printer",
    "is_office_printer",
    "local_networks",
    "neighbour_macs",
    "off_box_subnets",
    "probe_printer",
]

log = logging.getLogger("edgehub.discovery.lan")

HUB_SERVICE = "_edgehub._tcp.local."
PRINTER_SERVICES = ("_pdl-datastream._tcp.local.", "_printer._tcp.local.", "_ipp._tcp.local.")
RAW_PORT = 9100
_STATUS_MASK, _STATUS_BITS = 0x93, 0x12
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

NeighbourLookup = Callable[[], Awaitable[dict[str, str]]]


IPP_PORT = 631
_OFFICE_LANGUAGES = ("PCL", "POSTSCRIPT", "PDF", "URF", "PWG", "PJL", "PCLM")
_ASB_REQUEST = b"\x1da\x0f"


async def _port_open(host: str, port: int, timeout: float) -> bool:
    try:
        async with asyncio.timeout(timeout):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(Exception):
        async with asyncio.timeout(0.5):
            await writer.wait_closed()
    return True


def is_office_printer(txt: dict[str, str]) -> bool:
    """A DNS-SD record of a page printer (its languages are PCL, PostScript, PDF...), not ESC/POS."""
    languages = " ".join(txt.get(key, "") for key in ("pdl", "usb_CMD", "CMD")).upper()
    return "ESC/POS" not in languages and any(lang in languages for lang in _OFFICE_LANGUAGES)


async def probe_printer(
    host: str,
    port: int = RAW_PORT,
    connect_timeout: float = 0.5,
    reply_timeout: float = 0.5,
    *,
    ipp_port: int = IPP_PORT,
) -> str | None:
    """What ``host:port`` is: an ESC/POS printer's status mode (``full``, ``basic``, ``asb``,
    ``none``), ``"office"`` (IPP open: left alone, nothing sent), or None (nothing listens, or
    it answered like something else)."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return None
    try:
        if ipp_port and await _port_open(host, ipp_port, connect_timeout):
            return "office"

        async def ask(request: bytes, size: int) -> bytes:
            writer.write(request)
            got = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(reply_timeout):
                    await writer.drain()
                    while len(got) < size:
                        chunk = await reader.read(size - len(got))
                        if not chunk:
                            break
                        got += chunk
            return bytes(b for b in got if b not in (0x11, 0x13))  # XON/XOFF are flow control

        first = await ask(b"\x10\x04\x01", 1)
        if first:
            if first[0] & _STATUS_MASK != _STATUS_BITS:
                return None
            rest = await ask(b"\x10\x04\x02\x10\x04\x03", 2)
            if len(rest) != 2 or any(b & _STATUS_MASK != _STATUS_BITS for b in rest):
                return None
            fourth = await ask(b"\x10\x04\x04", 1)
            if fourth and fourth[0] & _STATUS_MASK != _STATUS_BITS:
                return None
            mode = "full" if fourth else "basic"
        else:
            frame = await ask(_ASB_REQUEST, 4)
            if frame and (len(frame) != 4 or frame[0] & _STATUS_MASK != 0x10):
                return None
            mode = "asb" if frame else "none"
        # Anything more within a short while means it is not answering *us* byte for byte.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.1, reply_timeout)):
                if await reader.read(64):
                    return None
        return mode
    except (OSError, asyncio.IncompleteReadError):
        return None
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                await writer.wait_closed()


async def is_escpos_printer(
    host: str, port: int = RAW_PORT, connect_timeout: float = 0.5, reply_timeout: float = 0.5
) -> bool:
    """True when ``host:port`` answers ESC/POS status (DLE EOT or automatic status back)."""
    return await probe_printer(host, port, connect_timeout, reply_timeout) in ("full", "basic", "asb")


def local_networks() -> list[ipaddress.IPv4Network]:
    """The IPv4 networks this box has an address on (loopback included)."""
    try:
        import psutil

        found = []
        for addrs in psutil.net_if_addrs().values():
            for a in addrs:
                if a.family == socket.AF_INET and a.netmask:
                    found.append(ipaddress.IPv4Network(f"{a.address}/{a.netmask}", strict=False))
        return found
    except Exception:
        return []


def off_box_subnets(
    subnets: Iterable[ipaddress.IPv4Network | ipaddress.IPv6Network], on: Iterable[ipaddress.IPv4Network]
) -> list[str]:
    """The configured subnets that overlap no network the box is on."""
    mine = list(on)
    return [str(net) for net in subnets
            if not any(net.version == own.version and net.overlaps(own) for own in mine)]


async def neighbour_macs() -> dict[str, str]:
    """IP → MAC from the kernel's neighbour table (IPv4 ARP first, then ``ip -j neigh``)."""
    macs: dict[str, str] = {}
    try:
        text = await asyncio.to_thread(lambda: open("/proc/net/arp", encoding="ascii").read())
        for line in text.splitlines()[1:]:
            parts = line.split()
            if len(parts) >= 4 and parts[2] != "0x0" and _MAC_RE.match(parts[3].lower()):
                macs[parts[0]] = parts[3].lower()
    except OSError:
        pass
    if macs:
        return macs
    try:
        proc = await asyncio.create_subprocess_exec(
            "ip", "-j", "neigh", stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL
        )
        async with asyncio.timeout(2.0):
            out, _ = await proc.communicate()
        for row in json.loads(out or b"[]"):
            mac = str(row.get("lladdr", "")).lower()
            if _MAC_RE.match(mac) and mac != "00:00:00:00:00:00":
                macs[str(row.get("dst"))] = mac
    except (OSError, TimeoutError, ValueError) as exc:
        log.debug("ip neigh failed: %s", exc)
    return macs


def _id_part(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]", "_", text.strip())[:96]


def _txt(properties: dict[bytes, bytes | None]) -> dict[str, str]:
    out = {}
    for key, value in properties.items():
        with contextlib.suppress(UnicodeDecodeError):
            out[key.decode()] = (value or b"").decode()
    return out


class LanDiscovery:
    """Finds ESC/POS printers on the LAN. Constructor does no I/O; the AsyncZeroconf is shared
    and owned by whoever passes it in. ``held()`` gives the addresses (``host:port``) of the
    printers the hub already knows: the sweep never connects to them."""

    def __init__(
        self,
        subnets: Iterable[str] = (),
        *,
        zeroconf_types: Iterable[str] = PRINTER_SERVICES,
        port: int = RAW_PORT,
        concurrency: int = 32,
        connect_timeout: float = 0.4,
        reply_timeout: float = 0.5,
        neighbours: NeighbourLookup = neighbour_macs,
        held: Callable[[], Iterable[str]] = lambda: (),
        networks: Callable[[], list[ipaddress.IPv4Network]] = local_networks,
        ipp_port: int = IPP_PORT,
        recheck_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.subnets = [ipaddress.ip_network(s, strict=False) for s in subnets]
        self.zeroconf_types = tuple(zeroconf_types)
        self.port = port
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._neighbours = neighbours
        self._held = held
        self._networks = networks
        self.ipp_port = ipp_port
        self.recheck_s = recheck_s
        self._clock = clock
        self._not_printers: dict[str, float] = {}  # host:port -> when it was found not to be one
        self.notes: list[str] = []  # what the last sweep left alone, for `edgehub discover`

    def _skip(self, address: str) -> bool:
        seen = self._not_printers.get(address)
        return seen is not None and self._clock() - seen < self.recheck_s

    async def identify(
        self,
        host: str,
        port: int,
        *,
        name: str = "",
        txt: dict[str, str] | None = None,
        macs: dict[str, str] | None = None,
        mode: str | None = None,
    ) -> DeviceInfo | None:
        """``host:port`` as a printer ``DeviceInfo`` if it answers like one, else None. The
        status mode found goes in its profile (``extra["status"]``)."""
        txt = txt or {}
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        if address in set(self._held()) or self._skip(address):
            return None
        if is_office_printer(txt):
            log.debug("%s (%s) advertises a page printer's languages: not probed", name or address, address)
            self._not_printers[address] = self._clock()
            return None
        if mode is None:
            mode = await probe_printer(host, port, self.connect_timeout, self.reply_timeout, ipp_port=self.ipp_port)
        if mode is None or mode == "office":
            self._not_printers[address] = self._clock()
            if mode == "office":
                self.notes.append(f"{address}: an office printer (IPP on {self.ipp_port}): left alone")
            return None
        if macs is None:
            macs = await self._neighbours()  # fresh: our connection just put the host there
        mac = macs.get(host, "")
        if mac:
            device_id = "mac-" + mac.replace(":", "")
        elif name:
            device_id = "zc-" + _id_part(name.split("._", 1)[0])
        else:
            device_id = f"tcp-{_id_part(host)}-{port}"
        extra = {k: v for k, v in {"mac": mac, "zeroconf": name, "ty": txt.get("ty", ""), "status": mode}.items()
                 if v}
        return DeviceInfo(
            device_id=device_id,
            kind="printer",
            transport="tcp",
            address=address,
            driver="escpos",
            model=txt.get("usb_MDL") or txt.get("ty", "") or ("silent on port 9100 (no status)" if mode == "none"
                                                               else ""),
            vendor=txt.get("usb_MFG", ""),
            serial_number=txt.get("usb_SN", ""),
            extra=extra,
        )

    # -- sweep -----------------------------------------------------------------------------
    def sweepable(self) -> list[ipaddress.IPv4Network | ipaddress.IPv6Network]:
        """The configured subnets the box is on; the others are named in ``notes``."""
        off = set(off_box_subnets(self.subnets, self._networks()))
        for net in sorted(off):
            self.notes.append(f"subnet {net}: this box has no address in it: not swept "
                              "(check [discovery] subnets)")
        return [net for net in self.subnets if str(net) not in off]

    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for net in self.sweepable():
            for host in net.hosts() if net.num_addresses > 2 else net:
                seen.setdefault(str(host), None)
        return list(seen)

    async def sweep(self, progress: Callable[[int, int], None] | None = None) -> list[DeviceInfo]:
        """Every host of the configured subnets with an ESC/POS printer on ``port``, except the
        printers the hub holds and the hosts found not to be one within ``recheck_s``."""
        self.notes = []
        held = set(self._held())
        hosts = [h for h in self.hosts() if f"{h}:{self.port}" not in held and not self._skip(f"{h}:{self.port}")]
        if not hosts:
            return []
        limit = asyncio.Semaphore(self.concurrency)
        done = 0
        found: dict[str, str] = {}

        async def one(host: str) -> None:
            nonlocal done
            async with limit:
                mode = await probe_printer(host, self.port, self.connect_timeout, self.reply_timeout,
                                           ipp_port=self.ipp_port)
            if mode is not None and mode != "office":
                found[host] = mode
            elif mode == "office":
                self._not_printers[f"{host}:{self.port}"] = self._clock()
                self.notes.append(f"{host}:{self.port}: an office printer (IPP on {self.ipp_port}): left alone")
            done += 1
            if progress is not None:
                progress(done, len(hosts))

        await asyncio.gather(*(one(h) for h in hosts))
        macs = await self._neighbours()
        infos = await asyncio.gather(
            *(self.identify(h, self.port, macs=macs, mode=found[h]) for h in sorted(found))
        )
        return [i for i in infos if i is not None]

    # -- zeroconf --------------------------------------------------------------------------
    async def browse(self, aiozc: Any, on_found: Callable[[DeviceInfo], Awaitable[None]]) -> None:
        """Browse the printer service types until cancelled; ``on_found`` for each printer."""
        from zeroconf import ServiceStateChange
        from zeroconf.asyncio import AsyncServiceBrowser

        pending: set[asyncio.Task[None]] = set()

        def handler(zeroconf: Any, service_type: str, name: str, state_change: ServiceStateChange) -> None:
            if state_change in (ServiceStateChange.Added, ServiceStateChange.Updated):
                task = asyncio.get_running_loop().create_task(
                    self._resolve(aiozc, service_type, name, on_found)
                )
                pending.add(task)
                task.add_done_callback(pending.discard)

        browser = AsyncServiceBrowser(aiozc.zeroconf, list(self.zeroconf_types), handlers=[handler])
        try:
            await asyncio.Event().wait()
        finally:
            await cancel_and_wait(*pending)
            with contextlib.suppress(Exception):
                await browser.async_cancel()

    async def _resolve(
        self, aiozc: Any, service_type: str, name: str, on_found: Callable[[DeviceInfo], Awaitable[None]]
    ) -> None:
        from zeroconf.asyncio import AsyncServiceInfo

        info = AsyncServiceInfo(service_type, name)
        try:
            if not await info.async_request(aiozc.zeroconf, 3000):
                log.debug("no answer resolving %s", name)
                return
        except Exception as exc:
            log.debug("resolving %s failed: %s", name, exc)
            return
        txt = _txt(info.properties or {})
        # Only the raw port takes ESC/POS; _printer (LPD) and _ipp point at other protocols.
        port = info.port if service_type.startswith("_pdl-datastream") and info.port else RAW_PORT
        for host in info.parsed_addresses():
            found = await self.identify(host, port, name=name, txt=txt)
            if found is not None:
                await on_found(found)
                return
        log.info(
            "%s (%s) does not answer ESC/POS status on port %d; not a receipt printer",
            name,
            ", ".join(info.parsed_addresses()),
            port,
        )


def hub_service_info(store_id: str, port: int, addresses: Iterable[str], version: str) -> Any:
    """The ``_edgehub._tcp`` record the hub announces (TXT: store id, API path, version)."""
    from zeroconf.asyncio import AsyncServiceInfo

    return AsyncServiceInfo(
        HUB_SERVICE,
        f"edgehub-{store_id}.{HUB_SERVICE}",
        port=port,
        properties={"store": store_id, "api": "/api/v1", "version": version},
        parsed_addresses=list(addresses),
        server=f"edgehub-{store_id}.local.",
    )


def local_ipv4_addresses() -> list[str]:
    """This box's non-loopback IPv4 addresses (to announce the hub on)."""
    try:
        import psutil

        return sorted(
            {
                a.address
                for addrs in psutil.net_if_addrs().values()
                for a in addrs
                if a.family == socket.AF_INET and not a.address.startswith("127.")
            }
        )
    except Exception:
        return []
