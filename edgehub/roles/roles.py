"""The roles component: bindings, who serves each role, and the role topics terminals use.

Config binds devices to roles (``[[role]]``, primary first); an installer may rebind a role
from the API (``PUT /api/v1/roles/{role}``), which is journaled and wins over the config from
then on. The registry's device events drive the failover rule (``failover.choose_serving``);
every change of binding or serving device is published retained on ``…/role/{role}/$binding``
and ``…/role/{role}/$state`` and kept as an audit row in the outbox for the cloud.

Commands arrive on ``…/role/{role}/cmd/{print|pay|settle}/{terminal}`` and go to the print
queue or the payments. The last level names the requesting terminal, which the broker's ACL
lets write only its own: the hub knows who asks, answers only into that terminal's own tree
(``…/pos/{terminal}/…``) and keeps a payment to the terminal that started it. Scans and weights
of the serving device are republished on ``…/role/{role}/evt/…``.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
import sqlite3
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from aiohttp import web

from drivers.base import Driver, Health
from edgehub.bus import payloads
from edgehub.bus.message import Message
from edgehub.bus.topics import Topics
from edgehub.component import (
    BUS_CONNECTED,
    Bus,
    Component,
    Listener,
    MqttBatch,
    MqttRoute,
    StatusReader,
    on,
)
from edgehub.config import Config, role_devices_problem, role_kind, role_name_problem
from edgehub.context import Context
from edgehub.devices.registry import DEVICE_CHANGED, DeviceEntry, DeviceEvent, DeviceRegistry
from edgehub.errors import BrokerError, DeviceUnavailable, EdgehubError, PayloadError
from edgehub.roles.failover import RoleSeat, choose_serving, usable
from edgehub.roles.payments import PAYMENT_FINAL, Payments
from edgehub.roles.printqueue import PrintQueue
from edgehub.roles.serving import Reply, Requester
from edgehub.roles.tables import TABLES
from edgehub.store import Journal
from edgehub.store.outbox import add_to_outbox, waiting_payloads
from edgehub.store.schema import Tables
from edgehub.tasks import cancel_and_wait, wait_to_tick

log = logging.getLogger("edgehub.roles")

# The failback tick while every role is on its primary device (nothing but an event can move one).
QUIET_TICK_S = 1.0

OPEN_DRIVER_TIMEOUT_S = 10.0
EVENT_KINDS = {"scan": "scanner", "weight": "scale"}


def setup(ctx: Context, config: Config, registry: DeviceRegistry | None,
          wan_down: Callable[[], str | None] = lambda: None) -> Roles:
    """``config``: the ``[[role]]`` bindings, the terminals that may pay, ``[payments]``, the
    limits; ``registry``: the devices that serve roles; ``wan_down``: why the cloud link says the
    WAN is down, or None (QR pay then probes its gateway)."""
    roles = Roles(config, ctx.topics, ctx.journal, ctx.bus, registry, wall=ctx.clock)
    roles.payments.tenders.wan_down = wan_down
    roles.payments.on_final.append(functools.partial(ctx.signals.emit, PAYMENT_FINAL))
    return roles


class Roles(Component):
    """The hub component. ``async with`` loads bindings and starts the role workers."""

    name = "roles"

    def __init__(
        self,
        config: Config,
        topics: Topics,
        journal: Journal,
        bus: Bus,
        registry: DeviceRegistry | None,
        *,
        tick_s: float = 0.2,
        clock: Callable[[], float] = time.monotonic,
        wall: Callable[[], float] = time.time,
    ) -> None:
        self.config = config
        self.topics = topics
        self.journal = journal
        self.bus = bus
        self.registry = registry
        self.tick_s = tick_s
        self.clock = clock
        self.wall = wall
        self.seats: dict[str, RoleSeat] = {}
        self.healthy_since: dict[str, float] = {}  # device id -> when it last became usable
        # Through ``self``: a test may set the roles' clocks after they are built.
        self.printqueue = PrintQueue(journal, self, config.limits, lambda: self.wall())
        self.payments = Payments(journal, self, config.payments, config.limits, config.store,
                                 clock=lambda: self.clock(), wall=lambda: self.wall(), tick_s=tick_s)
        self._changed: dict[str, asyncio.Event] = {}
        self._dirty: set[str] = set()
        self._audit: list[tuple[str, dict[str, Any]]] = []
        self._wake = asyncio.Event()
        self._moved = asyncio.Event()  # a role changed its serving device: the tick looks again
        self._main: asyncio.Task[None] | None = None
        self._tg: asyncio.TaskGroup | None = None
        self._workers: dict[str, asyncio.Task[None]] = {}  # print worker per printer role
        self._started = asyncio.Event()
        self._scan_waiters: dict[str, list[asyncio.Future[str]]] = {}  # scanner role -> who wants its next scan

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return [MqttRoute(self.topics.all_role_commands, self.handle_command),
                MqttRoute(self.topics.unsigned_role_commands, self.handle_command),
                MqttRoute(self.topics.all_device_events, self.handle_device_event)]

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return [web.get("/api/v1/roles", self._api_list), web.put("/api/v1/roles/{role}", self._api_put),
                web.get("/api/v1/payments/{payment_id}", self._api_payment),
                web.post("/api/v1/payments/{payment_id}/settle", self._api_settle)]

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {"roles": self.status}

    def listens(self) -> Sequence[Listener]:
        return [on(DEVICE_CHANGED, self._on_device_event), on(BUS_CONNECTED, self._republish_all)]

    def tables(self) -> Sequence[Tables]:
        return [TABLES]
    # --- lifecycle -------------------------------------------------------------------------

    async def __aenter__(self) -> Roles:
        await self.journal.ensure(TABLES)
        bindings = {r.name: (r.devices, r.failback_after_s, "config") for r in self.config.roles}
        bindings.update(await self.journal.read(_saved_bindings))
        for name, (devices, failback, source) in sorted(bindings.items()):
            self._seat(name, devices, failback, source)
        await self.printqueue.load()
        await self.payments.load()
        await self.payments.tenders.__aenter__()
        for role in [r for r, q in self.printqueue.queues.items() if q]:
            self.ensure_role(role)  # jobs for a role no longer bound still wait, visibly
        if self.registry is not None:
            now = self.clock()
            for seat in self.seats.values():
                for device in seat.devices:
                    if usable(self.registry.get(device), seat.kind):
                        self.healthy_since.setdefault(device, now)
        self.evaluate()
        self._main = asyncio.create_task(self._run(), name="roles")
        await self._started.wait()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(self._main)
        await self.payments.tenders.__aexit__(None, None, None)

    async def _run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            self._tg = tg
            tg.create_task(self._tick(), name="roles-tick")
            tg.create_task(self._publisher(), name="roles-publish")
            tg.create_task(self.payments.settler(), name="roles-settle")
            for seat in self.seats.values():
                self._start_worker(seat)
            self._started.set()

    def _start_worker(self, seat: RoleSeat) -> None:
        if seat.kind == "printer" and self._tg is not None and seat.name not in self._workers:
            self._workers[seat.name] = self._tg.create_task(
                self.printqueue.run_role(seat.name), name=f"print-{seat.name}"
            )

    def _seat(self, name: str, devices: tuple[str, ...], failback: float, source: str) -> RoleSeat:
        seat = self.seats.get(name)
        if seat is None:
            seat = self.seats[name] = RoleSeat(
                name, role_kind(name), devices, failback, source, since=self.clock()
            )
            self._changed[name] = asyncio.Event()
        else:
            seat.devices, seat.failback_after_s, seat.source = devices, failback, source
        self._moved.set()  # a new or rebound role: the tick looks again at once
        self._dirty.add(name)
        return seat

    def ensure_role(self, name: str) -> RoleSeat:
        """The role's seat; one nobody bound yet is created empty (down: nothing bound), so its
        jobs wait durably until an installer binds a device. Raises PayloadError for a bad name."""
        seat = self.seats.get(name)
        if seat is not None:
            return seat
        if problem := role_name_problem(name):
            raise PayloadError("role", problem)
        seat = self._seat(name, (), 30.0, "none")
        self._start_worker(seat)
        self.evaluate(name)
        return seat

    # --- the failover rule applied -----------------------------------------------------------

    def _on_device_event(self, event: DeviceEvent) -> None:
        """Registry listener (synchronous, on the event loop): track health, re-decide at once."""
        entry = event.entry
        device = entry.info.device_id
        if entry.present and entry.health.usable:
            self.healthy_since.setdefault(device, self.clock())
        else:
            self.healthy_since.pop(device, None)
        self.evaluate()
        self.payments.device_changed(device)

    def evaluate(self, only: str | None = None, because: str = "") -> None:
        """Apply the failover rule to every role (or one); publishing happens in the background.
        ``because``: what made a device serve, when it is not the rule (an installer's rebind is
        neither a failover nor a failback, and the audit must not call it one)."""
        now = self.clock()
        held = self.payments.held()
        for seat in self.seats.values():
            if only is not None and seat.name != only:
                continue
            entries = {d: self.registry.get(d) for d in seat.devices} if self.registry else {}
            if self.registry is None:
                chosen, reason = None, f"{seat.name}: no device registry"
            else:
                chosen, reason = choose_serving(seat, entries, self.healthy_since, now, held)
            if chosen == seat.serving:
                if chosen is None and reason != seat.reason:
                    seat.reason = reason  # still down, for another reason: say so, no new alarm
                    self.mark_dirty(seat.name)
                continue
            previous, seat.serving, seat.since = seat.serving, chosen, now
            seat.reason = reason = because if because and chosen is not None else reason
            if chosen is None:
                log.warning("role %s is down: %s", seat.name, reason)
            else:
                log.info("role %s served by %s%s", seat.name, chosen, f" ({reason})" if reason else "")
            self._audit.append(
                (seat.name, {"event": "serving", "previous": previous, "device": chosen, "reason": reason})
            )
            self._dirty.add(seat.name)
            self._changed[seat.name].set()
            self._wake.set()
            self._moved.set()

    async def _tick(self) -> None:
        # Failback (and a first check's grace) waits for time to pass, not for an event: look
        # again a few times a second while a role is off its primary or unserved. With every
        # role on its primary only an event can move one, and events evaluate at once: then
        # the tick slows to QUIET_TICK_S (an idle box's wakeups), until a role moves.
        while True:
            self._moved.clear()
            period = self.tick_s if self._time_may_decide() else max(self.tick_s, QUIET_TICK_S)
            await wait_to_tick(self._moved, period)  # on the grid: with the other periodic wakeups
            self.evaluate()

    def _time_may_decide(self) -> bool:
        """Whether time passing alone may change a role's serving device: a failback (a role
        served by a spare) or a first check's grace (a role with devices that nobody serves)."""
        return any(seat.devices and seat.serving != seat.devices[0] for seat in self.seats.values())

    # --- what workers call ---------------------------------------------------------------------

    def serving(self, role: str) -> str | None:
        seat = self.seats.get(role)
        return seat.serving if seat else None

    async def acquire(self, role: str) -> str:
        """Wait for a device to serve ``role``; it stays serving (no failback) until release."""
        seat = self.seats[role]
        while seat.serving is None:
            self._changed[role].clear()
            await self._changed[role].wait()
        seat.busy += 1
        return seat.serving

    def try_acquire(self, role: str) -> str | None:
        seat = self.seats.get(role)
        if seat is None or seat.serving is None:
            return None
        seat.busy += 1
        return seat.serving

    def release(self, role: str) -> None:
        seat = self.seats[role]
        seat.busy = max(0, seat.busy - 1)
        if seat.busy == 0:
            self.evaluate(role)

    def device(self, device_id: str) -> DeviceEntry | None:
        return self.registry.get(device_id) if self.registry is not None else None

    async def open_driver(self, device_id: str) -> Driver:
        if self.registry is None:
            raise DeviceUnavailable("no device registry", device_id)
        async with asyncio.timeout(OPEN_DRIVER_TIMEOUT_S):
            return await self.registry.open_driver(device_id)

    async def device_failed(self, device_id: str, reason: str) -> None:
        """A job or payment found the device failing: tell the registry, so every role and the
        dashboard see it now rather than at the watchdog's next probe."""
        self.healthy_since.pop(device_id, None)
        if self.registry is not None:
            try:
                await self.registry.set_health(device_id, Health("failed", reason))
            except EdgehubError as exc:
                log.warning("could not mark %s failed: %s", device_id, exc)
        self.evaluate()

    def mark_dirty(self, role: str) -> None:
        self._dirty.add(role)
        self._wake.set()

    # --- publishing and audit ----------------------------------------------------------------

    async def _publisher(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            audit, self._audit = self._audit, []
            if audit:
                await self._write_audit(audit)
            dirty, self._dirty = self._dirty, set()
            for role in sorted(dirty):
                if not await self._publish_role(role):
                    self._dirty.add(role)  # sent again on the next change or reconnect

    async def _write_audit(self, rows: list[tuple[str, dict[str, Any]]]) -> None:
        at = self.wall()

        def insert(conn: sqlite3.Connection) -> None:
            for role, detail in rows:
                add_to_outbox(
                    conn,
                    "audit",
                    f"role:{uuid.uuid4()}",
                    {
                        "schema": "cloud-role-change/1",
                        "store_id": self.config.store.id,
                        "role": role,
                        "at": at,
                        **detail,
                    },
                )

        try:
            await self.journal.write(insert)
        except EdgehubError as exc:
            log.error("role changes not kept for the cloud: %s", exc)

    async def _publish_role(self, role: str) -> bool:
        seat = self.seats.get(role)
        if seat is None:
            return True  # a till's payment point with nothing bound (cash, QR): no role state
        at = self.wall()
        try:
            await self.bus.publish(
                self.topics.role_binding(role),
                payloads.role_binding(role, list(seat.devices), seat.failback_after_s, seat.source, at),
                retain=True,
            )
            await self.bus.publish(
                self.topics.role_state(role),
                payloads.role_state(role, seat.kind, seat.serving, seat.reason, self.waiting(role), at),
                retain=True,
            )
        except (BrokerError, TimeoutError):
            return False
        return True

    def _republish_all(self, _: None = None) -> None:
        self._dirty.update(self.seats)
        self._wake.set()

    def waiting(self, role: str) -> int:
        return self.printqueue.waiting(role) + self.payments.waiting(role)

    async def reply(self, reply: Reply, body: bytes) -> None:
        """Answer a request. Never raises: what the answer reports (a job printed, a payment
        approved) is already in the journal, and a re-sent request gets it as a duplicate; an
        answer that cannot be sent must never make the caller do the work again."""
        if reply.topic is None:
            return
        try:
            await self.bus.publish(reply.topic, body, qos=1, properties=reply.properties())
        except (BrokerError, TimeoutError) as exc:
            log.info("reply on %r not sent: %s", reply.topic, exc)
        except Exception:
            log.exception("reply on %r not sent", reply.topic)

    # --- MQTT ----------------------------------------------------------------------------------

    async def handle_command(self, message: Message) -> None:
        topic = message.topic
        parsed = self.topics.role_command_of(topic)
        raw = message.payload
        if parsed is None:
            return
        role, command, terminal_id = parsed
        terminal = self.config.terminal(terminal_id) if terminal_id is not None else None
        if terminal is None:
            # Nobody to answer: the broker lets a terminal publish only under its own id.
            nobody = (f"unknown terminal {terminal_id!r}" if terminal_id is not None else
                      f"a role command names its terminal: …/role/{role}/cmd/{command}/{{terminal}}")
            log.info("role command on %r refused: %s", topic, nobody)
            await self.journal.add_deadletter(topic, nobody, raw)
            return
        requester = Requester.of(message, terminal.id, self.topics)
        seat = self.seats.get(role)
        handlers = {
            "print": ("printer", self.printqueue.handle),
            "pay": ("pinpad", self.payments.handle_pay),
            "settle": ("pinpad", self.payments.handle_settle),
        }
        kind, handler = handlers.get(command, (None, None))
        # A till's payment point needs no pinpad bound for cash and QR codes.
        unbound_ok = seat is None and kind == "pinpad" and handler is not None and self._unbound_ok(role, command, raw)
        what: str | None = (
            f"unknown command {command!r}" if handler is None
            else requester.problem if requester.problem
            else f"no role {role!r} is bound" if seat is None and not unbound_ok
            else f"{role} is a {seat.kind} role" if seat is not None and seat.kind != kind
            else f"terminal {terminal.id} may not {command} on {role}"
            if command != "print" and not terminal.may_pay_on(role) else None
        )
        if what is not None or handler is None:
            log.info("role command on %r refused: %s", topic, what)
            await self.journal.add_deadletter(topic, what or "", raw)
            reply = requester.refusal(raw)
            error = {"schema": "error/1", "role": role, "error": what}
            if reply.request_id is not None:
                error["request_id"] = reply.request_id
            await self.reply(reply, payloads.dumps(error))
            return
        await handler(role, requester, message, raw)

    def _unbound_ok(self, role: str, command: str, raw: bytes | bytearray) -> bool:
        """A pay in cash or by QR code, or the settle of one, on a pinpad role with nothing bound."""
        if role_name_problem(role) is not None or role_kind(role) != "pinpad":
            return False
        if command == "settle":
            return any(p.role == role for p in self.payments.open.values())
        try:
            doc = json.loads(raw)
        except ValueError:
            return False
        return isinstance(doc, dict) and doc.get("tender") in ("qr", "cash")

    async def handle_device_event(self, message: Message) -> None:
        """A scan or weight from a device: republished on the role it serves (if any)."""
        event = message.topic.rpartition("/")[2]
        kind = EVENT_KINDS.get(event)
        raw = message.payload
        if kind is None:
            return
        try:
            doc = json.loads(raw)
        except ValueError:
            return
        device = doc.get("device_id") if isinstance(doc, dict) else None
        for seat in self.seats.values():
            if seat.kind == kind and seat.serving is not None and seat.serving == device:
                code = doc.get("code")
                if event == "scan" and isinstance(code, str):
                    waiters = [w for w in self._scan_waiters.pop(seat.name, []) if not w.done()]
                    for waiter in waiters:
                        waiter.set_result(code)
                    if waiters:
                        # A payment asked for this scan: the guest's code goes to it alone.
                        continue
                with contextlib.suppress(BrokerError, TimeoutError):
                    await self.bus.publish(
                        self.topics.role_event(seat.name, event), payloads.role_event(seat.name, doc)
                    )

    async def next_scan(self, role: str, timeout: float) -> str | None:
        """The next code the device serving scanner ``role`` scans, or None within ``timeout``."""
        waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._scan_waiters.setdefault(role, []).append(waiter)
        try:
            async with asyncio.timeout(timeout):
                return await waiter
        except TimeoutError:
            return None
        finally:
            waiters = self._scan_waiters.get(role, [])
            if waiter in waiters:
                waiters.remove(waiter)

    # --- API -----------------------------------------------------------------------------------

    async def _api_payment(self, request: web.Request) -> web.Response:
        """An installer looks at any terminal's payment (terminals see only their own)."""
        payment_id = request.match_info["payment_id"]
        if not payloads.REQUEST_ID_RE.match(payment_id):
            return _bad("payment_id", "must be 1-64 characters of letters, digits and . _ : -")
        found = await self.payments.lookup(payment_id)
        if found is None:
            return web.json_response({"error": f"no payment {payment_id}"}, status=404)
        return web.json_response(found)

    async def _api_settle(self, request: web.Request) -> web.Response:
        """An installer's decision on a payment whose outcome is unknown, whichever terminal
        started it (that terminal hears the result on its reply topic)."""
        payment_id = request.match_info["payment_id"]
        try:
            body = await request.json()
        except ValueError:
            return _bad("body", "is not JSON")
        if not isinstance(body, dict):
            return _bad("body", "must be an object with decision")
        doc = {"schema": payloads.SETTLE_SCHEMA, "payment_id": payment_id, **body}
        try:
            settle = payloads.parse_settle(payloads.dumps(doc), self.topics.root + "/pos/", self.config.limits)
        except PayloadError as exc:
            return _bad(exc.field, exc.message)
        found = await self.payments.lookup(payment_id)
        if found is None:
            return web.json_response({"error": f"no payment {payment_id}"}, status=404)
        who = f"installer {settle.operator or request.remote or 'api'}".strip()
        if not await self.payments.settle(found["role"], settle, Reply(None, None, None), who):
            return web.json_response({"error": f"payment is {found['state']}, only an unknown outcome can be settled",
                                      **found}, status=409)
        return web.json_response(await self.payments.lookup(payment_id))

    async def _api_list(self, request: web.Request) -> web.Response:
        return web.json_response({"roles": self.status_now()})

    async def _api_put(self, request: web.Request) -> web.Response:
        role = request.match_info["role"]
        try:
            body = await request.json()
        except ValueError:
            return _bad("body", "is not JSON")
        if problem := role_name_problem(role):
            return _bad("role", problem)
        if not isinstance(body, dict):
            return _bad("body", "must be an object with devices")
        unknown = set(body) - {"devices", "failback_after_s"}
        if unknown:
            return _bad(sorted(unknown)[0], "unknown key (known: devices, failback_after_s)")
        devices = body.get("devices")
        if not isinstance(devices, list):
            return _bad("devices", "must be a list of device ids, primary first")
        if problem := role_devices_problem(devices):
            return _bad("devices", problem)
        # A device not found yet may be bound (it is plugged in later); one the box knows as
        # another kind could never serve the role.
        kind = role_kind(role)
        for n, device in enumerate(devices):
            entry = self.registry.get(device) if self.registry is not None else None
            if entry is not None and entry.info.kind != kind:
                return _bad(f"devices[{n}]", f"{device} is a {entry.info.kind}, not a {kind}")
        seat = self.seats.get(role)
        failback = body.get("failback_after_s", seat.failback_after_s if seat else 30.0)
        if isinstance(failback, bool) or not isinstance(failback, int | float) or not 0 <= failback <= 86_400:
            return _bad("failback_after_s", "must be 0 to 86400 seconds")
        await self.rebind(role, tuple(devices), float(failback), who=request.remote or "api")
        return web.json_response(self._seat_status(self.seats[role]))

    async def rebind(self, role: str, devices: tuple[str, ...], failback: float, who: str) -> None:
        """Bind ``devices`` to ``role`` (journaled first, then applied and published)."""
        at = self.wall()
        previous = list(self.seats[role].devices) if role in self.seats else None

        def save(conn: sqlite3.Connection) -> None:
            conn.execute(
                "INSERT INTO role_bindings(role, devices, failback_after_s, updated_at, updated_by) "
                "VALUES (?,?,?,?,?) ON CONFLICT(role) DO UPDATE SET devices=excluded.devices, "
                "failback_after_s=excluded.failback_after_s, updated_at=excluded.updated_at, "
                "updated_by=excluded.updated_by",
                (role, json.dumps(devices), failback, at, who),
            )
            add_to_outbox(
                conn,
                "audit",
                f"role:{uuid.uuid4()}",
                {
                    "schema": "cloud-role-change/1",
                    "store_id": self.config.store.id,
                    "role": role,
                    "at": at,
                    "event": "binding",
                    "previous": previous,
                    "devices": list(devices),
                    "failback_after_s": failback,
                    "by": who,
                },
            )

        await self.journal.write(save)
        seat = self._seat(role, devices, failback, "api")
        log.info("role %s bound to %s by %s", role, ", ".join(devices) or "nothing", who)
        self._start_worker(seat)
        self.evaluate(role, because=f"bound to {', '.join(devices)} by {who}")
        self._wake.set()

    async def history(self) -> dict[str, Any]:
        """Who bound which devices to each role and when, and the role changes not yet sent to
        the cloud (the recent history while the WAN is down), for support bundles."""

        def read(conn: sqlite3.Connection) -> dict[str, Any]:
            bindings = [dict(zip(("role", "devices", "failback_after_s", "updated_at", "updated_by"), row, strict=True))
                        for row in conn.execute("SELECT role, devices, failback_after_s, updated_at, updated_by "
                                                "FROM role_bindings ORDER BY role")]
            changes: list[Any] = []
            for payload in waiting_payloads(conn, "role:", 500):
                try:
                    changes.append(json.loads(payload))
                except ValueError as exc:
                    changes.append({"unreadable": f"{exc}", "payload": payload[:200].decode("utf-8", "replace")})
            return {"bindings": bindings, "recent_changes": changes}

        result: dict[str, Any] = await self.journal.read(read)
        return result

    # --- status ---------------------------------------------------------------------------------

    def _seat_status(self, seat: RoleSeat) -> dict[str, Any]:
        return {
            "role": seat.name,
            "kind": seat.kind,
            "devices": list(seat.devices),
            "failback_after_s": seat.failback_after_s,
            "binding_source": seat.source,
            "state": "serving" if seat.serving else "down",
            "device": seat.serving,
            "reason": seat.reason,
            "waiting": self.waiting(seat.name),
            "for_s": round(self.clock() - seat.since, 1),
        }

    def status_now(self) -> list[dict[str, Any]]:
        return [self._seat_status(seat) for _, seat in sorted(self.seats.items())]

    async def status(self) -> dict[str, Any]:
        return {
            "roles": self.status_now(),
            "print": vars(self.printqueue.stats).copy(),
            "payments": {**vars(self.payments.stats), "open": self.payments.status(),
                         **await self.payments.tenders.status()},
        }


def _bad(field: str, message: str) -> web.Response:
    return web.json_response({"error": f"{field}: {message}"}, status=400)


def _saved_bindings(conn: sqlite3.Connection) -> dict[str, tuple[tuple[str, ...], float, str]]:
    rows = conn.execute("SELECT role, devices, failback_after_s FROM role_bindings").fetchall()
    return {role: (tuple(json.loads(devices)), float(failback), "api") for role, devices, failback in rows}


__all__ = ["Reply", "Requester", "Roles"]
