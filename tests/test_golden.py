"""The golden matrix: deterministic runs whose results must not move when the code is reshaped.

Each case is a ``fedloom simulate --out`` run; its ``model.npz`` and ``history.json`` were
recorded (``python tests/test_golden.py record``) before the layering rework, and every run
since must give the same model bit for bit and the same history apart from ``seconds``.

Federated evaluation's loss can differ in its last bit between two runs of the same code (NumPy's
reductions depend on how an array happens to be aligned in memory), so history values are
compared to within a few units in the last place; everything else, the model first, exactly.

Bit-identity holds for one NumPy/BLAS build on one kind of processor: matrix products may sum
in another order elsewhere. So the recording keeps a fingerprint of the platform; on another
one the models are compared to a float32 rounding error instead (and the test says so).
"""

from __future__ import annotations

import json
import platform
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedloom.cli import main

GOLDEN = Path(__file__).parent / "golden"

BASE = ["--dataset", "digits", "--model", "logreg", "--clients", "10", "--rounds", "3",
        "--local-epochs", "1", "--quiet"]  # fmt: skip
CASES: dict[str, list[str]] = {
    "fedavg": ["--local-test-fraction", "0.2"],
    "fedprox": ["--strategy", "fedprox", "--mu", "0.1"],
    "fedadam": ["--strategy", "fedadam", "--clients-per-round", "5"],
    "scaffold": ["--strategy", "scaffold", "--fraction", "0.5", "--lr", "0.02"],
    "krum": ["--strategy", "krum", "--byzantine", "1"],
    "median-attack": ["--strategy", "median", "--attack", "sign-flip:0.3"],
    "fedavg-attack": ["--attack", "label-flip:0.2"],
    "stragglers-dropout": ["--stragglers", "0.3", "--dropout", "0.2", "--local-epochs", "3"],
    "fedprox-stragglers": ["--strategy", "fedprox", "--stragglers", "0.5", "--local-epochs", "3"],
    "secagg": ["--secure-aggregation", "secagg"],
    "secagg-dropout": ["--secure-aggregation", "secagg", "--dropout", "0.2"],
    "secagg+": ["--secure-aggregation", "secagg+", "--clients", "12"],
    "central-dp": ["--dp", "central", "--noise-multiplier", "0", "--clip-norm", "0.5"],
    "central-dp-adaptive": [
        "--dp",
        "central",
        "--noise-multiplier",
        "0",
        "--adaptive-clipping",
        "--clients-per-round",
        "5",
    ],
    "distributed-dp": [
        "--dp",
        "distributed",
        "--secure-aggregation",
        "secagg",
        "--noise-multiplier",
        "0",
        "--clip-norm",
        "0.5",
    ],
    "mlp": ["--model", "mlp", "--strategy", "fedavgm", "--fraction", "0.5"],
}


def _fingerprint() -> dict[str, Any]:
    from threadpoolctl import threadpool_info

    blas = [
        {k: lib.get(k) for k in ("internal_api", "version", "architecture")}
        for lib in threadpool_info()
        if lib.get("user_api") == "blas"
    ]
    return {"machine": platform.machine(), "numpy": np.__version__, "blas": blas}


def _run(name: str, out: Path) -> None:
    status = main(["simulate", *BASE, *CASES[name], "--out", str(out)])
    assert status == 0, name


def _history(path: Path) -> dict[str, Any]:
    raw: dict[str, Any] = json.loads(path.read_text())
    for record in raw["rounds"]:
        record.pop("seconds")
    return raw


def _same(got: Any, want: Any, rel: float) -> bool:
    """Equal, floats to within ``rel`` of each other."""
    if isinstance(want, dict):
        return (
            isinstance(got, dict)
            and got.keys() == want.keys()
            and all(_same(got[k], want[k], rel) for k in want)
        )
    if isinstance(want, list):
        return (
            isinstance(got, list)
            and len(got) == len(want)
            and all(_same(g, w, rel) for g, w in zip(got, want, strict=True))
        )
    if isinstance(want, float) and isinstance(got, float) and got != want:
        return bool(abs(got - want) <= rel * abs(want))
    return bool(type(got) is type(want) and got == want)


@pytest.mark.parametrize("name", list(CASES))
def test_a_run_gives_the_recorded_model_and_history(name: str, tmp_path: Path) -> None:
    # Prepare
    expected = GOLDEN / name
    recorded_on = json.loads((GOLDEN / "platform.json").read_text())

    same_platform = recorded_on == _fingerprint()

    # Execute
    _run(name, tmp_path)

    # Assert
    got, want = _history(tmp_path / "history.json"), _history(expected / "history.json")
    assert _same(got, want, 1e-14 if same_platform else 1e-4), (got, want)
    with np.load(tmp_path / "model.npz") as model, np.load(expected / "model.npz") as golden:
        assert sorted(model.files) == sorted(golden.files)
        for key in golden.files:
            if same_platform:
                np.testing.assert_array_equal(model[key], golden[key], err_msg=f"{name}: {key}")
            else:  # another BLAS kernel may sum in another order
                np.testing.assert_allclose(model[key], golden[key], rtol=1e-5, atol=1e-6)


def record() -> None:
    """Write the golden files anew (only before a change meant to keep behaviour)."""
    GOLDEN.mkdir(exist_ok=True)
    for name in CASES:
        out = GOLDEN / name
        out.mkdir(exist_ok=True)
        _run(name, out)
        (out / "config.toml").unlink()
        print(f"recorded {name}")
    (GOLDEN / "platform.json").write_text(json.dumps(_fingerprint(), indent=1) + "\n")


if __name__ == "__main__" and sys.argv[1:] == ["record"]:
    record()
