"""The hub: one asyncio process composing broker, journal, bus, intake and API.

Start order is explicit: (private broker) → journal → API site → bus. READY goes to systemd
only once the bus is connected and the API is up; stop runs in reverse. ``async with
Hub(config) as hub`` is what tests use; ``run_until_stopped`` is what ``edgehub run`` uses.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from drivers.escpos import PrinterTiming
from edgehub import __version__
from edgehub.api import ApiServer
from edgehub.api.support import Support
from edgehub.api.tls import ensure_certificate, fingerprint, server_context
from edgehub.broker import MosquittoProcess
from edgehub.bus.connection import BusConnection
from edgehub.bus.topics import Topics
from edgehub.clock import ClockWatch
from edgehub.config import Config
from edgehub.devices import DeviceRegistry, Watchdog, WatchdogTiming
from edgehub.devices.api import devices_routes
from edgehub.devices.factory import DriverFactory
from edgehub.devices.feeds import DeviceFeeds
from edgehub.devices.fieldcheck import FieldChecks
from edgehub.discovery import Discovery
from edgehub.front import Checks, MenuServer, Presence, TerminalLogin
from edgehub.instance import InstanceLock, check_ports
from edgehub.intake import Intake
from edgehub.kitchen import Kitchen, PickupServer, ReadyBoard, ScreenServer
from edgehub.kitchen.logins import ScreenLogins, mistaken_secrets, screen_logins
from edgehub.online import OnlineOrders
from edgehub.reports import Reports
from edgehub.roles import KitchenSlips, Roles
from edgehub.sdnotify import Notifier
from edgehub.store import Journal
from edgehub.store.retention import Retention
from edgehub.tasks import cancel_and_wait
from edgehub.uplink import attach_uplink, follow_cloud_routing

log = logging.getLogger("edgehub.hub")


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
        self.journal = Journal(config.journal.path, config.store.id, config.journal.commit_window_ms)
        self.intake = Intake(self.topics, config.limits, self.journal)
        self.api = ApiServer(config.api.listen, config.api.token, self, installer_pin=config.api.installer_pin,
                             sessions_file=config.paths.data_dir / "sessions.json")
        self.bus = BusConnection(
            host=config.broker.listen.host, port=config.broker.listen.port,
            username=config.broker.hub_user, password=config.broker.hub_password,
            client_id=f"edgehub-hub-{config.store.id}", topics=self.topics, version=__version__,
        )
        self.intake.bus = self.bus
        self.bus.route_batch(self.topics.all_orders, self.intake.handle_batch)
        self._stack = contextlib.AsyncExitStack()
        self.tls_fingerprint: str | None = None  # of the page's HTTPS certificate, read at start
        self._tasks: list[asyncio.Task[Any]] = []
        self._broker_watch: asyncio.Task[None] | None = None  # managed mode: restarts the broker
        # Components started after the journal and before the API, stopped in reverse.
        # Each is an async context manager; status sections feed /api/v1/status.
        self.components: list[contextlib.AbstractAsyncContextManager[Any]] = []
        self.status_sections: dict[str, Callable[[], Awaitable[dict[str, Any]]]] = {}
        # The outbox policy and the downlink registry (components add cloud rows with
        # ``self.outbox.add(conn, ...)``, read ``self.downlink.current("menu")``) and, with
        # [cloud] enabled, the uplink to the chain's cloud (edgehub/uplink/).
        self.outbox, self.downlink, self.uplink, self.telemetry = attach_uplink(self)
        # What the journal keeps of the past: journal.keep_days (edgehub/store/retention.py).
        self.retention = Retention(self.journal, config.journal.keep_days)
        self.components.append(self.retention)
        # Devices: the registry first (roles read it), then discovery fills it, the
        # watchdog probes what is in it and the feeds publish scans and weights.
        self.registry = DeviceRegistry(self.topics, self._publish_device,
                                       driver_factory=DriverFactory(usb_backend, PrinterTiming(
                                           missed_limit=config.discovery.printer_missed_probes)),
                                       alert_sink=self._keep_device_alert)
        self.discovery = Discovery(self.registry, config.discovery, config.devices, usb_backend=usb_backend,
                                   advertise=(config.store.id, config.api.listen.port, __version__),
                                   state_dir=config.paths.data_dir)
        self.watchdog = Watchdog(self.registry,
                                 WatchdogTiming(printer_interval=config.discovery.probe_interval_s,
                                                printer_missed=config.discovery.printer_missed_probes))
        self.feeds = DeviceFeeds(self.registry, self._publish_device)
        # The installer's field checks (edgehub device test), kept with each device.
        self.field_checks = FieldChecks(self.registry, self.journal)
        self.components += [self.registry, self.discovery, self.watchdog, self.feeds, self.field_checks]
        self.status_sections["devices"] = self.registry.status
        self.api.route_setups.append(devices_routes(self.registry))
        self.api.route_setups.append(self.field_checks.route_setup)
        # The box's page, /metrics, self-check and support bundles.
        self.support = Support(self)
        self.components.append(self.support)
        # Roles and failover: after the device registry in start order, so the registry
        # is up before roles read it.
        self.roles = Roles(config, self.topics, self.journal, self.bus, self.registry)
        self.components.append(self.roles)
        self.api.route_setups.append(self.roles.route_setup)
        self.status_sections["roles"] = self.roles.status
        # The kitchen: tickets per station from each accepted order, screens at
        # /kds/{station}, POS amend/cancel. Kitchen printing: set ``self.kitchen.printer``.
        self.kitchen = Kitchen(config.kitchen, self.topics, self.journal, config.store.id, config.limits,
                               bus=self.bus, terminal_kinds={t.id: t.kind for t in config.terminals})
        self.components.append(self.kitchen)
        self.intake.on_accepted.append(self.kitchen.on_order_accepted)
        self.bus.route(self.topics.all_amends, self.kitchen.handle_amend)
        self.bus.route(self.topics.all_cancels, self.kitchen.handle_cancel)
        self.bus.route(self.topics.all_kds_commands, self.kitchen.handle_command)
        self.bus.route(self.topics.all_kds_snapshot_requests, self.kitchen.handle_snapshot_request)
        self.kitchen.screen_stations = tuple(s for t in config.terminals if t.kind == "kds" for s in t.stations or ())
        logins = ScreenLogins(screen_logins(config), mistaken_secrets(config))
        self.screens = ScreenServer(self.kitchen, logins, self.api.failures, self.healthy)
        self.components.append(self.screens)
        self.api.route_setups.append(self.screens.setup)
        self.status_sections["kitchen"] = self.kitchen.status
        # "Ready" back to the front: order-ready/1 to the tills, pagers and displays; /pickup.
        self.ready_board = ReadyBoard(self.kitchen.progress, self.topics, self.bus, config.kitchen)
        self.components.append(self.ready_board)
        self.api.route_setups.append(
            PickupServer(self.ready_board, logins, self.api.failures, self.screens.status).setup)
        self.status_sections["ready"] = self._ready_status
        self.kitchen.printer = KitchenSlips(self.roles.printqueue)  # slips go through the role queues
        # Routing rules the cloud pushes (downlink "routing") route new tickets; cached across restarts.
        follow_cloud_routing(self.downlink, self.kitchen)
        # QR pay asks whether the cloud link thinks the WAN is down (it then probes the gateway).
        self.roles.payments.tenders.wan_down = self._wan_down
        # The day's close: computed from the journal, printed, sent to the cloud as one message.
        self.reports = Reports(config, self.journal, self.roles.printqueue)
        self.components.append(self.reports)
        self.api.route_setups.append(self.reports.route_setup)
        self.status_sections["reports"] = self.reports.status_section
        # The front of house (edgehub/front/): terminals read over HTTP with their own credentials.
        self.terminal_login = TerminalLogin(config.terminals, self.api.failures)
        self.menu = MenuServer(self.topics, self.downlink, self.bus, self.terminal_login,
                               config.broker.max_packet_kib * 1024)
        self.components.append(self.menu)
        self.api.route_setups.append(self.menu.route_setup)
        self.status_sections["menu"] = self.menu.status
        self.checks = Checks(self.topics, self.journal, self.bus, self.terminal_login, config.terminals,
                             config.limits)
        self.components.append(self.checks)
        self.intake.on_accepted.insert(0, self.checks.on_order_accepted)  # before the kitchen's tickets
        self.kitchen.progress.listeners.append(self.checks.on_progress)
        self.kitchen.on_order_change.append(self.checks.on_order_change)
        self.roles.payments.on_final.append(self.checks.on_payment)
        self.api.route_setups.append(self.checks.route_setup)
        self.status_sections["checks"] = self.checks.status
        # Orders placed online, from the cloud to the kitchen (edgehub/online/), cooked like a till's.
        self.online = OnlineOrders(self.journal, config.store.id, config.limits, self.intake.on_accepted,
                                   lambda: self.intake.in_progress > 0, keep_days=config.journal.keep_days)
        self.components.append(self.online)
        self.kitchen.progress.listeners.append(self.online.on_progress)
        self.kitchen.on_order_change.append(self.online.on_order_change)
        if self.uplink is not None:
            self.uplink.take_order = self.online.take
        self.status_sections["online_orders"] = self.online.status
        # The store's clock: chrony serves time to the LAN; its state on the page (edgehub/clock/).
        self.clock_watch = ClockWatch(config.clock)
        self.components.append(self.clock_watch)
        self.status_sections["clock"] = self.clock_watch.status
        self.presence = Presence(self.topics, config.terminals, self.bus, web_screens=self.kitchen.web_screens)
        self.components.append(self.presence)
        self.status_sections["terminals"] = self.presence.status
        self.telemetry.extras["terminals"] = self.presence.summary

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
        self.support.recent.attach()
        self._stack.callback(self.support.recent.detach)
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
        for component in self.components:
            await self._stack.enter_async_context(component)
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

    # --- devices ---------------------------------------------------------------------------

    async def _publish_device(self, topic: str, payload: bytes, retain: bool) -> None:
        await self.bus.publish(topic, payload, qos=1, retain=retain)

    async def _keep_device_alert(self, device_id: str, payload: bytes) -> None:
        """Device alerts go to the cloud too (``devices`` stream), once the outbox is wired in."""
        outbox = getattr(self, "outbox", None)
        if outbox is not None:
            await outbox.add_now("devices", f"dev-alert-{uuid.uuid4().hex}", payload)

    async def _ready_status(self) -> dict[str, Any]:
        return self.ready_board.status()

    def _wan_down(self) -> str | None:
        uplink = self.uplink
        if uplink is None or uplink.state == "online" or not uplink.last_error:
            return None
        return f"the cloud link is {uplink.state}: {uplink.last_error}"

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
            "intake": vars(self.intake.stats).copy(),
            "https": {"tls": self.config.api.tls, "fingerprint": self.tls_fingerprint},
            **{name: await section() for name, section in self.status_sections.items()},
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
