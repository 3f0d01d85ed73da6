"""Real mDNS between two network namespaces: a printer announced in one is found from the other,
identified by its MAC (from the neighbour table) and accepted only after the ESC/POS status probe.

Needs root and iproute2; uses only 10.200.0.0/24 inside namespaces this test creates and deletes.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PEER = Path(__file__).with_name("netns_peer.py")

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("ip") is None,
    reason="real mDNS between network namespaces needs root and iproute2 (ip netns)",
)


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=10)


@pytest.fixture
def namespaces() -> Iterator[tuple[str, str]]:
    a, b = f"ehub-{os.getpid()}-a", f"ehub-{os.getpid()}-b"
    try:
        ip("netns", "add", a)
        ip("netns", "add", b)
    except subprocess.CalledProcessError as exc:
        pytest.skip(f"cannot create network namespaces here: {exc.stderr.decode().strip()}")
    try:
        ip("link", "add", "eh-veth-a", "netns", a, "type", "veth", "peer", "name", "eh-veth-b", "netns", b)
        for ns, dev, addr in ((a, "eh-veth-a", "10.200.0.1/24"), (b, "eh-veth-b", "10.200.0.2/24")):
            ip("-n", ns, "addr", "add", addr, "dev", dev)
            ip("-n", ns, "link", "set", dev, "up", "multicast", "on")
            ip("-n", ns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for ns in (a, b):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True, timeout=10)


def test_printer_announced_in_one_namespace_is_found_from_the_other(namespaces: tuple[str, str]) -> None:
    a, b = namespaces
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    printer = subprocess.Popen(
        ["ip", "netns", "exec", a, sys.executable, str(PEER), "printer", "10.200.0.1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=env,
        cwd=REPO,
    )
    try:
        assert printer.stdout is not None
        assert printer.stdout.readline().strip() == b"ready", printer.stderr.read() if printer.stderr else ""
        out = subprocess.run(
            ["ip", "netns", "exec", b, sys.executable, str(PEER), "discover", "10.200.0.2", "15"],
            capture_output=True,
            timeout=40,
            env=env,
            cwd=REPO,
            check=True,
        )
        found = json.loads(out.stdout.decode().strip().splitlines()[-1])
        mac = subprocess.run(
            ["ip", "-n", a, "-j", "link", "show", "eh-veth-a"], capture_output=True, check=True
        ).stdout
        expected_mac = json.loads(mac)[0]["address"]
    finally:
        if printer.stdin is not None:
            printer.stdin.close()
        try:
            printer.wait(timeout=10)
        except subprocess.TimeoutExpired:
            printer.kill()
    assert len(found) == 1, out.stderr.decode()
    [device] = found
    assert device["address"] == "10.200.0.1:9100"
    assert (device["kind"], device["driver"], device["model"], device["vendor"]) == (
        "printer",
        "escpos",
        "TM-T20III",
        "EPSON",
    )
    assert device["device_id"] == "mac-" + expected_mac.replace(":", "")
