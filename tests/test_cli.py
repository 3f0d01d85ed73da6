"""The `edgehub` command as a newcomer and an installer meet it: every command and option explains
itself in --help (a description, defaults, examples), and an expected failure is a line that says
what and where, never a traceback."""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import pytest

from edgehub.cli import build_parser, main
from edgehub.provision import build_parser as provision_parser
from tests.conftest import write_config


def commands(parser: argparse.ArgumentParser, path: str = "edgehub") -> Iterator[tuple[str, argparse.ArgumentParser]]:
    yield path, parser
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for name, sub in action.choices.items():
                if name != "provision":  # its own parser, below
                    yield from commands(sub, f"{path} {name}")


def all_commands() -> list[tuple[str, argparse.ArgumentParser]]:
    return [*commands(build_parser()), ("edgehub provision", provision_parser())]


COMMANDS = all_commands()


@pytest.mark.parametrize("name,parser", COMMANDS, ids=[name for name, _ in COMMANDS])
def test_every_command_and_option_explains_itself(name: str, parser: argparse.ArgumentParser) -> None:
    """The issue: `run`, `sim terminal`, `discover` and `config check` had no description, several
    options no help or shown default, and there were no examples."""
    text = parser.format_help()
    assert parser.description, f"{name}: no description"
    assert "examples:\n  " in text, f"{name}: no examples\n{text}"
    for action in parser._actions:  # noqa: SLF001
        if isinstance(action, argparse._SubParsersAction):  # noqa: SLF001
            for choice in action._choices_actions:  # noqa: SLF001
                assert choice.help, f"{name} {choice.dest}: no summary"
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        shown = action.default not in (None, False, [], argparse.SUPPRESS) and action.option_strings
        if shown:
            assert "default" in parser._get_formatter()._get_help_string(action), (name, action.option_strings)  # noqa: SLF001


def test_help_fits_an_80_column_terminal(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("COLUMNS", "80")  # argparse wraps to the terminal's width
    for name, parser in all_commands():
        prose = parser.format_help().split("examples:")[0].splitlines()
        assert all(len(line) <= 80 for line in prose), (name, [line for line in prose if len(line) > 80])


def failing_runs(tmp_path: Path) -> list[list[str]]:
    good = write_config(tmp_path / "box", mode="managed")
    unwritable = write_config(tmp_path / "unwritable", mode="managed")
    unwritable.write_text(unwritable.read_text().replace('data_dir = "data"', 'data_dir = "/proc/edgehub-data"')
                          .replace('run_dir = "run"', 'run_dir = "/proc/edgehub-run"'))
    no_pos = write_config(tmp_path / "no-pos", mode="managed", terminals=("kds-grill",))
    missing = str(tmp_path / "missing.toml")
    return [
        ["run", "--config", missing],
        ["run", "--config", str(unwritable)],
        ["run", "--config", str(no_pos), "--sim-orders"],
        ["config", "check", str(tmp_path)],
        ["broker", "write-config", "--config", str(unwritable)],
        ["doctor", "--config", missing],
        ["bundle", "--config", str(good), "-o", "/proc/edgehub-bundle.tar.gz"],
        ["sync", "--config", str(good), "--timeout", "1"],
        ["sim", "terminal", "--config", str(good), "--orders", "1", "--timeout", "1"],
        ["sim", "store", "--lan", "10.0.0.1"],
        ["discover", "--no-usb", "--no-serial", "--subnet", "10.0.0.300/24"],
        ["device", "test", "no-such-device", "--config", str(good)],
        ["provision", "--from", missing, "--non-interactive"],
    ]


def test_expected_failures_are_one_clear_line_never_a_traceback(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    for args in failing_runs(tmp_path):
        code = main(args)
        out, err = capsys.readouterr()
        assert code in (1, 2), (args, code, out, err)
        assert err.strip() and "Traceback" not in out + err, (args, err)
        assert not Path("/proc/edgehub-data").exists()
