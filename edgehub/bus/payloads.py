"""Every payload shape of the public MQTT API, with its schema version, in one place.

Incoming payloads are validated here and turned into plain data or a ``PayloadError`` that
names the field (``lines[2].qty: must be a positive integer, got 0``). Unknown extra fields are
kept, so newer terminals can add fields without older hubs rejecting them.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from edgehub.config import LimitsConfig
from edgehub.errors import PayloadError

ORDER_SCHEMA = "order/1"
ACK_SCHEMA = "ack/1"
STATE_SCHEMA = "state/1"
DEADLETTER_SCHEMA = "deadletter/1"

ORDER_ID_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
STATION_RE = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}$")


@dataclass(frozen=True)
class Order:
    order_id: str
    terminal: str
    doc: dict[str, Any]  # the validated payload as received (extra fields kept)

    @property
    def lines(self) -> list[dict[str, Any]]:
        lines: list[dict[str, Any]] = self.doc["lines"]
        return lines


class Unaddressable(Exception):
    """A payload without a usable order_id: it cannot be acked, so it is dead-lettered."""

    def __init__(self, reason: str) -> None:
        self.reason = reason
        super().__init__(reason)


def order_id_of(raw: bytes) -> tuple[dict[str, Any], str]:
    """Parse the JSON object and its order_id, or raise Unaddressable with the reason."""
    try:
        doc = json.loads(raw)
    except UnicodeDecodeError as exc:
        raise Unaddressable(f"payload is not UTF-8 text (byte {exc.start})") from None
    except json.JSONDecodeError as exc:
        raise Unaddressable(f"payload is not JSON: {exc.msg} at line {exc.lineno} column {exc.colno}") from None
    except RecursionError:
        raise Unaddressable("payload is not JSON: nested too deeply") from None
    if not isinstance(doc, dict):
        raise Unaddressable(f"payload must be a JSON object, got {type(doc).__name__}")
    order_id = doc.get("order_id")
    if order_id is None:
        raise Unaddressable("order_id: missing")
    if not isinstance(order_id, str) or not order_id.strip():
        raise Unaddressable("order_id: must be a non-empty string")
    if not ORDER_ID_RE.match(order_id):
        raise Unaddressable("order_id: must be 1-64 characters of letters, digits and . _ : -")
    return doc, order_id


def _text(value: Any, path: str, limits: LimitsConfig, required: bool = False) -> None:
    if value is None:
        if required:
            raise PayloadError(path, "missing")
        return
    if not isinstance(value, str):
        raise PayloadError(path, f"must be a string, got {type(value).__name__}")
    if required and not value.strip():
        raise PayloadError(path, "must not be empty")
    if len(value) > limits.max_text:
        raise PayloadError(path, f"is {len(value)} characters, the limit is {limits.max_text}")


def _positive_int(value: Any, path: str, limit: int, required: bool = True) -> None:
    if value is None and not required:
        return
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise PayloadError(path, f"must be a positive integer, got {json.dumps(value)}")
    if value > limit:
        raise PayloadError(path, f"is {value}, the limit is {limit}")


def parse_order(raw: bytes, terminal: str, limits: LimitsConfig) -> Order:
    """Validate an ``order/1`` payload. Raises Unaddressable or PayloadError."""
    doc, order_id = order_id_of(raw)
    return validate_order(doc, order_id, terminal, len(raw), limits)


def validate_order(doc: dict[str, Any], order_id: str, terminal: str, size: int, limits: LimitsConfig) -> Order:
    """Check an order whose order_id is known (so a failure can be acked ``rejected``)."""
    if size > limits.max_order_bytes:
        raise PayloadError("payload", f"is {size} bytes, the limit is {limits.max_order_bytes}")
    schema = doc.get("schema")
    if schema != ORDER_SCHEMA:
        raise PayloadError("schema", f"must be {ORDER_SCHEMA!r}, got {json.dumps(schema)}")
    lines = doc.get("lines")
    if lines is None:
        raise PayloadError("lines", "missing")
    if not isinstance(lines, list):
        raise PayloadError("lines", f"must be a list, got {type(lines).__name__}")
    if not lines:
        raise PayloadError("lines", "must have at least one line")
    if len(lines) > limits.max_lines:
        raise PayloadError("lines", f"has {len(lines)} lines, the limit is {limits.max_lines}")
    for i, line in enumerate(lines):
        path = f"lines[{i}]"
        if not isinstance(line, dict):
            raise PayloadError(path, f"must be an object, got {type(line).__name__}")
        _text(line.get("sku"), f"{path}.sku", limits, required=True)
        _text(line.get("name"), f"{path}.name", limits)
        _positive_int(line.get("qty"), f"{path}.qty", limits.max_qty)
        station = line.get("station")
        if station is not None and (not isinstance(station, str) or not STATION_RE.match(station)):
            raise PayloadError(f"{path}.station", "must be lowercase letters, digits, - or _ (max 32)")
        _text(line.get("note"), f"{path}.note", limits)
        _text(line.get("category"), f"{path}.category", limits)
        modifiers = line.get("modifiers")
        if modifiers is not None:
            if not isinstance(modifiers, list):
                raise PayloadError(f"{path}.modifiers", "must be a list of strings")
            if len(modifiers) > limits.max_lines:
                raise PayloadError(f"{path}.modifiers", f"has {len(modifiers)} entries, the limit is {limits.max_lines}")
            for j, modifier in enumerate(modifiers):
                _text(modifier, f"{path}.modifiers[{j}]", limits, required=True)
    _text(doc.get("table"), "table", limits)
    _text(doc.get("note"), "note", limits)
    _text(doc.get("course"), "course", limits)
    _positive_int(doc.get("covers"), "covers", limits.max_qty, required=False)
    if "rush" in doc and not isinstance(doc["rush"], bool):
        raise PayloadError("rush", "must be true or false")
    return Order(order_id=order_id, terminal=terminal, doc=doc)


def dumps(doc: dict[str, Any]) -> bytes:
    return json.dumps(doc, separators=(",", ":"), ensure_ascii=False).encode()


def ack(order_id: str, status: str, duplicate: bool = False, error: str = "") -> bytes:
    doc: dict[str, Any] = {"schema": ACK_SCHEMA, "order_id": order_id, "status": status, "duplicate": duplicate}
    if error:
        doc["error"] = error
    return dumps(doc)


def deadletter(topic: str, reason: str, raw: bytes, received_at: float) -> bytes:
    excerpt = raw[:256].decode("utf-8", errors="replace")
    return dumps({"schema": DEADLETTER_SCHEMA, "topic": topic, "reason": reason, "bytes": len(raw),
                  "excerpt": excerpt, "received_at": received_at})


def hub_state(state: str, version: str) -> bytes:
    return dumps({"schema": STATE_SCHEMA, "state": state, "version": version})
