"""Structured logs: one line per event (logfmt) to stderr, which journald takes; per-component levels.

A line reads ``level=warning component=roles msg="role receipt-printer is down: ..."`` followed
by any context the call passed (``log.info("...", extra={"order_id": oid})`` adds
``order_id=...``), so ``journalctl -u edgehub | grep component=kitchen`` or a log shipper can
pick lines apart without guessing. Under journald each line starts with its syslog priority
(``<4>``), so ``journalctl -p warning`` works, and carries no timestamp (journald keeps one);
elsewhere it starts with ``ts=`` in UTC. Tracebacks are folded into the same line (``exc=``):
one event, one line, never split across journal entries.

Levels: ``[log] level`` for everything of edgehub and its drivers, ``[log] components`` per
component (``{ kitchen = "debug", bus = "warning" }``; a bare name means ``edgehub.<name>``).
"""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any

# What every LogRecord has; anything else on a record came from ``extra=`` and is context.
_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
_SYSLOG_PRIORITY = {logging.DEBUG: 7, logging.INFO: 6, logging.WARNING: 4, logging.ERROR: 3, logging.CRITICAL: 2}


def _value(value: Any) -> str:
    """A logfmt value: bare when it is one plain word, else quoted with escapes; one line always."""
    text = str(value)
    if text and not any(c in text for c in ' ="\\\n\r\t'):
        return text
    escaped = text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\r", "\\r")
    return f'"{escaped.replace(chr(9), " ")}"'


def component_of(logger_name: str) -> str:
    return logger_name.removeprefix("edgehub.") if logger_name != "edgehub" else "hub"


class LineFormatter(logging.Formatter):
    """One logfmt line per record: ``[ts=…] level=… component=… msg=… [key=value …] [exc=…]``."""

    def __init__(self, timestamps: bool, syslog_priority: bool = False) -> None:
        super().__init__()
        self.timestamps = timestamps
        self.syslog_priority = syslog_priority

    def format(self, record: logging.LogRecord) -> str:
        parts = []
        if self.timestamps:
            millis = int(record.msecs)
            parts.append(f"ts={time.strftime('%Y-%m-%dT%H:%M:%S', time.gmtime(record.created))}.{millis:03d}Z")
        parts.append(f"level={record.levelname.lower()}")
        parts.append(f"component={_value(component_of(record.name))}")
        parts.append(f"msg={_value(record.getMessage())}")
        for key, value in record.__dict__.items():
            if key not in _STANDARD and not key.startswith("_"):
                parts.append(f"{key}={_value(value)}")
        if record.exc_info:
            parts.append(f"exc={_value(self.formatException(record.exc_info))}")
        elif record.stack_info:
            parts.append(f"stack={_value(record.stack_info)}")
        line = " ".join(parts)
        if self.syslog_priority:
            line = f"<{_SYSLOG_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup(level: str = "info", components: Mapping[str, str] | None = None, journald: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(timestamps=not journald, syslog_priority=journald))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.WARNING)
    logging.getLogger("edgehub").setLevel(level.upper())
    logging.getLogger("drivers").setLevel(level.upper())
    for name, component_level in (components or {}).items():
        logging.getLogger(name if "." in name else f"edgehub.{name}").setLevel(component_level.upper())


class RecentLines(logging.Handler):
    """The last ``capacity`` log lines in memory, for support bundles on boxes without journald.

    Bounded so a chatty failure cannot eat the box's RAM; each line has a UTC timestamp because,
    unlike journald, nothing else records when it was written. Attach it with ``attach()`` and
    remove it with ``detach()`` so several hubs in one process do not leak handlers.
    """

    def __init__(self, capacity: int = 2000, logger: str = "edgehub") -> None:
        super().__init__(logging.DEBUG)
        self.lines: collections.deque[str] = collections.deque(maxlen=capacity)
        self.logger_names = (logger, "drivers")
        self.setFormatter(LineFormatter(timestamps=True))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.lines.append(self.format(record))
        except Exception:  # a log handler must never raise into the code that logged
            self.handleError(record)

    def attach(self) -> None:
        for name in self.logger_names:
            logging.getLogger(name).addHandler(self)

    def detach(self) -> None:
        for name in self.logger_names:
            logging.getLogger(name).removeHandler(self)

    def text(self) -> str:
        return "\n".join(self.lines) + ("\n" if self.lines else "")
