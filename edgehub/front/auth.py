"""Terminals over HTTP: the few things a till reads from the box by HTTP (``/pos/v1/…``) are
asked for with the terminal's own MQTT credentials, as HTTP Basic (RFC 7617).

A till already holds its id and password for the broker; a second secret per till would be one
more thing to provision and leak. The password is compared in constant time against every
configured terminal, and wrong credentials count against the same per-address allowance as the
API token (``FailedLogins``), so guessing from the LAN is as slow as it is for the token. The
token never works here and a terminal's password never works under ``/api/``.
"""

from __future__ import annotations

import base64
import binascii
import hmac
import json
from collections.abc import Iterable

from aiohttp import web

from edgehub.api.auth import FailedLogins
from edgehub.config import TerminalConfig

REALM = 'Basic realm="edgehub terminals", charset="UTF-8"'


def _error(status: type[web.HTTPException], message: str, **headers: str) -> web.HTTPException:
    return status(text=json.dumps({"error": message}), content_type="application/json", headers=headers)


class TerminalLogin:
    """Checks ``Authorization: Basic`` against the configured terminals' MQTT passwords."""

    def __init__(self, terminals: Iterable[TerminalConfig], failures: FailedLogins) -> None:
        self._terminals = [(t, t.id.encode(), t.password.encode()) for t in terminals]
        self.failures = failures

    def check(self, request: web.Request, kinds: tuple[str, ...] | None = None) -> TerminalConfig:
        """The terminal the request comes from; 401 (no or wrong credentials), 429 (too many
        wrong ones from this address) or 403 (a terminal of a kind that may not read this)."""
        address = request.remote or "?"
        if self.failures.blocked(address):
            raise _error(web.HTTPTooManyRequests, "too many failed logins; wait a minute", **{"Retry-After": "60"})
        header = request.headers.get("Authorization", "")
        scheme, _, encoded = header.partition(" ")
        if not header:
            # No credential at all is not a guess: not counted (as under /api/).
            raise _error(web.HTTPUnauthorized, "send the terminal's id and MQTT password as HTTP Basic",
                         **{"WWW-Authenticate": REALM})
        user, password = b"", b""
        if scheme.lower() == "basic":
            try:
                user, _, password = base64.b64decode(encoded.strip(), validate=True).partition(b":")
            except (binascii.Error, ValueError):
                user, password = b"", b""
        found: TerminalConfig | None = None
        for terminal, tid, secret in self._terminals:
            # Every terminal is compared, so timing says nothing about which ids exist.
            if hmac.compare_digest(user, tid) & hmac.compare_digest(password, secret):
                found = terminal
        if found is None:
            self.failures.record(address)
            raise _error(web.HTTPUnauthorized, "wrong terminal id or password (HTTP Basic, the terminal's MQTT "
                         "credentials)", **{"WWW-Authenticate": REALM})
        if kinds is not None and found.kind not in kinds:
            raise _error(web.HTTPForbidden, f"terminal {found.id} is a {found.kind}; only {', '.join(kinds)} "
                         "terminals may read this")
        return found
