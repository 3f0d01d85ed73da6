"""Authentication for everything under ``/api/`` and ``/metrics`` (``/healthz`` stays open).

Two ways in, both checked in constant time:

* ``Authorization: Bearer <token>`` — scripts, remote support, Prometheus.
* a session cookie from ``POST /api/v1/login`` — the box's page. The login takes the box token
  or the installer PIN; the cookie is HttpOnly (no script can read it) and SameSite=Strict (no
  other site can make the browser send it). A request that changes something with only a cookie
  must also carry ``X-Edgehub-Request`` — a header other origins cannot add without a CORS
  preflight, which this server never answers — so even a same-site page cannot forge one.

Repeated wrong credentials from one address are slowed down (a small token bucket per client
address, an IPv6 client by its /64, which one host holds whole), so guessing is impractical from
the store LAN. A six-digit PIN is short: wrong PINs lock the address that typed them after a few
(so one guesser cannot spend the box-wide allowance alone and lock the installer out), and are
also limited box-wide, because the LAN may hold many addresses. The box token is never locked by
PIN guesses.
"""

from __future__ import annotations

import asyncio
import collections
import hashlib
import hmac
import ipaddress
import json
import logging
import secrets
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from aiohttp import web

from edgehub.files import atomic_write

log = logging.getLogger("edgehub.api")

SESSIONS_SCHEMA = "sessions/1"
OPEN_PATHS = frozenset({"/healthz", "/api/v1/login", "/api/v1/logout"})
PROTECTED_PREFIXES = ("/api/", "/metrics")
SESSION_COOKIE = "edgehub_session"
CSRF_HEADER = "X-Edgehub-Request"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def client_key(address: str) -> str:
    """What a client is counted as: its IPv4 address, or the /64 of an IPv6 one (a host may take
    any address of its /64; counted one by one it would never be limited)."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return address
    if isinstance(ip, ipaddress.IPv6Address):
        if ip.ipv4_mapped is not None:
            return str(ip.ipv4_mapped)
        return str(ipaddress.IPv6Network((ip, 64), strict=False))
    return str(ip)


class FailedLogins:
    """Allows ``burst`` failures per client, refilled at ``per_minute``; beyond that: 429.
    At most ``max_clients`` are remembered; the one not heard from longest goes first (clearing
    them all would give every guesser a fresh allowance)."""

    def __init__(self, burst: int = 10, per_minute: float = 10.0,
                 clock: Callable[[], float] = time.monotonic, max_clients: int = 4096) -> None:
        self.burst = burst
        self.rate = per_minute / 60.0
        self.clock = clock
        self.max_clients = max_clients
        self._buckets: collections.OrderedDict[str, tuple[float, float]] = collections.OrderedDict()

    def _level(self, key: str) -> float:
        tokens, at = self._buckets.get(key, (float(self.burst), self.clock()))
        return min(float(self.burst), tokens + (self.clock() - at) * self.rate)

    def blocked(self, address: str) -> bool:
        return self._level(client_key(address)) < 1.0

    def record(self, address: str) -> None:
        key = client_key(address)
        self._buckets[key] = (self._level(key) - 1.0, self.clock())
        self._buckets.move_to_end(key)
        while len(self._buckets) > self.max_clients:
            self._buckets.popitem(last=False)


@dataclass(frozen=True)
class Session:
    key: str  # HMAC of the session id under the box's credentials: never the id itself
    via: str  # "token" or "pin": support can tell who logged in how
    expires_at: float  # wall-clock time, so it means the same after a restart


class Sessions:
    """Browser sessions, kept across hub restarts (an installer stays logged in while the hub
    restarts) in ``path`` (``DATA_DIR/sessions.json``, mode 0600).

    The file holds no way in: each session is stored as an HMAC-SHA256 of its id keyed with the
    box token and installer PIN, so reading the file (a support bundle, a copied SD card) gives no
    cookie, and changing the token or the PIN ends every session. Written only on login and
    logout (a few hundred bytes, atomically), so it costs the SD card nothing.
    """

    def __init__(self, ttl_s: float = 12 * 3600, limit: int = 64, clock: Callable[[], float] = time.time,
                 path: Path | None = None, secret: str = "") -> None:
        self.ttl_s = ttl_s
        self.limit = limit
        self.clock = clock
        self.path = path
        self._secret = secret.encode()
        self._sessions: dict[str, Session] = {}

    def _key(self, session_id: str) -> str:
        return hmac.new(self._secret, session_id.encode(), hashlib.sha256).hexdigest()

    def create(self, via: str) -> tuple[str, Session]:
        """A new session: its id (for the cookie, kept nowhere) and what is kept of it."""
        now = self.clock()
        self._sessions = {k: s for k, s in self._sessions.items() if s.expires_at > now}
        while len(self._sessions) >= self.limit:  # the oldest session goes first
            del self._sessions[min(self._sessions, key=lambda k: self._sessions[k].expires_at)]
        session_id = secrets.token_urlsafe(32)
        session = Session(self._key(session_id), via, now + self.ttl_s)
        self._sessions[session.key] = session
        return session_id, session

    def get(self, session_id: str) -> Session | None:
        # A lookup by keyed hash: its timing says nothing about which ids are valid.
        found = self._sessions.get(self._key(session_id))
        if found is None or found.expires_at <= self.clock():
            return None
        return found

    def drop(self, session_id: str) -> None:
        self._sessions.pop(self._key(session_id), None)

    def load(self) -> None:
        """Read the sessions kept by the last run (blocking; the API calls it at start)."""
        if self.path is None:
            return
        try:
            doc = json.loads(self.path.read_text(encoding="utf-8"))
            rows = doc["sessions"] if doc.get("schema") == SESSIONS_SCHEMA else []
            now = self.clock()
            self._sessions = {str(r["key"]): Session(str(r["key"]), str(r["via"]), float(r["expires_at"]))
                              for r in rows if float(r["expires_at"]) > now}
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
            log.warning("sessions file %s unreadable (%s): everyone logs in again", self.path, exc)

    def save(self) -> None:
        """Keep the sessions for the next run: atomically, mode 0600 (blocking)."""
        if self.path is None:
            return
        rows = [{"key": s.key, "via": s.via, "expires_at": round(s.expires_at, 3)} for s in self._sessions.values()]
        data = json.dumps({"schema": SESSIONS_SCHEMA, "sessions": rows}).encode()
        try:
            atomic_write(self.path, data, 0o600)
        except OSError as exc:
            log.warning("cannot keep the sessions in %s (%s): a restart will log everyone out", self.path, exc)


class Credentials:
    """What a login may present: the box token, and the installer PIN if one is configured."""

    def __init__(self, token: str, pin: str = "") -> None:
        self._token = token.encode()
        self._pin = pin.encode()

    def check(self, given: str) -> str | None:
        """``"token"`` or ``"pin"`` when ``given`` matches, else None (both compared every time)."""
        raw = given.encode()
        token_ok = hmac.compare_digest(raw, self._token)
        pin_ok = bool(self._pin) and hmac.compare_digest(raw, self._pin)
        return "token" if token_ok else "pin" if pin_ok else None

    def is_token(self, given: str) -> bool:
        return hmac.compare_digest(given.encode(), self._token)


def _unauthorized(message: str) -> web.HTTPUnauthorized:
    return web.HTTPUnauthorized(text=f'{{"error":"{message}"}}', content_type="application/json",
                                headers={"WWW-Authenticate": 'Bearer realm="edgehub"'})


def _too_many() -> web.HTTPTooManyRequests:
    return web.HTTPTooManyRequests(text='{"error":"too many failed logins; wait a minute"}',
                                   content_type="application/json", headers={"Retry-After": "60"})


def token_middleware(token: str, failures: FailedLogins, sessions: Sessions | None = None
                     ) -> Callable[..., Awaitable[web.StreamResponse]]:
    credentials = Credentials(token)

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path in OPEN_PATHS or not request.path.startswith(PROTECTED_PREFIXES):
            return await handler(request)
        address = request.remote or "?"
        if failures.blocked(address):
            raise _too_many()
        header = request.headers.get("Authorization", "")
        if header:
            scheme, _, given = header.partition(" ")
            if scheme.lower() != "bearer" or not credentials.is_token(given.strip()):
                failures.record(address)
                raise _unauthorized("missing or wrong token: send Authorization: Bearer <token>")
            return await handler(request)
        cookie = request.cookies.get(SESSION_COOKIE, "")
        if cookie and sessions is not None:
            if sessions.get(cookie) is None:
                # An expired cookie is not a guess worth counting, but it is not a way in either.
                raise _unauthorized("session expired: log in again")
            if request.method not in SAFE_METHODS and request.headers.get(CSRF_HEADER) != "1":
                raise web.HTTPForbidden(text=f'{{"error":"send {CSRF_HEADER}: 1 with a session cookie"}}',
                                        content_type="application/json")
            return await handler(request)
        # No credential at all is not a guess: it is not counted, so a page opened before login
        # does not use up the address's allowance.
        raise _unauthorized("missing or wrong token: send Authorization: Bearer <token>")

    return middleware


class LoginHandlers:
    """``POST /api/v1/login`` and ``POST /api/v1/logout`` for the box's page."""

    def __init__(self, token: str, pin: str, failures: FailedLogins, sessions: Sessions,
                 pin_failures: FailedLogins | None = None, pin_failures_here: FailedLogins | None = None) -> None:
        self.credentials = Credentials(token, pin)
        self.has_pin = bool(pin)
        self.failures = failures
        self.sessions = sessions
        # Box-wide allowance for PIN guesses: 30 at once, then 30 an hour.
        self.pin_failures = pin_failures or FailedLogins(burst=30, per_minute=0.5)
        # Per client: 5 at once, then one every 10 minutes; it locks well before the box does.
        self.pin_failures_here = pin_failures_here or FailedLogins(burst=5, per_minute=0.1)

    def setup(self, app: web.Application) -> None:
        app.router.add_post("/api/v1/login", self.login)
        app.router.add_post("/api/v1/logout", self.logout)

    async def login(self, request: web.Request) -> web.Response:
        address = request.remote or "?"
        if self.failures.blocked(address):
            raise _too_many()
        origin = request.headers.get("Origin")
        if origin is not None and origin not in (f"http://{request.host}", f"https://{request.host}"):
            raise web.HTTPForbidden(text='{"error":"login from another site is refused"}',
                                    content_type="application/json")
        try:
            body = await request.json()
        except ValueError:
            body = None
        given = body.get("secret") if isinstance(body, dict) else None
        # A token pasted from a mail or a PIN typed on a phone brings spaces along; neither has any.
        given = given.strip() if isinstance(given, str) else None
        if not given:
            raise web.HTTPBadRequest(
                text='{"error":"send JSON {\\"secret\\": \\"<token or installer PIN>\\"}"}',
                content_type="application/json")
        looks_like_pin = given.isascii() and given.isdigit()
        if looks_like_pin and (self.pin_failures_here.blocked(address) or self.pin_failures.blocked("*")):
            raise _too_many()
        via = self.credentials.check(given)
        if via is None:
            self.failures.record(address)
            if looks_like_pin:
                self.pin_failures_here.record(address)
                self.pin_failures.record("*")
            raise _unauthorized("wrong token or PIN")
        session_id, _ = self.sessions.create(via)
        await asyncio.to_thread(self.sessions.save)
        response = web.json_response({"ok": True, "via": via})
        # Secure under HTTPS: the browser never sends the session over plain HTTP.
        response.set_cookie(SESSION_COOKIE, session_id, max_age=int(self.sessions.ttl_s), path="/",
                            httponly=True, samesite="Strict", secure=request.secure)
        return response

    async def logout(self, request: web.Request) -> web.Response:
        cookie = request.cookies.get(SESSION_COOKIE)
        if cookie and self.sessions.get(cookie) is not None:
            self.sessions.drop(cookie)
            await asyncio.to_thread(self.sessions.save)
        response = web.json_response({"ok": True})
        response.del_cookie(SESSION_COOKIE, path="/")
        return response
