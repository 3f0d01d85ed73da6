"""LAN discovery: DNS-SD (one shared AsyncZeroconf) and a raw-9100 sweep of configured subnets.

Printers that advertise themselves (``_pdl-datastream._tcp``, ``_printer._tcp``, ``_ipp._tcp``)
are found by browsing; many cheap ESC/POS printers advertise nothing, so the subnets named in
``[discovery] subnets`` are also swept for TCP 9100 with bounded concurrency and short timeouts.

Either way, a host counts as an ESC/POS printer only when it answers the real-time status
requests ``DLE EOT 1`` and ``DLE EOT 4`` with two valid status bytes (``byte & 0x93 == 0x12``)
and nothing else: an office printer's PDL port, a web server or a port that chatters garbage is
refused, so nothing is ever bound to a role that cannot print a ticket.

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
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from drivers.base import DeviceInfo
from edgehub.tasks import cancel_and_wait

__all__ = ["HUB_SERVICE", "LanDiscovery", "is_escpos_printer", "neighbour_macs"]

log = logging.getLogger("edgehub.discovery.lan")

HUB_SERVICE = "_edgehub._tcp.local."
PRINTER_SERVICES = ("_pdl-datastream._tcp.local.", "_printer._tcp.local.", "_ipp._tcp.local.")
RAW_PORT = 9100
_STATUS_MASK, _STATUS_BITS = 0x93, 0x12
_MAC_RE = re.compile(r"^([0-9a-f]{2}:){5}[0-9a-f]{2}$")

NeighbourLookup = Callable[[], Awaitable[dict[str, str]]]


async def is_escpos_printer(
    host: str, port: int = RAW_PORT, connect_timeout: float = 0.5, reply_timeout: float = 0.5
) -> bool:
    """True when ``host:port`` answers DLE EOT 1 and 4 with two valid status bytes, nothing else."""
    try:
        async with asyncio.timeout(connect_timeout):
            reader, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    try:
        writer.write(b"\x10\x04\x01\x10\x04\x04")
        async with asyncio.timeout(reply_timeout):
            await writer.drain()
            reply = await reader.readexactly(2)
        # Anything more within a short while means it is not answering *us* byte for byte.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(min(0.1, reply_timeout)):
                more = await reader.read(64)
                if more:
                    return False
        return all(b & _STATUS_MASK == _STATUS_BITS for b in reply)
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
    finally:
        writer.close()
        with contextlib.suppress(Exception):
            async with asyncio.timeout(0.5):
                await writer.wait_closed()


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
    and owned by whoever passes it in."""

    def __init__(
        self,
        subnets: Iterable[str] = (),
        *,
        zeroconf_types: Iterable[str] = PRINTER_SERVICES,
        port: int = RAW_PORT,
        concurrency: int = 64,
        connect_timeout: float = 0.4,
        reply_timeout: float = 0.5,
        neighbours: NeighbourLookup = neighbour_macs,
    ) -> None:
        self.subnets = [ipaddress.ip_network(s, strict=False) for s in subnets]
        self.zeroconf_types = tuple(zeroconf_types)
        self.port = port
        self.concurrency = concurrency
        self.connect_timeout = connect_timeout
        self.reply_timeout = reply_timeout
        self._neighbours = neighbours

    async def identify(
        self,
        host: str,
        port: int,
        *,
        name: str = "",
        txt: dict[str, str] | None = None,
        macs: dict[str, str] | None = None,
    ) -> DeviceInfo | None:
        """``host:port`` as a printer ``DeviceInfo`` if it answers like one, else None."""
        if not await is_escpos_printer(host, port, self.connect_timeout, self.reply_timeout):
            return None
        txt = txt or {}
        if macs is None:
            macs = await self._neighbours()  # fresh: our connection just put the host there
        mac = macs.get(host, "")
        if mac:
            device_id = "mac-" + mac.replace(":", "")
        elif name:
            device_id = "zc-" + _id_part(name.split("._", 1)[0])
        else:
            device_id = f"tcp-{_id_part(host)}-{port}"
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        extra = {k: v for k, v in {"mac": mac, "zeroconf": name, "ty": txt.get("ty", "")}.items() if v}
        return DeviceInfo(
            device_id=device_id,
            kind="printer",
            transport="tcp",
            address=address,
            driver="escpos",
            model=txt.get("usb_MDL") or txt.get("ty", ""),
            vendor=txt.get("usb_MFG", ""),
            serial_number=txt.get("usb_SN", ""),
            extra=extra,
        )

    # -- sweep -----------------------------------------------------------------------------
    def hosts(self) -> list[str]:
        seen: dict[str, None] = {}
        for net in self.subnets:
            for host in net.hosts() if net.num_addresses > 2 else net:
                seen.setdefault(str(host), None)
        return list(seen)

    async def sweep(self, progress: Callable[[int, int], None] | None = None) -> list[DeviceInfo]:
        """Every host of the configured subnets with an ESC/POS printer on ``port``."""
        hosts = self.hosts()
        if not hosts:
            return []
        limit = asyncio.Semaphore(self.concurrency)
        done = 0
        found: list[str] = []

        async def one(host: str) -> None:
            nonlocal done
            async with limit:
                if await is_escpos_printer(host, self.port, self.connect_timeout, self.reply_timeout):
                    found.append(host)
            done += 1
            if progress is not None:
                progress(done, len(hosts))

        await asyncio.gather(*(one(h) for h in hosts))
        macs = await self._neighbours()
        infos = await asyncio.gather(*(self.identify(h, self.port, macs=macs) for h in sorted(found)))
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
