"""The pair link's listener and the probe: how the two boxes find out about each other.

Each box listens on ``pair.listen``. A caller says hello (edgehub/pair/wire.py) with what it
wants: ``follow`` (a standby asking the serving box for records) or ``probe`` (what are you
now?). Whatever it wants, the caller and the answering box each check the other is of the same
store and journal schema; a box that is not is refused with the reason, on both sides. The
answering box tells the node who called (``saw``), so two boxes that both serve find out at once
(edgehub/pair/node.py decides which one steps down).
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
from collections.abc import Callable
from typing import Any

from edgehub.config import Address
from edgehub.errors import PairError, PeerRefused
from edgehub.pair import wire
from edgehub.pair.standby import check_peer, refusal

log = logging.getLogger("edgehub.pair")

ACCEPT_TIMEOUT_S = 2.0


class Listener:
    """Accepts the other box's connections, each on a thread of its own."""

    def __init__(self, listen: Address, secret: bytes, identity: dict[str, Any],
                 describe: Callable[[], dict[str, Any]],
                 follow: Callable[[wire.Channel, dict[str, Any]], str | None],
                 saw: Callable[[dict[str, Any]], None], refused: Callable[[str, str], None]) -> None:
        self.listen = listen
        self.secret = secret
        self.identity = identity
        self.describe = describe  # this box's role and position, for a hello or a probe's answer
        self.follow = follow  # serve a standby (blocks); returns why not, when this box does not serve
        self.saw = saw  # a hello from the other box arrived
        self.refused = refused  # (who, why): the other box is not this box's partner
        self._sock: socket.socket | None = None
        self._thread: threading.Thread | None = None
        self._stopping = False
        self._channels: set[wire.Channel] = set()
        self._lock = threading.Lock()

    def start(self) -> None:
        family = socket.AF_INET6 if ":" in self.listen.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.listen.host, self.listen.port))
        except OSError as exc:
            sock.close()
            raise PairError(f"cannot listen for the other box on {self.listen}: {exc.strerror or exc}") from exc
        sock.listen(8)
        sock.settimeout(0.5)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="pair-listener", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping = True
        if self._sock is not None:
            self._sock.close()
        with self._lock:
            for channel in list(self._channels):
                channel.close()
        if self._thread is not None:
            self._thread.join(timeout=2)

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stopping:
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                if self._stopping:
                    return
                continue
            threading.Thread(target=self._handle, args=(conn,), name="pair-peer", daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            channel = wire.accept(conn, self.secret, ACCEPT_TIMEOUT_S)
        except PairError as exc:
            log.info("pair: a connection to the pair link failed: %s", exc)
            conn.close()
            return
        with self._lock:
            self._channels.add(channel)
        try:
            self._serve(channel)
        except PeerRefused as exc:
            self.refused(channel.peer, exc.reason)
            with contextlib.suppress(PairError):
                channel.send_json(wire.REFUSE, {"kind": "peer", "reason": exc.reason})
        except PairError as exc:
            log.info("pair: %s: %s", channel.peer, exc)
        finally:
            channel.close()
            with self._lock:
                self._channels.discard(channel)

    def _serve(self, channel: wire.Channel) -> None:
        _, hello = channel.recv_json((wire.HELLO,))
        check_peer(self.identity, hello, channel.peer)
        self.saw(hello)
        mine = {**self.identity, **self.describe()}
        if hello.get("want") == "probe":
            channel.send_json(wire.ROLE, mine)
            return
        if hello.get("want") != "follow":
            raise PairError(f"{channel.peer} wants {hello.get('want')!r}, which this box does not offer")
        channel.send_json(wire.HELLO, mine)
        why_not = self.follow(channel, hello)
        if why_not:
            channel.send_json(wire.REFUSE, {"kind": "not_primary", "reason": why_not})


def probe(peer: Address, secret: bytes, hello: dict[str, Any], timeout: float) -> dict[str, Any]:
    """Ask the other box what it is now (its role, epoch and position)."""
    channel = wire.connect(peer.host, peer.port, secret, timeout)
    try:
        channel.settimeout(timeout)
        channel.send_json(wire.HELLO, {**hello, "want": "probe"})
        kind, doc = channel.recv_json((wire.ROLE, wire.REFUSE))
        if kind == wire.REFUSE:
            raise refusal(doc)
        check_peer(hello, doc, str(peer))
        return doc
    finally:
        channel.close()
