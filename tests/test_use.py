"""A finished run's model, used: fedloom predict gives the classes the run evaluated, and the
exported state dict reloads in PyTorch with the same predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import fedloom
from fedloom.cli import main
from fedloom.errors import DataError
from fedloom.models import mlp
from fedloom.recipes import export, predict


def _digits_test_csv(path: Path, labelled: bool = True) -> fedloom.ArrayData:
    test = fedloom.load_dataset("digits", num_clients=5, seed=0).test
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([f"p{i}" for i in range(64)] + (["label"] if labelled else []))
        for row, label in zip(test.x, test.y, strict=True):
            out.writerow([*map(float, row), *([int(label)] if labelled else [])])
    return test


@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_predictions_score_as_the_run_did_and_the_export_predicts_the_same(
    model: str, tmp_path: Path
) -> None:
    # Prepare: a run, and its central test set written as a CSV
    run = tmp_path / "run"
    result = fedloom.simulate(dataset="digits", model=model, clients=5, rounds=2, out=str(run))
    test = _digits_test_csv(tmp_path / "test.csv")

    # Execute
    made = predict(run, str(tmp_path / "test.csv"), out=tmp_path / "predictions.csv")
    state = torch.load(export(run), weights_only=True)

    # Assert: the run's own final accuracy, and the same classes from the reloaded module
    assert made.accuracy == pytest.approx(result.history.final_accuracy, abs=1e-12)
    written = (tmp_path / "predictions.csv").read_text().split()
    assert written[0] == "prediction" and [int(v) for v in written[1:]] == made.classes.tolist()
    module = mlp(64, 10) if model == "mlp" else torch.nn.Linear(64, 10)
    module.load_state_dict(state)
    with torch.no_grad():
        again = module(torch.from_numpy(test.x.astype(np.float32))).argmax(dim=1).numpy()
    np.testing.assert_array_equal(again, made.classes)


def test_a_csv_of_features_alone_is_predicted_without_an_accuracy(tmp_path: Path) -> None:
    run = tmp_path / "run"
    fedloom.simulate(dataset="digits", model="logreg", clients=5, rounds=1, out=str(run))
    _digits_test_csv(tmp_path / "x.csv", labelled=False)
    made = predict(run, str(tmp_path / "x.csv"))
    assert made.accuracy is None and len(made.classes) == 360


def test_predict_and_export_refuse_what_they_cannot_use(tmp_path: Path, capsys) -> None:
    with pytest.raises(DataError, match=r"has no model\.npz"):
        predict(tmp_path, "x.csv")
    run = tmp_path / "run"
    fedloom.simulate(dataset="digits", model="logreg", clients=5, rounds=1, out=str(run))
    (tmp_path / "narrow.csv").write_text("a,b,label\n1,2,0\n")
    assert main(["predict", str(run), "--data", str(tmp_path / "narrow.csv")]) == 2
    assert "examples have 2 features; the model takes 64" in capsys.readouterr().err
    assert main(["export", str(run), "--out", str(tmp_path / "m.pt")]) == 0
    assert (tmp_path / "m.pt").is_file()
