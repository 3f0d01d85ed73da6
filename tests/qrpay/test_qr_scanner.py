"""A till that names its scanner instead of sending the code: the next scan on that scanner role
is the guest's payment code (a serial scanner simulator on a pseudo-terminal, a real hub)."""

from __future__ import annotations

import asyncio
from pathlib import Path

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.hub import Hub
from edgehub.sim.alipay import AlipayFake, alipay_code
from edgehub.sim.scanner import SerialScannerSim
from tests.conftest import write_config
from tests.qrpay.conftest import TILL, qr_toml
from tests.roles.conftest import Till


async def test_the_next_scan_is_the_code(tmp_path: Path, gateway: AlipayFake) -> None:
    async with SerialScannerSim() as scanner:
        extra = qr_toml(gateway.files, gateway.url, scan_wait_s=3) + f"""
[discovery]
usb = false
serial = false
lan = false
advertise = false

[[device]]
id = "scan-till-1"
driver = "serial_scanner"
transport = "serial"
address = "{scanner.port}"

[[role]]
name = "scanner.till-1"
devices = ["scan-till-1"]
"""
        config = load_config(write_config(tmp_path / "box", extra=extra))
        async with MosquittoProcess(config, die_with_parent=False), Hub(config) as hub, Till(config) as till:
            await asyncio.wait_for(hub.ready.wait(), 10)
            async with asyncio.timeout(15):
                while hub.roles.serving("scanner.till-1") != "scan-till-1":
                    await asyncio.sleep(0.05)
            pay = {"schema": "pay/1", "payment_id": "qs-1", "sale_id": "s-1", "amount_cents": 1500,
                   "currency": "CNY", "tender": "qr", "scanner": "scanner.till-1"}
            await till.request(TILL, "pay", pay)
            scanning = await till.reply("payment_id", "qs-1", "scanning")
            assert scanning["reason"] == "scan the guest's payment code on scanner.till-1"
            scanner.scan(alipay_code(41))
            done = await till.reply("payment_id", "qs-1", ("approved", "refused", "declined"))
            assert done["status"] == "approved" and done["code"] == "28…0041"
            # Nothing scanned in time: refused, nothing sent.
            await till.request(TILL, "pay", {**pay, "payment_id": "qs-2", "sale_id": "s-2"})
            late = await till.reply("payment_id", "qs-2", "refused", timeout=10)
            assert late["error"] == "no code was scanned on scanner.till-1 within 3 s; nothing was charged"
            # A dish's barcode scanned by mistake is no payment code.
            await till.request(TILL, "pay", {**pay, "payment_id": "qs-3", "sale_id": "s-3"})
            await till.reply("payment_id", "qs-3", "scanning")
            scanner.scan("6901234567892")
            wrong = await till.reply("payment_id", "qs-3", ("refused", "approved"))
            assert wrong["status"] == "refused" and wrong["error"].startswith("not an Alipay payment code")
            # Scans a payment asked for never reach the terminals reading the role's events; a scan
            # with no payment waiting does.
            scanner.scan("6901234567899")
            async with asyncio.timeout(10):
                while not any(t.endswith("/evt/scan") for t, _ in till.events):
                    await asyncio.sleep(0.05)
            scans = [doc["code"] for topic, doc in till.events if topic.endswith("/evt/scan")]
            assert scans == ["6901234567899"]
    assert gateway.pays_for(alipay_code(41)) == 1 and len(gateway.calls.pay) == 1
