"""Structured logs: one line per event to stderr (journald takes it), per-component levels."""

from __future__ import annotations

import logging
import sys
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
