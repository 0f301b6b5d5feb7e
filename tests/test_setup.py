"""Set-up is one command: ``make demo`` on a fresh environment installs what the demo needs
(fedloom and PyTorch, none of the test, lint, cluster or export tools) and runs it."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
NOT_FOR_THE_DEMO = {"pytest", "ruff", "mypy", "ray", "onnx", "onnxscript", "onnxruntime",
                    "matplotlib", "grpcio-tools", "nbclient", "ipykernel"}  # fmt: skip


@pytest.mark.slow
def test_make_demo_on_a_fresh_environment_installs_only_the_demos_needs_and_runs_it(
    tmp_path: Path,
) -> None:
    # Execute: the README's first command, into an environment of its own
    venv, out = tmp_path / "venv", tmp_path / "demo"
    done = subprocess.run(
        ["make", "-C", str(REPO), "demo", f"VENV={venv}", f"DEMO_OUT={out}",
         f"PYTHON={sys.base_prefix}/bin/python3"],
        capture_output=True, text=True, timeout=900,
    )  # fmt: skip

    # Assert: the demo ran to its 40th round and says how to reach the command; the
    # environment holds fedloom and PyTorch and nothing of the developers' tools
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    history = json.loads((out / "history.json").read_text())
    assert len(history["rounds"]) == 40 and history["rounds"][-1]["accuracy"] > 0.9
    assert f". {venv}/bin/activate" in done.stdout
    listed = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "list", "--format", "json"],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    installed = {p["name"].lower() for p in json.loads(listed.stdout)}
    assert {"fedloom", "torch"} <= installed
    assert not installed & NOT_FOR_THE_DEMO
