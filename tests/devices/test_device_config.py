"""``[discovery]`` and ``[[device]]``: defaults keep old configs valid; every mistake is named
with its file and line."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.errors import ConfigError
from tests.conftest import write_config


def test_defaults_and_a_static_device(tmp_path: Path) -> None:
    assert load_config(write_config(tmp_path / "a")).discovery.lan is True
    path = write_config(
        tmp_path / "b",
        extra="""
[discovery]
subnets = ["192.168.1.0/24"]
probe_interval_s = 0.25

[[device]]
id = "grill-printer"
driver = "escpos"
transport = "tcp"
address = "192.168.1.50:9100"

[[device]]
driver = "cas"
transport = "serial"
address = "/dev/serial/by-id/usb-CAS-if00"
baudrate = 9600
mode = "continuous"
""",
    )
    config = load_config(path)
    assert config.discovery.subnets == ("192.168.1.0/24",) and config.discovery.probe_interval_s == 0.25
    grill, scale = config.devices
    assert (grill.id, grill.driver, grill.address) == ("grill-printer", "escpos", "192.168.1.50:9100")
    assert scale.id == "" and scale.extra == {"baudrate": "9600", "mode": "continuous"}


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[discovery]\nsubnets = ["10.0.0.0/33"]', "discovery.subnets: '10.0.0.0/33' is not a subnet"),
        ('[discovery]\nsubnets = ["10.0.0.0/8"]', "only IPv4 subnets up to /20"),
        ("[discovery]\nusb = 1", "discovery.usb: must be true or false"),
        ("[discovery]\nwhat = 1", "discovery.what: unknown key"),
        (
            '[[device]]\ndriver = "escpos"\ntransport = "tcp"\naddress = "printer"',
            "device[0].address: bad address",
        ),
        (
            '[[device]]\ndriver = "epson"\ntransport = "tcp"\naddress = "10.0.0.2"',
            "device[0].driver: must be one of",
        ),
        ('[[device]]\ndriver = "cas"\ntransport = "serial"\naddress = "ttyUSB0"', "must be a device path"),
        (
            '[[device]]\ndriver = "cas"\ntransport = "serial"\naddress = "/dev/x"\nbaud = 9600',
            "device[0].baud: unknown",
        ),
        (
            '[[device]]\nid = "a/b"\ndriver = "zvt"\ntransport = "tcp"\naddress = "10.0.0.3"',
            "is not a device id",
        ),
        (
            '[[device]]\ndriver = "escpos"\ntransport = "tcp"\naddress = "10.0.0.4"\nconfirm = "gs-h"',
            "device[0].confirm: must be one of 'auto', 'process-id', 'status', got 'gs-h'",
        ),
        (
            '[[device]]\ndriver = "escpos"\ntransport = "tcp"\naddress = "10.0.0.4"\nconfirm = true',
            "device[0].confirm: must be one of",
        ),
        (
            '[[device]]\ndriver = "zvt"\ntransport = "tcp"\naddress = "10.0.0.5"\nconfirm = "status"',
            "device[0].confirm: only escpos printers take confirm",
        ),
        *(
            (f'[[device]]\ndriver = "zvt"\ntransport = "tcp"\naddress = "10.0.0.6"\n{line}', expected)
            for line, expected in (
                ('password = "12345"', 'device[0].password: must be the terminal\'s six-digit password in quotes'),
                ("password = 123456", "device[0].password: must be a string"),
                ('password = "123456"\npassword_file = "pw"', "give either password or password_file, not both"),
                ('password_file = "missing.txt"', "device[0].password_file: cannot read"),
                ('currency = "RMB"', "device[0].currency: 'RMB' is not an ISO 4217 currency"),
                ('currency = "JPY"', "device[0].currency: JPY has 0 minor-unit digits"),
                ('probe = "ping"', "device[0].probe: must be one of 'link', 'status', got 'ping'"),
                ("probe_interval_s = 0.1", "device[0].probe_interval_s: must be 0.5 to 3600 seconds"),
            )
        ),
        (
            '[[device]]\ndriver = "escpos"\ntransport = "tcp"\naddress = "10.0.0.7"\ncurrency = "CNY"',
            "device[0].currency: only zvt pinpads take currency, this is a escpos",
        ),
    ],
)
def test_problems_name_file_line_and_key(tmp_path: Path, extra: str, expected: str) -> None:
    path = write_config(tmp_path, extra=extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = [p for p in err.value.problems if expected in p]
    assert problem.startswith(f"{path}:") and problem.split(":")[1].isdigit()


async def test_printer_confirm_reaches_the_driver(tmp_path: Path) -> None:
    from drivers.escpos import EscposPrinter
    from edgehub.devices.factory import DriverFactory
    from edgehub.discovery import static_device_info

    path = write_config(
        tmp_path,
        extra="""
[[device]]
id = "xprinter-grill"
driver = "escpos"
transport = "tcp"
address = "192.168.1.51:9100"
confirm = "status"

[[device]]
id = "epson-bar"
driver = "escpos"
transport = "tcp"
address = "192.168.1.52:9100"
""",
    )
    clone, epson = load_config(path).devices
    assert clone.extra == {"confirm": "status"} and epson.extra == {}
    drivers = [await DriverFactory()(static_device_info(device)) for device in (clone, epson)]
    assert all(isinstance(d, EscposPrinter) for d in drivers)
    assert [d.confirm for d in drivers if isinstance(d, EscposPrinter)] == ["status", "auto"]


async def test_a_zvt_terminals_own_settings_reach_the_driver(tmp_path: Path) -> None:
    from drivers.zvt import PROBE_METHODS, ZvtPinpad
    from edgehub.config import ZVT_PROBES
    from edgehub.devices.factory import DriverFactory
    from edgehub.discovery import static_device_info

    assert ZVT_PROBES == PROBE_METHODS
    (tmp_path / "zvt-till-2.secret").write_text("271828\n")
    path = write_config(
        tmp_path,
        extra="""
[[device]]
id = "zvt-till-1"
driver = "zvt"
transport = "tcp"
address = "192.168.1.60:20007"
password = "314159"
currency = "CNY"

[[device]]
id = "zvt-till-2"
driver = "zvt"
transport = "serial"
address = "/dev/serial/by-id/usb-FTDI-if00"
password_file = "zvt-till-2.secret"
currency = 156
probe = "status"
probe_interval_s = 120

[[device]]
id = "zvt-default"
driver = "zvt"
transport = "tcp"
address = "192.168.1.61"
""",
    )
    config = load_config(path)
    one, two, default = config.devices
    from edgehub.bundle import config_secrets

    assert {"314159", "271828"} <= config_secrets(config)  # kept out of support bundles
    assert one.extra == {"password": "314159", "currency": "CNY"}
    assert two.extra == {"password": "271828", "currency": "156", "probe": "status", "probe_interval_s": "120"}
    drivers = [await DriverFactory()(static_device_info(d)) for d in (one, two, default)]
    assert all(isinstance(d, ZvtPinpad) for d in drivers)
    got = [(d.currency, d._password.hex(), d.probe, d.probe_interval_s) for d in drivers if isinstance(d, ZvtPinpad)]  # noqa: SLF001
    assert got == [("CNY", "314159", "link", None), ("CNY", "271828", "status", 120.0), ("EUR", "000000", "link", None)]


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ('[discovery]\nscanner_usb_ids = ["0416-c141"]', "discovery.scanner_usb_ids: '0416-c141' is not a USB id"),
        ('[discovery]\nscanner_usb_ids = [1046]', "is not a USB id"),
        ('[[device]]\ndriver = "serial_scanner"\ntransport = "serial"\naddress = "/dev/ttyACM0"\n'
         'terminator = "semicolon"',
         "device[0].terminator: must be one of 'auto', 'cr', 'lf', 'crlf', 'tab', 'none'"),
        ('[[device]]\ndriver = "mt8217"\ntransport = "serial"\naddress = "/dev/ttyS0"\nterminator = "cr"',
         "device[0].terminator: only serial_scanner devices take terminator, this is a mt8217"),
        ('[[device]]\ndriver = "serial_scanner"\ntransport = "serial"\naddress = "/dev/ttyACM0"\nidle_ms = 5',
         "device[0].idle_ms: must be 20 to 2000 milliseconds"),
        ('[[device]]\ndriver = "mt8217"\ntransport = "serial"\naddress = "/dev/ttyS0"\nunit = "jin"',
         "device[0].unit: must be one of 'kg', 'lb'"),
        ('[[device]]\ndriver = "cas"\ntransport = "serial"\naddress = "/dev/ttyS0"\nunit = "kg"',
         "device[0].unit: a CAS scale names its unit in every frame"),
        ('[[device]]\ndriver = "escpos"\ntransport = "usb"\naddress = "has space"',
         "must be the USB serial number, vendor:product in hex"),
    ],
)
def test_input_device_problems(tmp_path: Path, extra: str, expected: str) -> None:
    path = write_config(tmp_path, extra=extra)
    with pytest.raises(ConfigError) as err:
        load_config(path)
    [problem] = [p for p in err.value.problems if expected in p]
    assert problem.startswith(f"{path}:") and problem.split(":")[1].isdigit()


def test_input_device_settings_reach_the_devices(tmp_path: Path) -> None:
    from edgehub.discovery import static_device_info

    path = write_config(tmp_path, extra="""
[discovery]
serial_ports = ["/dev/ttyAMA0"]
scanner_usb_ids = ["0416:c141", "28e9"]

[[device]]
id = "counter-scale"
driver = "mt8217"
transport = "serial"
address = "/dev/ttyS0"
unit = "lb"

[[device]]
id = "till-scanner"
driver = "serial_scanner"
transport = "serial"
address = "/dev/ttyACM0"
terminator = "none"
idle_ms = 80

[[device]]
id = "generic-scanner"
driver = "hid_scanner"
transport = "usb"
address = "0416:C141"
""")
    config = load_config(path)
    assert config.discovery.scanner_usb_ids == ("0416:c141", "28e9")
    scale, scanner, hid = config.devices
    assert scale.extra == {"unit": "lb"} and scanner.extra == {"terminator": "none", "idle_ms": "80"}
    info = static_device_info(hid)
    assert (info.extra["vid"], info.extra["pid"], info.serial_number) == ("0416", "c141", "")


def test_the_commented_device_examples_of_the_annotated_config_are_valid(tmp_path: Path) -> None:
    from tests.conftest import REPO

    lines = (REPO / "config" / "edgehub.toml").read_text().splitlines()
    start = lines.index("# [[device]]")
    block = []
    for line in lines[start:]:
        if not line.startswith("#"):
            break
        block.append(line.removeprefix("#").removeprefix(" ") if not line.startswith("#  ") else "")
    config = load_config(write_config(tmp_path, extra="\n".join(block)))
    by_id = {d.id: d for d in config.devices}
    assert by_id["counter-scale"].extra == {"unit": "kg"}
    assert by_id["till-scanner"].extra == {"terminator": "auto", "idle_ms": "100"}
    assert by_id["receipt-usb"].address == "X5FA012345" and by_id["front-scanner"].address == "0416:c141"


def test_the_config_knows_the_drivers_terminators_and_units() -> None:
    from drivers.scale_mt8217 import MT8217_UNITS
    from drivers.serial_scanner import TERMINATORS
    from edgehub import config

    assert config.SCANNER_TERMINATORS == TERMINATORS
    assert config.MT8217_UNITS == MT8217_UNITS
