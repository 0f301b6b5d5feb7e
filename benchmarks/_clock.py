"""Process start times and "now" on one clock, ``CLOCK_BOOTTIME``.

The kernel stamps each process's start (``/proc/PID/stat`` field 22) in ticks of that clock, so
"seconds since process start" needs no wall-clock arithmetic and carries no rounding beyond the
10 ms tick.
"""

from __future__ import annotations

import os
import time

_CLK_TCK = os.sysconf("SC_CLK_TCK")


def boottime() -> float:
    """Now, in seconds of ``CLOCK_BOOTTIME``."""
    return time.clock_gettime(time.CLOCK_BOOTTIME)


def process_start_boottime(pid: int | str = "self") -> float:
    """When process ``pid`` started, in seconds of ``CLOCK_BOOTTIME`` (10 ms resolution)."""
    with open(f"/proc/{pid}/stat") as f:
        after_name = f.read().rsplit(")", 1)[1].split()
    return int(after_name[19]) / _CLK_TCK  # field 22 of the line: starttime, in clock ticks


def btime_error_s() -> float:
    """How far ``btime`` of ``/proc/stat`` (boot time, truncated to whole seconds) falls before
    the true boot time. A start time computed as ``btime + ticks`` is early by this much."""
    with open("/proc/stat") as f:
        btime = next(int(line.split()[1]) for line in f if line.startswith("btime"))
    return (time.time() - boottime()) - btime
