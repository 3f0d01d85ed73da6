"""The 9100 sweep as a store meets it: printers that answer little or nothing are found with the
status mode they have; printers the hub holds, office printers and subnets the box is not on are
left alone. Loopback only (127.0.0.x)."""

from __future__ import annotations

import asyncio
import ipaddress

import pytest

from edgehub.discovery.lan import LanDiscovery, is_office_printer, off_box_subnets, probe_printer
from edgehub.sim.printer import PrinterSim


async def no_macs() -> dict[str, str]:
    return {}


@pytest.mark.parametrize(("profile", "mode"), [("epson", "full"), ("basic", "basic"), ("asb-only", "asb"),
                                               ("silent", "none")])
async def test_printers_that_answer_little_or_nothing_are_found(profile: str, mode: str) -> None:
    """Issue 21: LAN discovery required answers to DLE EOT 1 and 4, so printers without n=4,
    ASB-only and silent ones were never found."""
    async with PrinterSim(profile=profile, host="127.0.0.21") as sim:
        lan = LanDiscovery(["127.0.0.21/32"], port=sim.port, connect_timeout=0.5, reply_timeout=0.3,
                           neighbours=no_macs)
        [found] = await lan.sweep()
    assert (found.address, found.driver, found.extra["status"]) == (f"127.0.0.21:{sim.port}", "escpos", mode)


async def test_the_sweep_never_connects_to_a_printer_the_hub_holds() -> None:
    async with PrinterSim(host="127.0.0.22") as held, PrinterSim(host="127.0.0.23", port=held.port) as new:
        lan = LanDiscovery(["127.0.0.22/31"], port=held.port, connect_timeout=0.5, reply_timeout=0.3,
                           neighbours=no_macs, held=lambda: {held.address})
        found = await lan.sweep()
        assert [i.address for i in found] == [new.address]
        assert held.connections == 0  # a second connection may make it drop the hub's


class Listener:
    """A TCP port on a loopback address that records what it was sent."""

    def __init__(self, host: str) -> None:
        self.host = host
        self.received = b""
        self.connections = 0
        self.server: asyncio.Server | None = None

    async def start(self, port: int = 0) -> int:
        async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.connections += 1
            try:
                while data := await reader.read(64):
                    self.received += data
            finally:
                writer.close()

        self.server = await asyncio.start_server(serve, self.host, port)
        return int(self.server.sockets[0].getsockname()[1])

    def close(self) -> None:
        if self.server is not None:
            self.server.close()


async def test_office_printers_are_sent_nothing_and_not_asked_again() -> None:
    raw, ipp = Listener("127.0.0.24"), Listener("127.0.0.24")
    port, ipp_port = await raw.start(), await ipp.start()
    try:
        assert await probe_printer("127.0.0.24", port, 0.5, 0.3, ipp_port=ipp_port) == "office"
        lan = LanDiscovery(["127.0.0.24/32"], port=port, connect_timeout=0.5, reply_timeout=0.3,
                           neighbours=no_macs, ipp_port=ipp_port)
        assert await lan.sweep() == [] and "office printer" in lan.notes[0]
        connections = raw.connections
        assert await lan.sweep() == []  # within the hour: not even a connection
        await asyncio.sleep(0.1)
        assert raw.received == b"" and raw.connections == connections
    finally:
        raw.close()
        ipp.close()
    assert is_office_printer({"pdl": "application/pdf,image/urf,application/postscript"})
    assert not is_office_printer({"usb_CMD": "ESC/POS", "ty": "EPSON TM-T88VI"})


async def test_a_subnet_the_box_is_not_on_is_not_swept() -> None:
    async with PrinterSim(host="127.0.0.25") as sim:
        box = [ipaddress.IPv4Network("10.99.0.0/16")]  # the box's only network, in this test
        lan = LanDiscovery(["127.0.0.25/32"], port=sim.port, connect_timeout=0.5, neighbours=no_macs,
                           networks=lambda: box)
        assert await lan.sweep() == []
        assert sim.connections == 0
        assert lan.notes == ["subnet 127.0.0.25/32: this box has no address in it: not swept "
                             "(check [discovery] subnets)"]
    assert off_box_subnets([ipaddress.ip_network("10.99.3.0/24")], box) == []


async def test_the_hubs_own_printers_are_the_ones_the_sweep_leaves_alone() -> None:
    """Wired in discovery: found printers and [[device]] ones (a bare host means port 9100)."""
    from drivers.base import DeviceInfo
    from edgehub.bus.topics import Topics
    from edgehub.config import DiscoveryConfig, StaticDeviceConfig
    from edgehub.devices import DeviceRegistry
    from edgehub.discovery import Discovery

    async with PrinterSim(host="127.0.0.26") as found, PrinterSim(host="127.0.0.27", port=found.port) as other:
        registry = DeviceRegistry(Topics("s1"), None)
        await registry.upsert(DeviceInfo("prn-found", "printer", "tcp", found.address, "escpos"))
        static = StaticDeviceConfig(driver="escpos", transport="tcp", address="127.0.0.27", id="prn-static")
        discovery = Discovery(registry, DiscoveryConfig(usb=False, serial=False, subnets=("127.0.0.26/31",)),
                              [static], neighbours=no_macs)
        assert discovery._held_lan() >= {found.address, "127.0.0.27:9100"}  # noqa: SLF001
        discovery.lan.port = found.port
        assert [i.address for i in await discovery.lan.sweep()] == [other.address]
        assert found.connections == 0
