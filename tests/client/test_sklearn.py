"""scikit-learn's linear classifiers as federated models: as accurate as the NumPy logreg, the
estimator back out of a run, and every mechanism that works on a vector."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from sklearn.linear_model import LogisticRegression, Perceptron, SGDClassifier

import fedloom
from fedloom.client import SklearnTrainer
from fedloom.errors import ConfigError
from fedloom.recipes import export, predict

RUN: dict[str, Any] = {"dataset": "breast_cancer", "clients": 5, "rounds": 10, "seed": 0}


def test_sgd_classifier_by_name_is_as_accurate_as_the_numpy_logreg_on_breast_cancer() -> None:
    # Execute: the same data, rounds and learning rate
    numpy_run = fedloom.simulate(model="logreg", lr=0.05, local_epochs=1, **RUN)
    sklearn_run = fedloom.simulate(model="sklearn-sgd", lr=0.05, local_epochs=1, **RUN)

    # Assert: within 0.02 (the bar), and both well above the majority class (0.63)
    assert numpy_run.history.final_accuracy > 0.9
    assert sklearn_run.history.final_accuracy == pytest.approx(
        numpy_run.history.final_accuracy, abs=0.02
    )


def test_the_estimator_comes_back_out_of_a_run_and_predicts_as_the_trainer_does() -> None:
    # Prepare: a three-class task, so that coef_ has a row per class
    trainer = SklearnTrainer(Perceptron(), 13, 3)
    result = fedloom.simulate(dataset="wine", clients=3, rounds=5, trainer=trainer)
    test = fedloom.load_dataset("wine", num_clients=3, seed=0).test

    # Execute
    estimator = pickle.loads(pickle.dumps(trainer.estimator(result.parameters)))

    # Assert: the same classes and accuracy; its coefficients are the run's parameters
    np.testing.assert_array_equal(estimator.predict(test.x), trainer.predict(result.parameters,
                                  test.x))  # fmt: skip
    assert estimator.score(test.x, test.y) == pytest.approx(result.history.final_accuracy)
    packed = np.concatenate([estimator.coef_.ravel(), estimator.intercept_]).astype(np.float32)
    np.testing.assert_array_equal(packed, result.parameters)
    assert estimator.coef_.shape == (3, 13)


def test_a_client_without_some_classes_still_trains_the_shared_model() -> None:
    # Prepare: two clients, one holding class 0 only
    rng = np.random.default_rng(0)
    x = rng.normal(size=(60, 4))
    y = (x[:, 0] > 0).astype(np.int64)
    only_zeros = (x[y == 0][:20], y[y == 0][:20])
    ds = fedloom.from_arrays([only_zeros, (x, y)], num_classes=2)
    trainer = SklearnTrainer(SGDClassifier(loss="log_loss", random_state=0), 4, 2)

    # Execute
    result = fedloom.simulate(dataset=ds, trainer=trainer, rounds=3)

    # Assert: binary layout (one row), and the model separates the classes
    assert trainer.spec.shapes == ((1, 4), (1,))
    assert trainer.evaluate(result.parameters, fedloom.ArrayData(x, y)).accuracy > 0.9


@pytest.mark.parametrize(
    "settings",
    [
        {"secure_aggregation": "secagg"},
        {"dp": "central", "noise_multiplier": 0.1, "clip_norm": 5.0},
        {"strategy": "median"},
        {"workers": 2},
    ],
    ids=["secagg", "central-dp", "median", "two-workers"],
)
def test_the_mechanisms_that_work_on_a_vector_work_with_it(settings: dict[str, Any]) -> None:
    result = fedloom.simulate(model="sklearn-sgd", **{**RUN, "rounds": 3}, **settings)
    assert result.history.final_accuracy > 0.85


def test_a_secure_aggregation_run_gives_the_plain_runs_model_within_the_encoding() -> None:
    plain = fedloom.simulate(model="sklearn-sgd", **{**RUN, "rounds": 2})
    masked = fedloom.simulate(model="sklearn-sgd", **{**RUN, "rounds": 2},
                              secure_aggregation="secagg")  # fmt: skip
    np.testing.assert_allclose(masked.parameters, plain.parameters, atol=1e-3)


def test_what_it_cannot_do_is_refused_with_the_reason() -> None:
    with pytest.raises(ConfigError, match="LogisticRegression cannot continue from a global"):
        SklearnTrainer(LogisticRegression(), 30, 2)
    with pytest.raises(ConfigError, match=r"SklearnTrainer.fit takes no correction= argument"):
        fedloom.simulate(model="sklearn-sgd", strategy="scaffold", **{**RUN, "rounds": 1})
    with pytest.raises(ConfigError, match="fedprox adds a proximal term to the clients' loss"):
        fedloom.simulate(model="sklearn-sgd", strategy="fedprox", **{**RUN, "rounds": 1})


def test_its_run_is_predicted_and_exported_like_a_logreg_run(tmp_path: Path) -> None:
    # Prepare: a binary run and its test set as a CSV
    run = tmp_path / "run"
    result = fedloom.simulate(model="sklearn-sgd", out=str(run), **{**RUN, "rounds": 3})
    test = fedloom.load_dataset("breast_cancer", num_clients=5, seed=0).test
    rows = [",".join([*map(str, r), str(int(c))]) for r, c in zip(test.x, test.y, strict=True)]
    header = ",".join([*(f"f{i}" for i in range(30)), "label"])
    (tmp_path / "test.csv").write_text(header + "\n" + "\n".join(rows) + "\n")

    # Execute
    made = predict(run, str(tmp_path / "test.csv"))
    linear = torch.nn.Linear(30, 2)
    linear.load_state_dict(torch.load(export(run), weights_only=True))

    # Assert: the run's accuracy, and the exported two-class module gives the same classes
    assert made.accuracy == pytest.approx(result.history.final_accuracy, abs=1e-12)
    with torch.no_grad():
        classes = linear(torch.from_numpy(test.x.astype(np.float32))).argmax(dim=1).numpy()
    np.testing.assert_array_equal(classes, made.classes)
