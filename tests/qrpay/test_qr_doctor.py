"""`edgehub doctor` tells an installer whether QR pay can work: keys load, the gateway answers."""

from __future__ import annotations

from pathlib import Path

from edgehub.config import load_config
from edgehub.doctor import Check, Doctor
from edgehub.sim.alipay import AlipayFake
from tests.conftest import write_config
from tests.qrpay.conftest import qr_toml


async def qr_check(tmp_path: Path, toml: str) -> Check:
    config = load_config(write_config(tmp_path / "box", extra=toml))
    checks = await Doctor(config, timeout_s=0.5).run()
    (check,) = [c for c in checks if c.name == "qr-gateway"]
    return check


async def test_doctor_checks_the_gateway(tmp_path: Path, gateway: AlipayFake) -> None:
    toml = qr_toml(gateway.files, gateway.url)
    ok = await qr_check(tmp_path, toml)
    assert ok.status == "ok" and gateway.url in ok.message
    gateway.go_down()
    down = await qr_check(tmp_path, toml)
    assert down.status == "warn" and "QR payments are refused (take cash or card)" in down.message


async def test_doctor_says_when_a_key_is_unusable(tmp_path: Path, gateway: AlipayFake) -> None:
    bad = tmp_path / "not-a-key.pem"
    bad.write_text("-----BEGIN PRIVATE KEY-----\nbm90IGEga2V5\n-----END PRIVATE KEY-----\n")
    check = await qr_check(tmp_path, qr_toml(gateway.files, gateway.url, private_key_file=str(bad)))
    assert check.status == "fail" and check.message.startswith("QR pay cannot start:")
