"""End-to-end simulation: FedAvg by hand, determinism, errors."""

from __future__ import annotations

import numpy as np
import pytest

import fedloom
from fedloom.client import LinearTrainer, client_seed
from fedloom.errors import ClientError, ConfigError
from fedloom.simulation import InProcessFleet
from fedloom.strategy import fedavg


def _clients() -> list[tuple[np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(0)
    out = []
    for n in (5, 12, 30):
        x = rng.normal(size=(n, 3)).astype(np.float32)
        out.append((x, (x[:, 0] > 0).astype(np.int64)))
    return out


def test_one_fedavg_round_equals_the_weighted_mean_of_locally_trained_models() -> None:
    # Prepare
    ds = fedloom.from_arrays(_clients(), num_classes=2)
    trainer = LinearTrainer(3, 2, lr=0.5, batch_size=4, local_epochs=2)
    start = trainer.init_parameters(0)
    config = {"lr": 0.5, "local_epochs": 2, "batch_size": 4, "seed": 42}

    # Execute
    result = fedloom.run_rounds(
        InProcessFleet(ds, trainer), fedavg(), start, rounds=1, client_config=config
    )

    # Assert: train each client by hand with its own seed and average by example count
    models, sizes = [], []
    for i in range(3):
        data = ds.client(i).train
        models.append(trainer.fit(start, data, config, client_seed(42, 1, str(i))).parameters)
        sizes.append(len(data))
    expected = sum(n * m for n, m in zip(sizes, models, strict=True)) / sum(sizes)
    np.testing.assert_allclose(result.parameters, expected, rtol=1e-5, atol=1e-6)
    assert result.history.rounds[0].clients == 3


def _run(seed: int) -> fedloom.RunResult:
    return fedloom.simulate(
        dataset="digits", model="mlp", clients=20, rounds=3, fraction=0.5, seed=seed,
        partition="dirichlet:0.5", local_test_fraction=0.2, momentum=0.9,
    )  # fmt: skip


def _without_timing(result: fedloom.RunResult) -> list[dict[str, object]]:
    rows = result.history.to_dict()["rounds"]
    return [{k: v for k, v in r.items() if k != "seconds"} for r in rows]


def test_same_seed_same_history_and_model_bit_for_bit_another_seed_differs() -> None:
    # Execute
    a, b, c = _run(1), _run(1), _run(2)

    # Assert
    assert _without_timing(a) == _without_timing(b)
    assert a.parameters.tobytes() == b.parameters.tobytes()
    assert _without_timing(a) != _without_timing(c)
    assert a.parameters.tobytes() != c.parameters.tobytes()
    assert a.history.rounds[0].fed_accuracy is not None
    assert a.history.rounds[0].clients == 10


def test_fedavg_learns_digits() -> None:
    result = fedloom.simulate(
        dataset="digits", model="logreg", clients=10, rounds=5, lr=0.1, local_epochs=2
    )
    accuracies = result.history.column("accuracy")
    assert accuracies[-1] > 0.85
    assert accuracies[-1] > accuracies[0]


def test_user_model_and_user_data_plug_in() -> None:
    # Prepare
    torch_nn = pytest.importorskip("torch.nn")
    clients = _clients()
    test = clients[2]
    ds = fedloom.from_arrays(clients, test=test, num_classes=2)
    trainer = fedloom.TorchTrainer(lambda: torch_nn.Linear(3, 2), lr=0.5)

    # Execute
    result = fedloom.simulate(dataset=ds, trainer=trainer, rounds=5, local_epochs=3)

    # Assert: a linearly separable problem is learned
    assert result.history.final_accuracy is not None and result.history.final_accuracy > 0.9
    assert result.parameters.shape == (trainer.spec.size,)


def test_simulate_writes_history_model_and_a_config_that_reruns(tmp_path: object) -> None:
    import json
    from pathlib import Path

    out = Path(str(tmp_path)) / "run"
    first = fedloom.simulate(dataset="wine", model="logreg", clients=5, rounds=2, out=str(out))
    rounds = json.loads((out / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2]
    saved = fedloom.load_checkpoint(out / "model.npz")
    np.testing.assert_array_equal(saved.parameters, first.parameters)
    settings = fedloom.config.load_toml(out / "config.toml")
    again = fedloom.simulate(fedloom.SimulationConfig(**{**settings, "out": None}))
    np.testing.assert_array_equal(again.parameters, first.parameters)


def test_clients_per_round_above_the_number_of_clients_is_refused() -> None:
    with pytest.raises(ConfigError, match="more than the 5 clients"):
        fedloom.simulate(dataset="wine", model="logreg", clients=5, clients_per_round=6)


def test_a_failing_client_is_named_or_dropped_as_asked() -> None:
    # Prepare: client 1's data has labels the model cannot represent
    x = np.zeros((4, 3), np.float32)
    ds = fedloom.from_arrays(
        [(x, np.zeros(4, np.int64)), (x, np.full(4, 7, np.int64))], num_classes=2
    )
    trainer = LinearTrainer(3, 2)
    start = trainer.init_parameters(0)

    # Execute / Assert
    with pytest.raises(ClientError, match="client 1 failed in round 1, phase 'fit'"):
        fedloom.run_rounds(InProcessFleet(ds, trainer), fedavg(), start, rounds=1)
    dropped = fedloom.run_rounds(
        InProcessFleet(ds, trainer, on_error="drop"), fedavg(), start, rounds=1
    )
    assert dropped.history.rounds[0].clients == 1


def test_momentum_with_your_own_trainer_is_refused_not_ignored() -> None:
    ds = fedloom.from_arrays(_clients(), num_classes=2)
    with pytest.raises(ConfigError, match="momentum configures the built-in models only"):
        fedloom.simulate(dataset=ds, trainer=LinearTrainer(3, 2), momentum=0.9)


def test_python_dash_m_fedloom_is_the_cli() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "fedloom", "simulate", "--rounds", "0"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.strip() == "fedloom: error: --rounds must be at least 1, got 0"
