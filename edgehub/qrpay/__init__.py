"""Scan-to-pay (付款码支付) gateways: the acquirer contract and Alipay's gateway.

``make_acquirer(cfg)`` builds the gateway a chain configured (``[payments.qr] acquirer``); the
payments' QR tender (``edgehub/roles/qrtender.py``) runs one QR payment through it under the
box's payment rules (docs/payments.md).
"""

from __future__ import annotations

from edgehub.config import QrConfig
from edgehub.qrpay.acquirer import Acquirer, GatewayAnswer, GatewayOrder, masked_code, wallet_of

__all__ = ["Acquirer", "GatewayAnswer", "GatewayOrder", "make_acquirer", "masked_code", "wallet_of"]


def make_acquirer(cfg: QrConfig) -> Acquirer:
    if cfg.acquirer == "alipay":
        from edgehub.qrpay.alipay import AlipayGateway

        return AlipayGateway(cfg)
    raise ValueError(f"no acquirer called {cfg.acquirer!r}")
