"""Issue 19 at provisioning and in the config: ids matched whole, control characters refused with
the key named before anything reaches a generated file, bounded input, TLS-only enrollment, the
box's certificate and screen secrets, and a password file that never holds a password."""

from __future__ import annotations

from pathlib import Path

import pytest

from edgehub.broker import passwd_text, password_hash, write_config
from edgehub.config import load_config
from edgehub.errors import BrokerError, ConfigError
from edgehub.provision import main
from tests.conftest import write_config as write_test_config

GOOD = """\
[store]
id = "store-0042"
[cloud]
url = "mqtts://cloud.chain.test:8883"
enrollment_token = "one-time-token-123"
[[terminal]]
id = "pos-1"
[[terminal]]
id = "kds-grill"
kind = "kds"
stations = ["grill"]
[[terminal]]
id = "pass-display"
kind = "display"
[[terminal]]
id = "pagers"
kind = "pager"
"""


def run(tmp_path: Path, text: str | bytes, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, Path]:
    boot = tmp_path / "boot" / "edgehub-provision.toml"
    boot.parent.mkdir(parents=True, exist_ok=True)
    boot.write_bytes(text if isinstance(text, bytes) else text.encode())
    code = main(["--from", str(boot), "--config-dir", str(tmp_path / "etc"), "--state-dir", str(tmp_path / "var"),
                 "--non-interactive"])
    captured = capsys.readouterr()
    return code, captured.err + captured.out, boot


@pytest.mark.parametrize("bad, key", [
    ('id = "pos-1\\n"', "terminal[0].id"),
    ('id = "edgehub-hub-store-0042"', "terminal[0].id"),
])
def test_a_terminal_id_with_a_newline_or_the_hubs_name_is_refused(
        tmp_path: Path, capsys: pytest.CaptureFixture[str], bad: str, key: str) -> None:
    code, out, boot = run(tmp_path, GOOD.replace('id = "pos-1"', bad), capsys)
    assert code == 2 and f"{key}:" in out, out
    assert not (tmp_path / "etc").exists()  # nothing written
    assert "one-time-token-123" in boot.read_text()  # a refused file is left as it was


def test_the_store_id_must_be_whole(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(tmp_path, GOOD.replace('id = "store-0042"', 'id = "s\\n"'), capsys)
    assert code == 2 and "store.id:" in out and "control characters" in out


def test_a_huge_or_deeply_nested_file_gets_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, _ = run(tmp_path, GOOD + "# " + "x" * (50 * 1024 * 1024) + "\n", capsys)
    assert code == 2 and "larger than 64 KiB" in out
    code, out, _ = run(tmp_path, "a = " + "[" * 20_000 + "]" * 20_000 + "\n", capsys)
    assert code == 2 and "nested too deeply" in out


def test_plain_mqtt_would_send_the_token_in_clear(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code, out, boot = run(tmp_path, GOOD.replace("mqtts://", "mqtt://"), capsys)
    assert code == 2 and "cloud.url:" in out and "in clear" in out
    assert "one-time-token-123" in boot.read_text()


def test_provisioning_makes_the_certificate_and_screen_secrets(tmp_path: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    code, out, boot = run(tmp_path, GOOD, capsys)
    assert code == 0, out
    config = load_config(tmp_path / "etc" / "edgehub.toml")
    assert config.api.tls and config.api.tls_key_file is not None
    assert config.api.tls_key_file.stat().st_mode & 0o777 == 0o600
    assert "SHA256 " in out and "https://" in out
    grill = config.terminal("kds-grill")
    assert grill is not None and grill.stations == ("grill",) and len(grill.screen_token) >= 32
    assert grill.screen_token not in (config.api.token, grill.password)
    assert (tmp_path / "etc" / "secrets" / "screen-kds-grill").stat().st_mode & 0o777 == 0o600
    assert "one-time-token-123" not in boot.read_text()
    acl = (tmp_path / "etc" / "mosquitto" / "acl").read_text()
    assert "kds/grill/command" in acl and "kds/+/command" not in acl
    # The customer display at the pass gets its own page secret too (/pickup); a pager none.
    display, pager = config.terminal("pass-display"), config.terminal("pagers")
    assert display is not None and len(display.screen_token) >= 32
    assert display.screen_token not in (grill.screen_token, config.api.token, display.password)
    assert pager is not None and pager.kind == "pager" and not pager.screen_token
    assert "pass-display: https://" in out and "/pickup?token=<the secret in" in out
    assert "user pagers\n" in acl and "topic read edgehub/v1/store-0042/ready/+" in acl
    # The password file holds hashes only, and Mosquitto's own format.
    for line in (tmp_path / "etc" / "mosquitto" / "passwd").read_text().splitlines():
        _, _, hashed = line.partition(":")
        assert hashed.startswith("$7$101$"), line
        assert hashed != "" and config.api.token not in line


def test_control_characters_in_secrets_are_refused_with_the_key(tmp_path: Path) -> None:
    path = write_test_config(tmp_path)
    text = path.read_text()
    path.write_text(text.replace('password = "pw-pos-1"', 'password = "p9\\nintruder:pw"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "terminal[0].password: must not contain control characters" in str(caught.value)
    path.write_text(text.replace('id = "s1"', 'id = "s1\\n"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "store.id:" in str(caught.value)
    (tmp_path / "pw").write_text("good\nintruder:pw\n")
    path.write_text(text.replace('password = "pw-pos-2"', 'password_file = "pw"'))
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert "terminal[1].password_file:" in str(caught.value) and "control characters" in str(caught.value)


def test_the_password_file_is_never_plain_and_adds_no_user(tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="control characters"):
        passwd_text([("pos-1", "p9\nintruder:pw")])
    with pytest.raises(BrokerError):
        passwd_text([("a:b", "pw")])
    assert password_hash("pw", b"\x00" * 12) == password_hash("pw", b"\x00" * 12)
    config = load_config(write_test_config(tmp_path))
    files = write_config(config)
    text = files.passwd.read_text()
    assert "pw-pos-1" not in text and text.count("\n") == 3
