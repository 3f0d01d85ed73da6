"""The cloud's MQTT API in one place: every topic under ``cloud/{store}/…`` and every payload
shape the hub sends or accepts there, each with its schema version. Documented in docs/cloud.md.

Uplink messages are built by splicing the outbox row's JSON body into an envelope as bytes
(no re-encoding of a week of backlog), and their MQTT 5 user properties are packed once by
hand: paho's ``Properties`` object costs more per message than the rest of a publish.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from typing import Any

from edgehub.bus.payloads import ORDER_ID_RE, ORDER_SCHEMA, Order, Unaddressable, validate_order, with_encoded
from edgehub.config import LimitsConfig
from edgehub.errors import PayloadError
from edgehub.store.outbox import OutboxRow

ENVELOPE_SCHEMA = "cloud-envelope/1"
PING_SCHEMA = "cloud-ping/1"
RECONCILE_REQUEST_SCHEMA = "cloud-reconcile-request/1"
RECONCILE_RESPONSE_SCHEMA = "cloud-reconcile-response/1"
DOWNLINK_SCHEMA = "cloud-down/1"
DOWNLINK_KINDS = ("menu", "routing", "config")
ORDERS_KIND = "orders"  # down/orders: a stream of orders, not a versioned document
CLOUD_ORDER_SCHEMA = "cloud-down-order/1"
ORDER_STATE_SCHEMA = "cloud-order-state/1"
CHANNEL_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")

LANE_LIVE, LANE_REPLAY = "live", "replay"


@dataclass(frozen=True)
class CloudTopics:
    store_id: str
    client_id: str

    @property
    def root(self) -> str:
        return f"cloud/{self.store_id}"

    def up(self, stream: str) -> str:
        return f"{self.root}/up/{stream}"

    @property
    def all_up(self) -> str:
        return f"{self.root}/up/+"

    @property
    def ping(self) -> str:
        # The hub's own echo topic: a ping is a round trip through the cloud broker, nothing more.
        return f"{self.root}/hub/{self.client_id}/ping"

    def down(self, kind: str) -> str:
        return f"{self.root}/down/{kind}"

    @property
    def all_down(self) -> str:
        return f"{self.root}/down/+"

    @property
    def down_orders(self) -> str:
        """Orders placed online (delivery platforms, mini-program, the cloud's kiosks), one per
        message, QoS 1, not retained: the box takes each into its journal before its PUBACK."""
        return f"{self.root}/down/{ORDERS_KIND}"

    def kind_of(self, topic: str) -> str | None:
        prefix = f"{self.root}/down/"
        if not topic.startswith(prefix):
            return None
        kind = topic[len(prefix):]
        return kind if kind in DOWNLINK_KINDS else None

    @property
    def reconcile_request(self) -> str:
        return f"{self.root}/reconcile/request"

    @property
    def reconcile_response(self) -> str:
        return f"{self.root}/reconcile/response/{self.client_id}"


# --- MQTT 5 properties packed by hand --------------------------------------------------------------


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | 0x80 if n else byte)
        if not n:
            return bytes(out)


def _utf8(text: str) -> bytes:
    raw = text.encode()
    return len(raw).to_bytes(2, "big") + raw


class PackedProperties:
    """PUBLISH properties already encoded: what paho calls ``pack()`` on when it sends (and
    re-sends) a message. Only user properties (0x26), which is all an uplink message carries."""

    __slots__ = ("_packed", "pairs")

    def __init__(self, pairs: tuple[tuple[str, str], ...]) -> None:
        self.pairs = pairs
        body = b"".join(b"\x26" + _utf8(k) + _utf8(v) for k, v in pairs)
        self._packed = _varint(len(body)) + body

    def pack(self) -> bytes:
        return self._packed

    def __str__(self) -> str:  # paho logs properties at debug level
        return f"[UserProperty : {list(self.pairs)}]"


# --- payloads ----------------------------------------------------------------------------------------


def envelope(store_id: str, row: OutboxRow, epoch: int = 0) -> bytes:
    """The uplink message for one outbox row. Immutable: a re-send is byte-for-byte the same.
    ``epoch``: the takeover epoch the row was numbered in (0 on a box that is not one of a pair;
    docs/cloud.md), a fact of the row, so a re-send from the other box carries it unchanged."""
    head = json.dumps(
        {"schema": ENVELOPE_SCHEMA, "store_id": store_id, "stream": row.stream, "msg_id": row.msg_id,
         "seq": row.seq, "stream_seq": row.stream_seq, "epoch": epoch, "created_at": row.created_at},
        separators=(",", ":"), ensure_ascii=False,
    ).encode()
    return with_encoded(head, {"body": bytes(row.payload)})


def envelope_properties(row: OutboxRow, lane: str, epoch: int = 0) -> PackedProperties:
    return PackedProperties((("msg_id", row.msg_id), ("seq", str(row.seq)), ("stream", row.stream),
                             ("stream_seq", str(row.stream_seq)), ("epoch", str(epoch)), ("lane", lane)))


def ping(nonce: str) -> bytes:
    return json.dumps({"schema": PING_SCHEMA, "nonce": nonce, "at": time.time()}).encode()


def reconcile_request(store_id: str, request_id: str, streams: dict[str, dict[str, Any]]) -> bytes:
    return json.dumps({"schema": RECONCILE_REQUEST_SCHEMA, "store_id": store_id, "request_id": request_id,
                       "at": time.time(), "streams": streams}, separators=(",", ":")).encode()


@dataclass(frozen=True)
class CloudStreamView:
    count: int
    last_stream_seq: int


def parse_reconcile_response(raw: bytes) -> tuple[str, dict[str, CloudStreamView]]:
    """``(request_id, {stream: CloudStreamView})`` or PayloadError naming the field."""
    doc = _object(raw)
    if doc.get("schema") != RECONCILE_RESPONSE_SCHEMA:
        raise PayloadError("schema", f"must be {RECONCILE_RESPONSE_SCHEMA!r}, got {doc.get('schema')!r}")
    request_id = doc.get("request_id")
    if not isinstance(request_id, str):
        raise PayloadError("request_id", "must be a string")
    streams = doc.get("streams")
    if not isinstance(streams, dict):
        raise PayloadError("streams", "must be an object")
    out: dict[str, CloudStreamView] = {}
    for name, view in streams.items():
        if not isinstance(view, dict):
            raise PayloadError(f"streams.{name}", "must be an object")
        count, last = view.get("count"), view.get("last_stream_seq", 0)
        for key, value in (("count", count), ("last_stream_seq", last)):
            if isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise PayloadError(f"streams.{name}.{key}", f"must be an integer >= 0, got {json.dumps(value)}")
        out[name] = CloudStreamView(count=int(count), last_stream_seq=int(last))  # type: ignore[arg-type]
    return request_id, out


@dataclass(frozen=True)
class DownlinkDoc:
    """One version of a document the cloud pushed (menu, routing rules, config)."""

    kind: str
    version: int
    body: dict[str, Any]
    issued_at: float | None
    received_at: float


def parse_downlink(raw: bytes, kind: str, received_at: float) -> DownlinkDoc:
    doc = _object(raw)
    if doc.get("schema") != DOWNLINK_SCHEMA:
        raise PayloadError("schema", f"must be {DOWNLINK_SCHEMA!r}, got {doc.get('schema')!r}")
    if doc.get("kind", kind) != kind:
        raise PayloadError("kind", f"is {doc.get('kind')!r} but the topic says {kind!r}")
    version = doc.get("version")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PayloadError("version", f"must be an integer >= 1, got {json.dumps(version)}")
    body = doc.get("body")
    if not isinstance(body, dict):
        raise PayloadError("body", "must be an object")
    issued = doc.get("issued_at")
    if issued is not None and (isinstance(issued, bool) or not isinstance(issued, int | float)):
        raise PayloadError("issued_at", "must be a number (seconds since the epoch)")
    return DownlinkDoc(kind=kind, version=version, body=body, issued_at=issued, received_at=received_at)


def downlink_applied(store_id: str, doc: DownlinkDoc) -> dict[str, Any]:
    """The receipt the hub sends back (stream ``audit``) once a version is stored."""
    return {"schema": "cloud-down-applied/1", "store_id": store_id, "kind": doc.kind, "version": doc.version,
            "received_at": doc.received_at}


def _object(raw: bytes) -> dict[str, Any]:
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise PayloadError("payload", f"not JSON: {exc}") from None
    if not isinstance(doc, dict):
        raise PayloadError("payload", f"must be a JSON object, got {type(doc).__name__}")
    return doc


# --- orders placed online ------------------------------------------------------------------------


@dataclass(frozen=True)
class CloudOrder:
    """A ``cloud-down-order/1``: ``order`` is the order the kitchen gets (an ``order/1``, its
    terminal ``cloud:{channel}``)."""

    order: Order
    channel: str
    placed_at: float | None


def cloud_order_id(raw: bytes) -> str | None:
    """The ``order_id`` of a cloud order, when it has a usable one (to answer even a bad one)."""
    try:
        doc = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None
    order_id = doc.get("order_id") if isinstance(doc, dict) else None
    return order_id if isinstance(order_id, str) and ORDER_ID_RE.match(order_id) else None


def parse_cloud_order(raw: bytes, limits: LimitsConfig) -> CloudOrder:
    """Validate a ``cloud-down-order/1``. Raises Unaddressable (no usable ``order_id``: it cannot
    be answered) or PayloadError naming the field (``order.lines[0].qty: …``)."""
    if len(raw) > limits.max_order_bytes:
        order_id = cloud_order_id(raw)
        if order_id is None:
            raise Unaddressable(f"payload is {len(raw)} bytes, the limit is {limits.max_order_bytes}")
        raise PayloadError("payload", f"is {len(raw)} bytes, the limit is {limits.max_order_bytes}")
    try:
        doc = _object(raw)
    except PayloadError as exc:
        raise Unaddressable(str(exc)) from None
    order_id = doc.get("order_id")
    if not isinstance(order_id, str) or not ORDER_ID_RE.match(order_id):
        raise Unaddressable("order_id: must be 1-64 characters of letters, digits and . _ : -")
    if doc.get("schema") != CLOUD_ORDER_SCHEMA:
        raise PayloadError("schema", f"must be {CLOUD_ORDER_SCHEMA!r}, got {json.dumps(doc.get('schema'))}")
    channel = doc.get("channel")
    if not isinstance(channel, str) or not CHANNEL_RE.match(channel):
        raise PayloadError("channel", "must be 1-32 lowercase letters, digits, - or _ (meituan, eleme, miniprogram …)")
    placed = doc.get("placed_at")
    if placed is not None and (isinstance(placed, bool) or not isinstance(placed, int | float)):
        raise PayloadError("placed_at", "must be a number (seconds since the epoch)")
    pickup = doc.get("pickup_code")
    if pickup is not None and (not isinstance(pickup, str) or not 0 < len(pickup) <= 16):
        raise PayloadError("pickup_code", "must be a string of 1-16 characters")
    body = doc.get("order")
    if not isinstance(body, dict):
        raise PayloadError("order", "must be an object: the order/1 the kitchen gets")
    order_doc = {**body, "schema": ORDER_SCHEMA, "order_id": order_id, "channel": channel}
    if pickup is not None:
        order_doc["pickup_code"] = pickup
    # Printed where a till's table goes, so the pass knows whose bag it is.
    order_doc.setdefault("table", f"{channel} {pickup}" if pickup else channel)
    terminal = f"cloud:{channel}"
    try:
        order = validate_order(order_doc, order_id, terminal, len(raw), limits)
    except PayloadError as exc:
        raise PayloadError(f"order.{exc.field}", exc.message) from None
    return CloudOrder(order=order, channel=channel, placed_at=placed)


def order_state(store_id: str, order_id: str, channel: str, state: str, n: int, at: float,
                reason: str = "") -> dict[str, Any]:
    """``cloud-order-state/1``: where an online order is at the box (stream ``orders``, ``msg_id``
    ``order-state:{order_id}:{n}``, ``n`` counting its updates from 1)."""
    doc: dict[str, Any] = {"schema": ORDER_STATE_SCHEMA, "store_id": store_id, "order_id": order_id,
                           "channel": channel, "state": state, "update": n, "at": round(at, 3)}
    if reason:
        doc["reason"] = reason
    return doc
