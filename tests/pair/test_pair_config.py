"""[pair] in edgehub.toml, keepalived's config made from it, and provisioning a box of a pair."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.errors import ConfigError
from edgehub.pair import vrrp
from edgehub.provision import Layout, check_request, derived_secret, provision
from tests.pair.lab import available

SECRET = "pair-secret-0123456789abcdefghijklmnop"

BASE = """
[store]
id = "s1"

[paths]
data_dir = "data"
run_dir = "run"

[broker]
mode = "managed"
listen = "127.0.0.1:1884"
lan_listen = "0.0.0.0:1883"
hub_password = "hub-secret-password"

[api]
listen = "0.0.0.0:8080"
token = "token-0123456789abcdef"
plain_http = true

[[terminal]]
id = "pos-1"
password = "pw-pos-1"
"""

PAIR = f"""
[pair]
box = "box-a"
listen = "192.168.1.11:7411"
peer = "192.168.1.12:7411"
secret = "{SECRET}"
address = "192.168.1.10/24"
interface = "eth0"
router_id = 42
"""


def config_problems(tmp_path: Path, text: str) -> list[str]:
    path = tmp_path / "edgehub.toml"
    path.write_text(text)
    try:
        load_config(path)
    except ConfigError as exc:
        return exc.problems
    return []


def test_a_pair_config_is_read_with_its_defaults(tmp_path: Path) -> None:
    path = tmp_path / "edgehub.toml"
    path.write_text(BASE + PAIR)
    pair = load_config(path).pair
    assert pair is not None
    assert (pair.box, pair.vip, str(pair.peer), pair.prefer, pair.vrrp) == (
        "box-a", "192.168.1.10", "192.168.1.12:7411", "primary", "external")
    assert (pair.advert_ms, pair.standby_timeout_ms, pair.failback) == (100, 500, False)


@pytest.mark.parametrize(("change", "problem"), [
    (('secret = "' + SECRET + '"', 'secret = "short"'), "pair.secret: must be at least 32 characters"),
    (('peer = "192.168.1.12:7411"', 'peer = "192.168.1.11:7411"'), "pair.peer: is this box's own address"),
    (('peer = "192.168.1.12:7411"', 'peer = "10.0.0.2:7411"'), "pair.peer: 10.0.0.2 is not in the floating"),
    (('address = "192.168.1.10/24"', 'address = "192.168.1.11/24"'), "pair.address: is pair.listen's address"),
    (('address = "192.168.1.10/24"', 'address = "192.168.1.10"'), "needs its prefix length"),
    (('listen = "192.168.1.11:7411"', 'listen = "0.0.0.0:7411"'), "is not one box's address"),
    (("router_id = 42", "router_id = 256"), "pair.router_id: must be 1 to 255"),
    (('interface = "eth0"', 'interface = "eth0; rm -rf /"'), "is not an interface name"),
    (('box = "box-a"', 'box = "box-a"\nadvert_ms = 125'), "pair.advert_ms: must be a multiple of 10"),
    (('box = "box-a"', 'box = "box-a"\nprefer = "leader"'), "pair.prefer: must be one of primary, standby"),
    (('box = "box-a"', 'box = "box-a"\nfloating = "x"'), "pair.floating: unknown key"),
])
def test_a_bad_pair_table_is_refused_with_the_key_at_fault(tmp_path: Path, change: tuple[str, str],
                                                            problem: str) -> None:
    problems = config_problems(tmp_path, BASE + PAIR.replace(*change))
    assert any(problem in p for p in problems), problems


def test_a_pair_needs_the_managed_broker_and_listeners_the_floating_address_reaches(tmp_path: Path) -> None:
    text = BASE.replace('mode = "managed"', 'mode = "external"').replace(
        'lan_listen = "0.0.0.0:1883"', 'lan_listen = "192.168.1.11:1883"').replace(
        'listen = "0.0.0.0:8080"', 'listen = "192.168.1.11:8080"')
    problems = " | ".join(config_problems(tmp_path, text + PAIR))
    assert "broker.mode: a pair runs the store broker with the hub" in problems
    assert "broker.lan_listen: listens on 192.168.1.11 only" in problems
    assert "api.listen: listens on 192.168.1.11 only" in problems


@pytest.mark.skipif(bool(available()), reason=available() or "lab available")
def test_keepalived_accepts_the_config_made_for_it(tmp_path: Path) -> None:
    """keepalived's own check (``--config-test``), in a namespace with the box's eth0 (a veth)."""
    path = tmp_path / "edgehub.toml"
    path.write_text(BASE + PAIR)
    config = load_config(path)
    conf, script = vrrp.write_config(config)
    text = conf.read_text()
    for expected in ("vrrp_version 3", "nopreempt", "advert_int 0.1", "unicast_peer", "192.168.1.12",
                     "192.168.1.10/24 dev eth0", "track_file", "vrrp_rt_priority"):
        assert expected in text
    ns = f"ehc{os.getpid() % 100000}"
    subprocess.run(["ip", "netns", "add", ns], check=True, timeout=10)
    try:
        subprocess.run(["ip", "-n", ns, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0p"], check=True,
                       timeout=10)
        result = subprocess.run(["ip", "netns", "exec", ns, "keepalived", "--config-test", "--use-file", str(conf)],
                                capture_output=True, text=True, timeout=20)
        assert result.returncode == 0, result.stdout + result.stderr
        bad = conf.with_name("bad.conf")
        bad.write_text(text.replace("dev eth0", "dev eth9").replace("interface eth0", "interface eth9"))
        refused = subprocess.run(["ip", "netns", "exec", ns, "keepalived", "--config-test", "--use-file", str(bad)],
                                 capture_output=True, text=True, timeout=20)
        assert refused.returncode != 0  # the check the doctor runs does catch a wrong interface
    finally:
        subprocess.run(["ip", "netns", "del", ns], timeout=10)
    # The heartbeat check: fresh file, exit 0; none, exit 1.
    health = vrrp.health_path(config)
    assert subprocess.run(["sh", str(script)], timeout=5).returncode == 1
    vrrp.Health(health, vrrp.priority_path(config)).set(True)
    assert subprocess.run(["sh", str(script)], timeout=5).returncode == 0


def test_both_boxes_of_a_pair_get_the_same_terminal_secrets_and_certificate(tmp_path: Path) -> None:
    boxes = {}
    for name, this, other, prefer in (("box-a", "192.168.1.11", "192.168.1.12", "primary"),
                                      ("box-b", "192.168.1.12", "192.168.1.11", "standby")):
        layout = Layout(config_dir=tmp_path / name / "etc", state_dir=tmp_path / name / "var",
                        run_dir=tmp_path / name / "run", keepalived_config=tmp_path / name / "keepalived.conf")
        boot = tmp_path / name / "boot.toml"
        boot.parent.mkdir(parents=True)
        boot.write_text(f"""[store]
id = "store-0042"

[pair]
box = "{name}"
address = "192.168.1.10/24"
this_box = "{this}"
other_box = "{other}"
prefer = "{prefer}"
secret = "{SECRET}"

[[terminal]]
id = "pos-1"

[[terminal]]
id = "kds-grill"
kind = "kds"
""")
        request = check_request(__import__("tomllib").loads(boot.read_text()), str(boot), layout)
        outcome = provision(request, layout, boot)
        assert outcome.token_removed and SECRET not in boot.read_text()  # out of the boot file
        boxes[name] = layout
        config = load_config(layout.config_file)
        assert config.pair is not None and config.pair.box == name and config.broker.mode == "managed"
        assert layout.keepalived_config.exists()
        assert not (layout.broker_dir / "mosquitto.conf").exists()  # Debian's unit stays down
    a, b = boxes["box-a"], boxes["box-b"]
    for secret in ("terminal-pos-1", "screen-kds-grill", "api-token", "pair-secret"):
        assert (a.secrets_dir / secret).read_text() == (b.secrets_dir / secret).read_text(), secret
    assert (a.secrets_dir / "terminal-pos-1").read_text().strip() == derived_secret(SECRET, "terminal-pos-1")
    assert (a.secrets_dir / "broker-hub").read_text() != (b.secrets_dir / "broker-hub").read_text()
    assert a.tls_cert.read_bytes() == b.tls_cert.read_bytes()
    assert json.loads(a.marker.read_text())["store_id"] == "store-0042"
