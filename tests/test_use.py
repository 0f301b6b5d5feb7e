"""A finished run's model, used: fedloom predict gives the classes the run evaluated, and the
exported state dict reloads in PyTorch, and the exported ONNX graph runs in ONNX Runtime, with the
same predictions."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
import torch

import fedloom
from fedloom.cli import main
from fedloom.errors import ConfigError, DataError
from fedloom.models import make_trainer, mlp
from fedloom.recipes import export, predict
from fedloom.recipes._use import write_model_file
from fedloom.server import Checkpoint, save_checkpoint


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


def _onnx_logits(path: Path, x: np.ndarray) -> np.ndarray:
    import onnxruntime

    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = session.run(["logits"], {"x": x.astype(np.float32)})
    return np.asarray(logits)


@pytest.mark.parametrize("model", ["mlp", "logreg"])
def test_the_onnx_export_runs_in_onnx_runtime_with_the_runs_predictions(
    model: str, tmp_path: Path, capsys
) -> None:
    # Prepare: a run, and its central test set written as a CSV
    run = tmp_path / "run"
    fedloom.simulate(dataset="digits", model=model, clients=5, rounds=2, out=str(run))
    test = _digits_test_csv(tmp_path / "test.csv")
    made = predict(run, str(tmp_path / "test.csv"))

    # Execute: through the command line, once by --format and once by the file's suffix
    assert main(["export", str(run), "--format", "onnx"]) == 0
    assert f"ONNX model written to {run / 'model.onnx'}" in capsys.readouterr().out
    assert main(["export", str(run), "--out", str(tmp_path / "again.onnx")]) == 0

    # Assert: the same classes from ONNX Runtime, for the whole test set and for one example
    # (the batch size is free), and logits equal to PyTorch's
    for written in (run / "model.onnx", tmp_path / "again.onnx"):
        logits = _onnx_logits(written, test.x.reshape(len(test.x), -1))
        np.testing.assert_array_equal(logits.argmax(axis=1), made.classes)
        assert _onnx_logits(written, test.x[:1].reshape(1, -1)).shape == (1, 10)
    module = mlp(64, 10) if model == "mlp" else torch.nn.Linear(64, 10)
    module.load_state_dict(torch.load(export(run), weights_only=True))
    with torch.no_grad():
        expected = module(torch.from_numpy(test.x.reshape(len(test.x), -1))).numpy()
    np.testing.assert_allclose(logits, expected, rtol=1e-4, atol=1e-5)
    assert not list(run.glob("*.tmp")) and not list(tmp_path.glob("*.tmp"))


def test_a_cnn_exports_to_onnx_that_takes_images(tmp_path: Path) -> None:
    # Prepare: a run folder of a cnn on 1x8x8 images, as fedloom writes one
    trainer = make_trainer("cnn", input_shape=(1, 8, 8), num_classes=3, lr=0.1, local_epochs=1,
                           batch_size=4)  # fmt: skip
    parameters = trainer.init_parameters(seed=5)
    write_model_file(tmp_path, {"model": "cnn", "input_shape": [1, 8, 8], "num_classes": 3})
    save_checkpoint(tmp_path / "model.npz", Checkpoint(1, parameters, trainer.spec))
    images = np.random.default_rng(0).normal(size=(7, 1, 8, 8)).astype(np.float32)

    # Execute
    written = export(tmp_path, format="onnx")

    # Assert: ONNX Runtime's logits are the trained module's
    trainer.load(parameters)
    with torch.no_grad():
        expected = trainer.model.eval()(torch.from_numpy(images)).numpy()
    np.testing.assert_allclose(_onnx_logits(written, images), expected, rtol=1e-4, atol=1e-5)


def test_an_unknown_export_format_is_refused_before_anything_is_written(
    tmp_path: Path, capsys
) -> None:
    run = tmp_path / "run"
    fedloom.simulate(dataset="digits", model="logreg", clients=5, rounds=1, out=str(run))
    before = sorted(p.name for p in run.iterdir())
    with pytest.raises(ConfigError, match="unknown export format 'tflite'; choose one of: torch"):
        export(run, format="tflite")
    with pytest.raises(SystemExit) as exited:
        main(["export", str(run), "--format", "tflite"])
    assert exited.value.code == 2
    assert "invalid choice: 'tflite' (choose from 'torch', 'onnx')" in capsys.readouterr().err
    assert sorted(p.name for p in run.iterdir()) == before
