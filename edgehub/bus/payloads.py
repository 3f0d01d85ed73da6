"""Every payload shape of the public MQTT API, with its schema version, in one place.

Incoming payloads are validated here and turned into plain data or a ``PayloadError`` that
names the field (``lines[2].qty: must be a positive integer, got 0``). Unknown extra fields are
kept, so newer terminals can add fields without older hubs rejecting them.

Orders, amends and cancels are read as strict JSON (``edgehub/bus/strictjson.py``: UTF-8 only,
no duplicate keys, no lone surrogates or NUL in any string, numbers a double holds, at most
``MAX_DEPTH`` levels deep), then each typed field of ``order/1`` is checked by the rule declared
for it in ``ORDER_FIELDS`` and ``LINE_FIELDS``: a new typed field is one more declaration there
(and in docs/asyncapi.yaml, which tests/test_asyncapi.py holds to these tables).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson

from drivers.escpos_render import Barcode, QrCode, TicketRenderError, check
from edgehub.bus import strictjson
from edgehub.config import LimitsConfig
from edgehub.errors import PayloadError

ORDER_SCHEMA = "order/1"
ACK_SCHEMA = "ack/1"
STATE_SCHEMA = "state/1"
DEADLETTER_SCHEMA = "deadletter/1"

# Matched whole (``\Z``: ``$`` lets a trailing newline through).
ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}\Z")
STATION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
# Levels of objects and arrays an order, amend or cancel may nest (an order's lines' modifiers
# are 4 deep). Deeper documents are refused: cloud consumers' parsers stop at 128 levels
# (serde_json) or fewer, and nothing of the contract needs more.
MAX_DEPTH = 32


ORDER_NO_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9-]{0,7}\Z")
ORDER_NO_CYCLE = 999  # the box's short order numbers run 1..999, then start again at 1


def order_no_of(doc: dict[str, Any], seq: int) -> str:
    """An order's short number, the one staff call and a customer display shows: the terminal's
    own ``order_no`` when it sends one (a till's check number, a pager's number), else the box's,
    1 to 999 in the order the store's orders were journaled (``orders.seq``), so two orders
    waiting at the pass at once never share one. Known at the ack, which carries it."""
    own = doc.get("order_no")
    if isinstance(own, str) and own:
        return own
    return str((seq - 1) % ORDER_NO_CYCLE + 1) if seq > 0 else ""


@dataclass(frozen=True)
class Order:
    order_id: str
    terminal: str
    doc: dict[str, Any]  # the validated payload as received (extra fields kept)
    seq: int = 0  # the journal's order sequence, once journaled (0 before)

    @property
    def lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.doc["lines"]
        return lines

    @property
    def order_no(self) -> str:
        return order_no_of(self.doc, self.seq)


class Unaddressable(Exception):
    """A payload without a usable order_id: it cannot be acked, so it is dead-lettered."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def order_id_of(raw: bytes) -> tuple[dict[str, Any], str]:
    """Parse the JSON object and its order_id, or raise Unaddressable with the reason. What else
    is wrong with the document (``strictjson.check``) is for the validation, which can then be
    answered under the order_id."""
    try:
        doc = strictjson.loads(raw, MAX_DEPTH)
    except strictjson.NotJson as exc:
        raise Unaddressable(exc.reason) from None
    if not isinstance(doc, dict):
        raise Unaddressable(f"payload must be a JSON object, got {_json_type(doc)}")
    if "order_id" in getattr(doc, "differing", ()):
        raise Unaddressable("order_id: appears more than once, with different values: no one id to answer under")
    order_id = doc.get("order_id")
    if order_id is None:
        raise Unaddressable("order_id: missing")
    if not isinstance(order_id, str) or not order_id.strip():
        raise Unaddressable("order_id: must be a non-empty string")
    if not ORDER_ID_RE.match(order_id):
        raise Unaddressable("order_id: must be 1-64 characters of letters, digits and . _ : -")
    return doc, order_id


def _json_type(value: Any) -> str:
    """The JSON name of a parsed value's type, for messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float | strictjson.BadNumber):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


# --- typed fields, declared -------------------------------------------------------------------


@dataclass(frozen=True)
class Field:
    """One typed field of a payload object: its name, whether it must be given, and the check of
    its value. An absent field and JSON null are the same: absent. Subclasses are the kinds."""

    name: str
    required: bool = False

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        raise NotImplementedError


@dataclass(frozen=True)
class Text(Field):
    """A string of at most ``limits.max_text`` characters (not blank when required), optionally
    matching ``pattern`` whole (``pattern_says`` is the rule in words)."""

    pattern: re.Pattern[str] | None = None
    pattern_says: str = ""

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        if not isinstance(value, str):
            raise PayloadError(path, f"must be a string, got {_json_type(value)}")
        if self.required and not value.strip():
            raise PayloadError(path, "must not be empty")
        if len(value) > limits.max_text:
            raise PayloadError(path, f"is {len(value)} characters, the limit is {limits.max_text}")
        if self.pattern is not None and not self.pattern.fullmatch(value):
            raise PayloadError(path, f"must be {self.pattern_says}, got {json.dumps(value)}")


@dataclass(frozen=True)
class Count(Field):
    """A positive integer up to ``limit(limits)``."""

    limit: Callable[[LimitsConfig], int] = lambda limits: limits.max_qty

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise PayloadError(path, f"must be a positive integer, got {json.dumps(value)}")
        if value > (limit := self.limit(limits)):
            raise PayloadError(path, f"is {value}, the limit is {limit}")


@dataclass(frozen=True)
class Cents(Field):
    """Money: an integer of minor units (fen, cents), 0 (or 1 without ``zero``) to MAX_AMOUNT_CENTS."""

    zero: bool = True

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        _amount(value, path, allow_zero=self.zero)


@dataclass(frozen=True)
class Flag(Field):
    """true or false."""

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        if not isinstance(value, bool):
            raise PayloadError(path, "must be true or false")


@dataclass(frozen=True)
class TextList(Field):
    """A list of at most ``limit(limits)`` non-empty strings."""

    limit: Callable[[LimitsConfig], int] = lambda limits: limits.max_lines

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        if not isinstance(value, list):
            raise PayloadError(path, "must be a list of strings")
        if len(value) > (limit := self.limit(limits)):
            raise PayloadError(path, f"has {len(value)} entries, the limit is {limit}")
        item = Text("", required=True)
        for j, entry in enumerate(value):
            if entry is None:
                raise PayloadError(f"{path}[{j}]", "missing")
            item.check(entry, f"{path}[{j}]", limits)


@dataclass(frozen=True)
class Objects(Field):
    """A list of objects, each with ``fields``: at least ``min_items``, at most ``limit(limits)``
    (``noun`` names one in messages: "must have at least one line")."""

    fields: tuple[Field, ...] = ()
    min_items: int = 0
    limit: Callable[[LimitsConfig], int] = lambda limits: limits.max_lines
    noun: str = "entry"

    def check(self, value: Any, path: str, limits: LimitsConfig) -> None:
        if not isinstance(value, list):
            raise PayloadError(path, f"must be a list, got {_json_type(value)}")
        if len(value) < self.min_items:
            raise PayloadError(path, f"must have at least {'one' if self.min_items == 1 else self.min_items} "
                                     f"{self.noun}")
        if len(value) > (limit := self.limit(limits)):
            raise PayloadError(path, f"has {len(value)} {self.noun}s, the limit is {limit}")
        for i, item in enumerate(value):
            if not isinstance(item, dict):
                raise PayloadError(f"{path}[{i}]", f"must be an object, got {_json_type(item)}")
            check_fields(item, self.fields, limits, f"{path}[{i}].")


def _text(value: Any, path: str, limits: LimitsConfig, required: bool = False) -> None:
    """A ``Text`` field's check for a value outside a declared table (print, pay, settle, cancel)."""
    if value is None:
        if required:
            raise PayloadError(path, "missing")
        return
    Text(path, required=required).check(value, path, limits)


def _positive_int(value: Any, path: str, limit: int, required: bool = True) -> None:
    """A ``Count`` field's check with a fixed limit, for a value outside a declared table."""
    if value is None and not required:
        return
    Count(path, limit=lambda _: limit).check(value, path, LimitsConfig())


def check_fields(doc: dict[str, Any], fields: tuple[Field, ...], limits: LimitsConfig, prefix: str = "") -> None:
    """Check each declared field of ``doc`` (fields not declared are kept, unchecked)."""
    for rule in fields:
        value = doc.get(rule.name)
        if value is None:
            if rule.required:
                raise PayloadError(prefix + rule.name, "missing")
            continue
        rule.check(value, prefix + rule.name, limits)


# order/1 (docs/asyncapi.yaml, messages Order and schemas OrderLine). ``schema`` and
# ``order_id`` are checked before these.
LINE_FIELDS: tuple[Field, ...] = (
    Text("sku", required=True),
    Text("name"),
    Count("qty", required=True),
    Text("station", pattern=STATION_RE, pattern_says="lowercase letters, digits, - or _ (max 32)"),
    Text("note"),
    Text("category"),
    TextList("modifiers"),
    Text("line_id"),
    Cents("price_cents"),
    Cents("discount_cents"),
)
DISCOUNT_FIELDS: tuple[Field, ...] = (
    Text("name", required=True),
    Cents("amount_cents", required=True, zero=False),
)
ORDER_FIELDS: tuple[Field, ...] = (
    Objects("lines", required=True, fields=LINE_FIELDS, min_items=1, noun="line"),
    Text("order_no", pattern=ORDER_NO_RE, pattern_says="1-8 letters, digits or - (the number staff call)"),
    Text("table"),
    Text("note"),
    Text("course"),
    Count("covers"),
    Flag("rush"),
    Text("currency", pattern=re.compile(r"[A-Z]{3}"), pattern_says="an ISO 4217 code like CNY"),
    Objects("discounts", fields=DISCOUNT_FIELDS, noun="discount"),
    Cents("total_cents"),
)


def check_document(doc: dict[str, Any], size: int, limits: LimitsConfig) -> None:
    """What every order, amend and cancel must be as a whole: within the size limit, and free of
    what ``strictjson.loads`` marked (duplicate keys, NUL and lone surrogates in any string or
    key, numbers out of range) and of nesting deeper than ``MAX_DEPTH``."""
    if size > limits.max_order_bytes:
        raise PayloadError("payload", f"is {size} bytes, the limit is {limits.max_order_bytes}")
    strictjson.check(doc, MAX_DEPTH)


def parse_order(raw: bytes, terminal: str, limits: LimitsConfig) -> Order:
    """Validate an ``order/1`` payload. Raises Unaddressable or PayloadError."""
    doc, order_id = order_id_of(raw)
    return validate_order(doc, order_id, terminal, len(raw), limits)


def validate_order(doc: dict[str, Any], order_id: str, terminal: str, size: int, limits: LimitsConfig) -> Order:
    """Check an order whose order_id is known (so a failure can be acked ``rejected``)."""
    check_document(doc, size, limits)
    schema = doc.get("schema")
    if schema != ORDER_SCHEMA:
        raise PayloadError("schema", f"must be {ORDER_SCHEMA!r}, got {json.dumps(schema)}")
    check_fields(doc, ORDER_FIELDS, limits)
    check_prices(doc, limits)  # what one field cannot say alone: all lines priced or none, sums
    return Order(order_id=order_id, terminal=terminal, doc=doc)


def _amount(value: Any, path: str, allow_zero: bool = True) -> int:
    low = 0 if allow_zero else 1
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= MAX_AMOUNT_CENTS:
        raise PayloadError(path, f"must be an integer of minor units (fen, cents) from {low} to "
                           f"{MAX_AMOUNT_CENTS}, got {json.dumps(value)}")
    return value


def check_prices(doc: dict[str, Any], limits: LimitsConfig) -> int | None:
    """The optional money of an ``order/1`` (all in integer minor units): ``lines[].price_cents``
    (unit price) and ``lines[].discount_cents``, ``discounts`` (``[{name, amount_cents}]``),
    ``total_cents`` and ``currency``. Lines are priced all or none; a total given with priced
    lines must add up. Returns the order's total (given or added up), or None when it has none."""
    lines = doc.get("lines") or []
    priced = [isinstance(line, dict) and "price_cents" in line for line in lines]
    if any(priced) and not all(priced):
        raise PayloadError(f"lines[{priced.index(False)}].price_cents",
                           "missing: an order's lines are priced all or none")
    subtotal = 0
    for i, line in enumerate(lines):
        if not isinstance(line, dict):
            continue
        if "discount_cents" in line and "price_cents" not in line:
            raise PayloadError(f"lines[{i}].discount_cents", "needs the line's price_cents")
        if "price_cents" in line:
            gross = _amount(line["price_cents"], f"lines[{i}].price_cents") * int(line.get("qty") or 1)
            off = _amount(line.get("discount_cents", 0), f"lines[{i}].discount_cents")
            if off > gross:
                raise PayloadError(f"lines[{i}].discount_cents", f"is {off}, more than the line's {gross}")
            subtotal += gross - off
    discounts = doc.get("discounts")
    off_total = 0
    if discounts is not None:
        if not isinstance(discounts, list) or len(discounts) > limits.max_lines:
            raise PayloadError("discounts", f"must be a list of at most {limits.max_lines} {{name, amount_cents}}")
        for i, entry in enumerate(discounts):
            if not isinstance(entry, dict):
                raise PayloadError(f"discounts[{i}]", "must be an object with name and amount_cents")
            _text(entry.get("name"), f"discounts[{i}].name", limits, required=True)
            off_total += _amount(entry.get("amount_cents"), f"discounts[{i}].amount_cents", allow_zero=False)
    currency = doc.get("currency")
    if currency is not None and (not isinstance(currency, str) or not re.fullmatch(r"[A-Z]{3}", currency)):
        raise PayloadError("currency", f"must be an ISO 4217 code like CNY, got {json.dumps(currency)}")
    total = doc.get("total_cents")
    if total is not None:
        _amount(total, "total_cents")
    if all(priced) and lines:
        if off_total > subtotal:
            raise PayloadError("discounts", f"take off {off_total}, more than the lines' {subtotal}")
        if total is not None and total != subtotal - off_total:
            raise PayloadError("total_cents", f"is {total}, but the lines come to {subtotal} and the "
                               f"discounts to {off_total}: {subtotal - off_total}")
        return subtotal - off_total
    if discounts is not None and total is None:
        raise PayloadError("discounts", "need priced lines or a total_cents")
    return int(total) if total is not None else None


def dumps(doc: dict[str, Any]) -> bytes:
    """Compact UTF-8 JSON. orjson (several times faster: a ticket is encoded for every screen
    event on the busiest path of the hub); the standard library for what orjson refuses (an
    integer beyond 64 bits, a key that is not a string), with the same meaning.

    orjson (3.12 on) returns its working buffer as the bytes object, at least 4 KiB whatever the
    length and never shrunk: a 400-byte ticket held 8 KiB, and the tickets, acks and events in
    flight at the rush held ~12 MB at once (bench/footprint.py, tracemalloc). Copied to its size
    here (~0.2 us), everything the hub keeps or queues is as big as its JSON."""
    try:
        return bytes(memoryview(orjson.dumps(doc)))
    except TypeError:
        return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def with_encoded(head: bytes, fields: dict[str, bytes]) -> bytes:
    """``head``, a JSON object as ``dumps`` encodes it, with ``fields`` added at its end, each
    value JSON already encoded: the same bytes as encoding the whole document, without encoding
    again what was (a ticket inside its event, an event or order inside its cloud envelope)."""
    parts = [head[:-1]]
    for key, raw in fields.items():
        parts += (b"," if len(parts) > 1 or len(head) > 2 else b"", b'"', key.encode(), b'":', raw)
    parts.append(b"}")
    return b"".join(parts)


def ack(order_id: str, status: str, duplicate: bool = False, error: str = "",
        retry_after_s: float | None = None, order_no: str = "") -> bytes:
    doc: dict[str, Any] = {"schema": ACK_SCHEMA, "order_id": order_id, "status": status, "duplicate": duplicate}
    if order_no:
        doc["order_no"] = order_no
    if error:
        doc["error"] = error
    if retry_after_s is not None:
        doc["retry_after_s"] = round(retry_after_s, 2)
    return dumps(doc)


def deadletter(topic: str, reason: str, raw: bytes, received_at: float) -> bytes:
    excerpt = raw[:256].decode("utf-8", errors="replace")
    return dumps({"schema": DEADLETTER_SCHEMA, "topic": topic, "reason": reason, "bytes": len(raw),
                  "excerpt": excerpt, "received_at": received_at})


def hub_state(state: str, version: str) -> bytes:
    return dumps({"schema": STATE_SCHEMA, "state": state, "version": version})


COPIES_SCHEMA = "hub-copies/1"
CLOUD_PAIR_SCHEMA = "cloud-pair/1"


def hub_copies(copies: int, box: str, standby: str, epoch: int, one_copy_since: float | None, reason: str,
               at: float) -> bytes:
    """``hub/$copies`` (retained): whether an acked order is on both boxes of a pair (2) or on
    the serving box only (1, with since when and why: what a till shows as "one copy since …")."""
    return dumps({"schema": COPIES_SCHEMA, "copies": copies, "box": box, "standby": standby or None,
                  "epoch": epoch, "one_copy_since": round(one_copy_since, 3) if one_copy_since else None,
                  "reason": reason, "at": round(at, 3)})


def cloud_pair_event(store_id: str, event: str, box: str, peer: str, epoch: int, at: float,
                     **detail: Any) -> dict[str, Any]:
    """The ``audit`` stream's row for a pair's change: ``takeover``, ``one-copy``, ``two-copies``,
    ``salvage``, ``peer-refused`` (docs/cloud.md)."""
    return {"schema": CLOUD_PAIR_SCHEMA, "store_id": store_id, "event": event, "box": box, "peer": peer or None,
            "epoch": epoch, "at": round(at, 3), **detail}


# --- devices ------------------------------------------------------------------------------------

DEVICE_DESCRIPTION_SCHEMA = "device/1"
DEVICE_STATE_SCHEMA = "device-state/1"
ALERT_SCHEMA = "alert/1"
SCAN_SCHEMA = "scan/1"
WEIGHT_SCHEMA = "weight/1"


def device_description(device_id: str, kind: str, transport: str, address: str, driver: str, model: str,
                       vendor: str, serial_number: str, present: bool) -> bytes:
    """Retained on ``…/dev/{id}/$description``."""
    return dumps({"schema": DEVICE_DESCRIPTION_SCHEMA, "device_id": device_id, "kind": kind,
                  "transport": transport, "address": address, "driver": driver, "model": model,
                  "vendor": vendor, "serial_number": serial_number, "present": present})


def device_state(device_id: str, state: str, reason: str, present: bool, since: float) -> bytes:
    """Retained on ``…/dev/{id}/$state``: ``state`` is ready, degraded, failed or unknown;
    a device that was unplugged is ``failed`` with ``present`` false. ``since`` is Unix time."""
    return dumps({"schema": DEVICE_STATE_SCHEMA, "device_id": device_id, "state": state, "reason": reason,
                  "present": present, "since": round(since, 3)})


def device_alert(device_id: str, kind: str, state: str, previous: str | None, reason: str, at: float) -> bytes:
    """QoS 1 on ``…/hub/alert`` when a device changes state (and kept for the cloud)."""
    return dumps({"schema": ALERT_SCHEMA, "source": "device", "device_id": device_id, "kind": kind,
                  "state": state, "previous": previous, "reason": reason, "at": round(at, 3)})


def scan(device_id: str, code: str, at: float) -> bytes:
    """QoS 1 on ``…/dev/{id}/evt/scan``: one barcode as the scanner sent it."""
    return dumps({"schema": SCAN_SCHEMA, "device_id": device_id, "code": code, "at": round(at, 3)})


def weight(device_id: str, grams: int | None, state: str, net: bool, at: float,
           unit: str = "kg", value: str = "") -> bytes:
    """QoS 1 on ``…/dev/{id}/evt/weight`` when the weight changes: ``state`` is the scale's
    (stable, zero, unstable, overload, negative); ``grams`` is None when it shows no number;
    ``sellable`` is true only for a stable reading with a number (legal-for-trade). ``unit`` is
    what the scale weighs in (kg, g, lb, jin) and ``value`` the number it showed, as text in that
    unit with its decimals (``"2.72"``; ``""`` without a number): grams are converted from it."""
    sellable = state in ("stable", "zero") and grams is not None
    return dumps({"schema": WEIGHT_SCHEMA, "device_id": device_id, "grams": grams, "state": state,
                  "net": net, "sellable": sellable, "unit": unit, "value": value, "at": round(at, 3)})


# --- kitchen: POS amend / cancel, station screens (kds) and the cloud's kitchen stream -----------

MENU_SCHEMA = "menu/1"


def menu(version: int, issued_at: float | None, received_at: float, body_json: bytes | None, *,
         size: int | None = None, http: str | None = None) -> bytes:
    """``menu/1``: the cloud's menu as the box holds it, ``menu`` being the document's body as the
    cloud sent it. Without ``body_json`` (a menu too large for the broker) it says the menu's
    ``bytes`` and where to fetch it over HTTP instead."""
    head = dumps({"schema": MENU_SCHEMA, "version": version, "issued_at": issued_at,
                  "received_at": round(received_at, 3),
                  **({"bytes": size, "http": http} if body_json is None else {})})
    return with_encoded(head, {"menu": body_json}) if body_json is not None else head


CHECK_EVENT_SCHEMA = "check-event/1"
CHECKS_SCHEMA = "checks/1"
CHECKS_REQUEST_SCHEMA = "checks-request/1"


def check_event(seq: int, event: str, check: dict[str, Any], at: float) -> bytes:
    """``check-event/1``: an open check as it stands after a change (``opened``, ``changed``,
    ``closed``), numbered store-wide by ``seq``."""
    return dumps({"schema": CHECK_EVENT_SCHEMA, "seq": seq, "event": event, "at": round(at, 3), "check": check})


def checks(seq: int, at: float, open_checks: list[dict[str, Any]] | None, error: str = "") -> bytes:
    """``checks/1``: the store's open checks as of event ``seq`` (or ``error``, nothing else)."""
    if error:
        return dumps({"schema": CHECKS_SCHEMA, "error": error})
    return dumps({"schema": CHECKS_SCHEMA, "seq": seq, "at": round(at, 3), "checks": open_checks or []})


def parse_checks_request(raw: bytes, limits: LimitsConfig) -> str | None:
    """A ``checks-request/1`` (an empty payload asks for every open check); returns its ``table``
    filter, if any."""
    if not raw.strip():
        return None
    doc = _object(raw)
    if doc.get("schema", CHECKS_REQUEST_SCHEMA) != CHECKS_REQUEST_SCHEMA:
        raise PayloadError("schema", f"must be {CHECKS_REQUEST_SCHEMA!r}, got {json.dumps(doc.get('schema'))}")
    _text(doc.get("table"), "table", limits)
    table = doc.get("table")
    return str(table) if table is not None else None


PRESENCE_SCHEMA = "presence/1"
PRESENCE_STATES = ("connected", "disconnected", "unknown")


def presence(doc: dict[str, Any]) -> bytes:
    """``presence/1``: whether a terminal is connected now (``state``), ``since`` when, from where."""
    return dumps({"schema": PRESENCE_SCHEMA, **doc})


def parse_presence(raw: bytes) -> dict[str, Any]:
    """A retained ``presence/1`` record, checked field by field (PayloadError names the field)."""
    doc = _object(raw)
    if doc.get("schema") != PRESENCE_SCHEMA:
        raise PayloadError("schema", f"must be {PRESENCE_SCHEMA!r}")
    if doc.get("state") not in PRESENCE_STATES:
        raise PayloadError("state", f"must be one of {', '.join(PRESENCE_STATES)}")
    since = doc.get("since")
    if since is not None and (isinstance(since, bool) or not isinstance(since, int | float)):
        raise PayloadError("since", "must be a number")
    clients = doc.get("clients", [])
    if not isinstance(clients, list) or not all(isinstance(c, str) for c in clients):
        raise PayloadError("clients", "must be a list of client ids")
    keepalive = doc.get("keepalive_s")
    if keepalive is not None and (isinstance(keepalive, bool) or not isinstance(keepalive, int)):
        raise PayloadError("keepalive_s", "must be an integer")
    return {"state": doc["state"], "since": since, "clients": clients, "keepalive_s": keepalive,
            **{k: str(doc.get(k) or "") for k in ("address", "protocol", "reason")}}


AMEND_SCHEMA = "amend/1"
CANCEL_SCHEMA = "cancel/1"
ORDER_CHANGE_SCHEMA = "order-change/1"
KDS_EVENT_SCHEMA = "kds-event/1"
KDS_SNAPSHOT_SCHEMA = "kds-snapshot/1"
KDS_SNAPSHOT_REQUEST_SCHEMA = "kds-snapshot-request/1"
KDS_COMMAND_SCHEMA = "kds-command/1"
KDS_REPLY_SCHEMA = "kds-reply/1"
KDS_ALERT_SCHEMA = "kds-alert/1"
KDS_LINK_SCHEMA = "kds-link/1"  # browser screens only: whether orders can reach the box now
CLOUD_ORDER_SCHEMA = "cloud-order/1"
CLOUD_KITCHEN_SCHEMA = "cloud-kitchen/1"

KDS_ACTIONS = ("start", "bump", "serve", "recall", "priority")
PRIORITY_MIN, PRIORITY_MAX = -9, 9
_AMEND_HEADER = ("table", "note", "course", "covers", "rush", "total_cents", "discounts", "currency")


@dataclass(frozen=True)
class Amend:
    """``amend/1``: the POS changed an accepted order. ``lines`` (when given) replaces the order's
    lines entirely, so a re-sent amend lands the same way; header fields change only if given."""

    order_id: str
    amend_id: str
    terminal: str
    doc: dict[str, Any]

    @property
    def lines(self) -> list[dict[str, Any]] | None:
        lines: list[dict[str, Any]] | None = self.doc.get("lines")
        return lines


@dataclass(frozen=True)
class Cancel:
    """``cancel/1``: the POS cancelled an accepted order; every ticket not yet served is voided."""

    order_id: str
    terminal: str
    reason: str
    doc: dict[str, Any]


@dataclass(frozen=True)
class KdsCommand:
    """``kds-command/1`` from a station screen. ``ticket_id`` may be left out of ``recall``
    (the station's last bumped ticket); ``priority`` is the new priority for ``priority``."""

    command_id: str
    action: str
    ticket_id: str | None
    priority: int | None


def _change_id(doc: dict[str, Any], key: str) -> str:
    value = doc.get(key)
    if value is None:
        raise PayloadError(key, "missing")
    if not isinstance(value, str) or not ORDER_ID_RE.match(value):
        raise PayloadError(key, "must be 1-64 characters of letters, digits and . _ : -")
    return value


def validate_amend(doc: dict[str, Any], order_id: str, terminal: str, size: int,
                   limits: LimitsConfig) -> Amend:
    """Check an ``amend/1`` whose order_id is known (so a failure can be acked ``rejected``).

    ``lines`` replaces the order's lines whole; ``add_lines`` adds lines to them (what a handheld
    sends for another round: additions from several terminals all land); ``check_version`` is the
    version of the check the change was made on (docs/front.md, the rule for conflicting changes)."""
    check_document(doc, size, limits)
    if doc.get("schema") != AMEND_SCHEMA:
        raise PayloadError("schema", f"must be {AMEND_SCHEMA!r}, got {json.dumps(doc.get('schema'))}")
    amend_id = _change_id(doc, "amend_id")
    if "lines" in doc and "add_lines" in doc:
        raise PayloadError("add_lines", "give lines (the whole new list) or add_lines (lines to add), not both")
    if not any(key in doc for key in ("lines", "add_lines", *_AMEND_HEADER)):
        raise PayloadError("lines", f"missing (an amend changes lines, adds add_lines or changes one of "
                           f"{', '.join(_AMEND_HEADER)})")
    check_version(doc)
    # The lines and header follow exactly the order's rules: check them as an order would be.
    probe = {key: doc[key] for key in ("lines", *_AMEND_HEADER) if key in doc}
    probe["schema"] = ORDER_SCHEMA
    if "add_lines" in doc:
        probe["lines"] = doc["add_lines"]
    probe.setdefault("lines", [{"sku": "-", "qty": 1}])
    try:
        validate_order(probe, order_id, terminal, size, limits)
    except PayloadError as exc:
        if "add_lines" in doc and exc.field.startswith("lines"):
            raise PayloadError("add_" + exc.field, exc.message) from None
        raise
    return Amend(order_id=order_id, amend_id=amend_id, terminal=terminal, doc=doc)


def check_version(doc: dict[str, Any]) -> int | None:
    """An amend's or cancel's ``check_version``: the version of the check it was made on, or None."""
    version = doc.get("check_version")
    if version is not None and (isinstance(version, bool) or not isinstance(version, int) or version < 1):
        raise PayloadError("check_version", f"must be a positive integer (the check's version the change was "
                           f"made on), got {json.dumps(version)}")
    return version


def apply_amend(order: dict[str, Any], amend: dict[str, Any]) -> dict[str, Any]:
    """The order as it stands after ``amend``: its lines replaced whole (``lines``) or added to
    (``add_lines``), each header field it names replaced (``null`` removes it). The one place
    that says what an amend does to an order: the kitchen, the open checks and the day's close
    all read it. New lines that are all priced drop a ``total_cents`` the amend does not restate:
    the lines add up to the new total themselves."""
    out = dict(order)
    if "lines" in amend:
        out["lines"] = list(amend["lines"])
    if "add_lines" in amend:
        out["lines"] = [*out.get("lines", ()), *amend["add_lines"]]
    if ("lines" in amend or "add_lines" in amend) and "total_cents" in out and "total_cents" not in amend \
            and all(isinstance(line, dict) and "price_cents" in line for line in out["lines"]):
        del out["total_cents"]  # priced lines add up to the new total themselves
    for key in _AMEND_HEADER:
        if key in amend:
            if amend[key] is None:
                out.pop(key, None)
            else:
                out[key] = amend[key]
    return out


def current_order(order: dict[str, Any], amends: list[dict[str, Any]]) -> tuple[dict[str, Any], int]:
    """The order after its amends, in the order they were applied, and its version (1 + amends)."""
    doc = order
    for amend in amends:
        doc = apply_amend(doc, amend)
    return doc, 1 + len(amends)


def validate_cancel(doc: dict[str, Any], order_id: str, terminal: str, size: int,
                    limits: LimitsConfig) -> Cancel:
    check_document(doc, size, limits)
    if doc.get("schema") != CANCEL_SCHEMA:
        raise PayloadError("schema", f"must be {CANCEL_SCHEMA!r}, got {json.dumps(doc.get('schema'))}")
    _text(doc.get("reason"), "reason", limits)
    check_version(doc)
    return Cancel(order_id=order_id, terminal=terminal, reason=str(doc.get("reason") or ""), doc=doc)


def parse_kds_command(raw: bytes) -> KdsCommand:
    """Validate a ``kds-command/1``. Raises PayloadError naming the field."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PayloadError("payload", "is not a JSON object") from None
    if not isinstance(doc, dict):
        raise PayloadError("payload", f"must be a JSON object, got {type(doc).__name__}")
    if doc.get("schema") != KDS_COMMAND_SCHEMA:
        raise PayloadError("schema", f"must be {KDS_COMMAND_SCHEMA!r}, got {json.dumps(doc.get('schema'))}")
    command_id = doc.get("command_id", "")
    if not isinstance(command_id, str) or len(command_id) > 64:
        raise PayloadError("command_id", "must be a string of at most 64 characters")
    action = doc.get("action")
    if action not in KDS_ACTIONS:
        raise PayloadError("action", f"must be one of {', '.join(KDS_ACTIONS)}, got {json.dumps(action)}")
    ticket_id = doc.get("ticket_id")
    if ticket_id is not None and (not isinstance(ticket_id, str) or not 0 < len(ticket_id) <= 160):
        raise PayloadError("ticket_id", "must be a ticket id string")
    if ticket_id is None and action != "recall":
        raise PayloadError("ticket_id", "missing")
    priority = doc.get("priority")
    if action == "priority":
        if isinstance(priority, bool) or not isinstance(priority, int) or not (
                PRIORITY_MIN <= priority <= PRIORITY_MAX):
            raise PayloadError("priority", f"must be an integer from {PRIORITY_MIN} to {PRIORITY_MAX}")
    return KdsCommand(command_id=command_id, action=action, ticket_id=ticket_id,
                      priority=priority if action == "priority" else None)


def change_ack(kind: str, order_id: str, change_id: str, status: str, duplicate: bool = False,
               error: str = "") -> bytes:
    """The ack of an amend or cancel: ``ack/1`` with ``kind`` (absent on order acks) and the
    amend_id, so a terminal never takes it for the ack of an order it is re-sending."""
    doc: dict[str, Any] = {"schema": ACK_SCHEMA, "kind": kind, "order_id": order_id, "status": status,
                           "duplicate": duplicate}
    if kind == "amend":
        doc["amend_id"] = change_id
    if error:
        doc["error"] = error
    return dumps(doc)


def order_change(kind: str, order_id: str, amend_id: str, by: str, owner: str, at: float,
                 doc: dict[str, Any]) -> bytes:
    """``order-change/1`` on ``…/pos/{owner}/notice``: another till (``by``) amended or
    cancelled the owner's order; ``change`` is the amend or cancel as it was applied."""
    out: dict[str, Any] = {"schema": ORDER_CHANGE_SCHEMA, "kind": kind, "order_id": order_id, "by": by,
                           "terminal": owner, "at": round(at, 3), "change": doc}
    if kind == "amend":
        out["amend_id"] = amend_id
    return dumps(out)


def kds_event(station: str, seq: int, event: str, ticket: dict[str, Any], at: float, source: str,
              detail: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ticket change at a station. ``ticket`` is the full ticket after the change, so a
    screen simply replaces its copy; ``seq`` grows by one per station (a gap means: ask for a
    snapshot)."""
    doc = _kds_event_head(station, seq, event, at, source)
    doc["ticket"] = ticket
    if detail:
        doc["detail"] = detail
    return doc


def kds_event_raw(station: str, seq: int, event: str, ticket_json: bytes, at: float, source: str,
                  detail: dict[str, Any] | None = None) -> bytes:
    """``dumps(kds_event(...))`` around a ticket already serialised (for the journal): the same
    bytes, without encoding the ticket twice on the busiest path of the kitchen."""
    fields = {"ticket": ticket_json}
    if detail:
        fields["detail"] = dumps(detail)
    return with_encoded(dumps(_kds_event_head(station, seq, event, at, source)), fields)


def _kds_event_head(station: str, seq: int, event: str, at: float, source: str) -> dict[str, Any]:
    return {"schema": KDS_EVENT_SCHEMA, "station": station, "seq": seq, "event": event, "at": round(at, 3),
            "source": source}


def kds_snapshot(station: str, seq: int, now: float, amber_after_s: float, red_after_s: float,
                 tickets: list[dict[str, Any]], recent: list[dict[str, Any]],
                 all_day: dict[str, int]) -> dict[str, Any]:
    """A station's full state as of event ``seq``: open tickets in screen order, the last bumped
    (newest first, for recall) and all-day counts per item over the open tickets."""
    return {"schema": KDS_SNAPSHOT_SCHEMA, "station": station, "seq": seq, "now": round(now, 3),
            "amber_after_s": amber_after_s, "red_after_s": red_after_s, "tickets": tickets,
            "recent": recent, "all_day": all_day}


def kds_link(broker_connected: bool, reason: str = "") -> dict[str, Any]:
    """What a browser screen is told about the hub's link to the store broker: while it is down
    no order reaches the kitchen, and a screen that said "live" would lie (docs/kitchen.md). Sent
    when the screen connects, at once when the link changes, and every few seconds as the box's
    heartbeat: a screen that hears nothing says it is offline."""
    doc: dict[str, Any] = {"schema": KDS_LINK_SCHEMA, "broker": "connected" if broker_connected else "down"}
    if reason:
        doc["reason"] = reason
    return doc


def kds_reply(command_id: str, ok: bool, error: str = "",
              ticket: dict[str, Any] | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"schema": KDS_REPLY_SCHEMA, "command_id": command_id, "ok": ok}
    if error:
        doc["error"] = error
    if ticket is not None:
        doc["ticket"] = ticket
    return doc


def kds_alert(station: str, ticket: dict[str, Any], age_s: float, at: float) -> dict[str, Any]:
    doc = {"schema": KDS_ALERT_SCHEMA, "station": station, "level": "red", "ticket_id": ticket["ticket_id"],
           "order_id": ticket["order_id"], "table": ticket.get("table"), "age_s": round(age_s, 1),
           "at": round(at, 3)}
    if ticket.get("order_no"):
        doc["order_no"] = ticket["order_no"]
    return doc


# --- kitchen screens over the box's websocket (/kds/{station}/ws, /pickup/ws) -------------------

KDS_SCREEN_SCHEMA = "kds-screen/1"


def kds_screen(station: str, terminal: str, stations: list[str] | None, known: list[str], scale: float,
               sound: bool, keys: dict[str, list[str]], heartbeat_s: float) -> dict[str, Any]:
    """A browser screen's first message: who it is logged in as, the stations it drives (None:
    every one), the box's stations, and its settings (type scale, sound, bump-bar keys)."""
    return {"schema": KDS_SCREEN_SCHEMA, "station": station, "terminal": terminal, "stations": stations,
            "known_stations": known, "scale": scale, "sound": sound, "keys": keys, "heartbeat_s": heartbeat_s}


# --- ready back to the front: order progress, the pickup board ---------------------------------

ORDER_READY_SCHEMA = "order-ready/1"
PICKUP_BOARD_SCHEMA = "pickup-board/1"


def order_ready(event: str, order: dict[str, Any], ticket: dict[str, Any], at: float) -> dict[str, Any]:
    """``order-ready/1``: what the front hears of an order's progress (edgehub/kitchen/progress.py):
    the event, the order's state and tickets after it, and the ticket whose change it was."""
    return {"schema": ORDER_READY_SCHEMA, "event": event, "at": round(at, 3), **order,
            "ticket": {"ticket_id": ticket["ticket_id"], "station": ticket["station"], "state": ticket["state"]}}


def pickup_board(at: float, preparing: list[dict[str, Any]], ready: list[dict[str, Any]],
                 preparing_total: int, ready_total: int) -> dict[str, Any]:
    """``pickup-board/1``: the orders in preparation (oldest first) and ready (newest first), as a
    screen at the pass shows them; the lists are cut at a screenful, the totals are not."""
    return {"schema": PICKUP_BOARD_SCHEMA, "at": round(at, 3), "preparing": preparing, "ready": ready,
            "preparing_total": preparing_total, "ready_total": ready_total}


def cloud_kitchen(store_id: str, event: dict[str, Any]) -> bytes:
    """The outbox row for one kitchen event or alert (stream ``kitchen``)."""
    return dumps({"schema": CLOUD_KITCHEN_SCHEMA, "store_id": store_id, "event": event})


def cloud_order(store_id: str, terminal: str, received_at: float, order_json: bytes) -> bytes:
    """The ``cloud-order/1`` row of an accepted order around its document already serialised
    (by ``dumps``, for the journal): the same bytes as ``dumps`` of the whole envelope."""
    head = dumps({"schema": CLOUD_ORDER_SCHEMA, "store_id": store_id, "terminal": terminal,
                  "received_at": received_at})
    return with_encoded(head, {"order": order_json})


def cloud_kitchen_raw(store_id: str, event_json: bytes) -> bytes:
    """``cloud_kitchen`` around an event already serialised (by ``dumps``) for its station topic:
    the same bytes as ``cloud_kitchen(store_id, json.loads(event_json))``, without encoding the
    ticket a second time on the busiest path of the kitchen."""
    return with_encoded(dumps({"schema": CLOUD_KITCHEN_SCHEMA, "store_id": store_id}), {"event": event_json})


# --- roles: print jobs, payments, bindings ------------------------------------------------------

ROLE_BINDING_SCHEMA = "role-binding/1"
ROLE_STATE_SCHEMA = "role-state/1"
PRINT_SCHEMA = "print/1"
PRINT_REPLY_SCHEMA = "print-reply/1"
PAY_SCHEMA = "pay/1"
SETTLE_SCHEMA = "settle/1"
PAY_REPLY_SCHEMA = "pay-reply/1"

REQUEST_ID_RE = ORDER_ID_RE  # job, payment, sale and request ids follow the order id rule
ROLE_NAME_RE = re.compile(r"^[a-z-]+(\.[a-z0-9][a-z0-9_-]{0,31})?$")
TICKET_BLOCKS = ("text", "rule", "feed", "barcode", "qr", "cut", "drawer")
TEXT_STYLES = ("bold", "underline", "double_width", "double_height")
SETTLE_DECISIONS = ("approved", "declined", "void")
MAX_TICKET_BLOCKS = 500
MAX_AMOUNT_CENTS = 99_999_999


@dataclass(frozen=True)
class Request:
    """What every role command carries besides its own fields: how to answer it.

    MQTT 5 clients give a response topic and correlation data; 3.1.1 clients put ``reply_to``
    (a topic under their own ``…/pos/{terminal}/`` tree) and ``request_id`` in the payload.
    """

    doc: dict[str, Any]
    request_id: str | None
    reply_to: str | None


@dataclass(frozen=True)
class PrintRequest:
    request: Request
    job_id: str | None  # the terminal's own id makes a re-send idempotent; else the hub makes one
    ticket: dict[str, Any]


TENDERS = ("card", "qr", "cash")


@dataclass(frozen=True)
class PayRequest:
    request: Request
    payment_id: str
    sale_id: str
    amount_cents: int
    currency: str
    tender: str = "card"
    auth_code: str | None = None  # qr: the guest's payment code as scanned (never journaled whole)
    scanner: str | None = None  # qr: a scanner role whose next scan is the code
    sale_total_cents: int | None = None  # the bill this payment is part of (split bills)
    tendered_cents: int | None = None  # cash: what the guest handed over (change = tendered - amount)
    drawer: str | None = None  # cash: the printer role whose drawer opens (default: payments.drawer_role)


@dataclass(frozen=True)
class SettleRequest:
    request: Request
    payment_id: str
    decision: str
    operator: str


def _object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        raise PayloadError("payload", "is not a JSON object in UTF-8") from None
    if not isinstance(doc, dict):
        raise PayloadError("payload", f"must be a JSON object, got {type(doc).__name__}")
    return doc


def _id(doc: dict[str, Any], key: str, required: bool) -> str | None:
    value = doc.get(key)
    if value is None and not required:
        return None
    if not isinstance(value, str) or not REQUEST_ID_RE.match(value):
        raise PayloadError(key, "must be 1-64 characters of letters, digits and . _ : -"
                           if value is not None else "missing")
    return value


def _request(raw: bytes, schema: str, reply_prefix: str) -> Request:
    doc = _object(raw)
    if doc.get("schema") != schema:
        raise PayloadError("schema", f"must be {schema!r}, got {json.dumps(doc.get('schema'))}")
    reply_to = doc.get("reply_to")
    if reply_to is not None and (problem := reply_topic_problem(reply_to, reply_prefix)):
        raise PayloadError("reply_to", problem)
    return Request(doc, _id(doc, "request_id", required=False), reply_to)


MAX_REPLY_TOPIC = 256


def reply_topic_problem(topic: Any, allowed_prefix: str) -> str | None:
    """What is wrong with a topic a client names for its answers (MQTT 5 response topic or
    ``reply_to``), or None. Only topics under the requester's own tree: a wildcard cannot be
    published to (the reply would fail, and a print job be retried), and a topic of another
    terminal or station would put the hub's answer where others trust what the hub says."""
    if not isinstance(topic, str):
        return f"must be a topic (a string), got {type(topic).__name__}"
    if any(c in topic for c in "+#\x00"):
        return f"{topic[:80]!r} must not contain the wildcards + or # nor NUL"
    if any(ord(c) < 32 or ord(c) == 127 for c in topic):
        return f"{topic[:80]!r} must not contain control characters"
    if len(topic) > MAX_REPLY_TOPIC:
        return f"is {len(topic)} characters, the limit is {MAX_REPLY_TOPIC}"
    if not topic.startswith(allowed_prefix) or topic == allowed_prefix or "//" in topic[len(allowed_prefix) - 1:]:
        return f"{topic[:80]!r} must be a topic under {allowed_prefix} (the requester's own tree)"
    return None


def reply_address(raw: bytes, reply_prefix: str) -> tuple[str | None, str | None]:
    """``(reply_to, request_id)`` of a request that is refused before it is parsed (a bad
    field, no such role), as far as they are usable: a 3.1.1 terminal that named where to
    answer is told why, as an MQTT 5 one is. Never raises."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None, None
    if not isinstance(doc, dict):
        return None, None
    reply_to = doc.get("reply_to")
    request_id = doc.get("request_id")
    return (reply_to if reply_topic_problem(reply_to, reply_prefix) is None else None,
            request_id if isinstance(request_id, str) and REQUEST_ID_RE.match(request_id) else None)


def _ticket(ticket: Any, limits: LimitsConfig) -> dict[str, Any]:
    """``{"lines": [...], "large_type": bool}``: each line a string or one block object."""
    if not isinstance(ticket, dict):
        raise PayloadError("ticket", "must be an object with lines")
    lines = ticket.get("lines")
    if not isinstance(lines, list) or not lines:
        raise PayloadError("ticket.lines", "must be a non-empty list")
    if len(lines) > MAX_TICKET_BLOCKS:
        raise PayloadError("ticket.lines", f"has {len(lines)} lines, the limit is {MAX_TICKET_BLOCKS}")
    for i, line in enumerate(lines):
        path = f"ticket.lines[{i}]"
        if isinstance(line, str):
            _text(line, path, limits)
            continue
        if not isinstance(line, dict):
            raise PayloadError(path, "must be a string or an object")
        kinds = [k for k in TICKET_BLOCKS if k in line]
        if len(kinds) != 1:
            raise PayloadError(path, f"must have exactly one of {', '.join(TICKET_BLOCKS)}")
        kind = kinds[0]
        value = line[kind]
        if kind in ("text", "barcode", "qr"):
            _text(value, f"{path}.{kind}", limits, required=kind != "text")
        elif kind == "rule" and not (isinstance(value, str) and len(value) == 1):
            raise PayloadError(f"{path}.rule", "must be one character")
        elif kind == "feed":
            _positive_int(value, f"{path}.feed", 20)
        elif kind in ("cut", "drawer") and not isinstance(value, bool):
            raise PayloadError(f"{path}.{kind}", "must be true or false")
        if "right" in line:  # a price or a time, flush right on the printer it is rendered for
            if kind != "text":
                raise PayloadError(f"{path}.right", "only a text line has a right part")
            _text(line["right"], f"{path}.right", limits, required=False)
        for style in TEXT_STYLES:
            if style in line and not isinstance(line[style], bool):
                raise PayloadError(f"{path}.{style}", "must be true or false")
        if "align" in line and line["align"] not in ("left", "center", "right"):
            raise PayloadError(f"{path}.align", "must be left, center or right")
        if kind == "barcode" and line.get("symbology", "CODE128") not in ("CODE128", "EAN13"):
            raise PayloadError(f"{path}.symbology", "must be CODE128 or EAN13")
        if kind in ("barcode", "qr"):
            # What the renderer would refuse at print time is refused now, before it is queued.
            try:
                check(Barcode(value, line.get("symbology", "CODE128")) if kind == "barcode" else QrCode(value))
            except TicketRenderError as exc:
                raise PayloadError(f"{path}.{kind}", str(exc)) from None
    if "large_type" in ticket and not isinstance(ticket["large_type"], bool):
        raise PayloadError("ticket.large_type", "must be true or false")
    return ticket


def parse_print(raw: bytes, limits: LimitsConfig, reply_prefix: str) -> PrintRequest:
    """A ``print/1`` request. Raises PayloadError naming the field."""
    if len(raw) > limits.max_order_bytes:
        raise PayloadError("payload", f"is {len(raw)} bytes, the limit is {limits.max_order_bytes}")
    request = _request(raw, PRINT_SCHEMA, reply_prefix)
    doc = request.doc
    return PrintRequest(request, _id(doc, "job_id", required=False), _ticket(doc.get("ticket"), limits))


def parse_pay(raw: bytes, reply_prefix: str, currencies: tuple[str, ...],
              tender_currency: str | None = None) -> PayRequest:
    """A ``pay/1`` request: ``payment_id`` (idempotent), ``sale_id``, ``amount_cents``, ``currency``,
    and the tender's own fields (``_tender_fields``). A card payment's currency is one of
    ``currencies``; cash and QR are in the store's currency (``tender_currency``)."""
    request = _request(raw, PAY_SCHEMA, reply_prefix)
    doc = request.doc
    payment_id = _id(doc, "payment_id", required=True)
    sale_id = _id(doc, "sale_id", required=True)
    _positive_int(doc.get("amount_cents"), "amount_cents", MAX_AMOUNT_CENTS)
    tender = doc.get("tender", "card")
    if tender not in TENDERS:
        raise PayloadError("tender", f"must be one of {', '.join(TENDERS)}, got {json.dumps(tender)}")
    allowed = currencies if tender == "card" or tender_currency is None else (tender_currency,)
    currency = doc.get("currency", allowed[0] if allowed else "EUR")
    if currency not in allowed:
        raise PayloadError("currency", f"must be one of {', '.join(allowed)} for tender {tender}, "
                           f"got {json.dumps(currency)}")
    assert payment_id is not None and sale_id is not None
    amount = int(doc["amount_cents"])
    return PayRequest(request, payment_id, sale_id, amount, str(currency), tender,
                      **_tender_fields(doc, tender, amount))


AUTH_CODE_RE = re.compile(r"^[0-9]{10,32}$")


def _tender_fields(doc: dict[str, Any], tender: str, amount: int) -> dict[str, Any]:
    """The fields of ``pay/1`` beyond a card payment's, checked in one place: ``auth_code`` or
    ``scanner`` (qr), ``tendered_cents`` and ``drawer`` (cash), ``sale_total_cents`` (any)."""
    fields: dict[str, Any] = {}
    total = doc.get("sale_total_cents")
    if total is not None:
        _positive_int(total, "sale_total_cents", MAX_AMOUNT_CENTS)
        if total < amount:
            raise PayloadError("sale_total_cents", f"is {total}, less than this payment's amount_cents {amount}")
        fields["sale_total_cents"] = int(total)
    code, scanner = doc.get("auth_code"), doc.get("scanner")
    if tender != "qr" and (code is not None or scanner is not None):
        raise PayloadError("auth_code" if code is not None else "scanner", "only a qr payment takes it")
    if tender == "qr":
        if (code is None) == (scanner is None):
            raise PayloadError("auth_code", "give the scanned payment code, or scanner (a scanner role "
                               "whose next scan is the code), not both")
        if code is not None:
            if not isinstance(code, str) or not AUTH_CODE_RE.match(code.strip()):
                raise PayloadError("auth_code", "must be the payment code's 10-32 digits as scanned")
            fields["auth_code"] = code.strip()
        else:
            if not isinstance(scanner, str) or not scanner.startswith("scanner") or not ROLE_NAME_RE.match(scanner):
                raise PayloadError("scanner", "must be a scanner role, e.g. scanner or scanner.till-1")
            fields["scanner"] = scanner
    tendered, drawer = doc.get("tendered_cents"), doc.get("drawer")
    if tender != "cash" and (tendered is not None or drawer is not None):
        raise PayloadError("tendered_cents" if tendered is not None else "drawer", "only a cash payment takes it")
    if tendered is not None:
        _positive_int(tendered, "tendered_cents", MAX_AMOUNT_CENTS)
        if tendered < amount:
            raise PayloadError("tendered_cents", f"is {tendered}, less than amount_cents {amount}: take the "
                               "cash handed over as amount_cents and the rest with another tender")
        fields["tendered_cents"] = int(tendered)
    if drawer is not None:
        if not isinstance(drawer, str) or not (drawer == "" or (drawer.startswith("receipt-printer")
                                                               and ROLE_NAME_RE.match(drawer))):
            raise PayloadError("drawer", "must be a receipt-printer role (receipt-printer.till-1) or \"\" for none")
        fields["drawer"] = drawer
    return fields


def parse_settle(raw: bytes, reply_prefix: str, limits: LimitsConfig) -> SettleRequest:
    """A ``settle/1`` request: an operator's decision on a payment whose outcome is unknown."""
    request = _request(raw, SETTLE_SCHEMA, reply_prefix)
    doc = request.doc
    payment_id = _id(doc, "payment_id", required=True)
    decision = doc.get("decision")
    if decision not in SETTLE_DECISIONS:
        raise PayloadError("decision",
                           f"must be one of {', '.join(SETTLE_DECISIONS)}, got {json.dumps(decision)}")
    operator = doc.get("operator")
    _text(operator, "operator", limits)
    if isinstance(operator, str) and any(ord(c) < 32 or ord(c) == 127 for c in operator):
        raise PayloadError("operator", "must not contain control characters (it goes into the log and the audit)")
    assert payment_id is not None
    return SettleRequest(request, payment_id, str(decision), str(doc.get("operator") or ""))


def role_binding(role: str, devices: list[str], failback_after_s: float, source: str, at: float) -> bytes:
    """Retained on ``…/role/{role}/$binding``; ``source`` is ``config`` or ``api``."""
    return dumps({"schema": ROLE_BINDING_SCHEMA, "role": role, "devices": devices,
                  "failback_after_s": failback_after_s, "source": source, "at": round(at, 3)})


def role_state(role: str, kind: str, device: str | None, reason: str, waiting: int, at: float) -> bytes:
    """Retained on ``…/role/{role}/$state``: ``state`` is ``serving`` (by ``device``) or ``down``."""
    return dumps({"schema": ROLE_STATE_SCHEMA, "role": role, "kind": kind,
                  "state": "serving" if device else "down", "device": device, "reason": reason,
                  "waiting": waiting, "at": round(at, 3)})


def print_reply(role: str, job_id: str, status: str, request_id: str | None = None, *,
                duplicate: bool = False, device: str | None = None, reprint: bool = False,
                warning: str = "", error: str = "") -> bytes:
    """``status``: ``queued`` (journaled, at once), then ``printed`` (confirmed), ``sent`` (sent in
    full to a printer that reports no status: unconfirmed) or ``failed`` (the ticket cannot
    print: dropped, see ``error``); or ``rejected`` (nothing was queued, see ``error``)."""
    doc: dict[str, Any] = {"schema": PRINT_REPLY_SCHEMA, "role": role, "job_id": job_id, "status": status,
                           "duplicate": duplicate}
    if request_id is not None:
        doc["request_id"] = request_id
    if device is not None:
        doc["device"] = device
    if status in ("printed", "sent"):
        doc["reprint"] = reprint
    if warning:
        doc["warning"] = warning
    if error:
        doc["error"] = error
    return dumps(doc)


PAY_STATUSES = ("scanning", "processing", "approved", "declined", "aborted", "unknown", "not_found", "void",
                "refused")


def pay_reply(role: str, payment_id: str, status: str, request_id: str | None = None, **fields: Any) -> bytes:
    """``status`` (one of ``PAY_STATUSES``): ``scanning`` (qr: waiting for the code on a scanner),
    ``processing`` (journaled, at once), then ``approved``, ``declined``, ``aborted``, ``unknown``
    (settle pending: the sale is locked), ``not_found`` (never charged), ``void``; or ``refused``
    (nothing was sent, see ``error``). ``fields``: sale_id, amount_cents, currency, device, tender,
    receipt_no, trace_no, masked_pan, reference, trade_no, buyer, tendered_cents, change_cents,
    drawer, sale, reason, error, duplicate, settled_by. Card data never appears beyond the masked
    PAN, a QR code never beyond its first two and last four digits."""
    doc: dict[str, Any] = {"schema": PAY_REPLY_SCHEMA, "role": role, "payment_id": payment_id,
                           "status": status}
    if request_id is not None:
        doc["request_id"] = request_id
    doc.update({k: v for k, v in fields.items() if v is not None and v != ""})
    return dumps(doc)


def role_event(role: str, device_event: dict[str, Any]) -> bytes:
    """A device's ``scan``/``weight`` event as the role publishes it: the same fields plus ``role``."""
    return dumps({**device_event, "role": role})
