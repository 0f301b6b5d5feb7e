"""What every benchmark records about where it ran: the commit, the CPU, and a log line."""

from __future__ import annotations

import subprocess
import sys
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
