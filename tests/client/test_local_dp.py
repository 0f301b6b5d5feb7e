"""Local (record-level) DP: DP-SGD with Opacus inside TorchTrainer, and each client's epsilon,
against hand computations and dp-accounting called directly."""

from __future__ import annotations

import math
from pathlib import Path

import dp_accounting
import numpy as np
import pytest
import torch
from dp_accounting import rdp
from torch import nn

import fedloom
from fedloom.cli import main
from fedloom.client import LOCAL_DP_STATE_KEY as STATE_KEY
from fedloom.client import ClientApp, ClientContext, TorchTrainer
from fedloom.config import SimulationConfig
from fedloom.data import ArrayData, ClientData, load_dataset
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction
from fedloom.privacy import DPSGD, LocalDP, StepCount

TINY = 1e-9  # a noise multiplier that leaves the clipped gradient visible to 1e-9


def _direct_epsilon(z: float, q: float, steps: int, delta: float) -> float:
    """dp-accounting's own answer: ``steps`` Poisson-sampled Gaussian steps, RDP accountant."""
    one = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
    event = dp_accounting.SelfComposedDpEvent(one, steps)
    return float(rdp.RdpAccountant().compose(event).get_epsilon(delta))


def _linear(d: int, classes: int) -> TorchTrainer:
    return TorchTrainer(lambda: nn.Linear(d, classes), lr=0.5)


def _dp(noise: float = 1.0, clip: float = 1.0, **more: float) -> dict[str, float]:
    return {"local_dp_noise": noise, "local_dp_clip": clip, **more}


def test_each_example_gradient_is_clipped_before_averaging() -> None:
    # Prepare: 6 examples, batch >= n so q = 1 and every step takes all of them; inputs of mixed
    # scale, so that some gradients are longer than the clip norm and some shorter.
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3)) * np.array([[0.1], [0.2], [3.0], [5.0], [0.3], [8.0]])
    y = np.array([0, 1, 2, 0, 1, 2])
    trainer, clip, lr = _linear(3, 3), 1.0, 0.5
    start = rng.normal(size=trainer.spec.size).astype(np.float32)
    w, b = start[:9].reshape(3, 3).astype(np.float64), start[9:].astype(np.float64)

    # Execute
    config = {**_dp(TINY, clip), "batch_size": 10, "local_epochs": 1, "lr": lr}
    result = trainer.fit(start, ArrayData(x, y), config, seed=0)

    # Assert: per example g_i = ((p_i - y_i) x_i, p_i - y_i), scaled by min(1, C / ||g_i||),
    # averaged over the expected batch (here all 6)
    x32 = x.astype(np.float32).astype(np.float64)
    logits = x32 @ w.T + b
    p = np.exp(logits - logits.max(axis=1, keepdims=True))
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(6), y] -= 1.0
    per_example = np.concatenate([p[:, :, None] * x32[:, None, :], p[:, :, None]], axis=2)
    norms = np.linalg.norm(per_example.reshape(6, -1), axis=1)
    assert (norms > clip).sum() >= 2 and (norms < clip).sum() >= 2  # both kinds are present
    scale = np.minimum(1.0, clip / (norms + 1e-6))  # Opacus's clip factor
    mean = (per_example * scale[:, None, None]).sum(axis=0) / 6
    expected = np.concatenate([(w - lr * mean[:, :3]).ravel(), b - lr * mean[:, 3]])
    np.testing.assert_allclose(result.parameters, expected, rtol=1e-5, atol=1e-6)
    unclipped = per_example.mean(axis=0)
    assert not np.allclose(mean, unclipped, atol=1e-3)
    assert result.steps == 1


def test_one_example_moves_the_model_by_at_most_the_clip_norm() -> None:
    # Prepare: a single example with a huge gradient (large input, wrong class)
    trainer, clip, lr = _linear(4, 2), 0.25, 1.0
    data = ArrayData(np.full((1, 4), 100.0), np.array([1]))
    start = np.zeros(trainer.spec.size, np.float32)

    # Execute
    config = {**_dp(TINY, clip), "batch_size": 1, "local_epochs": 1, "lr": lr}
    result = trainer.fit(start, data, config, seed=0)

    # Assert: the step is the clipped gradient itself, of norm exactly C
    assert np.linalg.norm(result.parameters - start) == pytest.approx(clip * lr, rel=1e-5)


def test_noise_has_std_z_times_clip_over_the_expected_batch_size() -> None:
    # Prepare: zero inputs and no bias make every per-example gradient exactly 0, so one step
    # with lr = 1 moves the 4000 weights by -noise; n = 1000 and B = 10 give q = 0.01.
    model = nn.Linear(2000, 2, bias=False)
    with torch.no_grad():
        model.weight.zero_()
    x, y = torch.zeros(1000, 2000), torch.zeros(1000, dtype=torch.int64)
    settings = LocalDP(noise_multiplier=2.0, max_grad_norm=0.5)
    opt = torch.optim.SGD(model.parameters(), lr=1.0)

    # Execute
    with DPSGD(settings, model, opt, num_examples=1000, batch_size=10, seed=4) as dp:
        # the batches are secret (OS entropy): take the first whose size is at least 3 off 10
        # (about every other one is; Binomial(1000, 0.01))
        idx = next(b for b in dp.batches(epochs=100) if abs(len(b) - 10) >= 3)
        dp.optimizer.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        dp.optimizer.step()
    noise = -model.weight.detach().numpy().ravel()

    # Assert: Opacus divides the noised sum by the *expected* batch size q·n = 10, not by the
    # batch Poisson sampling happened to draw (here of another size)
    expected_std = 2.0 * 0.5 / 10
    assert noise.std() == pytest.approx(expected_std, rel=0.05)
    assert noise.std() != pytest.approx(2.0 * 0.5 / len(idx), rel=0.15)
    assert abs(noise.mean()) < 4 * expected_std / math.sqrt(noise.size)
    assert not hasattr(model.weight, "grad_sample")  # the hooks are gone after the fit


def test_proximal_term_and_correction_are_added_after_the_noise() -> None:
    # Prepare: all per-example gradients are 0 (zero inputs, no bias) and the noise is tiny, so
    # two full-batch steps move the model by the correction c and the proximal term alone:
    # w1 = w0 - lr c;  w2 = w1 - lr (c + mu (w1 - w0)) = w0 - lr c (2 - mu lr).
    trainer = TorchTrainer(lambda: nn.Linear(3, 2, bias=False))
    data = ArrayData(np.zeros((4, 3)), np.array([0, 1, 0, 1]))
    start = np.random.default_rng(2).normal(size=6).astype(np.float32)
    c = np.random.default_rng(3).normal(size=6).astype(np.float32)
    lr, mu = 0.1, 2.0

    # Execute
    config = {**_dp(TINY), "batch_size": 4, "local_epochs": 2, "lr": lr, "mu": mu}
    result = trainer.fit(start, data, config, seed=0, correction=c)

    # Assert
    np.testing.assert_allclose(result.parameters, start - lr * c * (2 - mu * lr), atol=1e-6)
    assert result.steps == 2


def _client(n: int, seed: int = 0) -> ClientContext:
    rng = np.random.default_rng(seed)
    train = ArrayData(rng.normal(size=(n, 4)), rng.integers(0, 3, n))
    return ClientContext("7", ClientData(train, train.subset(np.arange(0))), _linear(4, 3))


@pytest.mark.parametrize(
    ("n", "batch", "q", "steps_per_round"),
    [(50, 10, 0.2, 10), (6, 10, 1.0, 2)],  # 2 epochs a round; the second client < one batch
)
def test_local_epsilon_is_what_dp_accounting_computes_for_all_steps_so_far(
    n: int, batch: int, q: float, steps_per_round: int
) -> None:
    # Prepare
    ctx, app = _client(n), ClientApp()
    start = np.zeros(ctx.trainer.spec.size, np.float32)
    config = {**_dp(1.1, 1.0, local_dp_delta=1e-3), "batch_size": batch, "local_epochs": 2}

    # Execute: three rounds for the same client
    replies = [app.handle(ctx, Instruction(r, "fit", start, config)) for r in (1, 2, 3)]

    # Assert
    eps = [reply.metrics["local_epsilon"] for reply in replies]
    for r, value in enumerate(eps, start=1):
        assert value == pytest.approx(_direct_epsilon(1.1, q, r * steps_per_round, 1e-3), rel=1e-9)
    assert eps[0] < eps[1] < eps[2]
    assert ctx.state[STATE_KEY] == StepCount(1.1, n, min(batch, n), 3 * steps_per_round)
    assert "train_loss" not in replies[0].metrics  # computed from the records without noise


def test_a_client_with_no_examples_spends_nothing() -> None:
    ctx = _client(0)
    start = np.zeros(ctx.trainer.spec.size, np.float32)
    reply = ClientApp().handle(ctx, Instruction(1, "fit", start, _dp()))
    assert reply.metrics["local_epsilon"] == 0.0
    np.testing.assert_array_equal(reply.vector, np.zeros_like(start))


def test_empty_poisson_batches_take_a_noise_only_step() -> None:
    # q = 1/20: most of the 20 steps draw no example at all
    ctx = _client(20)
    start = np.zeros(ctx.trainer.spec.size, np.float32)
    config = {**_dp(), "batch_size": 1, "local_epochs": 1}
    result = ctx.trainer.fit(start, ctx.data.train, config, seed=1)
    assert result.steps == 20
    assert np.isfinite(result.parameters).all() and not np.array_equal(result.parameters, start)


def test_changing_the_mechanism_mid_run_is_refused() -> None:
    ctx, app = _client(50), ClientApp()
    start = np.zeros(ctx.trainer.spec.size, np.float32)
    app.handle(ctx, Instruction(1, "fit", start, {**_dp(), "batch_size": 10}))
    with pytest.raises(ClientError, match="changed between rounds"):
        app.handle(ctx, Instruction(2, "fit", start, {**_dp(), "batch_size": 5}))


def test_a_simulation_reports_each_rounds_mean_local_epsilon() -> None:
    # Prepare
    settings = {"dataset": "digits", "clients": 4, "seed": 0}
    sizes = load_dataset("digits", num_clients=4, seed=0).client_sizes()

    # Execute
    result = fedloom.simulate(
        **settings, model="mlp", rounds=2, local_epochs=1, batch_size=32, lr=0.1,
        local_dp_noise=1.0, local_dp_clip=1.0,
    )  # fmt: skip

    # Assert: the history keeps the example-weighted mean of the clients' epsilons
    for record in result.history.rounds:
        steps = [record.round * math.ceil(n / 32) for n in sizes]
        each = [_direct_epsilon(1.0, 32 / n, k, 1e-5) for n, k in zip(sizes, steps, strict=True)]
        assert record.metrics["local_epsilon"] == pytest.approx(np.average(each, weights=sizes))
        assert record.accuracy is not None and record.train_loss is None
    first, second = (r.metrics["local_epsilon"] for r in result.history.rounds)
    assert 0 < first < second


def test_the_flags_reach_the_client_config(capsys: pytest.CaptureFixture[str]) -> None:
    # --model logreg is refused (below), after the flags were parsed into the settings
    code = main(["simulate", "--model", "logreg", "--local-dp-noise", "0.8", "--quiet"])
    assert code == 2
    assert "needs a PyTorch model" in capsys.readouterr().err
    config = SimulationConfig(local_dp_noise=0.8, local_dp_clip=0.5).client_config()
    assert (config["local_dp_noise"], config["local_dp_clip"], config["local_dp_delta"]) == (
        0.8, 0.5, 1e-5,
    )  # fmt: skip
    assert "local_dp_noise" not in SimulationConfig().client_config()


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"model": "logreg", "local_dp_noise": 1.0}, "needs a PyTorch model"),
        ({"local_dp_noise": 1.0, "local_dp_delta": 0.01}, r"must be below 1/\d+"),
        ({"local_dp_noise": -1.0}, "must be positive"),
        ({"local_dp_noise": 0.0}, "must be positive"),
        ({"local_dp_noise": 1.0, "local_dp_clip": 0.0}, "--local-dp-clip must be positive"),
        ({"local_dp_clip": 1.0}, "needs --local-dp-noise"),
    ],
)
def test_simulations_refuse_local_dp_where_it_cannot_hold(
    settings: dict[str, object], message: str
) -> None:
    # digits over 4 clients: about 290 examples each, so delta 0.01 is above 1/n
    with pytest.raises(ConfigError, match=message):
        fedloom.simulate(dataset="digits", clients=4, rounds=1, **settings)


def test_the_trainer_refuses_bad_settings_and_models_without_per_example_gradients() -> None:
    ctx = _client(20)
    start = np.zeros(ctx.trainer.spec.size, np.float32)
    with pytest.raises(ConfigError, match="must be positive"):
        ctx.trainer.fit(start, ctx.data.train, _dp(noise=-0.5), seed=0)
    with pytest.raises(ConfigError, match="needs 'local_dp_noise'"):
        ctx.trainer.fit(start, ctx.data.train, {"local_dp_clip": 1.0}, seed=0)
    with pytest.raises(ConfigError, match=r"below 1/20"):
        LocalDP(1.0, delta=0.05).check_delta(20)
    LocalDP(1.0, delta=0.049).check_delta(20)
    batch_norm = TorchTrainer(lambda: nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4)))
    params = batch_norm.init_parameters(0)
    with pytest.raises(ConfigError, match="per-example gradients"):
        batch_norm.fit(params, ctx.data.train, _dp(), seed=0)


def test_the_audit_of_a_local_dp_run_bounds_it_by_the_largest_clients_epsilon(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: every client every round, 2 rounds of 1 epoch with Poisson batches of 32
    from fedloom.recipes import audit_run

    settings = {"dataset": "digits", "clients": 4, "seed": 0}
    sizes = load_dataset("digits", num_clients=4, seed=0).client_sizes()
    fedloom.simulate(
        **settings, model="mlp", rounds=2, local_epochs=1, batch_size=32, lr=0.1,
        local_dp_noise=1.0, out=str(tmp_path),
    )  # fmt: skip

    # Execute
    report = audit_run(tmp_path)

    # Assert: record level, at the largest of the four clients' epsilons after 2 * ceil(n/32)
    each = [_direct_epsilon(1.0, 32 / n, 2 * math.ceil(n / 32), 1e-5) for n in sizes]
    assert report.level == "record"
    assert report.epsilon == pytest.approx(max(each)) and report.delta == 1e-5
    assert report.ceiling_epsilon == report.epsilon
    assert main(["audit", str(tmp_path)]) == 0
    assert "(record level: the largest of the members' clients)" in capsys.readouterr().out
