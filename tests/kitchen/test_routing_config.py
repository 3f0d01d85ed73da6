"""Routing rules and the ``[kitchen]`` config table: lines land where the cook expects, and a
bad table is reported as FILE:LINE: key: problem."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from edgehub.config import Config, load_config
from edgehub.errors import ConfigError
from edgehub.kitchen import Router
from tests.conftest import REPO, write_config


def test_line_station_then_sku_rule_then_category_rule_then_default(config: Config) -> None:
    doc = {
        "schema": "order/1",
        "order_id": "o1",
        "table": "T7",
        "covers": 4,
        "course": "main",
        "rush": True,
        "note": "birthday",
        "lines": [
            {
                "sku": "BURG-01",
                "name": "Cheeseburger",
                "qty": 2,
                "station": "grill",
                "modifiers": ["no onions", "extra cheese"],
                "note": "well done",
            },
            {"sku": "COLA-33", "name": "Cola", "qty": 1},
            {"sku": "SAL-04", "name": "Caesar", "qty": 1, "category": "salads"},
            {"sku": "COLA-33", "name": "Cola by the grill", "qty": 1, "station": "grill"},
            {"sku": "MYST-1", "qty": 1},
        ],
    }
    shares = Router(config.kitchen).route(doc)
    assert {s: [line["name"] for line in share.lines] for s, share in shares.items()} == {
        "grill": ["Cheeseburger", "Cola by the grill"],
        "bar": ["Cola"],
        "cold": ["Caesar"],
        "pass": ["MYST-1"],
    }
    burger = shares["grill"].lines[0]
    assert burger["modifiers"] == ["no onions", "extra cheese"] and burger["note"] == "well done"
    assert burger["qty"] == 2 and burger["line"] == 0
    assert dict(shares["bar"].header) == {
        "table": "T7",
        "covers": 4,
        "course": "main",
        "note": "birthday",
        "rush": True,
    }


def test_defaults_keep_old_configs_valid(tmp_path: Path) -> None:
    config = load_config(write_config(tmp_path))
    assert config.kitchen.default_station == "kitchen"
    assert config.kitchen.station("anything").red_after_s == 720.0
    shares = Router(config.kitchen).route({"lines": [{"sku": "X", "qty": 1}]})
    assert list(shares) == ["kitchen"]


def test_station_settings(config: Config) -> None:
    assert config.kitchen.station("grill").printer_role == "kitchen-printer"
    assert (config.kitchen.station("bar").amber_after_s, config.kitchen.station("bar").red_after_s) == (
        120,
        300,
    )
    assert config.kitchen.station("wok").printer_role is None


BAD = """
[kitchen]
default_station = "Grill Station"
amber_after_s = 900
red_after_s = 600
colour = "red"

[kitchen.stations.grill]
printer_role = 7
amber_after_s = "soon"
speed = 3

[kitchen.rules.sku]
"COLA-33" = "Bar!"

[kitchen.rules]
price = {}
"""


def test_bad_kitchen_table_names_file_line_and_key(tmp_path: Path) -> None:
    path = write_config(tmp_path, extra=BAD)
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    found = "\n".join(caught.value.problems)
    text = path.read_text().splitlines()

    def line_of(snippet: str) -> int:
        return next(i for i, line in enumerate(text, start=1) if line.strip().startswith(snippet))

    assert (
        f":{line_of('default_station')}: kitchen.default_station: 'Grill Station' must be a station name"
        in found
    )
    assert (
        f":{line_of('red_after_s')}: kitchen.red_after_s: must be later than amber_after_s (900), got 600"
        in found
    )
    assert f":{line_of('colour')}: kitchen.colour: unknown key" in found
    assert (
        f":{line_of('printer_role')}: kitchen.stations.grill.printer_role: must be a string, got an integer"
        in found
    )
    soon = line_of('amber_after_s = "soon"')
    assert f":{soon}: kitchen.stations.grill.amber_after_s: must be an integer or a number" in found
    assert f":{line_of('speed')}: kitchen.stations.grill.speed: unknown key" in found
    assert "kitchen.rules.sku.COLA-33: 'Bar!' must be a station name" in found
    assert "kitchen.rules.price: unknown key (known: category, sku)" in found


def test_example_config_passes_config_check() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "edgehub", "config", "check", str(REPO / "config" / "edgehub.toml")],
        capture_output=True,
        text=True,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    config = load_config(REPO / "config" / "edgehub.toml")
    assert config.kitchen.stations and config.kitchen.sku_rules
