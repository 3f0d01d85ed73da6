"""The box's RSA2 signing checked against an implementation that is not ours: the openssl command.

A request the box signs verifies with ``openssl dgst -sha256 -verify`` over the documented
signing string; an answer signed by ``openssl dgst -sha256 -sign`` verifies in the box, and one
byte changed in it does not. The signing string follows Alipay's "签名" rules."""

from __future__ import annotations

import base64
import subprocess
from pathlib import Path

import pytest

from edgehub.qrpay.alipay import load_private_key, load_public_key, response_node, sign, signing_string, verify
from edgehub.sim.alipay import GatewayFiles

pytestmark = pytest.mark.skipif(subprocess.run(["which", "openssl"], capture_output=True).returncode != 0,
                                reason="openssl is not installed")

PARAMS = {"app_id": "2014072300007148", "method": "alipay.trade.pay", "format": "JSON", "charset": "utf-8",
          "sign_type": "RSA2", "timestamp": "2014-07-24 03:07:50", "version": "1.0", "notify_url": "",
          "biz_content": '{"out_trade_no":"eh1","scene":"bar_code","auth_code":"28763443825664394",'
                         '"subject":"测试门店","total_amount":"88.88"}'}


def test_the_signing_string_is_the_documented_one() -> None:
    # Sorted by name, empty values left out, sign_type included, values not URL-encoded.
    assert signing_string({**PARAMS, "sign": "ignored"}).decode() == (
        "app_id=2014072300007148&biz_content=" + PARAMS["biz_content"] + "&charset=utf-8&format=JSON"
        "&method=alipay.trade.pay&sign_type=RSA2&timestamp=2014-07-24 03:07:50&version=1.0")


def test_a_request_signed_by_the_box_verifies_with_openssl(gateway_files: GatewayFiles, tmp_path: Path) -> None:
    signature = sign(load_private_key(gateway_files.app_private_key), PARAMS)
    (tmp_path / "content").write_bytes(signing_string(PARAMS))
    (tmp_path / "sig").write_bytes(base64.b64decode(signature))
    result = subprocess.run(["openssl", "dgst", "-sha256", "-verify", str(gateway_files.app_public_key),
                             "-signature", str(tmp_path / "sig"), str(tmp_path / "content")],
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Verified OK" in result.stdout, result.stdout + result.stderr


def test_an_answer_signed_by_openssl_verifies_in_the_box(gateway_files: GatewayFiles, tmp_path: Path) -> None:
    node = '{"code":"10000","msg":"Success","out_trade_no":"eh1","total_amount":"88.88"}'
    (tmp_path / "node").write_text(node)
    out = subprocess.run(["openssl", "dgst", "-sha256", "-sign", str(gateway_files.gateway_private_key),
                          str(tmp_path / "node")], capture_output=True, check=True).stdout
    text = '{"alipay_trade_pay_response": ' + node + ',\n "sign":"' + base64.b64encode(out).decode() + '"}'
    raw = response_node(text, "alipay_trade_pay_response")
    assert raw == node  # exactly the text the gateway signed, whatever the spacing around it
    key = load_public_key(gateway_files.gateway_public_key)  # bare base64, as Alipay shows it
    assert verify(key, raw.encode(), base64.b64encode(out).decode())
    assert not verify(key, raw.replace("88.88", "88.89").encode(), base64.b64encode(out).decode())
