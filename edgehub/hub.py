"""The hub: one asyncio process composing broker, journal, bus, the components and the API.

``Hub.__init__`` is the list of components in their start order (``edgehub/component.py`` says
what a component is); each is built by its package's ``setup`` from the hub's ``Context``, its
config section and the ports it takes from those built before it. Start order is explicit:
(private broker) → journal → components → API site → bus. READY goes to systemd only once the
bus is connected and the API is up; stop runs in reverse. ``async with Hub(config) as hub`` is
what tests use; ``run_until_stopped`` is what ``edgehub run`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from edgehub import (
    __version__,
    clock,
    devices,
    discovery,
    front,
    intake,
    kitchen,
    online,
    reports,
    roles,
    support,
    uplink,
)
from edgehub.api import ApiServer
from edgehub.api.tls import ensure_certificate, fingerprint, server_context
from edgehub.broker import MosquittoProcess
from edgehub.bus.connection import BusConnection
from edgehub.bus.topics import Topics
from edgehub.component import Component, Signals, Wiring
from edgehub.config import Address, Config
from edgehub.context import Context
from edgehub.devices import DeviceRegistry
from edgehub.front import TerminalLogin
from edgehub.instance import InstanceLock, check_ports
from edgehub.kitchen.logins import ScreenLogins, mistaken_secrets, screen_logins
from edgehub.logs import RecentLines
from edgehub.roles import KitchenSlips
from edgehub.sdnotify import Notifier
from edgehub.store import Journal
from edgehub.store.retention import Retention
from edgehub.support import SupportPorts
from edgehub.tasks import cancel_and_wait
from edgehub.uplink import Downlink, Outbox, TelemetrySampler, Uplink

log = logging.getLogger("edgehub.hub")

C = TypeVar("C", bound=Component)


def _log_failure(task: asyncio.Task[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("%s failed: %s", task.get_name(), task.exception(), exc_info=task.exception())


def preflight(config: Config) -> None:
    """Raise (AlreadyRunning, PortTaken) what would stop this hub from starting, writing nothing:
    ``edgehub run`` calls it before it starts anything else (simulated store, cloud), and the hub
    once more at its start."""
    InstanceLock(config.paths.data_dir).check()
    check_ports(config)

# How long stopping waits for a task (the bus, the watchdog pinger) before cancelling it again.
STOP_GRACE_S = 3.0


class Hub:
    def __init__(self, config: Config, notifier: Notifier | None = None,
                 usb_backend: object | None = None, instance: InstanceLock | None = None,
                 broker: MosquittoProcess | None = None) -> None:
        self.config = config
        self.topics = Topics(config.store.id)
        self.notifier = notifier or Notifier(environ={})
        self.started_at = time.monotonic()
        self.ready = asyncio.Event()
        # A private broker someone else started and watches (a pair's node keeps it across the
        # hubs it starts and stops), or None: in managed mode the hub then starts its own.
        self.broker: MosquittoProcess | None = broker
        self._own_broker = broker is None
        # One hub per data directory; ``edgehub run`` takes the lock before it starts simulators.
        self.instance = instance or InstanceLock(config.paths.data_dir)
        # The ring of recent log lines that support bundles fall back on without journald.
        self.recent = RecentLines()
        self.journal = Journal(config.journal.path, config.store.id, config.journal.commit_window_ms)
        # What the journal keeps of the past: journal.keep_days, by every owner's rules.
        self.retention = Retention(self.journal, config.journal.keep_days)
        self.api = ApiServer(config.api.listen, config.api.token, self, installer_pin=config.api.installer_pin,
                             sessions_file=config.paths.data_dir / "sessions.json")
        self.bus = BusConnection(
            host=config.broker.listen.host, port=config.broker.listen.port,
            username=config.broker.hub_user, password=config.broker.hub_password,
            client_id=f"edgehub-hub-{config.store.id}", topics=self.topics, version=__version__,
        )
        self.signals = Signals()
        self.wiring = Wiring(self.bus, self.api, self.signals)
        ctx = Context(config.store.id, self.topics, self.bus, self.journal, self.signals, config.paths.data_dir)
        self._stack = contextlib.AsyncExitStack()
        self.tls_fingerprint: str | None = None  # of the page's HTTPS certificate, read at start
        self._tasks: list[asyncio.Task[Any]] = []
        self._broker_watch: asyncio.Task[None] | None = None  # managed mode: restarts the broker

        # The components, in start order (stopped in reverse).
        self.components: list[Component] = []
        self.intake = self.add(intake.setup(ctx, config.limits))
        self.cloud = self.add(uplink.setup(ctx, config.cloud, busy=self.intake.busy,
                                           accepted=lambda: self.intake.stats.accepted))
        self.devices = self.add(devices.setup(ctx, config.discovery, usb_backend=usb_backend,
                                              outbox=self.cloud.outbox))
        self.discovery = self.add(discovery.setup(ctx, config.discovery, config.devices, self.registry,
                                                  usb_backend=usb_backend,
                                                  advertise=(config.store.id, config.api.listen.port, __version__)))
        self.roles = self.add(roles.setup(ctx, config, self.registry, wan_down=self.cloud.wan_down))
        terminal_login = TerminalLogin(config.terminals, self.api.failures)
        self.menu = self.add(front.setup_menu(ctx, self.cloud.downlink, self.bus, terminal_login,
                                              config.broker.max_packet_kib * 1024))
        self.checks = self.add(front.setup_checks(ctx, terminal_login, config.terminals, config.limits))
        self.kitchen = self.add(kitchen.setup(
            ctx, config.kitchen, config.limits, terminal_kinds={t.id: t.kind for t in config.terminals},
            screen_stations=[s for t in config.terminals if t.kind == "kds" for s in t.stations or ()],
            printer=KitchenSlips(self.roles.printqueue), downlink=self.cloud.downlink))
        logins = ScreenLogins(screen_logins(config), mistaken_secrets(config))
        self.screens = self.add(kitchen.setup_screens(self.kitchen, logins, self.api.failures,
                                                      broker_link=self.healthy))
        self.ready_board = self.add(kitchen.setup_ready(ctx, self.kitchen, config.kitchen))
        self.add(kitchen.setup_pickup(self.ready_board, logins, self.api.failures, self.screens.status))
        self.online = self.add(online.setup(ctx, config.limits, keep_days=config.journal.keep_days,
                                            busy=self.intake.busy, cloud=self.cloud))
        self.clock_watch = self.add(clock.setup(ctx, config.clock))
        self.presence = self.add(front.setup_presence(ctx, config.terminals, self.bus,
                                                      web_screens=self.kitchen.web_screens, cloud=self.cloud))
        self.reports = self.add(reports.setup(ctx, config, KitchenSlips(self.roles.printqueue)))
        self.support = self.add(support.setup(ctx, config, SupportPorts(
            status=self.status, broker_address=lambda: Address(self.bus.host, self.bus.port),
            registry=self.registry, seats=self.roles.seats, outbox_counters=self.cloud.outbox.counters,
            role_history=self.roles.history, field_checks=self.devices.field_checks.all,
            broker_log=lambda: list(self.broker.log_tail) if self.broker is not None else []), self.recent))

    def add(self, component: C, *, first: bool = False) -> C:
        """One more component, started after those added before it (``first``: before them all,
        as a pair's takeover is); its declarations are wired."""
        self.journal.own(*component.tables())
        self.wiring.add(component)
        if first:
            self.components.insert(0, component)
        else:
            self.components.append(component)
        return component

    # Parts of components that tests and tools reach by name.
    @property
    def registry(self) -> DeviceRegistry:
        return self.devices.registry

    @property
    def outbox(self) -> Outbox:
        return self.cloud.outbox

    @property
    def downlink(self) -> Downlink:
        return self.cloud.downlink

    @property
    def uplink(self) -> Uplink | None:
        return self.cloud.uplink

    @property
    def telemetry(self) -> TelemetrySampler:
        return self.cloud.telemetry

    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Hub:
        try:
            await self._start()
        except BaseException:
            await self.__aexit__(None, None, None)
            raise
        return self

    async def _start(self) -> None:
        cfg = self.config
        if await asyncio.to_thread(ensure_certificate, cfg.api, cfg.store.id):
            log.warning("made the box's HTTPS certificate %s (its fingerprint is on the page and in "
                        "`edgehub doctor`)", cfg.api.tls_cert_file)
        if cfg.api.tls_cert_file is not None:
            self.api.ssl_context = await asyncio.to_thread(server_context, cfg.api)
            self.tls_fingerprint = await asyncio.to_thread(fingerprint, cfg.api.tls_cert_file)
        _raise_file_limit()
        # The ring of recent log lines (support bundles on a box without journald) listens from
        # the first line on: the journal's migration and discovery's "found" lines are what support
        # asks for first. Detached last, when everything else has stopped.
        self.recent.attach()
        self._stack.callback(self.recent.detach)
        # Nothing is written before these: another hub on this data directory, or a port taken,
        # stops this one here with one line and leaves the running hub's files alone.
        if not self.instance.held:
            await asyncio.to_thread(preflight, cfg)
            self.instance.acquire(config=str(cfg.source))
            self._stack.callback(self.instance.release)
        if cfg.broker.mode == "managed" and self._own_broker:
            self.broker = await self._stack.enter_async_context(MosquittoProcess(cfg))
        if self.broker is not None:
            self.bus.host, self.bus.port = self.broker.address.host, self.broker.address.port
            self.bus.gate = self._own_broker_listening
        await self._stack.enter_async_context(self.journal)
        await self._stack.enter_async_context(self.retention)
        for component in self.components:
            await self._stack.enter_async_context(self.wiring.running(component))
        await self._stack.enter_async_context(self.api)
        self.instance.describe(page=self.api.url)
        self._tasks.append(asyncio.create_task(self.bus.run(), name="bus"))
        if self.broker is not None and self._own_broker:
            self._broker_watch = asyncio.create_task(self.broker.supervise(), name="broker-supervisor")
        self._tasks.append(asyncio.create_task(self.notifier.keep_alive(), name="watchdog"))
        self._tasks.append(asyncio.create_task(self._announce_ready(), name="ready"))

    async def _own_broker_listening(self) -> None:
        """The bus's gate in managed mode: wait while the hub's own Mosquitto is down or some other
        program holds its port (another hub's broker would take the hub's login and knock it off)."""
        broker = self.broker
        assert broker is not None
        while not await asyncio.to_thread(broker.owns_listener):
            self.bus.last_error = broker.problem or f"the hub's own Mosquitto is not listening on {broker.address}"
            await asyncio.sleep(0.2)

    async def _announce_ready(self) -> None:
        await self.bus.connected.wait()
        self.ready.set()
        self.notifier.ready(f"serving store {self.config.store.id}")
        log.info("ready: store %s, broker %s:%d, api %s", self.config.store.id, self.bus.host, self.bus.port,
                 self.api.url)

    async def __aexit__(self, *exc: object) -> None:
        self.notifier.stopping()
        # Stopping: a private broker that goes now (Ctrl-C reaches it too) stays gone.
        await cancel_and_wait(self._broker_watch)
        await self.bus.close()
        for task in self._tasks:
            task.cancel()
        # A task that does not finish at once is usually the MQTT client waiting, without a
        # timeout of its own, for the broker to confirm the disconnect: a broker that no longer
        # answers must not hold up a restart under systemd. Cancel again, which ends that wait.
        _, pending = await asyncio.wait(self._tasks, timeout=STOP_GRACE_S) if self._tasks else (set(), set())
        for task in pending:
            log.warning("task %s did not stop within %.0f s; cancelling it again", task.get_name(), STOP_GRACE_S)
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self._tasks.clear()
        await self._stack.aclose()

    async def run_until_stopped(self, alongside: Callable[[], Coroutine[Any, Any, None]] | None = None) -> None:
        """Run until SIGTERM or SIGINT. ``alongside`` runs while the hub does and is cancelled
        before the hub stops (``edgehub run``'s announcement and simulated service)."""
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        async with self:
            task = asyncio.create_task(alongside(), name="alongside") if alongside is not None else None
            if task is not None:
                task.add_done_callback(_log_failure)
            try:
                await stop.wait()
            finally:
                await cancel_and_wait(task)
            log.info("stopping")

    # --- what the API reads ----------------------------------------------------------------

    def healthy(self) -> tuple[bool, str]:
        if not self.bus.connected.is_set():
            reason = self.bus.last_error
            return False, f"broker not connected{': ' + reason if reason else ''}"
        return True, ""

    def broker_advice(self) -> str:
        """What to do while the broker is not connected, for the box this hub runs on."""
        if self.config.broker.mode == "managed":
            if self.broker is not None and self.broker.problem and "not started again" in self.broker.problem:
                return "restart edgehub: Ctrl-C where it runs, then `make run` (or `edgehub run`) again"
            return ("edgehub runs its own Mosquitto here and starts it again by itself; if this stays, "
                    "restart edgehub (Ctrl-C, then `make run`)")
        return "Mosquitto runs under systemd: sudo systemctl restart mosquitto; sudo journalctl -u mosquitto -n 50"

    async def status(self) -> dict[str, Any]:
        counts = await self.journal.counts()
        bus = self.bus
        return {
            "store_id": self.config.store.id,
            "store_name": self.config.store.name,
            "version": __version__,
            "uptime_s": round(time.monotonic() - self.started_at, 1),
            "broker": {
                "connected": bus.connected.is_set(),
                "address": f"{bus.host}:{bus.port}",
                "mode": self.config.broker.mode,
                "connects": bus.connects,
                "last_error": bus.last_error,
                **({} if bus.connected.is_set() else {"advice": self.broker_advice()}),
            },
            "journal": {
                "orders": counts["orders"],
                "outbox": counts["outbox"],
                "deadletters": counts["deadletters"],
                "commits": self.journal.stats.commits,
                "last_commit_ms": round(self.journal.stats.last_commit_ms, 3),
                "moved_aside": self.journal.stats.moved_aside,
                "retention": self.retention.status(),
            },
            "https": {"tls": self.config.api.tls, "fingerprint": self.tls_fingerprint},
            **{name: await section() for name, section in self.wiring.status.items()},
        }


def _raise_file_limit() -> None:
    """Open files up to the hard limit (systemd's soft limit is 1024): the API's connection caps
    stay far below it, and a flood never reaches "accept() out of system resource"."""
    import resource

    with contextlib.suppress(ValueError, OSError):
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        wanted = min(hard, 65536) if hard != resource.RLIM_INFINITY else 65536
        if soft != resource.RLIM_INFINITY and soft < wanted:
            resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
