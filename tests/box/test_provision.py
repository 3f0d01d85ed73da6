"""``edgehub provision``: what an installer sees on a box, in temporary folders.

Runs the real command (``edgehub.provision.main``) against a provisioning file, then checks what
a box would have: a config the daemon's own loader accepts, 0600 secrets kept across runs, the
enrollment token out of the boot file, broker files written, clear errors and nothing changed on
bad input.
"""

from __future__ import annotations

import re
import shutil
import stat
import tomllib
from pathlib import Path

import pytest

from edgehub.config import load_config
from edgehub.provision import PLACEHOLDERS, main

EXAMPLE = (
    Path(__file__).resolve().parents[2]
    / "image/pi-gen/stage-edgehub/00-install/files/edgehub-provision.toml.example"
)

pytestmark = pytest.mark.skipif(
    shutil.which("mosquitto_passwd") is None,
    reason="mosquitto_passwd (Debian package mosquitto) is not installed",
)

GOOD = """\
# on the boot partition, written on a laptop
[store]
id = "store-0042"
name = "Main Street"

[cloud]
url = "mqtts://cloud.chain.test:8883"
enrollment_token = "one-time-token-123"   # from the cloud console

[[terminal]]
id = "pos-1"
kind = "pos"

[[terminal]]
id = "kds-grill"
kind = "kds"
"""


@pytest.fixture
def box(tmp_path: Path) -> dict[str, Path]:
    paths = {
        "boot": tmp_path / "boot/edgehub-provision.toml",
        "etc": tmp_path / "etc/edgehub",
        "var": tmp_path / "var/lib/edgehub",
    }
    paths["boot"].parent.mkdir(parents=True)
    paths["boot"].write_text(GOOD)
    return paths


def run(box: dict[str, Path]) -> int:
    return main(
        [
            "--from",
            str(box["boot"]),
            "--config-dir",
            str(box["etc"]),
            "--state-dir",
            str(box["var"]),
            "--non-interactive",
        ]
    )


def secrets_of(box: dict[str, Path]) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted((box["etc"] / "secrets").iterdir())}


def test_first_run_writes_a_config_the_daemon_accepts(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(box) == 0
    config = load_config(box["etc"] / "edgehub.toml")
    assert config.store.id == "store-0042"
    assert config.store.name == "Main Street"
    assert config.broker.mode == "external"
    assert config.broker.config_dir == box["etc"] / "mosquitto"
    # Two listeners on one port make Mosquitto refuse to start (seen in image/check.sh).
    assert config.broker.lan_listen is not None
    assert config.broker.listen.port != config.broker.lan_listen.port
    assert config.paths.data_dir == box["var"]
    assert [(t.id, t.kind) for t in config.terminals] == [("pos-1", "pos"), ("kds-grill", "kds")]
    secrets = secrets_of(box)
    assert config.api.token == secrets["api-token"].strip()
    assert config.terminal("pos-1").password == secrets["terminal-pos-1"].strip()  # type: ignore[union-attr]
    assert len(config.api.token) >= 32
    assert len({config.api.token, config.broker.hub_password, *(t.password for t in config.terminals)}) == 4
    for name in ("mosquitto.conf", "passwd", "acl"):
        assert (box["etc"] / "mosquitto" / name).exists()
    assert "store-0042" in (box["etc"] / "mosquitto/acl").read_text()
    out = capsys.readouterr()
    # The summary says where the secrets are and never what they are.
    assert str(box["etc"] / "secrets") in out.out
    for value in secrets.values():
        assert value.strip() not in out.out + out.err


def test_secret_files_are_0600_and_nothing_is_inline(box: dict[str, Path]) -> None:
    assert run(box) == 0
    for path in (box["etc"] / "secrets").iterdir():
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert stat.S_IMODE((box["etc"] / "secrets").stat().st_mode) == 0o750
    config_text = (box["etc"] / "edgehub.toml").read_text()
    for value in secrets_of(box).values():
        assert value.strip() not in config_text
    data = tomllib.loads(config_text)
    assert "token" not in data["api"] and data["api"]["token_file"] == "secrets/api-token"


def test_enrollment_token_leaves_the_boot_file_and_is_kept(box: dict[str, Path]) -> None:
    assert run(box) == 0
    boot = box["boot"].read_text()
    assert "one-time-token-123" not in boot
    assert "# on the boot partition, written on a laptop" in boot  # the installer's comments survive
    remaining = tomllib.loads(boot)
    assert remaining["cloud"] == {"url": "mqtts://cloud.chain.test:8883"}
    assert remaining["store"]["id"] == "store-0042"
    assert (box["etc"] / "secrets/cloud-enrollment-token").read_text().strip() == "one-time-token-123"


def test_second_run_keeps_secrets_and_gives_the_same_config(box: dict[str, Path]) -> None:
    assert run(box) == 0
    config1 = (box["etc"] / "edgehub.toml").read_bytes()
    secrets1 = secrets_of(box)
    passwd1 = (box["etc"] / "mosquitto/passwd").read_bytes()
    marker1 = (box["etc"] / "provisioned.json").read_bytes()
    assert run(box) == 0  # the boot file no longer has the token: still fine
    assert (box["etc"] / "edgehub.toml").read_bytes() == config1
    assert secrets_of(box) == secrets1
    # Nothing changed, so the broker's files were not rewritten (new salts would mean new bytes).
    assert (box["etc"] / "mosquitto/passwd").read_bytes() == passwd1
    assert (box["etc"] / "provisioned.json").read_bytes() == marker1


def test_a_new_terminal_gets_a_password_and_the_others_keep_theirs(box: dict[str, Path]) -> None:
    assert run(box) == 0
    before = secrets_of(box)
    box["boot"].write_text(box["boot"].read_text() + '\n[[terminal]]\nid = "kiosk-1"\nkind = "kiosk"\n')
    assert run(box) == 0
    after = secrets_of(box)
    assert {k: v for k, v in after.items() if k in before} == before
    assert "terminal-kiosk-1" in after
    assert load_config(box["etc"] / "edgehub.toml").terminal("kiosk-1") is not None


BAD_CASES = [
    ('[store]\nid = "Store 42"\n', ["store.id: 'Store 42' must be lowercase"]),
    ('[store]\nname = "x"\n', ["store.id: missing required key"]),
    ("", ["store: missing required table"]),
    ('[store]\nid = "s1"\ncolour = "red"\n', ["store.colour: unknown key"]),
    (
        '[store]\nid = "s1"\n[cloud]\nurl = "http://x"\nenrollment_token = "t"\n',
        ["cloud.url: 'http://x' must look like"],
    ),
    ('[store]\nid = "s1"\n[cloud]\nurl = "mqtts://c:8883"\n', ["cloud: needs enrollment_token"]),
    (
        '[store]\nid = "s1"\n[[terminal]]\nid = "pos-1"\n[[terminal]]\nid = "pos-1"\n',
        ["terminal[1].id: 'pos-1' is used twice"],
    ),
    (
        '[store]\nid = "s1"\n[[terminal]]\nid = "pos-1"\nkind = "till"\n',
        ["terminal[0].kind: 'till' must be one of"],
    ),
    ('[store]\nid = "s1"\n[api]\nlisten = "everywhere"\n', ["api.listen: bad address"]),
    # The generated mosquitto.conf listens on the LAN port (and 127.0.0.1:1884 for the hub).
    (
        '[store]\nid = "s1"\n[api]\nlisten = "0.0.0.0:1883"\n',
        ["api.listen: port 1883 is also the broker's LAN listener"],
    ),
    (
        '[store]\nid = "s1"\n[api]\nlisten = "0.0.0.0:9000"\n[broker]\nlan_listen = "192.168.1.5:9000"\n',
        ["api.listen: port 9000 is also the broker's LAN listener"],
    ),
    (
        '[store]\nid = "s1"\n[broker]\nlan_listen = "0.0.0.0:8080"\n',
        ["broker.lan_listen: port 8080 is also the box page and API"],
    ),
    (
        '[store]\nid = "s1"\n[api]\nlisten = "127.0.0.1:1884"\n',
        ["api.listen: port 1884 is the broker's listener for the hub"],
    ),
    ('[store]\nid = "s1"\n[api]\nlisten = "0.0.0.0:0"\n', ["api.listen: '0.0.0.0:0': port 0"]),
    ('[store]\nid = "s1"\n[broker]\nlan_listen = "0.0.0.0:0"\n', ["broker.lan_listen: '0.0.0.0:0': port 0"]),
    ('[store]\nid = "s1"\n[[terminal]]\nkind = "pos"\n', ["terminal[0].id: missing required key"]),
    ("[store\nid = 1\n", ["not valid TOML"]),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CASES)
def test_bad_input_exits_2_with_file_key_message_and_changes_nothing(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str], text: str, expected: list[str]
) -> None:
    box["boot"].write_text(text)
    assert run(box) == 2
    err = capsys.readouterr().err
    for message in expected:
        assert f"{box['boot']}: {message}" in err, err
    assert not box["etc"].exists()
    assert box["boot"].read_text() == text


def test_every_problem_is_listed_at_once(box: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    box["boot"].write_text('[store]\nid = "BAD"\n[[terminal]]\nid = "x y"\nkind = "till"\n')
    assert run(box) == 2
    err = capsys.readouterr().err
    assert "store.id" in err and "terminal[0].id" in err and "terminal[0].kind" in err


def test_the_store_of_a_provisioned_box_cannot_change_by_accident(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(box) == 0
    box["boot"].write_text(GOOD.replace("store-0042", "store-0043"))
    assert run(box) == 2
    assert "provisioned for store 'store-0042'" in capsys.readouterr().err
    assert load_config(box["etc"] / "edgehub.toml").store.id == "store-0042"


def test_missing_file_and_no_terminal_to_ask_are_clear(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    box["boot"].unlink()
    assert run(box) == 2
    assert f"{box['boot']}: file not found" in capsys.readouterr().err
    assert main(["--config-dir", str(box["etc"]), "--non-interactive"]) == 2
    assert "give --from FILE" in capsys.readouterr().err


def test_windows_line_endings_and_bom_from_a_laptop(box: dict[str, Path]) -> None:
    box["boot"].write_bytes(b"\xef\xbb\xbf" + GOOD.replace("\n", "\r\n").encode())
    assert run(box) == 0
    raw = box["boot"].read_bytes()
    assert b"one-time-token-123" not in raw
    assert b"\r\n" in raw
    assert load_config(box["etc"] / "edgehub.toml").store.id == "store-0042"


def test_separate_addresses_on_one_port_are_fine(box: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    box["boot"].write_text(
        GOOD + '\n[api]\nlisten = "127.0.0.1:9000"\n[broker]\nlan_listen = "192.0.2.7:9000"\n'
    )
    assert run(box) == 0, capsys.readouterr().err
    config = load_config(box["etc"] / "edgehub.toml")
    assert (config.api.listen.port, config.broker.lan_listen and config.broker.lan_listen.port) == (9000, 9000)
    assert ":9000/" in capsys.readouterr().out


def example_placeholders() -> dict[str, str]:
    """``table.key: value`` for every line the example marks ``# placeholder``."""
    found: dict[str, str] = {}
    table = ""
    for line in EXAMPLE.read_text().splitlines():
        if m := re.match(r"^\s*\[\[?\s*([\w.-]+)\s*\]\]?", line):
            table = m.group(1)
        elif "# placeholder" in line:
            key, _, rest = line.partition("=")
            found[f"{table}.{key.strip()}"] = tomllib.loads(f"v = {rest.split('#')[0]}")["v"]
    return found


def test_every_placeholder_of_the_example_file_is_known() -> None:
    # Both ways: a new placeholder in the example, or a changed value, must reach PLACEHOLDERS.
    assert example_placeholders() == dict(PLACEHOLDERS)
    data = tomllib.loads(EXAMPLE.read_text())
    for dotted, value in PLACEHOLDERS.items():
        table, _, key = dotted.partition(".")
        assert data[table][key] == value, dotted


def test_the_example_file_copied_unfilled_is_refused_and_nothing_changes(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    shutil.copy(EXAMPLE, box["boot"])
    original = box["boot"].read_bytes()
    assert run(box) == 2
    err = capsys.readouterr().err
    for dotted, value in PLACEHOLDERS.items():
        assert f"{box['boot']}: {dotted}: {value!r} is the placeholder" in err, err
    assert not box["etc"].exists()
    assert box["boot"].read_bytes() == original  # the placeholder token was not "taken"


@pytest.mark.parametrize("left", sorted(PLACEHOLDERS))
def test_one_placeholder_left_is_enough_to_refuse(
    box: dict[str, Path], capsys: pytest.CaptureFixture[str], left: str
) -> None:
    real = {"store.id": "store-0007", "cloud.url": "mqtts://cloud.chain.test:8883", "cloud.enrollment_token": "tok-1"}
    text = EXAMPLE.read_text()
    for dotted, value in PLACEHOLDERS.items():
        if dotted != left:
            text = text.replace(f'"{value}"', f'"{real[dotted]}"')
    box["boot"].write_text(text)
    assert run(box) == 2
    err = capsys.readouterr().err
    assert f"{box['boot']}: {left}: " in err and "placeholder" in err
    assert not box["etc"].exists()


def test_the_example_file_filled_in_provisions(box: dict[str, Path]) -> None:
    text = EXAMPLE.read_text()
    real = {"store.id": "store-0007", "cloud.url": "mqtts://cloud.chain.test:8883", "cloud.enrollment_token": "tok-1"}
    for dotted, value in PLACEHOLDERS.items():
        text = text.replace(f'"{value}"', f'"{real[dotted]}"')
    box["boot"].write_text(text)
    assert run(box) == 0
    assert load_config(box["etc"] / "edgehub.toml").store.id == "store-0007"
    assert (box["etc"] / "secrets/cloud-enrollment-token").read_text().strip() == "tok-1"


def test_relative_dirs_mean_relative_to_where_it_was_run(
    box: dict[str, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.chdir(tmp_path)
    argv = ["--from", "boot/edgehub-provision.toml", "--config-dir", "etc/edgehub", "--state-dir", "var/lib/edgehub"]
    assert main([*argv, "--non-interactive"]) == 0
    etc = tmp_path / "etc/edgehub"
    config = load_config(etc / "edgehub.toml")
    # Loaded from anywhere (the daemon's cwd is /), the paths still point where the files are.
    assert config.broker.config_dir == etc / "mosquitto"
    assert config.paths.data_dir == tmp_path / "var/lib/edgehub"
    assert (etc / "mosquitto/mosquitto.conf").exists()
    assert not (etc / "etc").exists()
    data = tomllib.loads((etc / "edgehub.toml").read_text())
    assert Path(data["paths"]["data_dir"]).is_absolute() and Path(data["broker"]["config_dir"]).is_absolute()
    assert f"{etc / 'mosquitto'}/" in capsys.readouterr().out


def test_asked_on_a_terminal_only_the_bad_answer_is_asked_again(
        box: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """The issue: interactive provisioning asked four questions, then rejected one answer, and
    every answer had to be typed again."""
    from edgehub.provision import Layout, ask_request

    answers = iter(["Store 42!", "store-0042", "Main Street", "ftp://cloud", "mqtts://cloud.chain.test:8883", "",
                    "one-time-token-123", "pos-1:pos, kds-grill:screen", "pos-1:pos, kds-grill:kds"])
    asked: list[str] = []

    def ask(prompt: str) -> str:
        asked.append(prompt.split(" (")[0].rstrip(": "))
        return next(answers)

    request = ask_request(Layout(config_dir=box["etc"], state_dir=box["var"]), ask)
    assert asked == ["store id", "store id", "store name", "cloud url", "cloud url", "one-time enrollment token",
                     "one-time enrollment token", "terminals as id:kind, comma separated",
                     "terminals as id:kind, comma separated"]
    assert request.store_id == "store-0042" and request.cloud_secrets == {"enrollment_token": "one-time-token-123"}
    assert [(t.id, t.kind) for t in request.terminals] == [("pos-1", "pos"), ("kds-grill", "kds")]
    told = capsys.readouterr().err.splitlines()
    assert told == [
        "  store.id: 'Store 42!' must be lowercase letters, digits and dashes (max 63), starting with a letter or "
        "digit; try again",
        "  cloud.url: 'ftp://cloud' must look like mqtts://host:port; try again",
        "  cloud.enrollment_token: must not be empty; try again",
        "  terminal[1].kind: 'screen' must be one of pos, handheld, kds, kiosk, pager, display; try again",
    ]


def test_dry_run_checks_and_shows_everything_and_writes_nothing(
        box: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["--from", str(box["boot"]), "--config-dir", str(box["etc"]), "--state-dir", str(box["var"]),
                 "--dry-run"])
    out = capsys.readouterr().out
    assert code == 0
    assert not box["etc"].exists() and not box["var"].exists()
    assert box["boot"].read_text() == GOOD  # the token is still there: nothing was taken
    assert "--dry-run: nothing was written; for store store-0042 it would do this" in out
    assert f"config     {box['etc'] / 'edgehub.toml'} (would be written)" in out
    assert ("new        would make cloud-enrollment-token, api-token, broker-hub, terminal-pos-1, terminal-kds-grill, "
            "screen-kds-grill, tls/box.key") in out
    assert "boot file  cloud secrets would be taken out of it" in out
    written = out.split(" as it would be written ---\n", 1)[1]
    assert 'id = "store-0042"' in written and "one-time-token-123" not in written
    assert 'enrollment_token_file = "secrets/cloud-enrollment-token"' in written

    assert run(box) == 0  # the real run writes what the dry run showed
    assert (box["etc"] / "edgehub.toml").read_text() == written
    capsys.readouterr()
    code = main(["--from", str(box["boot"]), "--config-dir", str(box["etc"]), "--state-dir", str(box["var"]),
                 "--dry-run"])
    out = capsys.readouterr().out
    assert "(unchanged)" in out and "none (existing secrets kept)" in out


def test_the_summary_says_how_to_log_in_and_set_up_kitchen_screens(
        box: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    assert run(box) == 0
    out = capsys.readouterr().out
    assert f"log in     on the box page with the API token: sudo cat {box['etc'] / 'secrets/api-token'}" in out
    assert f":8080/kds/{{station}}?token=<the secret in {box['etc'] / 'secrets/screen-kds-grill'}>" in out
    assert "the box page lists every station's link (Orders and kitchen)" in out
