"""FedProx's proximal term and SCAFFOLD's gradient correction inside the built-in trainers,
against reference implementations written out here."""

import numpy as np
import pytest
import torch
from torch import nn

from fedloom.client import LinearTrainer, TorchTrainer
from fedloom.data import ArrayData
from fedloom.errors import ConfigError


def _data(n: int = 12, d: int = 4, classes: int = 3, seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    return ArrayData(rng.normal(size=(n, d)), rng.integers(0, classes, n))


def _reference_softmax_gd(w, b, data, lr, steps, mu=0.0, corr_w=None, corr_b=None):
    """Full-batch gradient descent on mean cross-entropy + mu/2·||θ - θ0||² + <corr, θ>."""
    w0, b0 = w.copy(), b.copy()
    x, y = data.x.astype(np.float64), data.y
    for _ in range(steps):
        logits = x @ w.T + b
        p = np.exp(logits - logits.max(axis=1, keepdims=True))
        p /= p.sum(axis=1, keepdims=True)
        p[np.arange(len(y)), y] -= 1.0
        p /= len(y)
        gw = p.T @ x + mu * (w - w0) + (corr_w if corr_w is not None else 0.0)
        gb = p.sum(axis=0) + mu * (b - b0) + (corr_b if corr_b is not None else 0.0)
        w, b = w - lr * gw, b - lr * gb
    return np.concatenate([w.ravel(), b])


@pytest.mark.parametrize("mu", [0.0, 0.5, 5.0])
def test_linear_trainer_adds_the_proximal_gradient(mu: float) -> None:
    # Prepare: full batch, 3 epochs = 3 deterministic steps from a non-zero start.
    data = _data()
    trainer = LinearTrainer(4, 3, lr=0.1, local_epochs=3, batch_size=len(data))
    start = np.random.default_rng(1).normal(size=trainer.spec.size).astype(np.float32)
    w, b = start[:12].reshape(3, 4).astype(np.float64), start[12:].astype(np.float64)

    # Execute
    result = trainer.fit(start, data, {"mu": mu}, seed=0)

    # Assert
    expected = _reference_softmax_gd(w, b, data, 0.1, 3, mu=mu)
    np.testing.assert_allclose(result.parameters, expected, rtol=1e-5, atol=1e-6)
    assert (result.steps, result.lr) == (3, 0.1)


def test_proximal_term_keeps_the_model_closer_to_the_global_one() -> None:
    data = _data(n=40)
    trainer = LinearTrainer(4, 3, lr=0.1, local_epochs=20, batch_size=5)
    start = np.zeros(trainer.spec.size, np.float32)
    far = trainer.fit(start, data, {}, seed=0).parameters
    near = trainer.fit(start, data, {"mu": 1.0}, seed=0).parameters
    assert np.linalg.norm(near) < 0.8 * np.linalg.norm(far)


def test_linear_trainer_adds_the_correction_to_every_step() -> None:
    data = _data()
    trainer = LinearTrainer(4, 3, lr=0.2, local_epochs=2, batch_size=len(data))
    start = np.zeros(trainer.spec.size, np.float32)
    corr = np.linspace(-0.3, 0.3, trainer.spec.size).astype(np.float32)

    result = trainer.fit(start, data, {}, seed=0, correction=corr)

    expected = _reference_softmax_gd(
        np.zeros((3, 4)), np.zeros(3), data, 0.2, 2,
        corr_w=corr[:12].reshape(3, 4).astype(np.float64), corr_b=corr[12:].astype(np.float64),
    )  # fmt: skip
    np.testing.assert_allclose(result.parameters, expected, rtol=1e-5, atol=1e-6)


def test_steps_count_every_minibatch_of_every_epoch() -> None:
    # 25 examples in batches of 10 is 3 steps per epoch; 2 epochs is 6.
    trainer = LinearTrainer(4, 3, local_epochs=2, batch_size=10)
    result = trainer.fit(np.zeros(15, np.float32), _data(n=25), {}, seed=0)
    assert result.steps == 6


def test_negative_mu_is_refused() -> None:
    trainer = LinearTrainer(4, 3)
    with pytest.raises(ConfigError, match="'mu' must be at least 0"):
        trainer.fit(np.zeros(15, np.float32), _data(), {"mu": -1.0}, seed=0)


def _torch_reference(start_model: nn.Module, data: ArrayData, lr, steps, mu=0.0, corr=None):
    """torch autograd on loss + mu/2·||θ - θ0||² + <corr, θ>, with torch.optim.SGD."""
    model = start_model
    anchors = [p.detach().clone() for p in model.parameters()]
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    x = torch.from_numpy(data.x)
    y = torch.from_numpy(data.y)
    for _ in range(steps):
        opt.zero_grad()
        loss = nn.functional.cross_entropy(model(x), y)
        for i, (p, a) in enumerate(zip(model.parameters(), anchors, strict=True)):
            loss = loss + mu / 2 * ((p - a) ** 2).sum()
            if corr is not None:
                loss = loss + (corr[i] * p).sum()
        loss.backward()
        opt.step()
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()]).numpy()


@pytest.mark.parametrize("with_correction", [False, True])
def test_torch_trainer_matches_autograd_on_the_modified_objective(with_correction: bool) -> None:
    # Prepare
    data = _data()
    trainer = TorchTrainer(lambda: nn.Linear(4, 3), lr=0.1, local_epochs=3, batch_size=len(data))
    start = trainer.init_parameters(seed=3)
    corr_vec = np.linspace(-0.2, 0.2, trainer.spec.size).astype(np.float32)
    reference_model = nn.Linear(4, 3)
    with torch.no_grad():
        reference_model.weight.copy_(torch.from_numpy(start[:12].reshape(3, 4)))
        reference_model.bias.copy_(torch.from_numpy(start[12:]))
    corr = [torch.from_numpy(corr_vec[:12].reshape(3, 4)), torch.from_numpy(corr_vec[12:])]

    # Execute
    result = trainer.fit(
        start, data, {"mu": 0.7}, seed=0, correction=corr_vec if with_correction else None
    )

    # Assert
    expected = _torch_reference(
        reference_model, data, 0.1, 3, mu=0.7, corr=corr if with_correction else None
    )
    np.testing.assert_allclose(result.parameters, expected, rtol=1e-5, atol=1e-6)
    assert (result.steps, result.lr) == (3, 0.1)
