"""A fake Alipay OpenAPI gateway on loopback HTTPS, written from Alipay's public documentation.

It serves ``POST /gateway.do`` the way "统一收单交易支付接口" (``alipay.trade.pay``, scene
``bar_code``), ``alipay.trade.query`` and ``alipay.trade.cancel`` are documented: it checks the
public parameters and the request's RSA2 signature with the merchant application's public key
(``isv.invalid-signature`` otherwise), keeps one trade per ``out_trade_no``, treats a payment code
as used once, and signs every answer with its own ("Alipay's") private key over the response
object's text. Guests are wallets keyed by payment code; how each behaves (pays at once, must
confirm with a password, has too little money, never confirms) and how the gateway misbehaves
(``20000``, ``ACQ.SYSTEM_ERROR``, holding or dropping the answer after the charge, a wrong
signature, refusing connections) are knobs a test turns. It runs in a thread with its own
event loop, so a hub in another process, or a test blocked in a synchronous call, can reach it.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import datetime as dt
import ipaddress
import json
import re
import ssl
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from aiohttp import web
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import NameOID

APP_ID = "2021000000000001"
AMOUNT_RE = re.compile(r"^(0|[1-9][0-9]{0,8})(\.[0-9]{1,2})?$")
OUT_TRADE_NO_RE = re.compile(r"^[A-Za-z0-9_]{1,64}$")
ALIPAY_CODE_RE = re.compile(r"^(2[5-9]|30)[0-9]{14,22}$")


# --- the gateway's side of the signing rules, from Alipay's "签名" and "验签" pages ---------------------
# (written here again, not taken from the box's client, so a mistake there is caught here)


def _content(form: dict[str, str]) -> bytes:
    """What a request's ``sign`` covers: every parameter but ``sign`` whose value is not empty,
    sorted by name in ASCII order, as ``name=value`` joined by ``&``, in UTF-8."""
    pairs = sorted((k, v) for k, v in form.items() if k != "sign" and v)
    return "&".join(f"{k}={v}" for k, v in pairs).encode("utf-8")


def _signed_by(key: rsa.RSAPublicKey, content: bytes, signature: str) -> bool:
    try:
        key.verify(base64.b64decode(signature), content, padding.PKCS1v15(), hashes.SHA256())
    except Exception:  # a bad signature, bad base64: either way not the merchant's
        return False
    return True


def _yuan(fen: int) -> str:
    whole, part = divmod(fen, 100)
    return f"{whole}.{part:02d}"


# --- keys and certificates a test or `make run` makes for itself -----------------------------------


@dataclass(frozen=True)
class GatewayFiles:
    """What the box's config points at, and what the fake gateway serves with."""

    app_private_key: Path  # payments.qr.private_key_file
    app_public_key: Path  # registered with "Alipay": the fake checks requests with it
    gateway_private_key: Path  # the fake signs its answers with it
    gateway_public_key: Path  # payments.qr.gateway_public_key_file
    ca_file: Path  # payments.qr.ca_file
    cert_file: Path
    key_file: Path


def _write_rsa(private: Path, public: Path, bare_public: bool = False) -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
    der = key.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    if bare_public:  # as Alipay's open platform shows its public key: bare base64 on one line
        public.write_text(base64.b64encode(der).decode())
    else:
        public.write_bytes(key.public_key().public_bytes(serialization.Encoding.PEM,
                                                         serialization.PublicFormat.SubjectPublicKeyInfo))
    private.chmod(0o600)


def make_gateway_files(directory: Path) -> GatewayFiles:
    """Fresh RSA2 keys for the application and the gateway, and a CA with a loopback server certificate."""
    directory.mkdir(parents=True, exist_ok=True)
    files = GatewayFiles(*(directory / name for name in (
        "app-private.pem", "app-public.pem", "gateway-private.pem", "gateway-public.txt",
        "ca.pem", "gateway-cert.pem", "gateway-key.pem")))
    _write_rsa(files.app_private_key, files.app_public_key)
    _write_rsa(files.gateway_private_key, files.gateway_public_key, bare_public=True)
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgehub test gateway CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name).public_key(ca_key.public_key())
          .serial_number(x509.random_serial_number()).not_valid_before(now - dt.timedelta(days=1))
          .not_valid_after(now + dt.timedelta(days=30))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")]))
            .issuer_name(ca_name).public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1)).not_valid_after(now + dt.timedelta(days=30))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("localhost"),
                                                        x509.IPAddress(ipaddress.ip_address("127.0.0.1")),
                                                        x509.IPAddress(ipaddress.ip_address("::1"))]),
                           critical=False)
            .sign(ca_key, hashes.SHA256()))
    files.ca_file.write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    files.cert_file.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    files.key_file.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                                 serialization.NoEncryption()))
    return files


# --- guests and trades ------------------------------------------------------------------------------


@dataclass
class Wallet:
    """A guest's Alipay as the fake sees it, keyed by the payment code the guest shows.

    ``password``: the payment needs the guest's confirmation (``10003``, WAIT_BUYER_PAY), given
    ``confirm_after_s`` later (None: never; a test may call ``confirm``). ``balance_cents``: None
    is enough for anything. ``answer`` is how the gateway answers the pay although it does the
    business: ``normal``, ``system_error`` (``20000``), ``acq_system_error`` (``40004``
    ``ACQ.SYSTEM_ERROR``), ``hang`` (no answer until ``release``), ``drop`` (the connection is
    closed without an answer), ``bad_sign`` (signed with a key that is not the gateway's)."""

    password: bool = False
    confirm_after_s: float | None = 0.5
    balance_cents: int | None = None
    answer: str = "normal"


@dataclass
class Trade:
    out_trade_no: str
    auth_code: str
    amount_cents: int
    subject: str
    status: str  # WAIT_BUYER_PAY, TRADE_SUCCESS, TRADE_CLOSED
    created: float
    trade_no: str = field(default_factory=lambda: time.strftime("%Y%m%d") + uuid.uuid4().hex[:20])
    confirm_at: float | None = None
    refunded: bool = False
    store_id: str = ""


@dataclass
class Calls:
    pay: list[tuple[str, str]] = field(default_factory=list)  # (out_trade_no, auth_code)
    query: list[str] = field(default_factory=list)
    cancel: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)  # why requests were refused (bad sign, params)


class AlipayFake:
    """``with AlipayFake(files) as fake:`` serves on ``fake.url`` until the block ends."""

    def __init__(self, files: GatewayFiles, *, app_id: str = APP_ID, port: int = 0,
                 auto_close_s: float = 120.0) -> None:
        self.files = files
        self.app_id = app_id
        self.port = port
        self.auto_close_s = auto_close_s
        self.wallets: dict[str, Wallet] = {}
        self.trades: dict[str, Trade] = {}
        self.used_codes: set[str] = set()
        self.calls = Calls()
        self.query_answer = "normal"  # normal, system_error, hang
        self.cancel_answer = "normal"  # normal, system_error, hang
        self.cancel_retries = 0  # cancels answered retry_flag=Y before one is done
        self.latency_s = 0.0  # added before every answer
        self._lock = threading.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._runner: web.AppRunner | None = None
        self._site: web.TCPSite | None = None
        self._release: asyncio.Event | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._gateway_key = serialization.load_pem_private_key(files.gateway_private_key.read_bytes(), None)
        self._wrong_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        app_key = serialization.load_pem_public_key(files.app_public_key.read_bytes())
        assert isinstance(app_key, rsa.RSAPublicKey)
        self._app_key = app_key
        self._ssl = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._ssl.load_cert_chain(files.cert_file, files.key_file)

    # --- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> AlipayFake:
        self._thread = threading.Thread(target=self._main, name="alipay-fake", daemon=True)
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the fake gateway did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread is not None:
            self._thread.join(10)

    def _main(self) -> None:
        asyncio.run(self._serve())

    async def _serve(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._release = asyncio.Event()
        self._stop = asyncio.Event()
        app = web.Application()
        app.router.add_post("/gateway.do", self._handle)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        await self._listen()
        self._ready.set()
        await self._stop.wait()
        await self._runner.cleanup()

    async def _listen(self) -> None:
        assert self._runner is not None
        self._site = web.TCPSite(self._runner, "127.0.0.1", self.port, ssl_context=self._ssl, reuse_address=True)
        await self._site.start()
        server = self._site._server  # aiohttp keeps the bound sockets there; needed for port 0  # noqa: SLF001
        if server is not None and server.sockets:  # type: ignore[attr-defined]
            self.port = server.sockets[0].getsockname()[1]  # type: ignore[attr-defined]

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}/gateway.do"

    def _in_loop(self, coro: Any) -> Any:
        assert self._loop is not None
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(10)

    def go_down(self) -> None:
        """Close every connection and stop listening: connections are refused (the gateway or the
        WAN is out)."""
        async def down() -> None:
            if self._runner is not None:
                await self._runner.cleanup()
            self._site = None
        self._in_loop(down())

    def come_up(self) -> None:
        async def up() -> None:
            assert self._runner is not None
            await self._runner.setup()
            await self._listen()
        self._in_loop(up())

    def release(self) -> None:
        """Answer every pay held by ``answer="hang"``."""
        assert self._loop is not None and self._release is not None
        self._loop.call_soon_threadsafe(self._release.set)

    # --- what tests turn and read -------------------------------------------------------------

    def wallet(self, code: str, **behaviour: Any) -> str:
        with self._lock:
            self.wallets[code] = Wallet(**behaviour)
        return code

    def confirm(self, code: str) -> None:
        """The guest confirms on the phone now."""
        with self._lock:
            for trade in self.trades.values():
                if trade.auth_code == code and trade.status == "WAIT_BUYER_PAY":
                    trade.status = "TRADE_SUCCESS"

    def charged(self, code: str) -> int:
        """Money taken from the guest with this code and not given back, in fen."""
        with self._lock:
            self._tick()
            return sum(t.amount_cents for t in self.trades.values()
                       if t.auth_code == code and t.status in ("TRADE_SUCCESS", "TRADE_FINISHED") and not t.refunded)

    def pays_for(self, code: str) -> int:
        with self._lock:
            return sum(1 for _, c in self.calls.pay if c == code)

    # --- the gateway ---------------------------------------------------------------------------

    def _tick(self) -> None:
        now = time.monotonic()
        for trade in self.trades.values():
            if trade.status == "WAIT_BUYER_PAY":
                if trade.confirm_at is not None and now >= trade.confirm_at:
                    trade.status = "TRADE_SUCCESS"
                elif now - trade.created >= self.auto_close_s:
                    trade.status = "TRADE_CLOSED"

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        form = {k: str(v) for k, v in (await request.post()).items()}
        method = form.get("method", "")
        node_name = method.replace(".", "_") + "_response" if method else "error_response"
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        problem = self._check(form)
        if problem is not None:
            with self._lock:
                self.calls.refused.append(problem[2])
            return self._answer(node_name, {"code": problem[0], "msg": "Invalid Arguments",
                                            "sub_code": problem[1], "sub_msg": problem[2]})
        biz = json.loads(form["biz_content"])
        if method == "alipay.trade.pay":
            return await self._pay(node_name, biz, request)
        if method == "alipay.trade.query":
            return await self._query(node_name, biz)
        if method == "alipay.trade.cancel":
            return await self._cancel(node_name, biz)
        return self._answer(node_name, {"code": "40004", "msg": "Business Failed",
                                        "sub_code": "isv.invalid-method", "sub_msg": f"no such method {method}"})

    def _check(self, form: dict[str, str]) -> tuple[str, str, str] | None:
        """The public parameters and the signature, as the gateway checks them before any business."""
        for name in ("app_id", "method", "charset", "sign_type", "sign", "timestamp", "version", "biz_content"):
            if not form.get(name):
                return "40001", f"isv.missing-{name.replace('_', '-')}", f"missing {name}"
        if form["app_id"] != self.app_id:
            return "40002", "isv.invalid-app-id", "no such application"
        if form["sign_type"] != "RSA2" or form["version"] != "1.0" or form.get("format", "JSON") != "JSON":
            return "40002", "isv.invalid-parameter", "sign_type must be RSA2, version 1.0, format JSON"
        try:
            dt.datetime.strptime(form["timestamp"], "%Y-%m-%d %H:%M:%S")
        except ValueError:
            return "40002", "isv.invalid-timestamp", "timestamp must be yyyy-MM-dd HH:mm:ss"
        if not _signed_by(self._app_key, _content(form), form["sign"]):
            return "40002", "isv.invalid-signature", "the request's signature does not verify"
        try:
            biz = json.loads(form["biz_content"])
        except ValueError:
            return "40002", "isv.invalid-parameter", "biz_content is not JSON"
        if not isinstance(biz, dict) or not OUT_TRADE_NO_RE.match(str(biz.get("out_trade_no", ""))):
            return "40002", "isv.invalid-parameter", "out_trade_no: letters, digits and _ up to 64"
        return None

    async def _pay(self, node_name: str, biz: dict[str, Any], request: web.Request) -> web.StreamResponse:
        code, reference = str(biz.get("auth_code", "")), str(biz["out_trade_no"])
        amount = str(biz.get("total_amount", ""))
        if biz.get("scene") != "bar_code" or not biz.get("subject") or not AMOUNT_RE.match(amount):
            return self._answer(node_name, {"code": "40002", "msg": "Invalid Arguments",
                                            "sub_code": "isv.invalid-parameter",
                                            "sub_msg": "scene bar_code, subject and total_amount are required"})
        amount_cents = round(float(amount) * 100)
        with self._lock:
            self.calls.pay.append((reference, code))
            self._tick()
            wallet = self.wallets.get(code, Wallet())
            known = self.trades.get(reference)
            if known is not None:
                fail = ("ACQ.TRADE_HAS_SUCCESS", "交易已被支付") if known.status == "TRADE_SUCCESS" else \
                    ("ACQ.TRADE_HAS_CLOSE", "交易已经关闭") if known.status == "TRADE_CLOSED" else \
                    ("ACQ.TRADE_STATUS_ERROR", "交易状态不合法")
                return self._answer(node_name, _failed(*fail))
            if not ALIPAY_CODE_RE.match(code) or code in self.used_codes:
                self.used_codes.add(code)
                return self._answer(node_name, _failed("ACQ.PAYMENT_AUTH_CODE_INVALID", "付款码无效, 请重新扫码"))
            self.used_codes.add(code)
            if not 1 <= amount_cents <= 10_000_000_000:
                return self._answer(node_name, _failed("ACQ.TOTAL_FEE_EXCEED", "订单金额超过限额"))
            if wallet.balance_cents is not None and wallet.balance_cents < amount_cents:
                return self._answer(node_name, _failed("ACQ.BUYER_BALANCE_NOT_ENOUGH", "买家余额不足"))
            if wallet.balance_cents is not None:
                wallet.balance_cents -= amount_cents
            trade = Trade(reference, code, amount_cents, str(biz["subject"]),
                          "WAIT_BUYER_PAY" if wallet.password else "TRADE_SUCCESS", time.monotonic(),
                          store_id=str(biz.get("store_id", "")))
            if wallet.password and wallet.confirm_after_s is not None:
                trade.confirm_at = trade.created + wallet.confirm_after_s
            self.trades[reference] = trade
        if trade.status == "TRADE_SUCCESS":
            body = {"code": "10000", "msg": "Success", **self._trade_fields(trade),
                    "gmt_payment": time.strftime("%Y-%m-%d %H:%M:%S"), "receipt_amount": _yuan(amount_cents)}
        else:
            body = {"code": "10003", "msg": "order success pay inprocess", **self._trade_fields(trade)}
        if wallet.answer == "system_error":
            body = {"code": "20000", "msg": "Service Currently Unavailable", "sub_code": "isp.unknow-error",
                    "sub_msg": "系统繁忙"}
        elif wallet.answer == "acq_system_error":
            body = _failed("ACQ.SYSTEM_ERROR", "系统错误")
        elif wallet.answer == "hang":
            assert self._release is not None
            await self._release.wait()
        elif wallet.answer == "drop":
            transport = request.transport
            if transport is not None:
                transport.abort()
            raise web.HTTPInternalServerError()
        return self._answer(node_name, body, bad_sign=wallet.answer == "bad_sign")

    async def _query(self, node_name: str, biz: dict[str, Any]) -> web.StreamResponse:
        reference = str(biz["out_trade_no"])
        with self._lock:
            self.calls.query.append(reference)
            self._tick()
            trade = self.trades.get(reference)
            answer = self.query_answer
        if answer == "hang":
            assert self._release is not None
            await self._release.wait()
        if answer == "system_error":
            return self._answer(node_name, {"code": "20000", "msg": "Service Currently Unavailable",
                                            "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"})
        if trade is None:
            return self._answer(node_name, _failed("ACQ.TRADE_NOT_EXIST", "交易不存在"))
        return self._answer(node_name, {"code": "10000", "msg": "Success", **self._trade_fields(trade),
                                        "trade_status": trade.status})

    async def _cancel(self, node_name: str, biz: dict[str, Any]) -> web.StreamResponse:
        reference = str(biz["out_trade_no"])
        with self._lock:
            self.calls.cancel.append(reference)
            self._tick()
            answer = self.cancel_answer
            if answer == "normal" and self.cancel_retries > 0:
                self.cancel_retries -= 1
                return self._answer(node_name, {**_failed("ACQ.SYSTEM_ERROR", "系统错误"), "retry_flag": "Y",
                                                "out_trade_no": reference})
            trade = self.trades.get(reference)
            action = ""
            if answer == "normal" and trade is not None:
                if trade.status == "WAIT_BUYER_PAY":
                    trade.status, action = "TRADE_CLOSED", "close"
                elif trade.status == "TRADE_SUCCESS":
                    trade.status, trade.refunded, action = "TRADE_CLOSED", True, "refund"
                else:
                    action = "close"
        if answer == "hang":
            assert self._release is not None
            await self._release.wait()
        if answer == "system_error":
            return self._answer(node_name, {"code": "20000", "msg": "Service Currently Unavailable",
                                            "sub_code": "isp.unknow-error", "sub_msg": "系统繁忙"})
        if trade is None:
            return self._answer(node_name, {**_failed("ACQ.TRADE_NOT_EXIST", "交易不存在"), "retry_flag": "N"})
        return self._answer(node_name, {"code": "10000", "msg": "Success", "out_trade_no": reference,
                                        "trade_no": trade.trade_no, "retry_flag": "N", "action": action})

    @staticmethod
    def _trade_fields(trade: Trade) -> dict[str, Any]:
        return {"trade_no": trade.trade_no, "out_trade_no": trade.out_trade_no, "buyer_logon_id": "159****5620",
                "total_amount": _yuan(trade.amount_cents)}

    def _answer(self, node_name: str, node: dict[str, Any], bad_sign: bool = False) -> web.Response:
        raw = json.dumps(node, ensure_ascii=False, separators=(",", ":"))
        key = self._wrong_key if bad_sign else self._gateway_key
        assert isinstance(key, rsa.RSAPrivateKey)
        signature = base64.b64encode(key.sign(raw.encode(), padding.PKCS1v15(), hashes.SHA256())).decode()
        text = '{"' + node_name + '":' + raw + ',"sign":"' + signature + '"}'
        return web.Response(text=text, content_type="application/json", charset="utf-8")


def _failed(sub_code: str, sub_msg: str) -> dict[str, Any]:
    return {"code": "40004", "msg": "Business Failed", "sub_code": sub_code, "sub_msg": sub_msg}


@contextlib.contextmanager
def running_fake(directory: Path, **kwargs: Any) -> Iterator[AlipayFake]:
    """Keys, certificates and a running fake gateway in ``directory``."""
    with AlipayFake(make_gateway_files(directory), **kwargs) as fake:
        yield fake


def alipay_code(n: int) -> str:
    """A payment code shaped like Alipay's (18 digits starting 28)."""
    return f"28{n:016d}"
