"""Measuring a child process from outside: wall time, memory of its process tree, and when a
process of the tree with a given command line started."""

from __future__ import annotations

import json
import os
import re
import subprocess
import tempfile
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _clock import boottime, process_start_boottime


def _children_map() -> dict[int, list[int]]:
    children: dict[int, list[int]] = {}
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        children.setdefault(ppid, []).append(int(entry.name))
    return children


def _kib_fields(path: str, *names: str) -> list[int]:
    """The ``NAME:  123 kB`` fields of a /proc file, in KiB (0 when absent or unreadable)."""
    try:
        with open(path) as f:
            text = f.read()
    except OSError:
        return [0] * len(names)
    found = [re.search(rf"^{name}:\s+(\d+) kB", text, re.MULTILINE) for name in names]
    return [int(m.group(1)) if m else 0 for m in found]


class TreeSampler(threading.Thread):
    """Samples the process tree under ``root``: summed RSS and PSS, the largest per-process
    high-water RSS (``VmHWM``, counted from the process's ``exec``), and when a process whose
    command line contains ``marker`` started."""

    def __init__(self, root: int, marker: str | None, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.root, self.marker, self.interval = root, marker, interval
        self.peak_rss = self.peak_pss = self.peak_hwm = 0
        self.max_processes = 0
        self.marker_start: float | None = None
        self._seen: set[int] = set()
        self._stop_event = threading.Event()

    def run(self) -> None:
        while True:
            self.sample()
            if self._stop_event.wait(self.interval):
                return

    def stop(self) -> None:
        self._stop_event.set()
        self.join()

    def sample(self) -> None:
        children = _children_map()
        tree, todo = [], [self.root]
        while todo:
            pid = todo.pop()
            tree.append(pid)
            todo.extend(children.get(pid, ()))
        status = [_kib_fields(f"/proc/{p}/status", "VmRSS", "VmHWM") for p in tree]
        pss = sum(_kib_fields(f"/proc/{p}/smaps_rollup", "Pss")[0] for p in tree)
        self.peak_rss = max(self.peak_rss, sum(rss for rss, _ in status))
        self.peak_hwm = max([self.peak_hwm, *(hwm for _, hwm in status)])
        self.peak_pss = max(self.peak_pss, pss)
        self.max_processes = max(self.max_processes, len(tree))
        if self.marker is not None and self.marker_start is None:
            for pid in tree:
                if pid in self._seen:
                    continue
                self._seen.add(pid)
                try:
                    with open(f"/proc/{pid}/cmdline", "rb") as f:
                        cmdline = f.read().decode(errors="replace")
                    if self.marker in cmdline:
                        self.marker_start = process_start_boottime(pid)
                except OSError:
                    continue


def run_process(
    cmd: Sequence[str],
    *,
    cwd: Path,
    marker: str | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run ``cmd`` to completion and measure it; ``RESULT {json}`` from its output is parsed."""
    with tempfile.TemporaryFile() as out:
        load = os.getloadavg()[0]
        t0 = time.perf_counter()
        proc = subprocess.Popen(list(cmd), cwd=cwd, stdout=out, stderr=subprocess.STDOUT, env=env)
        sampler = TreeSampler(proc.pid, marker)
        sampler.start()
        proc.wait()
        wall = time.perf_counter() - t0
        end = boottime()
        sampler.stop()
        out.seek(0)
        text = out.read().decode(errors="replace")
    lines = [ln for ln in text.splitlines() if ln.startswith("RESULT ")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{text[-3000:]}")
    return {
        "result": json.loads(lines[-1].removeprefix("RESULT ")),
        "wall_s": wall,
        "end_boottime": end,
        "marker_start_boottime": sampler.marker_start,
        "peak_rss_single_process_mib": sampler.peak_hwm / 1024,
        "peak_tree_rss_mib": sampler.peak_rss / 1024,
        "peak_tree_pss_mib": sampler.peak_pss / 1024,
        "max_processes": sampler.max_processes,
        "loadavg_1min_before": load,
    }
