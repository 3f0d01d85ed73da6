"""[payments], [payments.qr] and [reports]: every problem named with its file and line."""

from __future__ import annotations

from pathlib import Path

from edgehub.bundle import config_secrets
from edgehub.config import load_config
from edgehub.sim.alipay import make_gateway_files
from tests.test_config import VALID, problems


def test_bad_money_settings_are_each_named(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + """
[payments]
currency = "rmb"
drawer_role = "pinpad.till-1"
drawer_open_level = "open"

[payments.qr]
acquirer = "wechat"
gateway_url = "http://openapi.alipay.com/gateway.do"
pay_deadline_s = 0
colour = "red"

[reports]
day_starts_at = "5am"
timezone = "Mars/Olympus"
print_role = "scale"
""")
    where = f"{tmp_path / 'edgehub.toml'}"
    assert f"{where}:11: payments.currency: 'rmb' is not an ISO 4217 code like CNY" in found
    assert any(p.startswith(f"{where}:12: payments.drawer_role: 'pinpad.till-1' must be a printer role") for p in found)
    assert f'{where}:13: payments.drawer_open_level: must be "low" or "high"' in found
    assert any(p.startswith(f"{where}:16: payments.qr.acquirer: must be one of alipay") for p in found)
    assert any(p.startswith(f"{where}:17: payments.qr.gateway_url: 'http://") and "https://" in p for p in found)
    assert f"{where}:18: payments.qr.pay_deadline_s: must be 0.5 to 600 seconds" in found
    assert any(p.startswith(f"{where}:19: payments.qr.colour: unknown key") for p in found)
    assert any(p.startswith(f"{where}:22: reports.day_starts_at: '5am' must be HH:MM") for p in found)
    assert any(p.startswith(f"{where}:23: reports.timezone: 'Mars/Olympus' is not a time zone") for p in found)
    assert any(p.startswith(f"{where}:24: reports.print_role: 'scale' must be a printer role") for p in found)


def test_qr_needs_its_keys(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + '\n[payments.qr]\nacquirer = "alipay"\n')
    assert any("payments.qr.app_id: missing" in p for p in found)
    assert any("payments.qr.private_key_file: missing: QR pay through alipay needs it" in p for p in found)
    assert any("payments.qr.gateway_public_key_file: missing" in p for p in found)


def test_keys_and_the_merchant_id_stay_out_of_bundles(tmp_path: Path) -> None:
    files = make_gateway_files(tmp_path / "keys")
    path = tmp_path / "edgehub.toml"
    path.write_text(VALID + f"""
[payments.qr]
acquirer = "alipay"
app_id = "2021004455667788"
private_key_file = "{files.app_private_key}"
gateway_public_key_file = "{files.gateway_public_key}"
""")
    secrets = config_secrets(load_config(path))
    assert "2021004455667788" in secrets
    assert files.app_private_key.read_text().strip() in secrets
