"""What the daemon reports about the machine it runs on (Linux, as on a Raspberry Pi)."""

from __future__ import annotations

import os
from pathlib import Path


def process_age() -> float:
    """Seconds since this process started, for cold-start figures."""
    fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
    uptime = float(Path("/proc/uptime").read_text().split()[0])
    return uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK")


def max_rss_mb() -> float:
    """Peak resident memory of this process, in MiB.

    Read from VmHWM, which starts afresh at exec; ``ru_maxrss`` would count the memory of
    the parent the process was forked from (a 800 MB test runner, say).
    """
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return round(int(line.split()[1]) / 1024, 1)
    return 0.0


def cpu_temperature() -> float | None:
    """The SoC temperature in °C where the board exposes one (a Pi does), else None."""
    try:
        return round(int(Path("/sys/class/thermal/thermal_zone0/temp").read_text()) / 1000, 1)
    except (OSError, ValueError):
        return None
