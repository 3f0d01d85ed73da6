"""The box's systemd units: bookworm's systemd-analyze accepts them, and the keys that matter hold.

``systemd-analyze verify`` exits 0 on unknown keys and bad values, so any stderr is a failure.
It runs against a throwaway root holding the host's unit files, our units and stand-ins for the
binaries they start, so the check does not depend on edgehub being installed on this machine.
The full check against a real bookworm root is ``image/check.sh`` (slow, not in this suite).
"""

from __future__ import annotations

import configparser
import shutil
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
SYSTEMD = REPO / "systemd"
ANALYZE = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(ANALYZE is None, reason="systemd-analyze is not installed on this machine")

# Debian bookworm's mosquitto.service, so the drop-in is verified against what it modifies.
DEBIAN_MOSQUITTO_UNIT = """\
[Unit]
Description=Mosquitto MQTT Broker
Documentation=man:mosquitto.conf(5) man:mosquitto(8)
After=network.target
Wants=network.target

[Service]
Type=notify
NotifyAccess=main
ExecStart=/usr/sbin/mosquitto -c /etc/mosquitto/mosquitto.conf
ExecReload=/bin/kill -HUP $MAINPID
Restart=on-failure
ExecStartPre=/bin/mkdir -m 740 -p /var/log/mosquitto
ExecStartPre=/bin/chown mosquitto /var/log/mosquitto
ExecStartPre=/bin/mkdir -m 740 -p /run/mosquitto
ExecStartPre=/bin/chown mosquitto /run/mosquitto

[Install]
WantedBy=multi-user.target
"""
STUB_BINARIES = ("opt/edgehub/venv/bin/edgehub", "usr/sbin/mosquitto", "usr/sbin/keepalived", "bin/mkdir", "bin/chown",
                 "bin/kill")


def unit(name: str) -> configparser.ConfigParser:
    # strict=False: systemd allows repeated keys (DeviceAllow=, Wants=); we read the last one.
    parser = configparser.ConfigParser(strict=False, interpolation=None, delimiters=("=",))
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read(SYSTEMD / name)
    return parser


def all_values(name: str, key: str) -> list[str]:
    """Every value of a repeatable key, in order (configparser keeps only the last)."""
    return [
        line.split("=", 1)[1].strip()
        for line in (SYSTEMD / name).read_text().splitlines()
        if line.split("=", 1)[0].strip() == key and "=" in line
    ]


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("root")
    units = root / "usr/lib/systemd/system"
    units.parent.mkdir(parents=True)
    shutil.copytree("/usr/lib/systemd/system", units, symlinks=True)
    (units / "mosquitto.service").write_text(DEBIAN_MOSQUITTO_UNIT)
    for name in ("edgehub.service", "edgehub-provision.service"):
        shutil.copy(SYSTEMD / name, units / name)
    (units / "mosquitto.service.d").mkdir(exist_ok=True)
    shutil.copy(SYSTEMD / "mosquitto.service.d/edgehub.conf", units / "mosquitto.service.d/edgehub.conf")
    if (units / "keepalived.service").exists():  # Debian's, installed by make system-deps
        (units / "keepalived.service.d").mkdir(exist_ok=True)
        shutil.copy(SYSTEMD / "keepalived.service.d/edgehub.conf", units / "keepalived.service.d/edgehub.conf")
    for rel in STUB_BINARIES:
        stub = root / rel
        stub.parent.mkdir(parents=True, exist_ok=True)
        stub.write_text("#!/bin/sh\nexit 0\n")
        stub.chmod(0o755)
    return root


@pytest.mark.parametrize("name", ["edgehub.service", "edgehub-provision.service", "mosquitto.service",
                                  "keepalived.service"])
def test_verify_is_silent(fake_root: Path, name: str) -> None:
    assert ANALYZE is not None
    if not (fake_root / "usr/lib/systemd/system" / name).exists():
        pytest.skip(f"{name} is not installed here (make system-deps installs keepalived)")
    result = subprocess.run(
        [ANALYZE, "verify", f"--root={fake_root}", name], capture_output=True, text=True, timeout=60
    )
    assert result.stderr == "", result.stderr
    assert result.returncode == 0


@pytest.mark.parametrize("name", ["edgehub.service", "mosquitto.service"])
def test_security_exposure_is_about_two(fake_root: Path, name: str) -> None:
    """Both units on the order path; Debian's mosquitto.service alone scores 9.6 UNSAFE."""
    assert ANALYZE is not None
    result = subprocess.run(
        [ANALYZE, "security", "--offline=yes", f"--root={fake_root}", "--no-pager", name],
        capture_output=True,
        text=True,
        timeout=60,
    )
    # Read the number itself: the message says by how much a change moved it.
    line = next(x for x in result.stdout.splitlines() if "Overall exposure level" in x)
    exposure = float(line.split(":")[1].split()[0])
    assert exposure <= 2.5, line


def test_edgehub_service_keys() -> None:
    u = unit("edgehub.service")
    s = u["Service"]
    assert s["Type"] == "notify"
    assert s["NotifyAccess"] == "main"
    assert s["WatchdogSec"] == "20s"
    assert s["Restart"] == "on-failure"
    assert s["User"] == "edgehub"
    assert "DynamicUser" not in s
    assert set(s["SupplementaryGroups"].split()) >= {"dialout", "lp", "plugdev"}
    assert s["StateDirectory"] == "edgehub"
    assert s["ConfigurationDirectory"] == "edgehub"
    assert s["ExecStart"] == "/opt/edgehub/venv/bin/edgehub run --config /etc/edgehub/edgehub.toml"
    assert s["ProtectSystem"] == "strict"
    assert s["DevicePolicy"] == "closed"
    assert s["CapabilityBoundingSet"] == ""
    assert s["NoNewPrivileges"] == "yes"
    assert set(s["RestrictAddressFamilies"].split()) == {"AF_UNIX", "AF_INET", "AF_INET6", "AF_NETLINK"}
    allowed = {v.split()[0] for v in all_values("edgehub.service", "DeviceAllow")}
    assert allowed >= {"char-ttyUSB", "char-ttyACM", "char-usb", "char-usb_device", "char-hidraw"}
    # A scale on the Pi's own UART or an RS-232 HAT (config/edgehub.toml suggests /dev/ttyS0).
    assert allowed >= {"char-ttyS", "char-ttyAMA", "char-ttySC"}
    assert "@system-service" in all_values("edgehub.service", "SystemCallFilter")
    # The StartLimit decision is written down next to the key.
    text = (SYSTEMD / "edgehub.service").read_text()
    assert "StartLimit decision" in text
    assert u["Unit"]["StartLimitIntervalSec"] == "0"
    wants = " ".join(all_values("edgehub.service", "Wants"))
    after = " ".join(all_values("edgehub.service", "After"))
    for dep in (
        "mosquitto.service",
        "network-online.target",
        "modprobe@cdc_acm.service",
        "modprobe@usblp.service",
    ):
        assert dep in wants and dep in after
    assert "edgehub-provision.service" in after
    assert u["Install"]["WantedBy"] == "multi-user.target"


def test_the_order_path_comes_before_background_jobs() -> None:
    for name in ("edgehub.service", "mosquitto.service.d/edgehub.conf"):
        s = unit(name)["Service"]
        assert (s["CPUWeight"], s["IOWeight"], s["Nice"]) == ("500", "500", "-5"), name


def test_provision_unit_runs_before_the_broker_and_the_hub() -> None:
    u = unit("edgehub-provision.service")
    assert u["Unit"]["ConditionPathExists"] == "/boot/firmware/edgehub-provision.toml"
    assert set(u["Unit"]["Before"].split()) >= {"mosquitto.service", "edgehub.service"}
    assert u["Service"]["Type"] == "oneshot"
    assert u["Service"]["ExecStart"].startswith(
        "/opt/edgehub/venv/bin/edgehub provision --from /boot/firmware/edgehub-provision.toml"
    )


def test_mosquitto_drop_in_runs_edgehub_config() -> None:
    starts = all_values("mosquitto.service.d/edgehub.conf", "ExecStart")
    assert starts == ["", "/usr/sbin/mosquitto -c /etc/edgehub/mosquitto/mosquitto.conf"]
    u = unit("mosquitto.service.d/edgehub.conf")
    assert "edgehub-provision.service" in u["Unit"]["After"]


def test_tmpfiles_and_sysusers_agree_with_the_unit() -> None:
    sysusers = [
        line.split()
        for line in (SYSTEMD / "edgehub.sysusers").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert ["u", "edgehub", "-"] == sysusers[0][:3]
    assert {entry[2] for entry in sysusers if entry[0] == "m"} == {"dialout", "lp", "plugdev"}
    tmpfiles = {
        line.split()[1]: line.split()
        for line in (SYSTEMD / "edgehub.tmpfiles").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    assert tmpfiles["/var/lib/edgehub"][2:5] == ["0750", "edgehub", "edgehub"]
    assert tmpfiles["/etc/edgehub/secrets"][2:5] == ["0750", "root", "edgehub"]
    assert tmpfiles["/etc/edgehub/mosquitto"][2:5] == ["0750", "root", "mosquitto"]


def test_keepalived_goes_with_edgehub_on_a_box_of_a_pair() -> None:
    """Under systemd keepalived stops with edgehub (the address is given up at once), and starts
    with it; on a single box it has no config and stays down (docs/pair.md)."""
    drop_in = unit("keepalived.service.d/edgehub.conf")
    assert drop_in["Unit"]["BindsTo"] == "edgehub.service" and "edgehub.service" in drop_in["Unit"]["After"]
    assert "keepalived.service" in " ".join(all_values("edgehub.service", "Wants"))
