"""Who a browser screen is: the screen secrets of kitchen screens and customer displays.

Each ``[[terminal]]`` of kind ``kds`` or ``display`` may have its own ``screen_token`` (the
provisioning writes one per screen): it opens that terminal's page on the box and nothing else,
never the API (a tablet on the pass keeps it where anyone can read it). A kitchen screen's
secret drives only its ``stations``; ``kitchen.screen_token``, if set, drives every station and
opens the pickup board too. A secret is given once as ``?token=`` and kept by the page in
localStorage; browsers cannot set an Authorization header on a websocket, hence the query.

Every secret is compared in constant time, and wrong ones count against the same per-address
limit as the API's (``FailedLogins``): a guesser gets a few tries a minute.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass, field
from typing import Any

from edgehub.config import DEFAULT_SCREEN_KEYS, Config

KITCHEN_WIDE = "kitchen"  # the terminal name of kitchen.screen_token's screens


@dataclass(frozen=True)
class ScreenLogin:
    """A screen secret's holder: which terminal, what it may open, its page settings."""

    terminal: str  # its [[terminal]] id, or KITCHEN_WIDE for kitchen.screen_token
    kind: str  # "kds" or "display"; kitchen.screen_token counts as both
    stations: tuple[str, ...] | None = None  # kds: the stations it drives (None: every one)
    scale: float = 1.0
    sound: bool = True
    keys: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(DEFAULT_SCREEN_KEYS))

    @property
    def kitchen_wide(self) -> bool:
        return self.terminal == KITCHEN_WIDE

    def drives(self, station: str) -> bool:
        return (self.kind == "kds" or self.kitchen_wide) and (self.stations is None or station in self.stations)

    def shows_pickup(self) -> bool:
        return self.kind == "display" or self.kitchen_wide

    def keys_doc(self) -> dict[str, Any]:
        return {action: list(names) for action, names in self.keys.items()}


def screen_logins(config: Config) -> dict[str, ScreenLogin]:
    """Each screen secret and who holds it."""
    found: dict[str, ScreenLogin] = {}
    if config.kitchen.screen_token:
        found[config.kitchen.screen_token] = ScreenLogin(KITCHEN_WIDE, "kds")
    for terminal in config.terminals:
        if terminal.kind in ("kds", "display") and terminal.screen_token:
            found[terminal.screen_token] = ScreenLogin(
                terminal.id, terminal.kind, terminal.stations if terminal.kind == "kds" else None,
                terminal.screen_scale, terminal.screen_sound, dict(terminal.screen_keys))
    return found


def mistaken_secrets(config: Config) -> dict[str, str]:
    """Secrets an installer may type into a screen's login by mistake, and what to say: the API
    token, and each screen terminal's MQTT password. They open nothing; the page says why."""
    found = {config.api.token: "that is the box's API token, never a screen's secret"}
    for terminal in config.terminals:
        if terminal.kind in ("kds", "display"):
            hint = (f"its screen secret (on the box: /etc/edgehub/secrets/screen-{terminal.id})"
                    if terminal.screen_token else "a screen_token, which its [[terminal]] has not got")
            found[terminal.password] = f"that is {terminal.id}'s MQTT password; its page takes {hint}"
    return found


class ScreenLogins:
    def __init__(self, logins: dict[str, ScreenLogin], mistakes: dict[str, str] | None = None) -> None:
        self._logins = [(secret.encode(), login) for secret, login in logins.items()]
        self._mistakes = [(secret.encode(), why) for secret, why in (mistakes or {}).items() if secret]

    def mistake(self, given: str) -> str:
        """Why ``given`` opens nothing when it is a well-known wrong one (see mistaken_secrets),
        else ""; compared in constant time like the secrets."""
        raw = given.encode()
        found = ""
        for secret, why in self._mistakes:
            if hmac.compare_digest(raw, secret):
                found = why
        return found

    def secret_for(self, station: str) -> str | None:
        """The secret a screen of ``station`` is set up with: a kitchen screen's own (a kds
        terminal whose ``stations`` name it), else one that drives every station; None when no
        secret drives it."""
        own = next((secret for secret, login in self._logins
                    if login.kind == "kds" and login.stations is not None and station in login.stations), None)
        every = next((secret for secret, login in self._logins if login.kind == "kds" and login.stations is None),
                     None)
        found = own or every
        return found.decode() if found is not None else None

    def find(self, given: str) -> ScreenLogin | None:
        """The holder of ``given``, or None. Every secret is compared, in constant time."""
        raw = given.encode()
        found = None
        for secret, login in self._logins:
            if hmac.compare_digest(raw, secret):
                found = login
        return found
