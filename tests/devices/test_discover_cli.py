"""``edgehub discover``: the real command against the simulated store's devices (printers on
loopback port 9100 found by the subnet sweep, the scale on a pty found by its active probe)."""

from __future__ import annotations

import asyncio
import json
import random
import sys
from pathlib import Path

import pytest

from edgehub.sim.store import SimStore
from tests.conftest import REPO, HubProcess, write_config


async def discover(*args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgehub", "discover", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=REPO,
    )  # fmt: skip
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_discover_finds_the_simulated_store_with_the_right_drivers() -> None:
    # Three loopback addresses of our own (any 127/8 address is local on Linux), port 9100.
    base = f"127.{random.randrange(100, 250)}.{random.randrange(1, 250)}"
    hosts = (f"{base}.11", f"{base}.12", f"{base}.13")
    async with SimStore(lan_hosts=hosts) as sim:
        assert sim.scale is not None
        subnets = [arg for h in hosts for arg in ("--subnet", f"{h}/32")]
        code, out, err = await discover(
            "--json", "--no-usb", "--serial-port", sim.scale.port, *subnets, "--browse-seconds", "0"
        )
        assert code == 0, err
        rows = json.loads(out)
        by_address = {r["address"]: r for r in rows}
        for host in hosts:
            row = by_address[f"{host}:9100"]
            assert (row["kind"], row["driver"], row["transport"]) == ("printer", "escpos", "tcp")
            assert row["id"]
        scale = by_address[sim.scale.port]
        assert (scale["kind"], scale["driver"], scale["transport"]) == ("scale", "mt8217", "serial")
        assert scale["model"] == "8217 protocol"
        # The progress line on stderr (one line per step when it is not a terminal).
        assert "probing serial ports" in err and "sweeping port 9100: 3/3 hosts" in err

        code, out, _ = await discover("--no-usb", "--no-serial", *subnets, "--browse-seconds", "0")
        assert code == 0
        header, *lines = out.splitlines()
        assert header.split() == ["KIND", "MODEL", "TRANSPORT", "ADDRESS", "ID", "DRIVER", "FOUND_BY"]
        assert sorted(line.split()[2] for line in lines) == [f"{h}:9100" for h in hosts]


async def test_discover_refuses_a_bad_subnet_with_the_argument() -> None:
    code, out, err = await discover("--no-usb", "--no-serial", "--subnet", "10.0.0.300/24")
    assert code == 2 and out == ""
    assert err.startswith("--subnet 10.0.0.300/24: ")


async def test_discover_leaves_a_port_in_service_alone_and_says_what_it_did_not_find() -> None:
    """Beside a running hub, ``discover`` must not send its probes into the scale the hub is
    weighing with: the hub's drivers hold their ports exclusively, and discover says so."""
    from drivers.base import DeviceInfo
    from drivers.scale_mt8217 import MT8217Scale

    async with SimStore(lan_hosts=()) as sim:
        assert sim.scale is not None
        held = MT8217Scale(DeviceInfo("scale-1", "scale", "serial", sim.scale.port, "mt8217"))
        await held.open()  # as the hub's driver does
        try:
            before = (await held.read_weight()).grams
            code, out, err = await discover("--no-usb", "--no-lan", "--serial-port", sim.scale.port,
                                            "--serial-port", "/dev/no-such-port")
            assert (await held.read_weight()).grams == before  # still weighing, never disturbed
        finally:
            await held.close()
    assert code == 0 and out == "no devices found\n"
    assert f"serial {sim.scale.port}: in use by another program (a running edgehub?): not probed" in err
    assert "serial /dev/no-such-port: does not exist" in err
    assert "USB: not scanned (turned off)" in err and "LAN: not searched (turned off)" in err


def _libusb_missing() -> bool:
    import usb.core

    try:
        usb.core.find()
    except usb.core.NoBackendError:
        return True
    return False


@pytest.mark.skipif(not _libusb_missing(), reason="libusb is installed here")
async def test_without_libusb_discover_says_how_to_install_it() -> None:
    code, _, err = await discover("--no-serial", "--no-lan")
    assert code == 0
    assert "USB: not scanned (libusb is not installed: sudo apt-get install libusb-1.0-0)" in err


async def test_discover_lists_the_devices_of_the_hub_running_on_the_config(tmp_path: Path) -> None:
    """The issue: `discover` could not see the simulated devices the running hub (`make run`) uses.
    They come from the hub (which drives them), not from probing them behind its back."""
    process = HubProcess(write_config(tmp_path / "box", mode="managed"), tmp_path / "hub.log",
                         extra_args=("--simulate",))
    try:
        await asyncio.to_thread(process.start)
        code, out, err = await discover("--config", str(process.config_path), "--json", "--no-usb", "--no-serial",
                                        "--no-lan")
    finally:
        process.stop()
    assert code == 0, err
    rows = {row["id"]: row for row in json.loads(out)}
    for device in ("sim-kitchen-1", "sim-kitchen-2", "sim-receipt-1", "sim-scale-1", "sim-scanner-1", "sim-pinpad-1"):
        assert rows[device]["found_by"].startswith("running hub"), rows
    assert rows["sim-scale-1"]["driver"] == "mt8217" and rows["sim-scale-1"]["transport"] == "serial"
    assert f"6 devices come from the running hub (process {process.proc.pid}" in err  # type: ignore[union-attr]
