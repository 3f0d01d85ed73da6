"""docs/asyncapi.yaml is the MQTT contract terminal makers code against: its enums are the code's."""

from __future__ import annotations

from typing import Any, get_args

import yaml

from drivers.base import HealthState
from edgehub.bus.payloads import (
    MAX_AMOUNT_CENTS,
    MAX_DEPTH,
    ORDER_FIELDS,
    Cents,
    Count,
    Field,
    Flag,
    Objects,
    Text,
    TextList,
)
from edgehub.config import PUBLISH_HEADROOM, BrokerConfig, LimitsConfig
from edgehub.kitchen.tickets import EVENTS, STATES, TRANSITIONS
from tests.conftest import REPO

SPEC: dict[str, Any] = yaml.safe_load((REPO / "docs" / "asyncapi.yaml").read_text())


def enum(*path: str) -> set[str]:
    node: Any = SPEC["components"]
    for key in path:
        node = node[key]
    return set(node["enum"])


def test_ticket_states_and_events_are_the_kitchens() -> None:
    assert enum("schemas", "Ticket", "properties", "state") == set(STATES)
    # Besides the moves of a ticket: made, changed by an amend, re-ordered by a cook.
    events = {*EVENTS.values(), "created", "amended", "priority"}
    assert enum("messages", "KdsEvent", "payload", "properties", "event") == events
    screen_actions = set(TRANSITIONS) - {"void", "expire"} | {"priority"}  # void and expire are the hub's
    assert enum("messages", "KdsCommand", "payload", "properties", "action") == screen_actions


def test_device_states_are_the_drivers() -> None:
    assert enum("messages", "DeviceState", "payload", "properties", "state") == set(get_args(HealthState))


def test_weight_units_and_states_are_the_drivers() -> None:
    from drivers.scale_mt8217 import WeightState
    from drivers.scale_units import WEIGHT_UNITS

    assert enum("messages", "RoleEvent", "payload", "properties", "unit") == set(WEIGHT_UNITS)
    assert enum("messages", "RoleEvent", "payload", "properties", "state") == set(get_args(WeightState))


def test_payment_statuses_and_tenders_are_the_codes() -> None:
    from edgehub.bus.payloads import PAY_STATUSES, TENDERS
    from edgehub.roles.payments import FINAL

    assert enum("schemas", "PayReply", "properties", "status") == set(PAY_STATUSES)
    assert set(FINAL) <= set(PAY_STATUSES)
    assert enum("schemas", "PayRequest", "properties", "tender") == set(TENDERS)


def _resolve(node: dict[str, Any]) -> dict[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = SPEC
    for key in ref.removeprefix("#/").split("/"):
        target = target[key]
    resolved: dict[str, Any] = target
    return resolved


def _documents(prop: dict[str, Any], rule: Field, limits: LimitsConfig) -> list[str]:
    """How the documented property differs from the declared rule ([] when it says the same)."""
    prop = {**_resolve(prop), **{k: v for k, v in prop.items() if k != "$ref"}}
    expected: dict[str, Any]
    if isinstance(rule, Text):
        expected = {"type": "string"}
        if rule.required:
            expected["minLength"] = 1
        if rule.pattern is not None:
            # Matched whole: JSON Schema's (ECMA) ^...$ is Python's fullmatch (\Z: no newline before it).
            expected["pattern"] = "^" + rule.pattern.pattern.removeprefix("^").removesuffix("\\Z") + "$"
        else:
            expected["maxLength"] = limits.max_text
    elif isinstance(rule, Count):
        expected = {"type": "integer", "minimum": 1, "maximum": rule.limit(limits)}
    elif isinstance(rule, Cents):
        expected = {"type": "integer", "minimum": 0 if rule.zero else 1, "maximum": MAX_AMOUNT_CENTS}
    elif isinstance(rule, Flag):
        expected = {"type": "boolean"}
    elif isinstance(rule, TextList):
        expected = {"type": "array", "maxItems": rule.limit(limits),
                    "items": {"type": "string", "minLength": 1, "maxLength": limits.max_text}}
    elif isinstance(rule, Objects):
        expected = {"type": "array", "maxItems": rule.limit(limits)}
        if rule.min_items:
            expected["minItems"] = rule.min_items
    else:
        return [f"{rule.name}: a kind of field this test does not know ({type(rule).__name__})"]
    differences = []
    for key, value in expected.items():
        got = prop.get(key)
        if key == "items":
            got = {k: v for k, v in _resolve(got or {}).items() if k in value}
        if got != value:
            differences.append(f"{rule.name}.{key}: documented {got!r}, declared {value!r}")
    if isinstance(rule, Objects):
        differences += [f"{rule.name}[].{d}" for d in _object_documents(_resolve(prop["items"]), rule.fields, limits)]
    return differences


def _object_documents(schema: dict[str, Any], fields: tuple[Field, ...], limits: LimitsConfig) -> list[str]:
    """How a documented object differs from its declared fields: the typed properties (all but
    schema and order_id), which of them are required, and each one's type and limits."""
    documented = {k for k in schema["properties"] if k not in ("schema", "order_id")}
    declared = {rule.name for rule in fields}
    differences = [f"{name}: documented, not declared" for name in sorted(documented - declared)]
    differences += [f"{name}: declared, not documented" for name in sorted(declared - documented)]
    required = set(schema.get("required", [])) - {"schema", "order_id"}
    if required != {rule.name for rule in fields if rule.required}:
        differences.append(f"required: documented {sorted(required)}, declared "
                           f"{sorted(r.name for r in fields if r.required)}")
    for rule in fields:
        if rule.name in schema["properties"]:
            differences += _documents(schema["properties"][rule.name], rule, limits)
    return differences


def test_the_typed_fields_of_an_order_are_the_documented_ones() -> None:
    # Every field the contract types is checked by the rule declared for it, and documented as
    # that rule checks it (with the config's default limits), lines and discounts included;
    # nothing typed is left unchecked.
    order = SPEC["components"]["messages"]["Order"]["payload"]
    assert _resolve(order["properties"]["lines"]["items"]) is SPEC["components"]["schemas"]["OrderLine"]
    differences = _object_documents(order, ORDER_FIELDS, LimitsConfig())
    assert not differences, differences


def test_the_packet_and_order_limits_are_the_configs() -> None:
    store = SPEC["servers"]["store"]
    message = SPEC["components"]["messages"]["Order"]
    assert store["x-maximum-packet-size"] == BrokerConfig.max_packet_kib * 1024
    assert message["x-max-bytes"] == LimitsConfig().max_order_bytes
    assert message["x-max-bytes"] <= store["x-maximum-packet-size"] - PUBLISH_HEADROOM
    assert message["x-max-depth"] == MAX_DEPTH


def test_order_progress_states_and_events_are_the_kitchens() -> None:
    from edgehub.kitchen.progress import FRONT_EVENTS, ORDER_STATES

    ready = ("messages", "OrderReady", "payload", "properties")
    assert enum(*ready, "event") == set(FRONT_EVENTS)
    assert enum(*ready, "state") == set(ORDER_STATES)
    assert enum(*ready, "ticket", "properties", "state") == set(STATES)


def test_every_topic_the_hub_speaks_is_a_documented_channel() -> None:
    """Each topic edgehub/bus/topics.py spells (not the filters, prefixes and parsers) is a channel."""
    import inspect

    from edgehub.bus.topics import Topics

    topics = Topics("{store}")
    channels = set(SPEC["channels"])
    prefixes = {"root", "kds", "device", "terminal_tree", "own_tree", "kds_reply_tree"}
    names = {"device_id": "device"}  # the parameter's name in the channel
    checked = []
    for name, member in inspect.getmembers(Topics):
        if name.startswith("_") or name in prefixes:
            continue
        if isinstance(member, property):
            topic = getattr(topics, name)
        elif inspect.isfunction(member):
            params = list(inspect.signature(member).parameters)[1:]
            if "topic" in params:
                continue  # a parser: which terminal or station a topic names
            topic = member(topics, *("{" + names.get(p, p) + "}" for p in params))
        else:
            continue
        if "+" in topic or "#" in topic or topic.startswith("$SYS/"):
            continue  # a subscription filter, or the broker's own topics (not the API)
        assert topic in channels, f"Topics.{name} ({topic}) is not in docs/asyncapi.yaml"
        checked.append(name)
    assert {"order_ready", "pickup_board", "kds_event", "ack"} <= set(checked)


def test_check_and_presence_states_are_the_codes() -> None:
    from edgehub.bus.payloads import PRESENCE_STATES
    from edgehub.front.checks import CHECK_STATES
    from edgehub.kitchen.progress import STAGES

    check = SPEC["components"]["schemas"]["Check"]["properties"]
    assert set(check["state"]["enum"]) == set(CHECK_STATES)
    assert set(check["kitchen"]["enum"]) == {*STAGES, None}
    assert enum("messages", "Presence", "payload", "properties", "state") == set(PRESENCE_STATES)


def test_the_copies_state_is_the_hubs() -> None:
    import json

    from edgehub.bus import payloads

    doc = json.loads(payloads.hub_copies(1, "box-a", "box-b", 3, 1795430000.5, "standby gone", 1795430001))
    message = SPEC["components"]["messages"]["HubCopies"]["payload"]
    assert set(message["required"]) <= set(doc) and set(doc) <= set(message["properties"])
    assert doc["schema"] == message["properties"]["schema"]["const"]
    assert "edgehub/v1/{store}/hub/$copies" in SPEC["channels"]
