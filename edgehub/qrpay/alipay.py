"""Alipay's bar-code payment (当面付 条码支付) as an ``Acquirer``, from Alipay's public OpenAPI docs.

Calls (Alipay Open Platform, "统一收单交易支付接口" and its siblings): ``alipay.trade.pay`` with
``scene=bar_code`` and the guest's ``auth_code``; ``alipay.trade.query`` and
``alipay.trade.cancel`` by ``out_trade_no`` (the merchant order id the box journaled first). Each
is an HTTPS POST of form fields to the gateway (``https://openapi.alipay.com/gateway.do``): the
public parameters ``app_id, method, format=JSON, charset=utf-8, sign_type=RSA2, timestamp``
(``yyyy-MM-dd HH:mm:ss``, Beijing time), ``version=1.0`` and ``biz_content`` (the call's own
fields as JSON), plus ``sign``.

Signing ("签名" / "自行实现签名"): every parameter but ``sign`` with a non-empty value, sorted by
name, joined as ``name=value`` with ``&`` (values not URL-encoded), signed SHA256withRSA
(RSASSA-PKCS1-v1_5) with the application's private key, base64. The answer is JSON
``{"<method with _>_response": {...}, "sign": "..."}``; its signature covers the response
object's text exactly as sent, checked with Alipay's public key ("同步返回验签"). An answer whose
signature is missing or wrong is not trusted either way: it counts as no answer (``unknown``),
so a forged "paid" cannot mark a sale paid and a forged "failed" cannot make the till charge
again.

Results (公共错误码, and the calls' 业务错误码): ``10000`` success; ``10003`` order created, the
guest is confirming (WAIT_BUYER_PAY: query); ``20000`` service unavailable and
``ACQ.SYSTEM_ERROR`` (outcome unknown: query); ``40004`` business failure with a ``sub_code``
(``ACQ.PAYMENT_AUTH_CODE_INVALID``, ``ACQ.BUYER_BALANCE_NOT_ENOUGH`` … nothing charged;
``ACQ.TRADE_HAS_SUCCESS``: query; ``ACQ.TRADE_HAS_CLOSE``: closed); ``40001``/``40002``/
``40006``/``20001`` the request was refused before any business (missing or invalid parameter,
bad signature, no permission). ``trade_status`` of a query: ``WAIT_BUYER_PAY``,
``TRADE_SUCCESS``, ``TRADE_FINISHED`` (paid), ``TRADE_CLOSED``; ``ACQ.TRADE_NOT_EXIST`` when
there is no such order. A cancel answers ``action`` ``close`` (unpaid, closed) or ``refund``
(paid, money returned) and ``retry_flag`` ``Y`` when it must be sent again.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import ssl
import time
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import aiohttp
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa

from edgehub.config import QrConfig
from edgehub.errors import ConfigError
from edgehub.qrpay.acquirer import AnswerState, GatewayAnswer, GatewayOrder, wallet_of

log = logging.getLogger("edgehub.qrpay.alipay")

BEIJING = timezone(timedelta(hours=8))
PAID = ("TRADE_SUCCESS", "TRADE_FINISHED")
# The request was refused before any business was done: invalid or missing parameters, a bad
# signature, no permission for the call (公共错误码).
REFUSED_CODES = ("40001", "40002", "40006", "20001")


def load_private_key(path: Path) -> rsa.RSAPrivateKey:
    """The application's RSA private key: PEM (PKCS#8 or PKCS#1), or the bare base64 of PKCS#8 that
    Alipay's key tool writes."""
    try:
        key = serialization.load_pem_private_key(_pem(path, "PRIVATE KEY"), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError([f"{path}: not a usable private key ({exc})"]) from None
    if not isinstance(key, rsa.RSAPrivateKey) or key.key_size < 2048:
        raise ConfigError([f"{path}: must be an RSA private key of at least 2048 bits (RSA2)"])
    return key


def load_public_key(path: Path) -> rsa.RSAPublicKey:
    """Alipay's RSA public key: PEM, or the bare base64 the open platform shows."""
    try:
        key = serialization.load_pem_public_key(_pem(path, "PUBLIC KEY"))
    except (ValueError, TypeError, UnsupportedAlgorithm) as exc:
        raise ConfigError([f"{path}: not a usable public key ({exc})"]) from None
    if not isinstance(key, rsa.RSAPublicKey):
        raise ConfigError([f"{path}: must be an RSA public key"])
    return key


def _pem(path: Path, kind: str) -> bytes:
    try:
        text = path.read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read the key: {exc}"]) from None
    if "-----BEGIN" not in text:
        body = "".join(text.split())
        text = f"-----BEGIN {kind}-----\n" + "\n".join(body[i:i + 64] for i in range(0, len(body), 64)) \
            + f"\n-----END {kind}-----"
    return text.encode()


def signing_string(params: dict[str, str]) -> bytes:
    """What is signed: every parameter but ``sign`` with a value, sorted, ``k=v`` joined by ``&``."""
    return "&".join(f"{k}={params[k]}" for k in sorted(params) if k != "sign" and params[k] != "").encode()


def sign(key: rsa.RSAPrivateKey, params: dict[str, str]) -> str:
    signature = key.sign(signing_string(params), padding.PKCS1v15(), hashes.SHA256())
    return base64.b64encode(signature).decode()


def verify(key: rsa.RSAPublicKey, content: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature, validate=True), content, padding.PKCS1v15(), hashes.SHA256())
    except (InvalidSignature, ValueError):
        return False
    return True


def response_node(text: str, name: str) -> str | None:
    """The text of the JSON value under ``name`` in ``text`` exactly as sent (what the gateway signed)."""
    decoder = json.JSONDecoder()
    at = text.find(f'"{name}"')
    while at != -1:
        colon = at + len(name) + 2
        while colon < len(text) and text[colon] in " \t\r\n":
            colon += 1
        if colon < len(text) and text[colon] == ":":
            start = colon + 1
            while start < len(text) and text[start] in " \t\r\n":
                start += 1
            try:
                _, end = decoder.raw_decode(text, start)
            except ValueError:
                return None
            return text[start:end]
        at = text.find(f'"{name}"', at + 1)
    return None


def yuan(amount_cents: int) -> str:
    """Alipay's ``total_amount``: yuan with two decimals (fen as a decimal string, never a float)."""
    return f"{amount_cents // 100}.{amount_cents % 100:02d}"


def cents(value: Any) -> int | None:
    try:
        amount = Decimal(str(value)) * 100
    except (InvalidOperation, ValueError):
        return None
    return int(amount) if amount == amount.to_integral_value() else None


class AlipayGateway:
    """The Alipay OpenAPI gateway over HTTPS (aiohttp), one connection pool for the hub."""

    name = "alipay"
    currency = "CNY"

    def __init__(self, cfg: QrConfig, *, clock: Any = time.time) -> None:
        self.cfg = cfg
        self.clock = clock
        self._key: rsa.RSAPrivateKey | None = None
        self._gateway_key: rsa.RSAPublicKey | None = None
        self._ssl: ssl.SSLContext | None = None
        self._session: aiohttp.ClientSession | None = None
        parts = urlsplit(cfg.gateway_url)
        self._host = parts.hostname or ""
        self._port = parts.port or 443

    async def __aenter__(self) -> AlipayGateway:
        assert self.cfg.private_key_file is not None and self.cfg.gateway_public_key_file is not None
        self._key = await asyncio.to_thread(load_private_key, self.cfg.private_key_file)
        self._gateway_key = await asyncio.to_thread(load_public_key, self.cfg.gateway_public_key_file)
        ca = str(self.cfg.ca_file) if self.cfg.ca_file else None
        self._ssl = await asyncio.to_thread(ssl.create_default_context, cafile=ca)
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=self.cfg.connect_timeout_s,
                                        sock_read=self.cfg.answer_timeout_s)
        self._session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=self._ssl, limit=8, keepalive_timeout=15),
            timeout=timeout, raise_for_status=False)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    def code_problem(self, auth_code: str) -> str | None:
        wallet = wallet_of(auth_code)
        if wallet == "alipay":
            return None
        if wallet == "wechat":
            return ("this is a WeChat Pay code; this store's gateway takes Alipay codes only: ask for Alipay, "
                    "or take cash or card")
        return "not an Alipay payment code (16-24 digits starting 25-30): scan the code in the guest's Alipay again"

    # --- the three calls -------------------------------------------------------------------

    async def pay(self, order: GatewayOrder) -> GatewayAnswer:
        biz = {"out_trade_no": order.reference, "scene": "bar_code", "auth_code": order.auth_code,
               "subject": order.subject, "total_amount": yuan(order.amount_cents), "store_id": order.store_id}
        if order.terminal_id:
            biz["terminal_id"] = order.terminal_id
        node, answer = await self._call("alipay.trade.pay", biz)
        if node is None:
            return answer
        code, sub = node.get("code", ""), node.get("sub_code", "")
        if code == "10000":
            return self._paid(node, order.reference, order.amount_cents, answer)
        if code == "10003":
            return _with(answer, "waiting", "the guest is confirming the payment on the phone")
        if code == "40004" and sub == "ACQ.TRADE_HAS_CLOSE":
            return _with(answer, "closed", _reason(node))
        if code == "40004" and sub not in ("ACQ.SYSTEM_ERROR", "ACQ.TRADE_HAS_SUCCESS"):
            return _with(answer, "failed", _reason(node))
        if code in REFUSED_CODES:
            return _with(answer, "failed", f"the gateway refused the request: {_reason(node)}")
        return _with(answer, "unknown", _reason(node))

    async def query(self, reference: str) -> GatewayAnswer:
        node, answer = await self._call("alipay.trade.query", {"out_trade_no": reference})
        if node is None:
            return answer
        code, sub = node.get("code", ""), node.get("sub_code", "")
        if code == "10000":
            status = node.get("trade_status")
            if status in PAID:
                return self._paid(node, reference, None, answer)
            if status == "WAIT_BUYER_PAY":
                return _with(answer, "waiting", "the guest is confirming the payment on the phone")
            if status == "TRADE_CLOSED":
                return _with(answer, "closed", "the gateway closed the order unpaid")
            return _with(answer, "unknown", f"unknown trade_status {status!r}")
        if code == "40004" and sub == "ACQ.TRADE_NOT_EXIST":
            return _with(answer, "not_found", "the gateway has no such order")
        return _with(answer, "unknown", _reason(node))

    async def cancel(self, reference: str) -> GatewayAnswer:
        node, answer = await self._call("alipay.trade.cancel", {"out_trade_no": reference})
        if node is None:
            return answer
        code, sub = node.get("code", ""), node.get("sub_code", "")
        if node.get("retry_flag") == "Y":
            return _with(answer, "retry", _reason(node) or "the gateway asks to cancel again")
        if code == "10000":
            action = node.get("action", "")
            if action == "refund":
                return _with(answer, "refunded", "the order was paid; the cancel gave the money back to the guest")
            if action == "close":
                return _with(answer, "closed", "cancelled at the gateway before the guest paid")
            return _with(answer, "not_found", "the gateway had no such order to cancel")
        if code == "40004" and sub == "ACQ.TRADE_NOT_EXIST":
            return _with(answer, "not_found", "the gateway has no such order")
        return _with(answer, "unknown", _reason(node))

    async def reachable(self) -> str | None:
        assert self._ssl is not None
        try:
            async with asyncio.timeout(self.cfg.connect_timeout_s):
                _, writer = await asyncio.open_connection(self._host, self._port, ssl=self._ssl,
                                                          server_hostname=self._host)
        except (OSError, TimeoutError, ssl.SSLError) as exc:
            return _network(exc)
        writer.close()
        try:
            async with asyncio.timeout(1.0):
                await writer.wait_closed()
        except (OSError, TimeoutError, ssl.SSLError):
            pass
        return None

    # --- the wire ----------------------------------------------------------------------------

    def _paid(self, node: dict[str, Any], reference: str, amount: int | None,
              answer: GatewayAnswer) -> GatewayAnswer:
        got = cents(node.get("total_amount"))
        if node.get("out_trade_no") not in (None, reference):
            return _with(answer, "unknown", f"the gateway answered for order {node.get('out_trade_no')!r}")
        if got is None or (amount is not None and got != amount):
            return _with(answer, "unknown", f"the gateway says paid, but {node.get('total_amount')!r}, "
                         f"not {yuan(amount) if amount is not None else 'an amount'}")
        return GatewayAnswer("paid", reason="", trade_no=str(node.get("trade_no", "")), amount_cents=got,
                             buyer=str(node.get("buyer_logon_id", "")), code=answer.code, seconds=answer.seconds)

    async def _call(self, method: str, biz: dict[str, Any]) -> tuple[dict[str, Any] | None, GatewayAnswer]:
        """POST one signed call; (the trusted response object, an answer carrying code and time) or
        (None, the answer to give: ``sent=False`` when no connection could be made, else unknown)."""
        assert self._session is not None and self._key is not None
        started = time.monotonic()
        params = {"app_id": self.cfg.app_id, "method": method, "format": "JSON", "charset": "utf-8",
                  "sign_type": "RSA2", "version": "1.0",
                  "timestamp": datetime.fromtimestamp(self.clock(), BEIJING).strftime("%Y-%m-%d %H:%M:%S"),
                  "biz_content": json.dumps(biz, ensure_ascii=False, separators=(",", ":"))}
        params["sign"] = await asyncio.to_thread(sign, self._key, params)
        budget = self.cfg.connect_timeout_s + self.cfg.answer_timeout_s + 1.0
        try:
            async with asyncio.timeout(budget):
                async with self._session.post(self.cfg.gateway_url, data=params) as response:
                    text = await response.text(encoding="utf-8", errors="replace")
                    status = response.status
        except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
            # No connection was made: the request never left the box, nothing can be charged.
            return None, GatewayAnswer("unknown", sent=False, reason=_network(exc),
                                       seconds=time.monotonic() - started)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return None, GatewayAnswer("unknown", reason=f"no answer from the gateway: {_network(exc)}",
                                       seconds=time.monotonic() - started)
        elapsed = time.monotonic() - started
        node_name = method.replace(".", "_") + "_response"
        raw = response_node(text, node_name) or response_node(text, "error_response")
        try:
            doc = json.loads(text)
        except ValueError:
            doc = None
        if raw is None or not isinstance(doc, dict):
            return None, GatewayAnswer("unknown", reason=f"the gateway's answer is not its JSON (HTTP {status})",
                                       seconds=elapsed)
        signature = doc.get("sign")
        assert self._gateway_key is not None
        if not isinstance(signature, str) or not verify(self._gateway_key, raw.encode(), signature):
            log.warning("%s: answer not signed by the gateway's key; not trusted", method)
            return None, GatewayAnswer("unknown", reason="the answer is not signed by the gateway's key",
                                       seconds=elapsed)
        node = json.loads(raw)
        if not isinstance(node, dict):
            return None, GatewayAnswer("unknown", reason="the gateway's answer has no response object",
                                       seconds=elapsed)
        code = "/".join(x for x in (str(node.get("code", "")), str(node.get("sub_code", ""))) if x)
        return node, GatewayAnswer("unknown", code=code, seconds=elapsed)


def _with(answer: GatewayAnswer, state: AnswerState, reason: str) -> GatewayAnswer:
    return GatewayAnswer(state, sent=answer.sent, reason=reason, code=answer.code, seconds=answer.seconds)


def _reason(node: dict[str, Any]) -> str:
    parts = [str(node.get(k)) for k in ("sub_msg", "msg") if node.get(k)]
    code = "/".join(str(node.get(k)) for k in ("code", "sub_code") if node.get(k))
    return f"{parts[0] if parts else 'no message'} ({code})" if code else (parts[0] if parts else "")


def _network(exc: BaseException) -> str:
    if isinstance(exc, TimeoutError | aiohttp.ServerTimeoutError):
        return "the gateway did not answer in time"
    text = str(exc) or type(exc).__name__
    return text[:200]
