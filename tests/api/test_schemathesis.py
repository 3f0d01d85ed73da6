"""The OpenAPI file against the real thing: schemathesis fuzzes a real hub over a real loopback
socket (bounded examples) and checks every answer against the documented status codes and
schemas. Login and logout are left out: wrong secrets are rate-limited by design, which would
turn the rest of the run into 429s; they have their own tests."""

from __future__ import annotations

import asyncio
import shutil
import sys
from pathlib import Path

import pytest

from edgehub.support import OPENAPI_FILE
from tests.api.conftest import Box
from tests.conftest import API_TOKEN

ST = shutil.which("st") or str(Path(sys.executable).with_name("st"))
pytestmark = pytest.mark.skipif(not Path(ST).exists(), reason="pip install schemathesis")


async def test_api_matches_its_openapi_file(box: Box, tmp_path: Path) -> None:
    await box.wait_device_ready()
    proc = await asyncio.create_subprocess_exec(
        ST, "run", str(OPENAPI_FILE), "--url", box.base, "-H", f"Authorization: Bearer {API_TOKEN}",
        "--max-examples", "8", "--seed", "7", "--workers", "1", "--no-shrink",
        "--checks", "not_a_server_error,status_code_conformance,content_type_conformance,"
                    "response_schema_conformance",
        "--exclude-path", "/api/v1/login", "--exclude-path", "/api/v1/logout",
        # The bundle runs every self-check and packs logs: seconds per call, tested on its own.
        "--exclude-path", "/api/v1/bundle",
        "--request-timeout", "30", "--phases", "examples,coverage,fuzzing",
        "--report-dir", str(tmp_path), "--warnings", "off",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, cwd=tmp_path)
    out, _ = await proc.communicate()
    text = out.decode(errors="replace")
    assert proc.returncode == 0, text[-6000:]
    assert "No issues found" in text and "Tested: 26" in text, text[-3000:]
