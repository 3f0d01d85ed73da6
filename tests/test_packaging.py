"""`make run`'s first output is the hub's, not the build backend's: the license is an SPDX
expression (a TOML table made setuptools print a 15-line deprecation warning, three times), and
pip's own chatter goes to a log shown only when the install fails."""

from __future__ import annotations

import tomllib

from tests.conftest import REPO


def test_the_package_metadata_draws_no_deprecation_warning() -> None:
    project = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert isinstance(project["project"]["license"], str)
    assert any(req.startswith("setuptools>=77") for req in project["build-system"]["requires"])


def test_make_keeps_pips_output_in_a_log() -> None:
    makefile = (REPO / "Makefile").read_text()
    install = makefile.split("$(STAMP):", 1)[1].split("\n\n", 1)[0]
    assert "> $(VENV)/pip.log 2>&1" in install and "cat $(VENV)/pip.log" in install
