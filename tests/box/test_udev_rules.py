"""99-edgehub.rules is well-formed: bookworm's udev (252) has no ``udevadm verify``, so we parse it.

Every rule line must be ``KEY{attr}OP"value"`` pairs joined by commas, with keys udev knows and
match/assign operators where udev allows them; vendor ids are four lowercase hex digits; every
rule that claims a device node sets GROUP and MODE; every GOTO has its LABEL. ``image/check.sh``
also has bookworm's udevadm read the file for real.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

RULES = Path(__file__).resolve().parents[2] / "systemd" / "99-edgehub.rules"

PAIR = re.compile(
    r'\s*(?P<key>[A-Z_]+)(?:\{(?P<attr>[^}]+)\})?\s*(?P<op>==|!=|\+=|-=|:=|=)\s*"(?P<value>[^"]*)"\s*'
)
MATCH_KEYS = {
    "ACTION",
    "SUBSYSTEM",
    "SUBSYSTEMS",
    "KERNEL",
    "KERNELS",
    "DRIVER",
    "DRIVERS",
    "ATTR",
    "ATTRS",
    "ENV",
    "TAG",
    "DEVPATH",
    "PROGRAM",
    "RESULT",
}
ASSIGN_KEYS = {
    "GROUP",
    "MODE",
    "OWNER",
    "SYMLINK",
    "ENV",
    "TAG",
    "RUN",
    "IMPORT",
    "GOTO",
    "LABEL",
    "OPTIONS",
    "ATTR",
    "NAME",
}
KNOWN_VENDORS = {
    "04b8",
    "0519",
    "1504",
    "0419",
    "1d90",
    "2730",
    "154f",
    "0dd4",  # printers (chip makers' ids are printers by class 07 only)
    "0c2e",
    "0536",
    "05e0",
    "05f9",
    "1eab",
    "23d0",  # scanners
}


def rules() -> list[tuple[int, list[re.Match[str]]]]:
    parsed = []
    for number, line in enumerate(RULES.read_text().splitlines(), start=1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        assert not line.endswith("\\"), f"line {number}: keep one rule per line"
        pairs, pos = [], 0
        while pos < len(line):
            m = PAIR.match(line, pos)
            assert m, f"line {number}: cannot parse from column {pos + 1}: {line[pos:]!r}"
            pairs.append(m)
            pos = m.end()
            if pos < len(line):
                assert line[pos] == ",", f"line {number}: expected ',' at column {pos + 1}"
                pos += 1
        parsed.append((number, pairs))
    return parsed


def test_every_pair_is_a_known_key_with_a_sensible_operator() -> None:
    for number, pairs in rules():
        for m in pairs:
            key, op = m["key"], m["op"]
            if op in ("==", "!="):
                assert key in MATCH_KEYS, f"line {number}: {key} cannot be matched"
            else:
                assert key in ASSIGN_KEYS, f"line {number}: {key} cannot be assigned"
                assert op != "-=" or key in {"TAG", "SYMLINK"}, f"line {number}: -= on {key}"
            if key in {"ATTR", "ATTRS", "ENV", "IMPORT"}:
                assert m["attr"], f"line {number}: {key} needs {{name}}"


def test_vendor_ids_are_valid_hex_and_the_ones_we_support() -> None:
    seen = set()
    for number, pairs in rules():
        for m in pairs:
            if m["attr"] in ("idVendor", "idProduct"):
                assert re.fullmatch(r"[0-9a-f]{4}", m["value"]), (
                    f"line {number}: {m['value']!r} not 4 lowercase hex"
                )
                if m["attr"] == "idVendor":
                    seen.add(m["value"])
    assert seen == KNOWN_VENDORS


def test_every_claim_sets_group_and_mode() -> None:
    for number, pairs in rules():
        keys = {m["key"] for m in pairs if m["op"] in ("=", ":=")}
        if "GROUP" in keys or "MODE" in keys:
            assert {"GROUP", "MODE"} <= keys, f"line {number}: set GROUP and MODE together"
            mode = next(m["value"] for m in pairs if m["key"] == "MODE")
            assert re.fullmatch(r"0[0-7]{3}", mode) and not int(mode, 8) & 0o007, (
                f"line {number}: mode {mode}"
            )
    groups = {m["value"] for _, pairs in rules() for m in pairs if m["key"] == "GROUP"}
    assert groups == {"edgehub", "lp", "dialout"}


@pytest.mark.parametrize("section", ["usb", "lp", "hidraw", "tty"])
def test_each_section_claims_devices_and_links_them_under_dev_edgehub(section: str) -> None:
    text = RULES.read_text()
    assert f'SYMLINK+="edgehub/{section}/' in text
    # Stable names: by serial number when the device has one, else by port path; never by tty name.
    links = [m["value"] for _, pairs in rules() for m in pairs if m["key"] == "SYMLINK"]
    assert all("$env{ID_SERIAL}" in v or "$env{ID_PATH}" in v for v in links)


def test_gotos_have_labels_and_removal_is_skipped() -> None:
    gotos = {m["value"] for _, pairs in rules() for m in pairs if m["key"] == "GOTO"}
    labels = [m["value"] for _, pairs in rules() for m in pairs if m["key"] == "LABEL"]
    assert len(labels) == len(set(labels))
    assert gotos <= set(labels)
    first = rules()[0][1]
    assert [(m["key"], m["op"], m["value"]) for m in first] == [
        ("ACTION", "==", "remove"),
        ("GOTO", "=", "edgehub_end"),
    ]


def test_serial_devices_are_kept_from_modemmanager() -> None:
    assert 'ENV{ID_MM_DEVICE_IGNORE}="1"' in RULES.read_text()


def test_chip_makers_ids_are_no_printers_by_themselves() -> None:
    # 0416/0483/1fc9 are on scanners and STM32 virtual COM ports too: class 07 decides.
    text = RULES.read_text()
    assert 'ENV{ID_USB_INTERFACES}=="*:0701*", ENV{EDGEHUB_KIND}="printer"' in text
    for vendor in ("0416", "0483", "1fc9"):
        assert f'"{vendor}"' not in text


def test_built_in_uarts_and_hats_are_given_to_the_serial_group() -> None:
    kernel = next(m["value"] for _, pairs in rules() for m in pairs
                  if m["key"] == "KERNEL" and m["op"] == "!=" and "ttyUSB" in m["value"])
    assert set(kernel.split("|")) == {"ttyUSB[0-9]*", "ttyACM[0-9]*", "ttyS[0-9]*", "ttyAMA[0-9]*", "ttySC[0-9]*"}


def test_generic_scanners_are_asked_of_edgehub(tmp_path: Path) -> None:
    from edgehub.udevmatch import kind, main

    programs = [m["value"] for _, pairs in rules() for m in pairs if m["key"] == "IMPORT" and m["attr"] == "program"]
    assert len(programs) == 2  # the raw USB node and the hidraw node
    assert all(p == "/opt/edgehub/venv/bin/python3 -m edgehub.udevmatch $attr{idVendor} $attr{idProduct}"
               for p in programs)
    config = tmp_path / "edgehub.toml"
    config.write_text('[discovery]\nscanner_usb_ids = ["0416:c141", "28e9"]\n\n[[device]]\ndriver = "hid_scanner"\n'
                      'transport = "usb"\naddress = "1a86:e026"\n\n[[device]]\ndriver = "escpos"\n'
                      'transport = "usb"\naddress = "04b8:0e28"\n')
    assert kind("0416", "c141", config) == "scanner"
    assert kind("28e9", "0001", config) == "scanner"  # a vendor named alone: any of its products
    assert kind("1a86", "e026", config) == "scanner"
    assert kind("0416", "5011", config) is None  # the printer clone on the same chip maker's id
    assert kind("04b8", "0e28", config) is None  # a printer [[device]] is no scanner
    assert kind("0416", "c141", tmp_path / "missing.toml") is None
    config.write_text("not [ toml")
    assert kind("0416", "c141", config) is None
    assert main(["zz", "c141", str(config)]) == 0 and main([]) == 2
