"""Kitchen routing rules pushed by the cloud (downlink kind ``routing``), applied to the kitchen.

The document's body has the shape of the ``[kitchen]`` config it overrides (docs/cloud.md)::

    {"default_station": "kitchen", "rules": {"sku": {"BURG-01": "grill"}, "category": {"drinks": "bar"}}}

Each part the cloud names replaces that part of the box's config (``rules.sku`` replaces
``[kitchen] rules.sku`` whole, so the cloud can also take a rule away); what it leaves out stays
as configured. Stations, their thresholds and printers stay the box's own. A line that names its
station still goes there. The rules are checked before the document is stored, so a bad one is
dead-lettered and the kitchen keeps the rules it had.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from typing import Any, Protocol

from edgehub.config import STATION_RE, KitchenConfig
from edgehub.errors import PayloadError
from edgehub.kitchen.kitchen import Kitchen
from edgehub.kitchen.routing import Router
from edgehub.uplink.cloudapi import DownlinkDoc

log = logging.getLogger("edgehub.kitchen.cloudrouting")


class DownlinkFeed(Protocol):
    """The documents the cloud pushes down (``uplink.Downlink``)."""

    def check(self, kind: str, check: Callable[[DownlinkDoc], None]) -> None: ...

    def on_change(self, kind: str, listener: Callable[[DownlinkDoc], None]) -> None: ...

RULE_KINDS = ("sku", "category")


def _station(value: Any, where: str) -> str:
    if not isinstance(value, str) or not STATION_RE.match(value):
        raise PayloadError(where, f"must be a station name (lowercase letters, digits, - or _, max 32), "
                                  f"got {value!r}")
    return value


def check_routing(body: Mapping[str, Any]) -> None:
    """Raise PayloadError (naming the field, e.g. ``body.rules.sku.BURG-01``) unless valid."""
    known = {"default_station", "rules"}
    for key in body:
        if key not in known:
            raise PayloadError(f"body.{key}", "unknown key (known: default_station, rules)")
    if "default_station" in body:
        _station(body["default_station"], "body.default_station")
    rules = body.get("rules", {})
    if not isinstance(rules, dict):
        raise PayloadError("body.rules", "must be an object")
    for kind, table in rules.items():
        if kind not in RULE_KINDS:
            raise PayloadError(f"body.rules.{kind}", "unknown key (known: category, sku)")
        if not isinstance(table, dict):
            raise PayloadError(f"body.rules.{kind}", "must be an object of match -> station")
        for match, station in table.items():
            if not match:
                raise PayloadError(f"body.rules.{kind}", "an empty match is not allowed")
            _station(station, f"body.rules.{kind}.{match}")


def routed_config(base: KitchenConfig, body: Mapping[str, Any]) -> KitchenConfig:
    """The box's kitchen config with the cloud's routing laid over it (``body`` is checked)."""
    rules = body.get("rules", {})
    return dataclasses.replace(
        base,
        default_station=body.get("default_station", base.default_station),
        sku_rules=dict(rules["sku"]) if "sku" in rules else base.sku_rules,
        category_rules=dict(rules["category"]) if "category" in rules else base.category_rules,
    )


def follow_cloud_routing(downlink: DownlinkFeed, kitchen: Kitchen) -> None:
    """Route the kitchen's new tickets by the cloud's rules: the cached version at start, each
    newer version as it arrives. Tickets already made stay where they are."""
    base = kitchen.config

    def apply(doc: DownlinkDoc) -> None:
        kitchen.router = Router(routed_config(base, doc.body))
        log.info("kitchen routing v%d from the cloud: %d sku and %d category rules, default station %s",
                 doc.version, len(kitchen.router.config.sku_rules), len(kitchen.router.config.category_rules),
                 kitchen.router.config.default_station)

    downlink.check("routing", lambda doc: check_routing(doc.body))
    downlink.on_change("routing", apply)
