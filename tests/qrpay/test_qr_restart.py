"""The box killed between the gateway taking a QR payment and its answer: on restart the payment
is settled by querying the gateway with the journaled merchant order id, never by a second pay."""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path

from edgehub.broker import MosquittoProcess
from edgehub.config import load_config
from edgehub.sim.alipay import AlipayFake, alipay_code
from tests.conftest import HubProcess, write_config
from tests.qrpay.conftest import TILL, qr_pay, qr_toml
from tests.roles.conftest import Till


async def test_killed_between_pay_and_answer_settles_by_query(tmp_path: Path, gateway: AlipayFake) -> None:
    config_path = write_config(tmp_path / "box", extra=qr_toml(gateway.files, gateway.url, pay_deadline_s=30,
                                                                answer_timeout_s=20))
    config = load_config(config_path)
    hub = HubProcess(config_path, tmp_path / "hub.log")
    code = gateway.wallet(alipay_code(21), answer="hang")  # charged, the answer held back
    try:
        async with MosquittoProcess(config, die_with_parent=False), Till(config) as till:
            await asyncio.to_thread(hub.start)
            await till.request(TILL, "pay", qr_pay("qr-21", "sale-21", 8800, code), correlation=b"k")
            await till.reply("payment_id", "qr-21", "processing", timeout=15)
            async with asyncio.timeout(10):
                while gateway.pays_for(code) == 0:
                    await asyncio.sleep(0.02)
            hub.kill9()
            gateway.release()
            with sqlite3.connect(config.journal.path) as conn:
                state, reference = conn.execute(
                    "SELECT state, reference FROM payments WHERE payment_id='qr-21'").fetchone()
            assert state == "sent" and reference in gateway.trades  # journaled before the gateway got it
            await asyncio.to_thread(hub.start)
            # The request the dead hub never finished comes again from the broker's session: it is
            # answered from the journal (unknown, duplicate), then the settler asks the gateway.
            done = await till.reply("payment_id", "qr-21", ("approved", "declined"), timeout=30)
            assert done["status"] == "approved" and done["settled_by"] == "gateway"
            # The till re-sends its request after the restart: the answer, not a second charge.
            await till.request(TILL, "pay", qr_pay("qr-21", "sale-21", 8800, code), correlation=b"k2")
            async with asyncio.timeout(10):
                while not any(d.get("duplicate") for d in till.replies_for("payment_id", "qr-21")):
                    await asyncio.sleep(0.02)
    finally:
        hub.stop()
    assert gateway.pays_for(code) == 1 and gateway.charged(code) == 8800
    assert reference in gateway.calls.query
