"""A store that takes QR codes: the roles' test store with ``[payments.qr]`` pointed at the fake
Alipay gateway (real HTTPS on loopback, its own CA), and tills that pay with tender qr or cash."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from edgehub.sim.alipay import APP_ID, AlipayFake, GatewayFiles, make_gateway_files
from tests.roles.conftest import ROLES_TOML, Store, running_store

TILL = "pinpad.till-1"


def qr_toml(files: GatewayFiles, url: str, **overrides: Any) -> str:
    settings = {"acquirer": "alipay", "gateway_url": url, "app_id": APP_ID,
                "private_key_file": str(files.app_private_key),
                "gateway_public_key_file": str(files.gateway_public_key), "ca_file": str(files.ca_file),
                "subject": "测试门店", "connect_timeout_s": 0.5, "answer_timeout_s": 1.0,
                "poll_interval_s": 0.05, "pay_deadline_s": 1.5, "scan_wait_s": 2, "not_found_after_s": 1.0,
                **overrides}
    lines = "\n".join(f"{k} = {json.dumps(v)}" for k, v in settings.items())
    return f"\n[payments]\ncurrency = \"CNY\"\n\n[payments.qr]\n{lines}\n"


@pytest.fixture(scope="session")
def gateway_files(tmp_path_factory: pytest.TempPathFactory) -> GatewayFiles:
    return make_gateway_files(tmp_path_factory.mktemp("gateway"))


@pytest.fixture
def gateway(gateway_files: GatewayFiles) -> Iterator[AlipayFake]:
    with AlipayFake(gateway_files) as fake:
        yield fake


@pytest.fixture
async def qr_store(tmp_path: Path, gateway: AlipayFake) -> AsyncIterator[Store]:
    async with running_store(tmp_path / "box", ROLES_TOML + qr_toml(gateway.files, gateway.url)) as store:
        yield store


def qr_pay(payment_id: str, sale_id: str, cents: int, code: str, **fields: Any) -> dict[str, Any]:
    return {"schema": "pay/1", "payment_id": payment_id, "sale_id": sale_id, "amount_cents": cents,
            "currency": "CNY", "tender": "qr", "auth_code": code, **fields}
