"""One box of a pair: the standby that follows, or the primary that serves, and the moves between.

``edgehub run`` with a ``[pair]`` section runs a ``PairNode`` instead of a bare hub. The node owns
what outlives a takeover on this box: the private broker (managed mode), keepalived (managed
mode), the pair link's listener, the health file keepalived reads, the systemd notifier. It is
always one of:

- **standby**: a ``Follower`` (edgehub/pair/standby.py) keeps this box's journal a copy of the
  serving box's; a small API answers ``/healthz``, ``/api/v1/status`` and the page with what the
  standby is doing. Nothing else of the hub runs (no intake, kitchen, roles, uplink).
- **primary**: the whole ``Hub`` runs on the journal the follower left, with the ``Replicator``
  (edgehub/pair/primary.py) as the journal's commit hook and the ``PairService`` as its first
  component (a new epoch, the loud copies state, the salvage).

It becomes the primary when the floating address arrives on this box (keepalived gave it: the
other box stopped advertising or is unfit), and the standby again when the address leaves: at
once when this box is unfit itself (its broker died), after ``DEMOTE_GRACE_S`` otherwise (an
address that left and came back in between, as when a frozen box resumes, changes nothing).

Two boxes that both serve (the link between them was cut while both reached terminals; a frozen
box resumed) find out as soon as they can talk: the serving box probes the other every
``PROBE_EVERY_S`` while it has no standby, and every hello says what the caller is. The box
whose epoch is older (the one that did not take over last; the box name breaks a tie) steps
down: it tells keepalived it is unfit, stops its hub, and follows the other, handing over what
it took alone (the salvage). Nothing waits for an operator; nothing of either journal is lost.

The takeover itself is a start of the hub: everything a hub does after a crash (tickets for
orders without them, print jobs resumed on the devices this box reaches, payments in flight
marked unknown and settled, never retried, the outbox's backlog sent) is what it does here, with
the journal the follower kept. The journal is not checked again (the follower opened and checked
it): a big journal's ``quick_check`` took seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import socket
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from aiohttp import web

from edgehub import __version__
from edgehub.api import ApiServer
from edgehub.api.tls import ensure_certificate, server_context
from edgehub.broker import MosquittoProcess
from edgehub.config import Config, PairConfig
from edgehub.errors import EdgehubError, PairError, PeerRefused
from edgehub.hub import Hub, preflight
from edgehub.instance import InstanceLock
from edgehub.pair import link, tables, vrrp
from edgehub.pair.primary import Replicator
from edgehub.pair.service import PairService
from edgehub.pair.standby import Follower
from edgehub.sdnotify import Notifier
from edgehub.store.journal import move_aside
from edgehub.store.schema import SCHEMA_VERSION
from edgehub.tasks import cancel_and_wait

log = logging.getLogger("edgehub.pair")

TICK_S = 0.05
DEMOTE_GRACE_S = 1.5
PROBE_EVERY_S = 0.5
FROZEN_S = 1.0  # the node's own loop did not run this long: the box was frozen or starved
NO_REPROMOTE_S = 0.3  # after stepping down, the address lingering here is not a reason to serve


class PairNode:
    """An async context manager; ``run_until_stopped`` is what ``edgehub run`` uses."""

    def __init__(self, config: Config, notifier: Notifier | None = None,
                 make_hub: Callable[[Config, MosquittoProcess | None], Hub] | None = None,
                 instance: InstanceLock | None = None, clock: Callable[[], float] = time.time) -> None:
        if config.pair is None:
            raise PairError("no [pair] in the config")
        self.config = config
        self.pair: PairConfig = config.pair
        self.notifier = notifier or Notifier(environ={})
        # One hub per data directory: the node holds the lock for every hub it starts.
        self.instance = instance or InstanceLock(config.paths.data_dir)
        self.make_hub = make_hub or (lambda cfg, broker: Hub(cfg, broker=broker, instance=self.instance))
        self.clock = clock
        self.identity = {"store_id": config.store.id, "box": self.pair.box, "schema_version": SCHEMA_VERSION,
                         "version": __version__}
        self.mode = "starting"  # standby, promoting, primary, stepping down
        self.mode_since = clock()
        self.broker: MosquittoProcess | None = None
        self.keepalived: vrrp.Keepalived | None = None
        self.health = vrrp.Health(vrrp.health_path(config), vrrp.priority_path(config))
        self.listener: link.Listener | None = None
        self.follower: Follower | None = None
        self.hub: Hub | None = None
        self.replicator: Replicator | None = None
        self.standby_api: ApiServer | None = None
        self._stack = contextlib.AsyncExitStack()
        self._tasks: list[asyncio.Task[Any]] = []
        self._loop: asyncio.AbstractEventLoop | None = None
        self._changing = asyncio.Lock()
        self._address_lost_at: float | None = None
        self._no_promote_until = 0.0
        self._step_down: str = ""  # why this box must stop serving (set from any thread)
        self._broker_ok = False
        self._broker_checked = 0.0
        self.peer_refused: dict[str, Any] = {}
        self.peer_seen: dict[str, Any] = {}
        self.takeovers: list[dict[str, Any]] = []
        self.stepped_down: list[dict[str, Any]] = []
        self.ready = asyncio.Event()
        self.serving = asyncio.Event()
        self._probe_now = asyncio.Event()

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> PairNode:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        self._loop = asyncio.get_running_loop()
        cfg = self.config
        if not self.instance.held:
            await asyncio.to_thread(preflight, cfg)
            self.instance.acquire(config=str(cfg.source))
            self._stack.callback(self.instance.release)
        self.health.set(False, "starting")
        self.health.set_bonus(0)
        # The store broker lives with the node; a standby's has no LAN listener (terminals must
        # not stay on a box that does not serve), the serving box's has.
        self.broker = await self._stack.enter_async_context(MosquittoProcess(cfg, lan=False))
        self._tasks.append(asyncio.create_task(self.broker.supervise(), name="broker-supervisor"))
        if self.pair.vrrp == "managed":
            self.keepalived = await self._stack.enter_async_context(vrrp.Keepalived(cfg))
        self.listener = link.Listener(self.pair.listen, self.pair.secret, self.identity, self.describe,
                                      self._follow, self._saw, self._refused)
        await asyncio.to_thread(self.listener.start)
        await self._become_standby("starting")
        self._tasks.append(asyncio.create_task(self._run(), name="pair-node"))
        self._tasks.append(asyncio.create_task(self._heartbeat(), name="pair-heartbeat"))
        self._tasks.append(asyncio.create_task(self._probe_loop(), name="pair-probe"))
        self._tasks.append(asyncio.create_task(self.notifier.keep_alive(), name="watchdog"))
        self.ready.set()
        self.notifier.ready(f"store {cfg.store.id}, box {self.pair.box}: {self.mode}")
        log.info("pair: box %s of store %s up as %s; floating address %s on %s, the other box at %s",
                 self.pair.box, cfg.store.id, self.mode, self.pair.address, self.pair.interface, self.pair.peer)

    async def __aexit__(self, *exc: object) -> None:
        self.notifier.stopping()
        await cancel_and_wait(*self._tasks)
        self._tasks.clear()
        async with self._changing:
            if self.mode == "primary":
                await self._leave_primary("this box is stopping")
            self.health.set(False, "stopping")
            await self._stop_primary()
            await self._stop_standby()
        if self.listener is not None:
            await asyncio.to_thread(self.listener.stop)
        await self._stack.aclose()

    async def run_until_stopped(self) -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            await stop.wait()
            log.info("stopping")

    # --- the modes ---------------------------------------------------------------------------

    def _set_mode(self, mode: str) -> None:
        self.mode = mode
        self.mode_since = self.clock()
        self.notifier.status(f"store {self.config.store.id}, box {self.pair.box}: {mode}")

    async def _become_standby(self, why: str) -> None:
        follower = Follower(self.config.journal.path, (self.pair.peer.host, self.pair.peer.port), self.pair.secret,
                            self.identity, self.pair.peer_timeout_ms / 1000, on_change=None, clock=self.clock)
        await asyncio.to_thread(follower.open)
        follower.start()
        self.follower = follower
        await self._start_standby_api()
        self._set_mode("standby")
        self.serving.clear()
        log.warning("pair: box %s is the standby (%s); following %s", self.pair.box, why, self.pair.peer)

    async def _stop_standby(self) -> None:
        if self.standby_api is not None:
            api, self.standby_api = self.standby_api, None
            await api.__aexit__(None, None, None)
        if self.follower is not None:
            follower, self.follower = self.follower, None
            await asyncio.to_thread(follower.stop)

    async def _start_standby_api(self) -> None:
        cfg = self.config
        api = ApiServer(cfg.api.listen, cfg.api.token, StandbyStatus(self), installer_pin=cfg.api.installer_pin)
        api.route_setups.append(self._standby_routes)
        if await asyncio.to_thread(ensure_certificate, cfg.api, cfg.store.id):
            log.warning("made the box's HTTPS certificate %s", cfg.api.tls_cert_file)
        if cfg.api.tls_cert_file is not None:
            api.ssl_context = await asyncio.to_thread(server_context, cfg.api)
        for attempt in range(40):  # the hub that just stopped may hold the port a moment longer
            try:
                await api.__aenter__()
                break
            except OSError as exc:
                if attempt == 39:
                    log.error("pair: the standby's page cannot listen on %s: %s", cfg.api.listen, exc)
                    return
                await asyncio.sleep(0.05)
        self.standby_api = api

    def _standby_routes(self, app: web.Application) -> None:
        async def page(request: web.Request) -> web.Response:
            return web.Response(text=standby_page(self.status()), content_type="text/html")

        app.router.add_get("/", page)
        self._pair_routes(app)

    def _pair_routes(self, app: web.Application) -> None:
        async def resync(request: web.Request) -> web.Response:
            try:
                aside = await self.resync()
            except PairError as exc:
                return web.json_response({"error": str(exc)}, status=409)
            return web.json_response({"set_aside": aside})

        app.router.add_post("/api/v1/pair/resync", resync)

    async def resync(self) -> str:
        """The installer's way out of a refused (diverged) standby: its journal goes aside, kept,
        and the follower starts over with none, so the serving box sends a fresh copy."""
        async with self._changing:
            if self.mode != "standby" or self.follower is None:
                raise PairError(f"box {self.pair.box} is {self.mode}: resync is for the standby "
                                "(run it on the box whose journal should be replaced)")
            follower, self.follower = self.follower, None
            await asyncio.to_thread(follower.stop)
            path = self.config.journal.path
            aside = str(await asyncio.to_thread(move_aside, path, "resync", self.clock())) if path.exists() else ""
            log.warning("pair: resync asked for: this box's journal is set aside as %s; taking a fresh copy", aside)
            fresh = Follower(path, (self.pair.peer.host, self.pair.peer.port), self.pair.secret, self.identity,
                             self.pair.peer_timeout_ms / 1000, clock=self.clock)
            await asyncio.to_thread(fresh.open)
            fresh.start()
            self.follower = fresh
            return aside

    async def _promote(self) -> None:
        """Take over: the hub on this box's journal, with the replicator as its hook."""
        async with self._changing:
            if self.mode != "standby":
                return
            started = time.monotonic()
            self._set_mode("promoting")
            follower = self.follower
            from_seq = follower.position.seq if follower is not None else 0
            following = follower.status() if follower is not None else {}
            log.warning("pair: box %s takes over store %s (its copy holds record %d; it was %s)", self.pair.box,
                        self.config.store.id, from_seq, following.get("state", "?"))
            await self._stop_standby()
            if self.broker is not None:
                await self.broker.restart(lan=True)  # terminals may come now
            rep = Replicator(self.config.journal.path, self.pair.box, self.pair.standby_timeout_ms / 1000,
                             self.pair.backlog_mib * 1024 * 1024, clock=self.clock)
            hub = self.make_hub(self.config, self.broker)
            hub.journal.hook = rep
            hub.journal.check_at_open = False
            service = PairService(self.config.store.id, self.pair.box, hub.journal, hub.bus, hub.topics, rep,
                                  hub.signals, self.status_common, clock=self.clock)
            hub.add(service, first=True)
            hub.api.route_setups.append(self._pair_routes)
            try:
                await hub.__aenter__()
                async with asyncio.timeout(10):
                    await hub.ready.wait()
            except Exception as exc:  # whatever stopped the hub, the box goes back to following
                with contextlib.suppress(Exception):
                    await hub.__aexit__(None, None, None)
                log.error("pair: box %s could not take over: %s; back to standby", self.pair.box, exc)
                await asyncio.to_thread(rep.stop)
                self.health.set(False, f"taking over failed: {exc}")
                if self.broker is not None:
                    with contextlib.suppress(EdgehubError, OSError):
                        await self.broker.restart(lan=False)
                self._no_promote_until = time.monotonic() + NO_REPROMOTE_S
                await self._become_standby(f"taking over failed: {exc}")
                return
            self.hub, self.replicator = hub, rep
            self.health.set_bonus(vrrp.serving_bonus(rep.epoch))
            self._step_down = ""
            self._address_lost_at = None
            self._set_mode("primary")
            self.serving.set()
            took = time.monotonic() - started
            self.takeovers.append({"at": self.clock(), "epoch": rep.epoch, "after_seq": from_seq,
                                   "was": following.get("state", ""), "seconds": round(took, 3)})
            del self.takeovers[:-20]
            log.warning("pair: box %s serves store %s (epoch %d), ready in %.2f s", self.pair.box,
                        self.config.store.id, rep.epoch, took)

    async def _leave_primary(self, why: str) -> None:
        """Stop serving: the hub stops (what it committed is on the standby, or said to be on
        this box only), then the terminals are disconnected while this box still holds the
        address they came to, so they hear it and come back to whichever box holds it next; only
        then does the address go. (Left connected, a till whose in-flight window filled with
        publishes this box could no longer acknowledge sat silent until its MQTT keepalive ran
        out: 30 s and more.)"""
        await self._stop_primary()
        self.health.set_bonus(0)
        if self.broker is not None:
            with contextlib.suppress(EdgehubError, OSError):
                await self.broker.restart(lan=False)
        self.health.set(False, f"stepping down: {why}")

    async def _stop_primary(self) -> None:
        hub, rep = self.hub, self.replicator
        self.hub, self.replicator = None, None
        self.serving.clear()
        if hub is not None:
            with contextlib.suppress(Exception):
                await hub.__aexit__(None, None, None)
        if rep is not None:
            await asyncio.to_thread(rep.stop)

    async def _demote(self, why: str) -> None:
        async with self._changing:
            if self.mode != "primary":
                return
            self._set_mode("stepping down")
            log.error("pair: box %s stops serving: %s", self.pair.box, why)
            self.stepped_down.append({"at": self.clock(), "why": why})
            del self.stepped_down[:-20]
            await self._leave_primary(why)
            self._no_promote_until = time.monotonic() + NO_REPROMOTE_S
            await self._become_standby(why)

    # --- the node's loop ---------------------------------------------------------------------

    async def _run(self) -> None:
        last = time.monotonic()
        while True:
            await asyncio.sleep(TICK_S)
            now = time.monotonic()
            if now - last > FROZEN_S:
                log.warning("pair: this box did not run for %.1f s (frozen or starved); asking the other box "
                            "what it is", now - last)
                self._probe_now.set()
            last = now
            try:
                await self._tick(now)
            except Exception:  # the node must keep deciding, whatever one tick ran into
                log.exception("pair: the node's tick failed")

    async def _tick(self, now: float) -> None:
        holds = await asyncio.to_thread(vrrp.holds, self.pair.vip)
        if self.mode == "standby":
            if holds and now >= self._no_promote_until:
                await self._promote()
        elif self.mode == "primary":
            if not self._step_down and (reason := self._failback_due(now)):
                self._step_down = reason
            if self._step_down:
                await self._demote(self._step_down)
            elif not holds:
                hub = self.hub
                if hub is not None and not hub.healthy()[0]:
                    await self._demote(f"the floating address left this box, which is unfit ({hub.healthy()[1]})")
                    return
                if self._address_lost_at is None:
                    self._address_lost_at = now
                    self._probe_now.set()
                elif now - self._address_lost_at >= DEMOTE_GRACE_S:
                    await self._demote("the floating address moved to the other box")
            else:
                self._address_lost_at = None
        if self._changing.locked():
            return  # a takeover or a step-down sets the health itself
        fit, why = await self._fitness(now)
        if fit != self.health.fit or why != self.health.reason:
            self.health.set(fit, why)

    def _failback_due(self, now: float) -> str:
        """``pair.failback``: the box that is not the preferred one gives the store back once the
        preferred box has been its standby, in sync, for ``failback_after_s``, and only when no
        order came for ``failback_quiet_s`` (never in the middle of a rush)."""
        rep, hub = self.replicator, self.hub
        if not self.pair.failback or self.pair.prefer == "primary" or rep is None or hub is None:
            return ""
        since = rep.standby.caught_up_at
        if not rep.in_sync or since is None or self.clock() - since < self.pair.failback_after_s:
            return ""
        if now - hub.intake.last_order_at < self.pair.failback_quiet_s:
            return ""
        return f"failback: the preferred box {rep.standby.box} is in sync and the store is quiet"

    async def _fitness(self, now: float) -> tuple[bool, str]:
        """Whether this box may hold the floating address (what keepalived reads)."""
        if self.mode in ("stepping down", "starting"):
            return False, self.mode
        if self.mode == "primary":
            hub = self.hub
            if hub is None:
                return False, "no hub"
            ok, why = hub.healthy()
            return ok, why
        if now - self._broker_checked >= 0.2:
            self._broker_ok = await asyncio.to_thread(_broker_answers, self.config)
            self._broker_checked = now
        if not self._broker_ok:
            return False, f"the store broker at {self.config.broker.listen} does not answer"
        follower = self.follower
        if follower is not None and not follower.holds_copy and self.pair.prefer != "primary":
            return False, "this box holds no copy of the store's journal yet (it never followed the other box)"
        return True, ""

    async def _heartbeat(self) -> None:
        while True:
            self.health.write()
            await asyncio.sleep(vrrp.HEARTBEAT_S)

    # --- the other box -------------------------------------------------------------------------

    async def _probe_loop(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PROBE_EVERY_S):
                    await self._probe_now.wait()
            self._probe_now.clear()
            rep = self.replicator
            if self.mode != "primary" or rep is None or rep.in_sync:
                continue
            hello = {**self.identity, **self.describe()}
            try:
                doc = await asyncio.to_thread(link.probe, self.pair.peer, self.pair.secret, hello,
                                              self.pair.peer_timeout_ms / 1000)
            except PeerRefused as exc:
                self._refused(str(self.pair.peer), exc.reason)
                continue
            except (PairError, OSError):
                continue
            self._saw(doc)

    def describe(self) -> dict[str, Any]:
        """This box's role and position, as the other box learns it (any thread)."""
        rep, follower = self.replicator, self.follower
        if self.mode == "primary" and rep is not None:
            position = tables.Position(rep.lineage, rep.epoch, rep.seq, rep.hash)
        elif follower is not None:
            position = follower.position
        else:
            position = tables.Position("", 0, 0, b"")
        return {"role": "primary" if self.mode == "primary" else "standby", "mode": self.mode,
                "position": position.as_dict(), "epoch_box": self._epoch_box()}

    def _epoch_box(self) -> str:
        """The box that started this box's current epoch (the tie-break between two serving boxes)."""
        service = self.hub and next((c for c in self.hub.components if isinstance(c, PairService)), None)
        if isinstance(service, PairService) and service.epoch is not None:
            return service.epoch.box
        return self.pair.box

    def _saw(self, hello: dict[str, Any]) -> None:
        """The other box said what it is (listener or probe thread): two serving boxes, one steps down."""
        self.peer_seen = {"box": hello.get("box"), "role": hello.get("role"), "at": self.clock(),
                          "position": hello.get("position"), "version": hello.get("version")}
        if self.peer_refused:
            self.peer_refused = {}
        if hello.get("role") != "primary" or self.mode != "primary":
            return
        rep = self.replicator
        if rep is None:
            return
        theirs = (int((hello.get("position") or {}).get("epoch", 0)), str(hello.get("epoch_box", hello.get("box"))))
        mine = (rep.epoch, self._epoch_box())
        if theirs > mine:
            reason = (f"the other box {hello.get('box')} serves too, in a newer epoch ({theirs[0]} > {mine[0]}): "
                      "this box hands over what it took alone and follows it")
            self._step_down = reason
            log.error("pair: TWO BOXES SERVE: %s", reason)

    def _follow(self, channel: Any, hello: dict[str, Any]) -> str | None:
        rep = self.replicator
        if self.mode != "primary" or rep is None:
            return f"box {self.pair.box} does not serve the store now (it is {self.mode})"
        rep.serve(channel, hello)
        return None

    def _refused(self, who: str, why: str) -> None:
        if self.peer_refused.get("reason") != why:
            log.error("pair: REFUSED the other box at %s: %s", who, why)
        self.peer_refused = {"address": who, "reason": why, "at": self.clock()}

    # --- what the page, the status and the doctor read ----------------------------------------------

    def status_common(self) -> dict[str, Any]:
        follower = self.follower
        refused = dict(self.peer_refused)
        if follower is not None and follower.st.state == "refused":
            refused = {"address": str(self.pair.peer), "reason": follower.st.refused, "at": follower.st.since}
        return {
            "box": self.pair.box,
            "role": self.mode,
            "role_since": self.mode_since,
            "peer": str(self.pair.peer),
            "peer_seen": self.peer_seen,
            "address": self.pair.address,
            "holds_address": vrrp.holds(self.pair.vip),
            "fit": self.health.fit,
            "unfit_reason": "" if self.health.fit else self.health.reason,
            "refused": refused,
            "takeovers": self.takeovers[-5:],
            "stepped_down": self.stepped_down[-5:],
            "keepalived": {"mode": self.pair.vrrp, "pid": self.keepalived.pid if self.keepalived else None,
                           "state": self.keepalived.state if self.keepalived else None,
                           "priority_bonus": self.health.bonus},
        }

    def status(self) -> dict[str, Any]:
        doc = self.status_common()
        follower, rep = self.follower, self.replicator
        if follower is not None:
            following = follower.status()
            doc.update(copies=2 if following["state"] == "in sync" else 1, following=following,
                       epoch=following["epoch"], seq=following["seq"])
        elif rep is not None:
            doc.update(rep.status())
        return doc


class StandbyStatus:
    """The standby's answers to ``/healthz`` and ``/api/v1/status`` (``ApiServer``'s source)."""

    def __init__(self, node: PairNode) -> None:
        self.node = node

    def healthy(self) -> tuple[bool, str]:
        follower = self.node.follower
        if follower is not None and follower.st.state == "refused":
            return False, f"the standby refuses the other box: {follower.st.refused}"
        return True, ""

    async def status(self) -> dict[str, Any]:
        node = self.node
        return {"store_id": node.config.store.id, "store_name": node.config.store.name, "version": __version__,
                "role": "standby", "pair": node.status()}


def _broker_answers(config: Config) -> bool:
    address = config.broker.listen.local()
    try:
        with socket.create_connection((address.host, address.port), timeout=0.5):
            return True
    except OSError:
        return False


def standby_page(status: dict[str, Any]) -> str:
    """The standby box's page: what it follows and how far it is."""
    import html

    following = status.get("following") or {}
    refused = (status.get("refused") or {}).get("reason", "")
    rows = [
        ("box", status.get("box")), ("role", "standby: it takes the store over if the serving box dies"),
        ("follows", f"{following.get('primary') or '?'} at {status.get('peer')}"),
        ("state", following.get("state")), ("record", following.get("seq")), ("epoch", following.get("epoch")),
        ("floating address", f"{status.get('address')} ({'here' if status.get('holds_address') else 'not here'})"),
        ("catch-up", following.get("catch_up")), ("set aside", ", ".join(following.get("set_aside") or []) or "-"),
    ]
    body = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in rows)
    banner = f'<p class="bad">REFUSED: {html.escape(refused)}</p>' if refused else ""
    return ("<!doctype html><meta charset=utf-8><title>edgehub standby</title>"
            "<style>body{font:16px sans-serif;margin:2em}th{text-align:left;padding-right:1em}"
            ".bad{color:#b00;font-weight:bold}</style>"
            f"<h1>Standby box {html.escape(str(status.get('box')))}</h1>{banner}<table>{body}</table>")


def pair_paths(config: Config) -> dict[str, Path]:
    return {"health": vrrp.health_path(config), "keepalived": vrrp.conf_path(config)}
