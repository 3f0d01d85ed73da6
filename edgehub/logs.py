"""Structured logs: one line per event to stderr (journald takes it), per-component levels."""

from __future__ import annotations

import collections
import logging
import sys
import time
from collections.abc import Mapping


class LineFormatter(logging.Formatter):
    """``level component: message`` with key=value context; no timestamps under journald."""

    def __init__(self, timestamps: bool) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s" if timestamps
                         else "%(levelname)s %(name)s: %(message)s")

    def format(self, record: logging.LogRecord) -> str:
        # One event, one line: tracebacks are folded so journald keeps them together.
        return super().format(record).replace("\n", " | ")


def setup(level: str = "info", components: Mapping[str, str] | None = None, journald: bool = False) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(LineFormatter(timestamps=not journald))
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
        self.setFormatter(LineFormatter(timestamps=False))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            self.lines.append(f"{stamp}Z {self.format(record)}")
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
