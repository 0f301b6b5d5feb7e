"""What every benchmark records about where it ran: the commit, the CPU, and a log line."""

from __future__ import annotations

import statistics
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def log(message: str) -> None:
    """Progress on stderr, so stdout stays the Markdown tables."""
    print(message, file=sys.stderr, flush=True)


def git_state(repo: Path) -> dict[str, Any]:
    """The commit measured, and whether ``src/`` differed from it."""

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True)
        return done.stdout.strip()

    return {
        "commit": git("rev-parse", "HEAD"),
        "src_modified": bool(git("status", "--porcelain", "src")),
    }


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo."""
    with open("/proc/cpuinfo") as f:
        return next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), "?")


def spread(values: Sequence[float]) -> dict[str, float]:
    """The median and range of repeated measurements."""
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def flower_versions(harness: Path) -> dict[str, str]:
    """Runs the harness's ``setup.sh`` (builds the environment the first time) and reads the
    versions of flwr, ray and torch installed there."""
    venv = subprocess.run(
        [str(harness.parent / "setup.sh")], capture_output=True, text=True, check=True
    ).stdout.strip()
    versions = {}
    for dist in Path(venv).glob("lib/python*/site-packages/*.dist-info"):
        name, _, version = dist.name.removesuffix(".dist-info").partition("-")
        if name in ("flwr", "ray", "torch"):
            versions[name] = version
    return versions
