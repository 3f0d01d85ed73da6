"""Browser tests' shared parts: Debian's Chromium driven by playwright, and the artifacts folder.

Screenshots of the browser tests go to one folder, ``test-artifacts/`` at the repository root
(git-ignored), or wherever ``EDGEHUB_ARTIFACTS`` points: ``make screenshots`` points it at
``artifacts/`` to refresh the screenshots kept in git. Each test prints the path of what it kept,
so a person reading the test log can open it.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
# Headless in a container: no sandbox (no user namespaces), no GPU, nothing phoning home.
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]

needs_chromium = pytest.mark.skipif(
    not Path(CHROMIUM).exists(), reason=f"{CHROMIUM} is not installed (apt-get install -y chromium)")


def artifacts_dir() -> Path:
    """The folder test artifacts are kept in (created if missing)."""
    folder = Path(os.environ.get("EDGEHUB_ARTIFACTS") or REPO / "test-artifacts")
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def keep(name: str) -> Path:
    """The path for artifact ``name``, announced on stdout (``pytest -s`` or the captured output)."""
    path = artifacts_dir() / name
    print(f"artifact: {path}")
    return path
