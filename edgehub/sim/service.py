"""A lunch service at a Chinese restaurant, simulated: tills taking orders and cooks at the pass.

What ``make run`` (``edgehub run --sim-orders``) plays against the hub so that a newcomer sees the
whole store move without typing a second command. Everything goes over MQTT with each terminal's
own credentials, as docs/asyncapi.yaml describes it for terminals written by others:

- **Tills** (every ``[[terminal]]`` of kind ``pos``) take an order every few seconds between them
  (``every_s`` on average, at random like guests arrive): one to five dishes with Chinese names,
  modifiers (少辣 less spicy, 去冰 no ice …), a note now and then (花生过敏 peanut allergy), a rush
  order about one in twelve. About one order in six is amended a little later (a drink added, a
  portion changed; ``amend/1`` with ``line_id``s, the whole list of lines), about one in
  twenty-five cancelled (``cancel/1``). Each is re-sent with the same id until its ``ack/1``
  comes, as a real till does.
- **Cooks** (every ``kds`` terminal named ``kds-{station}``) watch their station's events,
  start a new ticket after a few seconds, bump it when "cooked" and mark it served a little
  later (``kds-command/1``), so tickets move across the kitchen screen instead of piling up.

``ServiceSim.counts`` keeps what was sent and acknowledged, for the one-line summaries.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import secrets
import time
from collections import Counter
from dataclasses import dataclass
from typing import Any

from edgehub.bus.session import MqttSession
from edgehub.bus.topics import Topics
from edgehub.config import Address, Config
from edgehub.errors import MqttError
from edgehub.tasks import cancel_and_wait

__all__ = ["MENU", "ServiceSim"]

log = logging.getLogger("edgehub.sim.service")


@dataclass(frozen=True)
class Dish:
    sku: str
    name: str
    station: str
    category: str
    modifiers: tuple[str, ...] = ()


_WOK = ("少辣 less spicy", "加辣 extra spicy", "不要葱 no spring onion", "不要香菜 no coriander", "少油 less oil")
_DRINK = ("少冰 less ice", "去冰 no ice", "半糖 half sugar", "热的 hot")
MENU: tuple[Dish, ...] = (
    Dish("WOK-01", "宫保鸡丁 Kung Pao chicken", "wok", "mains", _WOK),
    Dish("WOK-02", "鱼香肉丝 Yu-Shiang pork", "wok", "mains", _WOK),
    Dish("WOK-03", "麻婆豆腐 Mapo tofu", "wok", "mains", _WOK),
    Dish("WOK-04", "干炒牛河 Beef chow fun", "wok", "mains", ("少油 less oil", "加芽菜 extra bean sprouts")),
    Dish("WOK-05", "扬州炒饭 Yangzhou fried rice", "wok", "rice", ("不要葱 no spring onion", "加蛋 extra egg")),
    Dish("ROAST-01", "叉烧 Char siu", "roast", "roast", ("肥瘦各半 half fat", "多汁 extra sauce")),
    Dish("ROAST-02", "烧鸭 Roast duck", "roast", "roast", ("切块 chopped", "要腿 a leg piece")),
    Dish("ROAST-03", "白切鸡 White-cut chicken", "roast", "roast", ("姜葱酱 ginger-scallion sauce",)),
    Dish("DIM-01", "虾饺 Har gow", "steamer", "dim sum"),
    Dish("DIM-02", "烧卖 Siu mai", "steamer", "dim sum"),
    Dish("DIM-03", "小笼包 Xiao long bao", "steamer", "dim sum", ("多醋 extra vinegar",)),
    Dish("COLD-01", "拍黄瓜 Smashed cucumber", "cold", "starters", ("少蒜 less garlic",)),
    Dish("COLD-02", "口水鸡 Mouth-watering chicken", "cold", "starters", ("少辣 less spicy",)),
    Dish("BAR-01", "珍珠奶茶 Bubble tea", "bar", "drinks", _DRINK),
    Dish("BAR-02", "酸梅汤 Sour plum drink", "bar", "drinks", _DRINK),
    Dish("BAR-03", "青岛啤酒 Tsingtao beer", "bar", "drinks"),
)
LINE_NOTES = ("花生过敏 peanut allergy", "小孩吃 不要辣 for a child, not spicy", "分两盘 on two plates")
ORDER_NOTES = ("打包 takeaway", "生日 birthday table", "先上饮料 drinks first", "VIP 熟客 regular guest")
CANCEL_REASONS = ("客人走了 guest left", "点错了 ordered by mistake", "等太久 waited too long")

PAST = {"start": "started", "bump": "bumped", "serve": "served"}
RESEND_AFTER_S = 3.0  # an unacknowledged order, amend or cancel is sent again after this


def order_lines(rng: random.Random, n_lines: int) -> list[dict[str, Any]]:
    lines = []
    for i, dish in enumerate(rng.sample(MENU, n_lines)):
        line: dict[str, Any] = {"line_id": f"L{i + 1}", "sku": dish.sku, "name": dish.name,
                                "qty": rng.choice((1, 1, 1, 2, 2, 3)), "station": dish.station,
                                "category": dish.category}
        if dish.modifiers and rng.random() < 0.4:
            line["modifiers"] = rng.sample(dish.modifiers, 1 if rng.random() < 0.8 else min(2, len(dish.modifiers)))
        if rng.random() < 0.08:
            line["note"] = rng.choice(LINE_NOTES)
        lines.append(line)
    return lines


def make_order(rng: random.Random, order_id: str) -> dict[str, Any]:
    """An ``order/1`` as a till in a Chinese restaurant sends it."""
    doc: dict[str, Any] = {"schema": "order/1", "order_id": order_id,
                           "lines": order_lines(rng, rng.choice((1, 2, 2, 3, 3, 4, 5)))}
    if rng.random() < 0.85:
        doc["table"] = f"{rng.randint(1, 24)}"
        doc["covers"] = rng.randint(1, 6)
    if rng.random() < 1 / 12:
        doc["rush"] = True
    if rng.random() < 0.1:
        doc["note"] = rng.choice(ORDER_NOTES)
    return doc


def make_amend(rng: random.Random, order: dict[str, Any], amend_id: str) -> dict[str, Any]:
    """An ``amend/1``: the order's lines with a drink added or a portion changed."""
    lines = [dict(line) for line in order["lines"]]
    if rng.random() < 0.5 or len(lines) == 1:
        taken = {line["sku"] for line in lines}
        dish = rng.choice([d for d in MENU if d.station == "bar" and d.sku not in taken] or list(MENU))
        lines.append({"line_id": f"L{len(lines) + 1}", "sku": dish.sku, "name": dish.name, "qty": 1,
                      "station": dish.station, "category": dish.category})
    else:
        line = rng.choice(lines)
        line["qty"] = line["qty"] + 1 if line["qty"] < 3 else 1
    return {"schema": "amend/1", "order_id": order["order_id"], "amend_id": amend_id, "lines": lines}


class _Terminal:
    """One terminal's MQTT connection, kept up: its own login, one subscription, every message's
    payload to ``_on_payload``; ``_connected`` and ``_lost`` around each connection."""

    subscription = ""

    def __init__(self, host: str, port: int, topics: Topics, terminal_id: str, password: str) -> None:
        self.host, self.port, self.topics = host, port, topics
        self.terminal_id, self.password = terminal_id, password

    async def run(self) -> None:
        while True:
            try:
                async with MqttSession(self.host, self.port, username=self.terminal_id, password=self.password,
                                       client_id=f"sim-{self.terminal_id}-{secrets.token_hex(3)}",
                                       keepalive_s=15) as client:
                    await client.subscribe(self.subscription, qos=1)
                    await self._connected(client)
                    try:
                        async for message in client.messages:
                            self._on_payload(client, message.payload)
                    finally:
                        await self._lost()
            except MqttError as exc:
                log.debug("%s: %s", self.terminal_id, exc)
            await asyncio.sleep(1.0)

    async def _connected(self, client: MqttSession) -> None:
        pass

    async def _lost(self) -> None:
        pass

    def _on_payload(self, client: MqttSession, raw: bytes) -> None:
        raise NotImplementedError


class Till(_Terminal):
    """One POS terminal: its own login, its own ack topic, re-sends until acknowledged."""

    def __init__(self, host: str, port: int, topics: Topics, terminal_id: str, password: str,
                 counts: Counter[str]) -> None:
        super().__init__(host, port, topics, terminal_id, password)
        self.subscription = topics.ack(terminal_id)
        self.counts = counts
        self._client: MqttSession | None = None
        self._resender: asyncio.Task[None] | None = None
        self.connected = asyncio.Event()
        # (kind, id) -> [topic, payload, last sent]
        self._pending: dict[tuple[str, str], list[Any]] = {}

    async def _connected(self, client: MqttSession) -> None:
        self._client = client
        self.connected.set()
        self._resender = asyncio.create_task(self._resend())

    async def _lost(self) -> None:
        self._client = None
        self.connected.clear()
        await cancel_and_wait(self._resender)

    def _on_payload(self, client: MqttSession, raw: bytes) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ack = json.loads(raw)
            kind = ack.get("kind", "order")
            key = (kind, ack["amend_id"] if kind == "amend" else ack["order_id"])
            if self._pending.pop(key, None) is not None:
                self.counts[f"{kind}s acked" if ack["status"] == "accepted" else f"{kind}s rejected"] += 1
                if ack["status"] != "accepted":
                    log.info("till %s: %s %s rejected: %s", self.terminal_id, kind, key[1], ack.get("error"))

    async def send(self, kind: str, key: str, topic: str, doc: dict[str, Any]) -> None:
        payload = json.dumps(doc, ensure_ascii=False).encode()
        self._pending[(kind, key)] = [topic, payload, time.monotonic()]
        self.counts[f"{kind}s sent"] += 1
        await self._publish(topic, payload)

    def acked(self, kind: str, key: str) -> bool:
        return (kind, key) not in self._pending

    async def _publish(self, topic: str, payload: bytes) -> None:
        client = self._client
        if client is not None:
            with contextlib.suppress(MqttError, TimeoutError):
                await client.publish(topic, payload, qos=1, timeout=5)

    async def _resend(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for entry in list(self._pending.values()):
                if now - entry[2] >= RESEND_AFTER_S:
                    entry[2] = now
                    await self._publish(entry[0], entry[1])


class Cook(_Terminal):
    """A station's cook, driving the station like a screen does (``kds-command/1``)."""

    def __init__(self, host: str, port: int, topics: Topics, station: str, terminal_id: str, password: str,
                 rng: random.Random, pace: float, counts: Counter[str]) -> None:
        super().__init__(host, port, topics, terminal_id, password)
        self.subscription = topics.kds_event(station)
        self.station = station
        self.rng, self.pace, self.counts = rng, pace, counts
        self._timers: dict[str, asyncio.Task[None]] = {}
        self._numbers = 0

    async def _lost(self) -> None:
        await cancel_and_wait(*self._timers.values())
        self._timers.clear()

    def _on_payload(self, client: MqttSession, raw: bytes) -> None:
        with contextlib.suppress(ValueError, KeyError, TypeError):
            ticket = json.loads(raw)["ticket"]
            ticket_id, state = str(ticket["ticket_id"]), str(ticket["state"])
            timer = self._timers.pop(ticket_id, None)
            if timer is not None:
                timer.cancel()
            # Work is scaled with the till's pace, so a fast demo cooks fast too.
            wait = {"new": (3, 10), "in_progress": (15, 45), "recalled": (5, 10), "ready": (10, 25)}.get(state)
            if wait is not None:
                action = {"new": "start", "ready": "serve"}.get(state, "bump")
                delay = self.rng.uniform(*wait) * self.pace
                self._timers[ticket_id] = asyncio.create_task(self._later(client, delay, action, ticket_id))

    async def _later(self, client: MqttSession, delay: float, action: str, ticket_id: str) -> None:
        await asyncio.sleep(delay)
        self._timers.pop(ticket_id, None)
        self._numbers += 1
        doc = {"schema": "kds-command/1", "command_id": f"cook-{self._numbers}", "action": action,
               "ticket_id": ticket_id}
        with contextlib.suppress(MqttError, TimeoutError):
            await client.publish(self.topics.kds_command(self.station), json.dumps(doc).encode(), qos=1, timeout=5)
            self.counts[f"tickets {PAST[action]}"] += 1


class ServiceSim:
    """``async with ServiceSim(config, every_s=6)``: the tills and cooks run until exit."""

    def __init__(self, config: Config, every_s: float = 6.0, seed: int | None = None,
                 broker: Address | None = None) -> None:
        self.config = config
        self.every_s = every_s
        self.rng = random.Random(seed)
        self.topics = Topics(config.store.id)
        self.counts: Counter[str] = Counter()
        address = broker or config.broker.terminal_address  # where terminals connect (the LAN listener)
        host, port = address.host, address.port
        self.tills = [Till(host, port, self.topics, t.id, t.password, self.counts)
                      for t in config.terminals if t.kind == "pos"]
        # Cooking takes a few seconds to a minute at 6 s between orders; proportionally less when faster.
        pace = min(1.0, every_s / 6.0)
        self.cooks = [Cook(host, port, self.topics, t.id.removeprefix("kds-"), t.id, t.password,
                           random.Random(self.rng.random()), pace, self.counts)
                      for t in config.terminals if t.kind == "kds" and t.id.startswith("kds-")]
        self.run_id = secrets.token_hex(2)
        self._tasks: list[asyncio.Task[None]] = []

    @property
    def stations(self) -> list[str]:
        """The stations a simulated cook works at."""
        return [cook.station for cook in self.cooks]

    async def __aenter__(self) -> ServiceSim:
        parts: list[_Terminal] = [*self.tills, *self.cooks]
        for part in parts:
            self._tasks.append(asyncio.create_task(part.run()))
        self._tasks.append(asyncio.create_task(self._service(), name="sim-service"))
        return self

    async def __aexit__(self, *exc: object) -> None:
        await cancel_and_wait(*self._tasks)

    def summary(self) -> str:
        c = self.counts
        parts = [f"{c['orders acked']} orders acked of {c['orders sent']} sent"]
        if c["amends sent"]:
            parts.append(f"{c['amends acked']} amends")
        if c["cancels sent"]:
            parts.append(f"{c['cancels acked']} cancels")
        if self.cooks:
            parts.append(f"{c['tickets bumped']} tickets bumped")
        return ", ".join(parts)

    async def _service(self) -> None:
        n = 0
        async with asyncio.TaskGroup() as follow_ups:
            while True:
                await asyncio.sleep(min(self.rng.expovariate(1 / self.every_s), 4 * self.every_s))
                till = self.rng.choice(self.tills)
                if not till.connected.is_set():
                    continue
                n += 1
                order = make_order(self.rng, f"{till.terminal_id}-{self.run_id}-{n:05d}")
                await till.send("order", order["order_id"], self.topics.order(till.terminal_id), order)
                roll = self.rng.random()
                if roll < 1 / 6:
                    follow_ups.create_task(self._amend_later(till, order))
                elif roll < 1 / 6 + 1 / 25:
                    follow_ups.create_task(self._cancel_later(till, order))

    async def _until_acked(self, till: Till, order_id: str) -> None:
        while not till.acked("order", order_id):  # noqa: ASYNC110 - the till's ack handler changes it
            await asyncio.sleep(0.5)

    async def _amend_later(self, till: Till, order: dict[str, Any]) -> None:
        await asyncio.sleep(self.rng.uniform(1.5, 6) * self.every_s)
        await self._until_acked(till, order["order_id"])
        amend = make_amend(self.rng, order, f"{order['order_id']}-a1")
        await till.send("amend", amend["amend_id"], self.topics.amend(till.terminal_id), amend)

    async def _cancel_later(self, till: Till, order: dict[str, Any]) -> None:
        await asyncio.sleep(self.rng.uniform(1, 4) * self.every_s)
        await self._until_acked(till, order["order_id"])
        cancel = {"schema": "cancel/1", "order_id": order["order_id"], "reason": self.rng.choice(CANCEL_REASONS)}
        await till.send("cancel", order["order_id"], self.topics.cancel(till.terminal_id), cancel)
