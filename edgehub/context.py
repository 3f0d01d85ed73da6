"""What every component is built from (``edgehub/component.py`` says how)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgehub.bus.topics import Topics
from edgehub.component import Bus, Signals
from edgehub.store import Journal


@dataclass(frozen=True)
class Context:
    store_id: str
    topics: Topics
    bus: Bus
    journal: Journal
    signals: Signals
    data_dir: Path
    clock: Callable[[], float] = time.time  # wall clock
