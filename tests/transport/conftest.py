"""What the deployment tests share: real ``fedloom`` processes, all killed at the end."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from _procs import Fedloom


@pytest.fixture
def fedloom(tmp_path: Path) -> Iterator[Fedloom]:
    """Starts ``fedloom`` commands in the test's folder; kills whatever still runs after it."""
    runner = Fedloom(tmp_path)
    try:
        yield runner
    finally:
        runner.stop_all()
