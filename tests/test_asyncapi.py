"""docs/asyncapi.yaml is the MQTT contract terminal makers code against: its enums are the code's."""

from __future__ import annotations

from typing import Any, get_args

import yaml

from drivers.base import HealthState
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
