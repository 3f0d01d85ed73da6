"""Logs: one logfmt line per event on stderr, per-component levels from [log], priorities for
journald; what ``edgehub run`` really writes, read back from a real child process."""

from __future__ import annotations

import asyncio
import re
import shlex
import sys
from pathlib import Path

from tests.conftest import REPO, Terminal, order, write_config

VALUE = r'("(?:[^"\\]|\\.)*"|\S+)'
LINE = re.compile(rf"^(<\d>)?(ts=\S+ )?level=(\w+) component=(\S+) msg={VALUE}( \w+={VALUE})*$")


def parse(line: str) -> dict[str, str]:
    """The key=value pairs of one logfmt line (values unquoted)."""
    assert LINE.match(line), f"not one logfmt event: {line!r}"
    pairs: dict[str, str] = {}
    for key, value in re.findall(rf"(\w+)={VALUE}", line):
        pairs.setdefault(key, value[1:-1] if value.startswith('"') else value)
    return pairs


async def run_hub(tmp_path: Path, log_table: str, env: dict[str, str]) -> list[str]:
    """``edgehub run`` (managed broker) until it is ready and took one order; its stderr lines."""
    path = write_config(tmp_path / "box", mode="managed", extra="")
    path.write_text(path.read_text() + log_table)
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "edgehub", "run", "--config", str(path), cwd=REPO, env=env,
        stdout=asyncio.subprocess.DEVNULL, stderr=asyncio.subprocess.PIPE)
    assert proc.stderr is not None
    lines: list[str] = []
    try:
        async with asyncio.timeout(20):
            while True:
                raw = await proc.stderr.readline()
                assert raw, f"edgehub exited: {lines}"
                lines.append(raw.decode().rstrip("\n"))
                if "msg=\"ready: store" in lines[-1] or "msg=ready" in lines[-1]:
                    break
        from edgehub.config import load_config

        async with Terminal(load_config(path), "pos-1") as pos:
            await pos.send(b'{"schema":"order/1","order_id":"L-1","lines":[]}')  # rejected: logged
            await pos.ack()
            await pos.send(order("L-2"))
            await pos.ack()
    finally:
        proc.terminate()
        rest = await proc.stderr.read()
        await proc.wait()
    lines += rest.decode().splitlines()
    return [line for line in lines if line]


async def test_one_logfmt_line_per_event_with_component_levels(tmp_path: Path) -> None:
    table = '\n[log]\nlevel = "warning"\ncomponents = { hub = "info", intake = "debug" }\n'
    import os

    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    lines = await run_hub(tmp_path, table, env)
    events = [parse(line) for line in lines]
    assert all(e["ts"].endswith("Z") for e in events)
    by_component: dict[str, set[str]] = {}
    for e in events:
        by_component.setdefault(e["component"], set()).add(e["level"])
    # The hub says it is ready at info; intake was asked for debug; the rest only warns.
    assert any(e["component"] == "hub" and e["msg"].startswith("ready: store s1") for e in events), lines
    for component, levels in by_component.items():
        if component not in ("hub", "intake"):
            assert levels <= {"warning", "error", "critical"}, (component, levels, lines)


async def test_under_journald_lines_carry_their_priority_and_no_timestamp(tmp_path: Path) -> None:
    import os

    env = {**os.environ, "JOURNAL_STREAM": "8:12345"}  # what systemd sets for a journald stdout/stderr
    lines = await run_hub(tmp_path, '\n[log]\nlevel = "info"\n', env)
    for line in lines:
        event = parse(line)
        assert "ts" not in event, line
        priority = int(line[1])
        assert priority == {"debug": 7, "info": 6, "warning": 4, "error": 3, "critical": 2}[event["level"]], line
    assert any(line.startswith("<6>") and "component=hub" in line for line in lines), lines


def test_tracebacks_and_newlines_stay_on_one_line() -> None:
    import logging

    from edgehub.logs import LineFormatter

    formatter = LineFormatter(timestamps=True)
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        record = logging.getLogger("edgehub.kitchen").makeRecord(
            "edgehub.kitchen", logging.ERROR, __file__, 1, 'ticket %s said "no"\ntwice', ("o1/grill/1",),
            sys.exc_info(), extra={"order_id": "o 1", "station": "grill"})
    line = formatter.format(record)
    assert "\n" not in line
    event = parse(line)
    assert (event["level"], event["component"], event["station"], event["order_id"]) == (
        "error", "kitchen", "grill", "o 1")
    assert event["msg"] == r'ticket o1/grill/1 said \"no\"\ntwice'
    assert "ValueError: bad\\nthing" in event["exc"]
    assert shlex.split(line)  # quotes balance: a shell or a log shipper can split it
