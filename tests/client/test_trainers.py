from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client import (
    ClientApp,
    ClientContext,
    LinearTrainer,
    TorchTrainer,
    client_seed,
)
from fedloom.data import ArrayData, ClientData
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction
from fedloom.models import cnn, make_trainer, mlp


def _data(n: int = 40, d: int = 4, classes: int = 3, seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)).astype(np.float32)
    y = (x[:, 0] > 0).astype(np.int64) + (x[:, 1] > 1).astype(np.int64)
    return ArrayData(x, y % classes)


def test_linear_trainer_one_full_batch_step_matches_hand_computed_gradient() -> None:
    # Prepare: zero weights give uniform softmax p = 1/2; for x=[1, 2], y=0 the gradient of
    # the cross-entropy w.r.t. W is (p - onehot) x^T = [[-0.5, -1], [0.5, 1]], bias [-0.5, 0.5]
    trainer = LinearTrainer(2, 2, lr=1.0, batch_size=1)
    data = ArrayData(np.array([[1.0, 2.0]], np.float32), np.array([0]))

    # Execute
    out = trainer.fit(trainer.init_parameters(0), data, {}, seed=0)

    # Assert: W - lr * grad
    w, b = trainer.spec.unpack(out.parameters).values()
    np.testing.assert_allclose(w, [[0.5, 1.0], [-0.5, -1.0]])
    np.testing.assert_allclose(b, [0.5, -0.5])
    assert out.num_examples == 1
    assert out.metrics["train_loss"] == pytest.approx(np.log(2))


def test_linear_trainer_evaluate_reports_loss_and_accuracy() -> None:
    # Prepare: weights that predict class 1 for x > 0
    trainer = LinearTrainer(1, 2)
    params = trainer.spec.pack({"weight": np.array([[-1.0], [1.0]]), "bias": np.zeros(2)})
    data = ArrayData(np.array([[2.0], [-2.0], [1.0]], np.float32), np.array([1, 0, 0]))

    # Execute
    result = trainer.evaluate(params, data)

    # Assert: logits differ by 4, 4, 2 -> losses log(1+e^-4), log(1+e^-4), log(1+e^2)
    expected = (2 * np.log1p(np.exp(-4)) + np.log1p(np.exp(2))) / 3
    assert result.loss == pytest.approx(expected)
    assert result.accuracy == pytest.approx(2 / 3)


def test_linear_trainer_config_overrides_defaults_and_rejects_bad_values() -> None:
    trainer = LinearTrainer(4, 3, lr=0.1)
    data = _data()
    p0 = trainer.init_parameters(0)
    slow = trainer.fit(p0, data, {"lr": 1e-6}, seed=1).parameters
    fast = trainer.fit(p0, data, {"lr": 1.0}, seed=1).parameters
    assert np.abs(slow - p0).max() < 1e-4 < np.abs(fast - p0).max()
    with pytest.raises(ConfigError, match="'local_epochs' must be a whole number"):
        trainer.fit(p0, data, {"local_epochs": 1.5}, seed=1)


@pytest.mark.parametrize(
    "make", [lambda: LinearTrainer(4, 3), lambda: TorchTrainer(lambda: mlp(4, 3))]
)
def test_fit_is_deterministic_per_seed_and_learns(make: object) -> None:
    # Prepare
    trainer = make()  # type: ignore[operator]
    data = _data()
    p0 = trainer.init_parameters(0)
    config = {"lr": 0.1, "local_epochs": 5, "batch_size": 8}

    # Execute
    a = trainer.fit(p0, data, config, seed=11)
    b = trainer.fit(p0, data, config, seed=11)
    c = trainer.fit(p0, data, config, seed=12)

    # Assert
    np.testing.assert_array_equal(a.parameters, b.parameters)
    assert not np.array_equal(a.parameters, c.parameters)
    assert trainer.evaluate(a.parameters, data).loss < trainer.evaluate(p0, data).loss


def test_torch_trainer_spec_and_vector_roundtrip() -> None:
    # Prepare: batch norm brings float buffers (travel) and an integer one (stays local)
    trainer = TorchTrainer(lambda: nn.Sequential(nn.Linear(3, 2), nn.BatchNorm1d(2)))

    # Execute
    vec = np.arange(trainer.spec.size, dtype=np.float32)
    trainer.load(vec)

    # Assert
    assert trainer.spec.names == (
        "0.weight", "0.bias", "1.weight", "1.bias", "1.running_mean", "1.running_var"
    )  # fmt: skip
    assert trainer.spec.size == 6 + 2 + 2 + 2 + 2 + 2
    np.testing.assert_array_equal(trainer.parameters(), vec)
    assert trainer.model[0].weight.detach().numpy().ravel().tolist() == [0, 1, 2, 3, 4, 5]


def test_torch_trainer_init_parameters_is_seeded_and_leaves_global_rng_alone() -> None:
    trainer = TorchTrainer(lambda: mlp(4, 3))
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a = trainer.init_parameters(5)
    after = torch.rand(1)
    assert torch.equal(before, after)
    np.testing.assert_array_equal(a, trainer.init_parameters(5))
    assert not np.array_equal(a, trainer.init_parameters(6))


def test_builtin_models_have_the_expected_sizes() -> None:
    # MLP 64-128-10: 64*128 + 128 + 128*10 + 10; the McMahan CNN on MNIST: 1,663,370
    assert sum(p.numel() for p in mlp(64, 10).parameters()) == 9610
    assert sum(p.numel() for p in cnn((1, 28, 28), 10).parameters()) == 1_663_370
    trainer = make_trainer(
        "cnn", input_shape=(1, 8, 8), num_classes=10, lr=0.1, local_epochs=1, batch_size=4
    )
    data = ArrayData(np.zeros((4, 64), np.float32), np.zeros(4, np.int64))
    assert trainer.fit(trainer.init_parameters(0), data, {}, 0).num_examples == 4


def test_make_trainer_refuses_unknown_model_and_cnn_on_flat_data() -> None:
    with pytest.raises(
        ConfigError, match="unknown model 'resnet'; choose one of: mlp, cnn, logreg, sklearn-sgd"
    ):
        make_trainer("resnet", input_shape=(4,), num_classes=2, lr=1, local_epochs=1, batch_size=1)
    with pytest.raises(ConfigError, match="cnn model needs image data"):
        make_trainer("cnn", input_shape=(30,), num_classes=2, lr=1, local_epochs=1, batch_size=1)


def test_client_app_fit_replies_with_the_update_not_the_model() -> None:
    # Prepare
    trainer = LinearTrainer(4, 3)
    data = _data()
    ctx = ClientContext("7", ClientData(data, data.subset(np.arange(0))), trainer)
    start = np.full(trainer.spec.size, 0.5, np.float32)
    ins = Instruction(3, "fit", start, {"seed": 9, "lr": 0.1})

    # Execute
    reply = ClientApp().handle(ctx, ins)

    # Assert: update = trained - start, trained with the client's own seed
    trained = trainer.fit(start, data, ins.config, client_seed(9, 3, "7")).parameters
    assert reply.vector is not None
    np.testing.assert_array_equal(reply.vector, trained - start)
    assert (reply.client_id, reply.round, reply.phase, reply.num_examples) == ("7", 3, "fit", 40)


def test_client_app_names_client_round_and_phase_on_failure() -> None:
    trainer = LinearTrainer(4, 3)
    data = _data()
    ctx = ClientContext("7", ClientData(data, data), trainer)
    with pytest.raises(ClientError, match=r"client 7 failed in round 2, phase 'fit': .*\(3,\)"):
        ClientApp().handle(ctx, Instruction(2, "fit", np.zeros(3, np.float32)))
    with pytest.raises(ClientError, match="no handler"):
        ClientApp().handle(ctx, Instruction(2, "unmask"))


def test_client_seeds_differ_by_client_and_round_and_are_stable() -> None:
    assert client_seed(0, 1, "a") == client_seed(0, 1, "a")
    assert len({client_seed(0, 1, "a"), client_seed(0, 2, "a"), client_seed(0, 1, "b")}) == 3


def test_client_seed_does_not_depend_on_python_hash_randomisation() -> None:
    code = "from fedloom.client import client_seed; print(client_seed(0, 1, 'a'))"
    outs = {
        subprocess.run(
            [sys.executable, "-c", code],
            env={**os.environ, "PYTHONHASHSEED": hash_seed},
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        for hash_seed in ("1", "2")
    }  # fmt: skip
    assert outs == {str(client_seed(0, 1, "a"))}


@pytest.mark.parametrize("momentum", [0.0, 0.9])
def test_default_sgd_takes_the_same_steps_as_torch_optim_sgd(momentum: float) -> None:
    # Prepare
    data = _data(n=37)
    config = {"lr": 0.05, "local_epochs": 3, "batch_size": 8}
    ours = TorchTrainer(lambda: mlp(4, 3), momentum=momentum)
    reference = TorchTrainer(
        lambda: mlp(4, 3),
        optimizer=lambda params, lr: torch.optim.SGD(params, lr=lr, momentum=momentum),
    )
    p0 = ours.init_parameters(0)

    # Execute
    a = ours.fit(p0, data, config, seed=3).parameters
    b = reference.fit(p0, data, config, seed=3).parameters

    # Assert
    np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert not np.array_equal(a, p0)
