"""The one way to be a part of the hub.

A component is built by its package's ``setup`` function from a ``Context`` (``context.py``: the
store's id and topics, the bus, the journal, the signals, the data directory, the clock), its
own config section and the few ports it needs from components built before it: never the ``Hub``. The
constructor does no I/O; ``async with`` starts it and it owns its tasks until it stops. It
declares, and the hub wires:

- ``mqtt_routes()``: the topic filters it handles, in the order they are matched;
- ``http_routes()``: its aiohttp route definitions (``web.get(...)``, ``web.static(...)``), and
  ``http_stopping()``: what to close when the site stops (long-lived connections: websockets);
- ``status_sections()``: its sections of ``/api/v1/status`` by name;
- ``listens()``: the signals (in-process events: an order accepted, a device changed …) it hears,
  attached while it runs;
- ``tables()``: the journal tables it owns, with their migrations and retention rules
  (``store/schema.py``); no other module reads or writes them with SQL.

``edgehub/hub.py`` is the list of components in their start order. ``Wiring`` does the wiring
for the hub and for tests that run a few components without one.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any, Generic, Protocol, TypeVar

from aiohttp import web

from edgehub.bus.connection import BatchHandler, Handler
from edgehub.store.schema import Tables

log = logging.getLogger("edgehub.hub")

T = TypeVar("T")

StatusReader = Callable[[], Awaitable[dict[str, Any]]]


@dataclass(frozen=True, eq=False)
class Signal(Generic[T]):
    """The name of an in-process event carrying a ``T``; declared by the module that emits it."""

    name: str

    def __repr__(self) -> str:
        return f"Signal({self.name!r})"


@dataclass(frozen=True)
class Listener:
    """A handler of one signal (made by ``on``, which checks that the two agree)."""

    signal: Signal[Any]
    handler: Callable[[Any], object]


def on(signal: Signal[T], handler: Callable[[T], object]) -> Listener:
    return Listener(signal, handler)


class Signals:
    """The hub's in-process events: handlers run at once, in the order they were attached, on the
    emitter's turn of the event loop. A handler that fails is logged; the others still run."""

    def __init__(self) -> None:
        # Tuples, replaced on change: a handler may attach or forget one while a signal is out.
        self._handlers: dict[Signal[Any], tuple[Callable[[Any], object], ...]] = {}

    def listen(self, signal: Signal[T], handler: Callable[[T], object]) -> None:
        self._handlers[signal] = (*self._handlers.get(signal, ()), handler)

    def forget(self, signal: Signal[T], handler: Callable[[T], object]) -> None:
        handlers = list(self._handlers.get(signal, ()))
        with contextlib.suppress(ValueError):
            handlers.remove(handler)
            self._handlers[signal] = tuple(handlers)

    def emit(self, signal: Signal[T], value: T) -> None:
        for handler in self._handlers.get(signal, ()):
            try:
                handler(value)
            except Exception:
                log.exception("%r: a listener (%r) failed", signal, handler)


# The hub's bus connected (again): retained state is published anew.
BUS_CONNECTED: Signal[None] = Signal("bus connected")


@dataclass(frozen=True)
class MqttRoute:
    """Messages on ``topic_filter`` go to ``handler`` one at a time."""

    topic_filter: str
    handler: Handler


@dataclass(frozen=True)
class MqttBatch:
    """The messages on ``topic_filter`` that came in one turn of the loop go to ``handler`` together."""

    topic_filter: str
    handler: BatchHandler


class Bus(Protocol):
    """What components send on the store's MQTT bus (the hub routes what arrives)."""

    async def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                      properties: Any = None) -> None: ...

    def publish_nowait(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False,
                       properties: Any = None) -> None: ...


class Router(Protocol):
    """Where the hub registers the declared MQTT routes (``BusConnection``), and hears it connect."""

    on_connect: list[Callable[[], Awaitable[None]]]

    def route(self, topic_filter: str, handler: Handler) -> None: ...

    def route_batch(self, topic_filter: str, handler: BatchHandler) -> None: ...


class Component:
    """Base of every component: declares nothing and does nothing until told otherwise."""

    name = ""

    def mqtt_routes(self) -> Sequence[MqttRoute | MqttBatch]:
        return ()

    def http_routes(self) -> Sequence[web.AbstractRouteDef]:
        return ()

    async def http_stopping(self) -> None:
        """The HTTP site is stopping (before this component does): close what holds it open."""

    def status_sections(self) -> Mapping[str, StatusReader]:
        return {}

    def listens(self) -> Sequence[Listener]:
        return ()

    def tables(self) -> Sequence[Tables]:
        """The journal tables it owns (made or migrated when the journal opens)."""
        return ()

    async def __aenter__(self) -> Any:
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                        tb: TracebackType | None) -> None:
        return None


def _add(app: web.Application, defs: list[web.AbstractRouteDef], component: Component) -> None:
    app.router.add_routes(defs)

    async def stopping(_: web.Application) -> None:
        await component.http_stopping()

    app.on_shutdown.append(stopping)


class HttpRoutes(Protocol):
    """Where the hub adds the declared HTTP routes (``ApiServer``)."""

    route_setups: list[Callable[[web.Application], None]]


@dataclass
class Wiring:
    """Registers what components declare: MQTT routes on the bus and HTTP routes on the API (both
    before they start), status sections, and each component's listeners while it runs."""

    router: Router | None
    http: HttpRoutes | None
    signals: Signals
    status: dict[str, StatusReader] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.router is not None:
            self.router.on_connect.append(self._connected)

    async def _connected(self) -> None:
        self.signals.emit(BUS_CONNECTED, None)

    def add(self, component: Component) -> None:
        if self.router is not None:
            for route in component.mqtt_routes():
                if isinstance(route, MqttBatch):
                    self.router.route_batch(route.topic_filter, route.handler)
                else:
                    self.router.route(route.topic_filter, route.handler)
        defs = list(component.http_routes())
        if defs and self.http is not None:
            self.http.route_setups.append(lambda app: _add(app, defs, component))
        for name, reader in component.status_sections().items():
            if name in self.status:
                raise ValueError(f"status section {name!r} is declared twice")
            self.status[name] = reader

    @contextlib.asynccontextmanager
    async def running(self, component: Component) -> AsyncIterator[Any]:
        """The component started; it hears its signals from just before it starts until just
        before it stops."""
        listeners = list(component.listens())
        for listener in listeners:
            self.signals.listen(listener.signal, listener.handler)
        try:
            async with component as started:
                try:
                    yield started
                finally:
                    self._deafen(listeners)
        finally:
            self._deafen(listeners)

    def _deafen(self, listeners: list[Listener]) -> None:
        for listener in listeners:
            self.signals.forget(listener.signal, listener.handler)
