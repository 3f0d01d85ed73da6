"""What the box knows about its own body: disk, memory, CPU temperature, this process.

Read on demand (a status poll, a scrape, a self-check); nothing here caches or runs in the
background. A value the hardware does not offer (no thermal sensor in a VM) is ``None``, never
a made-up number.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

THERMAL_ZONE = Path("/sys/class/thermal/thermal_zone0/temp")


@dataclass(frozen=True)
class DiskUsage:
    path: str
    total_bytes: int
    free_bytes: int

    @property
    def free_ratio(self) -> float:
        return self.free_bytes / self.total_bytes if self.total_bytes else 0.0


def disk_usage(path: Path) -> DiskUsage:
    """Usage of the filesystem holding ``path`` (or its nearest existing parent)."""
    probe = path
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    usage = shutil.disk_usage(probe)
    return DiskUsage(str(path), usage.total, usage.free)


def soc_temperature_c(thermal_zone: Path = THERMAL_ZONE) -> float | None:
    """The SoC temperature in °C: psutil's sensors first, else the kernel's thermal zone 0."""
    import psutil  # read on demand (in a thread); psutil is not needed on the hub's start path

    sensors = getattr(psutil, "sensors_temperatures", None)
    if sensors is not None:
        try:
            readings = sensors()
        except (OSError, RuntimeError):
            readings = {}
        # On a Raspberry Pi the SoC sensor is "cpu_thermal"; elsewhere take the first one.
        for name in ("cpu_thermal", "soc_thermal", "coretemp", *readings):
            for entry in readings.get(name, []):
                if entry.current is not None:
                    return round(float(entry.current), 1)
    try:
        return round(int(thermal_zone.read_text().strip()) / 1000.0, 1)
    except (OSError, ValueError):
        return None


def snapshot(data_dir: Path) -> dict[str, Any]:
    """The ``system`` section of /api/v1/status."""
    import psutil  # read on demand (in a thread); psutil is not needed on the hub's start path

    disk = disk_usage(data_dir)
    memory = psutil.virtual_memory()
    process = psutil.Process(os.getpid())
    with process.oneshot():
        rss = process.memory_info().rss
        cpu = process.cpu_times()
    try:
        load1 = os.getloadavg()[0]
    except OSError:
        load1 = None
    return {
        "disk": {**asdict(disk), "free_percent": round(disk.free_ratio * 100, 1)},
        "memory": {"total_bytes": memory.total, "available_bytes": memory.available,
                   "used_percent": memory.percent},
        "cpu": {"temperature_c": soc_temperature_c(), "load_1m": load1, "cores": os.cpu_count()},
        "process": {"rss_bytes": rss, "cpu_seconds": round(cpu.user + cpu.system, 2), "pid": process.pid},
    }
