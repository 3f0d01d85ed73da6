"""Config checking: one test per kind of problem, each message saying file, line, key and what."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from edgehub.config import CloudConfig, load_config
from edgehub.errors import ConfigError

REPO = Path(__file__).resolve().parent.parent

VALID = """\
[store]
id = "store-7"

[broker]
hub_password = "secret-hub"

[api]
token = "0123456789abcdef0123"
"""


def problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edgehub.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.problems


def test_the_annotated_example_and_the_dev_config_pass() -> None:
    assert load_config(REPO / "config" / "edgehub.toml").store.id == "store-0042"
    assert load_config(REPO / "config" / "dev.toml").broker.mode == "managed"


def test_minimal_config_gets_defaults(tmp_path: Path) -> None:
    path = tmp_path / "edgehub.toml"
    path.write_text(VALID)
    config = load_config(path)
    assert config.broker.listen.port == 1883
    assert config.journal.path == Path("/var/lib/edgehub/journal.sqlite")
    assert config.terminals == ()


def test_wrong_type_names_key_and_line(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + '\n[limits]\nmax_lines = "many"\n')
    assert found == [f"{tmp_path / 'edgehub.toml'}:11: limits.max_lines: must be an integer, got a string 'many'"]


def test_boolean_is_not_an_integer(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + "\n[limits]\nmax_qty = true\n")
    assert "limits.max_qty: must be an integer, got a boolean True" in found[0]


def test_unknown_key(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID.replace('id = "store-7"', 'id = "store-7"\nnmae = "typo"'))
    assert len(found) == 1
    assert ":3: store.nmae: unknown key (known: id, name)" in found[0]


def test_unknown_table(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + "\n[brokr]\nlisten = 1\n")
    assert "brokr: unknown table" in found[0]


def test_missing_required_key_and_table(tmp_path: Path) -> None:
    found = problems(tmp_path, '[broker]\nhub_password = "x"\n[api]\ntoken = "0123456789abcdef0123"\n')
    assert found == [f"{tmp_path / 'edgehub.toml'}: store: missing required table"]
    found = problems(tmp_path, VALID.replace('hub_password = "secret-hub"', ""))
    assert "broker.hub_password: missing required key (or hub_password_file)" in found[0]


def test_bad_addresses(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID.replace("[api]", '[api]\nlisten = "store-box:80"')
                     .replace("[broker]", '[broker]\nlisten = "127.0.0.1:99999"\nlan_listen = "0.0.0.0"'))
    text = "\n".join(found)
    assert "broker.listen: bad address: port '99999' is not a number from 0 to 65535" in text
    assert "broker.lan_listen: bad address: '0.0.0.0' is not host:port" in text
    assert "api.listen: bad address: 'store-box' is not an IP address" in text


def test_ipv6_address_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "edgehub.toml"
    path.write_text(VALID.replace("[api]", '[api]\nlisten = "[::1]:8080"'))
    assert load_config(path).api.listen.host == "::1"


def test_every_problem_is_reported_at_once(tmp_path: Path) -> None:
    found = problems(tmp_path, '[store]\nid = "Bad Id"\n[api]\ntoken = "short"\n[journal]\ncommit_window_ms = 99\n')
    text = "\n".join(found)
    assert "store.id: 'Bad Id' must be lowercase" in text
    assert "broker: missing required" not in text  # [broker] itself is optional
    assert "broker.hub_password: missing required key" in text
    assert "api.token: must be at least 16 characters" in text
    assert "kitchen.screen_token" not in text  # not written: the screens use api.token, reported once
    assert "journal.commit_window_ms: must be 0 to 50 ms" in text


def test_terminals_duplicate_id_and_bad_kind(tmp_path: Path) -> None:
    text = VALID + ('\n[[terminal]]\nid = "pos-1"\npassword = "a"\n'
                    '\n[[terminal]]\nid = "pos-1"\nkind = "tablet"\npassword = "b"\n')
    found = "\n".join(problems(tmp_path, text))
    assert ":15: terminal[1].id: 'pos-1' is used twice" in found
    assert ":16: terminal[1].kind: must be one of pos, handheld, kds, kiosk, pager, display" in found


def test_screen_settings_and_the_new_kinds(tmp_path: Path) -> None:
    """A kitchen screen's scale, sound and bump-bar keys; a customer display's page secret; a
    pager has neither, and neither pays."""
    text = VALID + """
[kitchen]
ready_on_board_s = 300

[[terminal]]
id = "kds-grill"
kind = "kds"
password = "pw"
screen_token = "grill-screen-secret-0123"
screen_scale = 1.4
screen_sound = false
screen_keys = { bump = ["b", "Space"], start = ["s"], select = ["q", "w"] }

[[terminal]]
id = "pass"
kind = "display"
password = "pw"
screen_token = "pass-display-secret-0123"

[[terminal]]
id = "buzzers"
kind = "pager"
password = "pw"
"""
    path = tmp_path / "edgehub.toml"
    path.write_text(text)
    config = load_config(path)
    grill, display, pager = config.terminals
    assert (grill.screen_scale, grill.screen_sound) == (1.4, False)
    assert grill.screen_keys["bump"] == ("b", " ") and grill.screen_keys["select"] == ("q", "w")
    assert grill.screen_keys["recall"] == ("r", "Backspace")  # the defaults stay for the rest
    assert display.screen_token == "pass-display-secret-0123" and display.screen_scale == 1.0
    assert pager.kind == "pager" and config.kitchen.ready_on_board_s == 300


def test_bad_screen_settings_name_the_key(tmp_path: Path) -> None:
    text = VALID + """
[kitchen]
ready_on_board_s = 3

[[terminal]]
id = "kds-grill"
kind = "kds"
password = "pw"
screen_scale = 7
screen_keys = { bump = ["Enter"], start = ["Enter"], dance = ["d"], select = "1" }

[[terminal]]
id = "buzzers"
kind = "pager"
password = "pw"
screen_token = "pager-secret-0123456789"
screen_keys = { bump = ["b"] }
pinpad_roles = ["pinpad"]
"""
    found = "\n".join(problems(tmp_path, text))
    assert "kitchen.ready_on_board_s: must be from 10 to 7200 seconds, got 3" in found
    assert "terminal[0].screen_scale: must be from 0.5 to 3 (1 = the default size), got 7" in found
    assert "terminal[0].screen_keys.dance: unknown action (known: select, bump, start" in found
    assert "terminal[0].screen_keys.select: must be a list of key names" in found
    assert "terminal[0].screen_keys: key 'Enter' is bound to both bump and start" in found
    assert "terminal[1].screen_token: only kitchen screens and customer displays" in found
    assert "terminal[1].screen_keys: only kitchen screens (kind = \"kds\") have screen_keys" in found
    assert "terminal[1].pinpad_roles: a terminal of kind 'pager' never takes a payment" in found


def test_secret_file_missing_and_both_forms(tmp_path: Path) -> None:
    text = VALID.replace('token = "0123456789abcdef0123"', 'token_file = "secrets/api-token"')
    found = problems(tmp_path, text)
    assert "api.token_file: cannot read" in found[0] and "No such file" in found[0]
    (tmp_path / "secrets").mkdir()
    (tmp_path / "secrets" / "api-token").write_text("0123456789abcdef-from-file\n")
    path = tmp_path / "edgehub.toml"
    path.write_text(text)
    assert load_config(path).api.token == "0123456789abcdef-from-file"
    both = VALID.replace('token = "0123456789abcdef0123"',
                         'token = "0123456789abcdef0123"\ntoken_file = "secrets/api-token"')
    assert "api.token: give either token or token_file, not both" in problems(tmp_path, both)[0]


def test_not_toml(tmp_path: Path) -> None:
    found = problems(tmp_path, "[store\nid=")
    assert found[0].startswith(f"{tmp_path / 'edgehub.toml'}: not valid TOML:")


def test_cli_check_exits_2_with_every_problem(tmp_path: Path) -> None:
    path = tmp_path / "edgehub.toml"
    path.write_text(VALID + '\n[limits]\nmax_lines = "x"\nmax_qty = -1\n')
    result = subprocess.run([sys.executable, "-m", "edgehub", "config", "check", str(path)],
                            capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert lines == [
        f"{path}:11: limits.max_lines: must be an integer, got a string 'x'",
        f"{path}:12: limits.max_qty: must be greater than 0, got -1",
    ]
    ok = subprocess.run([sys.executable, "-m", "edgehub", "config", "check", str(REPO / "config/edgehub.toml")],
                        capture_output=True, text=True, cwd=REPO)
    assert ok.returncode == 0, ok.stderr


# --- cross-references: what one part of the file names in another ---------------------------------

CROSS = VALID.replace('[api]\n', '[api]\nlisten = "127.0.0.1:8080"\n') + """
[[device]]
id = "grill-printer"
driver = "escpos"
transport = "tcp"
address = "192.168.1.50:9100"

[[device]]
id = "front-scale"
driver = "mt8217"
transport = "serial"
address = "/dev/ttyUSB0"

[[role]]
name = "kitchen-printer"
devices = ["grill-printer", "epson-discovered-later"]

[kitchen.stations.grill]
printer_role = "kitchen-printer"

[kitchen.stations.wok]
printer_role = "kitchen-printer.wok"
"""


def line_of(text: str, needle: str) -> int:
    return next(n for n, line in enumerate(text.splitlines(), 1) if needle in line)


def test_the_cross_references_of_a_good_config_pass(tmp_path: Path) -> None:
    """A role may name a device discovery finds later; a station may print on a named role."""
    path = tmp_path / "edgehub.toml"
    path.write_text(CROSS)
    config = load_config(path)
    assert config.kitchen.stations["wok"].printer_role == "kitchen-printer.wok"


def test_a_station_printing_on_a_role_the_api_would_refuse(tmp_path: Path) -> None:
    """The issue: `printer_role = "kitchen-printr"` passed `config check`, and the API refused it."""
    text = CROSS.replace('printer_role = "kitchen-printer"\n', 'printer_role = "kitchen-printr"\n', 1)
    found = problems(tmp_path, text)
    where = f"{tmp_path / 'edgehub.toml'}:{line_of(text, 'kitchen-printr')}"
    assert found == [f"{where}: kitchen.stations.grill.printer_role: is not a role: 'kitchen-printr' must be one of "
                     "kitchen-printer, receipt-printer, scale, scanner, pinpad, optionally with .name (lowercase "
                     "letters, digits, - or _), e.g. kitchen-printer.grill"]


def test_a_station_printing_on_a_role_that_is_no_printer(tmp_path: Path) -> None:
    found = problems(tmp_path, CROSS.replace('"kitchen-printer.wok"', '"scale"'))
    assert len(found) == 1 and "kitchen.stations.wok.printer_role: 'scale' is a scale role" in found[0]


def test_a_role_bound_to_a_configured_device_of_another_kind(tmp_path: Path) -> None:
    text = CROSS + '\n[[role]]\nname = "scale"\ndevices = ["grill-printer", "front-scale"]\n'
    found = problems(tmp_path, text)
    line = line_of(text, 'devices = ["grill-printer", "front')
    assert found == [f"{tmp_path / 'edgehub.toml'}:{line}: "
                     "role[1].devices: 'grill-printer' is a printer ([[device]] with driver 'escpos'), but scale "
                     "takes a scale"]


def test_the_page_on_the_brokers_port(tmp_path: Path) -> None:
    text = CROSS.replace('[broker]\n', '[broker]\nlan_listen = "0.0.0.0:8080"\n')
    found = problems(tmp_path, text)
    assert found == [f"{tmp_path / 'edgehub.toml'}:{line_of(text, '127.0.0.1:8080')}: api.listen: 127.0.0.1:8080 "
                     "and broker.lan_listen 0.0.0.0:8080 share port 8080: one of the two listeners cannot start; "
                     "give the box's page another port"]


def test_a_log_level_for_a_component_that_does_not_exist(tmp_path: Path) -> None:
    found = problems(tmp_path, CROSS + '\n[log]\ncomponents = { kitchn = "debug", "edgehub.kitchen" = "info" }\n')
    assert len(found) == 1 and "log.components.kitchn: 'kitchn' is not a component (known: api," in found[0]


def test_every_bad_reference_is_one_problem(tmp_path: Path) -> None:
    text = (CROSS.replace('printer_role = "kitchen-printer"\n', 'printer_role = "kitchen-printr"\n', 1)
            .replace('"kitchen-printer.wok"', '"pinpad"').replace('[broker]\n', '[broker]\nlisten = "127.0.0.1:8080"\n')
            + '\n[[role]]\nname = "scanner"\ndevices = ["front-scale"]\n')
    found = problems(tmp_path, text)
    assert sorted(p.split(": ")[1] for p in found) == [
        "api.listen", "kitchen.stations.grill.printer_role", "kitchen.stations.wok.printer_role", "role[1].devices"]


def test_the_checkers_tables_match_the_code() -> None:
    """DEVICE_KINDS is each driver's kind; LOG_COMPONENTS the components whose loggers the code has."""
    import re

    from drivers import driver_class
    from edgehub.config import DEVICE_DRIVERS, DEVICE_KINDS, LOG_COMPONENTS

    assert {name: getattr(driver_class(name), "kind", None) for name in DEVICE_DRIVERS} == DEVICE_KINDS
    names = set()
    for source in (REPO / "edgehub").rglob("*.py"):
        names |= set(re.findall(r'getLogger\("edgehub\.([a-z_]+)', source.read_text()))
    assert names == set(LOG_COMPONENTS)


def test_the_example_gives_the_cloud_links_timers_with_their_defaults() -> None:
    # Each is in config/edgehub.toml, with its default and a comment (docs/cloud.md, Connection).
    text = (REPO / "config" / "edgehub.toml").read_text()
    for key in ("ping_interval_s", "ping_timeout_s", "down_after_s", "probe_every_s", "reconnect_max_s",
                "connect_timeout_s"):
        found = re.search(rf"^#? ?{key} = (\S+) +# \S", text, re.MULTILINE)
        assert found is not None, key
        assert float(found.group(1)) == getattr(CloudConfig, key), key


def test_a_link_that_would_be_down_before_its_ping_is_overdue_is_a_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + '\n[cloud]\nping_interval_s = 8\ndown_after_s = 5\n')
    assert len(found) == 1
    assert "cloud.down_after_s: must be at least ping_interval_s + ping_timeout_s (10)" in found[0]


def test_an_order_limit_that_leaves_the_packet_no_room_is_a_problem(tmp_path: Path) -> None:
    found = problems(tmp_path, VALID + "\n[limits]\nmax_order_bytes = 262144\n")
    assert len(found) == 1
    assert "limits.max_order_bytes: must be at most broker.max_packet_kib x 1024 - 4096 (258048)" in found[0]
