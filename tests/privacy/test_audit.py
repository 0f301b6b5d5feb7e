"""The membership inference audit: the attack's scores by hand, the DP ceiling, whole runs."""

from __future__ import annotations

import hashlib
import json
import math
import re
import shutil
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.cli import main
from fedloom.client import LinearTrainer, TorchTrainer
from fedloom.data import ArrayData
from fedloom.errors import ConfigError, DataError
from fedloom.messages import Config
from fedloom.models import mlp
from fedloom.params import Vector
from fedloom.privacy import (
    Mechanism,
    advantage_ceiling,
    distributed_noise,
    epsilon,
    membership_attack,
)
from fedloom.privacy._discrete import ddg_epsilon, ddg_rho
from fedloom.recipes import audit_run
from fedloom.strategy import CountSampler

# ------------------------------------------------------------------------------- the attack


def test_a_worked_four_by_four_example() -> None:
    # Prepare: of the 16 (member, non-member) pairs the member has the lower loss in
    # 4 (0.1) + 4 (0.2) + 3 (0.5 < 0.6, 0.7, 1.0) + 1 (0.9 < 1.0) = 12 -> AUC 12/16.
    # Guessing "member" at loss <= 0.2 catches 2 of 4 members and no non-member: TPR - FPR
    # = 0.5; at <= 0.5, 3/4 - 1/4 = 0.5; at <= 0.9, 1 - 3/4. The best is 0.5, at FPR 0.
    members, others = [0.1, 0.2, 0.5, 0.9], [0.3, 0.6, 0.7, 1.0]

    # Execute
    result = membership_attack(members, others)

    # Assert
    assert result.auc == 0.75
    assert result.advantage == 0.5
    assert result.tpr_at_1pct_fpr == 0.5
    assert result.tpr_at_10pct_fpr == 0.5
    assert (result.members, result.non_members) == (4, 4)
    # the Kolmogorov-Smirnov 95 % point: sqrt(ln(20) / 2 * (1/4 + 1/4)) = sqrt(0.748933)
    assert result.chance_advantage == pytest.approx(0.865409, abs=1e-6)


def test_perfectly_separated_losses_leak_everything() -> None:
    result = membership_attack([0.01, 0.02, 0.03], [1.0, 2.0, np.inf])

    assert (result.auc, result.advantage, result.tpr_at_1pct_fpr) == (1.0, 1.0, 1.0)


def test_members_with_higher_losses_give_auc_0_and_no_advantage() -> None:
    result = membership_attack([5.0, 6.0], [1.0, 2.0])

    assert (result.auc, result.advantage, result.tpr_at_10pct_fpr) == (0.0, 0.0, 0.0)


def test_equal_losses_are_a_coin_toss() -> None:
    result = membership_attack([0.7, 0.7, 0.7], [0.7, 0.7, 0.7])

    assert (result.auc, result.advantage) == (0.5, 0.0)


def test_the_same_distribution_gives_auc_near_one_half() -> None:
    # Prepare: 4000 draws each; the AUC's standard error is about 0.0065
    rng = np.random.default_rng(0)
    members, others = rng.exponential(size=4000), rng.exponential(size=4000)

    # Execute
    result = membership_attack(members, others)

    # Assert
    assert result.auc == pytest.approx(0.5, abs=0.03)
    assert result.advantage < 0.06


def test_the_larger_set_is_subsampled_to_the_smaller_with_the_seed() -> None:
    # Prepare: 2 members below 6 non-members: every pair ranks right whichever 2 are kept
    members, others = [0.1, 0.2], [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]
    spread = np.random.default_rng(1).exponential(size=50)

    # Execute
    result = membership_attack(members, others, seed=3)
    again = [membership_attack(spread[:10], spread[10:], seed=s).auc for s in (7, 7, 8)]

    # Assert
    assert (result.members, result.non_members, result.auc) == (2, 2, 1.0)
    assert again[0] == again[1] != again[2]


@pytest.mark.parametrize(
    ("members", "others", "message"),
    [([], [1.0], "no member losses"), ([1.0], [np.nan], "non-member losses hold NaN")],
)
def test_empty_or_nan_losses_are_refused(
    members: list[float], others: list[float], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        membership_attack(members, others)


# ------------------------------------------------------------------------------ DP ceiling


@pytest.mark.parametrize(
    ("eps", "delta", "expected"),
    [
        (0.0, 0.0, 0.0),  # (1 - 1 + 0) / 2
        (0.0, 1e-5, 1e-5),  # (1 - 1 + 2e-5) / 2 = delta
        (math.log(3), 0.0, 0.5),  # (3 - 1) / (3 + 1)
        (math.log(3), 0.1, 0.55),  # (3 - 1 + 0.2) / 4
        (1.0, 1e-5, (math.e - 1 + 2e-5) / (math.e + 1)),
        (50.0, 1e-5, 1.0),  # 1 - 2 (1 - delta) / (e^50 + 1): 1 to double precision
        (math.inf, 0.0, 1.0),
    ],
)
def test_the_dp_ceiling_at_known_points(eps: float, delta: float, expected: float) -> None:
    assert advantage_ceiling(eps, delta) == pytest.approx(expected, rel=1e-12, abs=1e-15)


def test_the_dp_ceiling_grows_with_epsilon() -> None:
    values = [advantage_ceiling(e, 1e-5) for e in (0.1, 0.5, 1, 2, 4, 8)]

    assert values == sorted(values) and values[-1] < 1.0


@pytest.mark.parametrize(("eps", "delta"), [(-1.0, 0.0), (math.nan, 0.0), (1.0, 1.5)])
def test_the_dp_ceiling_refuses_bad_parameters(eps: float, delta: float) -> None:
    with pytest.raises(ConfigError):
        advantage_ceiling(eps, delta)


# -------------------------------------------------------------------- per-example losses


def _data(n: int = 30, d: int = 4, classes: int = 3, seed: int = 0) -> ArrayData:
    rng = np.random.default_rng(seed)
    return ArrayData(rng.normal(size=(n, d)), rng.integers(0, classes, n))


def test_linear_example_losses_average_to_evaluates_loss() -> None:
    # Prepare: a random model, so the losses differ from example to example
    trainer = LinearTrainer(4, 3)
    params = np.random.default_rng(1).normal(size=trainer.spec.size).astype(np.float32)
    data = _data()

    # Execute
    losses = trainer.example_losses(params, data)

    # Assert
    assert losses.shape == (30,) and np.ptp(losses) > 0
    assert losses.mean() == pytest.approx(trainer.evaluate(params, data).loss, rel=1e-12)


@pytest.mark.parametrize("custom_loss", [False, True])
def test_torch_example_losses_average_to_evaluates_loss(custom_loss: bool) -> None:
    import torch

    def loss_fn(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.cross_entropy(out, y) * 2.0

    trainer = TorchTrainer(lambda: mlp(4, 3, (8,)), loss_fn=loss_fn if custom_loss else None)
    params = trainer.init_parameters(0)
    data = _data()

    losses = trainer.example_losses(params, data)

    assert losses.shape == (30,) and np.ptp(losses) > 0
    assert losses.mean() == pytest.approx(trainer.evaluate(params, data).loss, rel=1e-5)


# ------------------------------------------------------------------------------ whole runs


class _Spy(LinearTrainer):
    """A linear trainer that remembers the training rows it was given."""

    def __init__(self) -> None:
        super().__init__(64, 10, lr=0.5, local_epochs=2)
        self.trained: set[str] = set()

    def fit(
        self,
        parameters: Vector,
        data: ArrayData,
        config: Config,
        seed: int,
        correction: Vector | None = None,
    ) -> fedloom.client.FitResult:
        self.trained.add(_fingerprint(data))
        return super().fit(parameters, data, config, seed, correction)


def _fingerprint(data: ArrayData) -> str:
    return hashlib.sha256(data.x.tobytes()).hexdigest()  # features: label-flip changes labels


@pytest.mark.parametrize(
    "conditions", [{}, {"dropout": 0.5}, {"stragglers": 0.5, "local_epochs": 2}]
)
def test_the_members_are_the_rows_of_the_clients_that_trained(
    conditions: dict[str, float], tmp_path: Path
) -> None:
    # Prepare: 2 of 10 clients a round for 3 rounds, some dropping out or straggling (whose
    # work fedavg drops), and a quarter of the clients attacking: the spy sees who trained
    spy = _Spy()
    run = dict(clients=10, clients_per_round=2, rounds=3, attack="label-flip:0.25", seed=4)
    result = fedloom.simulate(dataset="digits", trainer=spy, out=str(tmp_path), **run, **conditions)
    ds = fedloom.load_dataset("digits", num_clients=10, seed=4)
    by_rows = {_fingerprint(ds.client(i).train): i for i in range(10)}
    malicious = {int(c) for c in result.history.info["malicious_clients"]}
    trained = {by_rows[f] for f in spy.trained}
    ids = [str(i) for i in range(10)]

    # Execute
    report = audit_run(tmp_path, trainer=_Spy())

    # Assert: dropouts and dropped stragglers were sampled but did not train
    sampled = {int(c) for r in (1, 2, 3) for c in CountSampler(2, seed=4).select(ids, r)}
    assert trained < sampled if conditions else trained == sampled
    assert malicious and malicious & trained and len(trained) < 10
    assert set(report.clients) == trained - malicious
    assert report.member_pool == sum(len(ds.client(i).train) for i in report.clients)
    assert report.non_member_pool == len(ds.test) == 360


def test_a_run_with_a_natural_split_uses_its_clients_local_tests(tmp_path: Path) -> None:
    fedloom.simulate(
        dataset="synthetic:1,1", model="logreg", clients=4, rounds=2, out=str(tmp_path)
    )

    report = audit_run(tmp_path)

    ds = fedloom.load_dataset("synthetic:1,1", num_clients=4)
    assert report.clients == (0, 1, 2, 3)
    assert report.non_member_source == "local test splits of the members' clients"
    assert report.non_member_pool == sum(len(ds.client(i).test) for i in range(4))
    assert report.attack.members == report.attack.non_members == report.non_member_pool


def test_a_run_on_your_own_data_needs_it_back(tmp_path: Path) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    parts = [(rng.normal(size=(20, 3)), rng.integers(0, 2, 20)) for _ in range(3)]
    ds = fedloom.from_arrays(parts, local_test_fraction=0.3)
    fedloom.simulate(dataset=ds, model="logreg", rounds=2, out=str(tmp_path))

    # Execute / Assert
    with pytest.raises(ConfigError, match=re.escape("audit_run(run_dir, dataset=...)")):
        audit_run(tmp_path)
    assert audit_run(tmp_path, dataset=ds).non_member_pool == len(ds.test)


def test_a_trainer_without_example_losses_is_named(tmp_path: Path) -> None:
    class Plain:
        def __init__(self) -> None:
            self._inner = LinearTrainer(64, 10)
            self.spec = self._inner.spec
            self.init_parameters = self._inner.init_parameters
            self.fit = self._inner.fit
            self.evaluate = self._inner.evaluate

    fedloom.simulate(dataset="digits", trainer=LinearTrainer(64, 10), clients=3, rounds=1,
                     out=str(tmp_path))  # fmt: skip

    with pytest.raises(
        ConfigError, match=re.escape("Plain has no example_losses(parameters, data)")
    ):
        audit_run(tmp_path, trainer=Plain())  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("fraction", "sampling"), [(0.5, "fixed-size-without-replacement"), (None, "all")]
)
def test_a_dp_run_reports_its_epsilon_and_the_ceiling(
    fraction: float | None, sampling: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 10 clients, z = 2, delta 1e-3; with every client every round the run accounts
    # add-or-remove, and one example's membership needs replace-one: noise multiplier z / 2
    settings = {"fraction": fraction} if fraction is not None else {}
    fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=3, dp="central",
                     noise_multiplier=2.0, delta=1e-3, out=str(tmp_path), **settings)  # fmt: skip
    cohort = 5 if fraction is not None else 10
    run_eps = epsilon(Mechanism(2.0, sampling, 10, cohort), 3, 1e-3)
    replace_one = (
        run_eps if fraction is not None else epsilon(Mechanism(1.0, "all", 10, 10), 3, 1e-3)
    )

    # Execute
    report = audit_run(tmp_path)

    # Assert
    assert report.epsilon == pytest.approx(run_eps, rel=1e-9)
    assert report.ceiling_epsilon == pytest.approx(replace_one, rel=1e-9)
    assert report.ceiling == pytest.approx(advantage_ceiling(replace_one, 1e-3), rel=1e-9)
    assert report.delta == 1e-3
    assert main(["audit", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert f"DP ceiling       {report.ceiling:.3f}" in out
    assert ("at replace-one epsilon" in out) == (fraction is None)


def test_a_distributed_dp_run_takes_its_ceiling_at_twice_the_sensitivity(tmp_path: Path) -> None:
    # Prepare: 10 clients under SecAgg (a round needs 6), z = 2, delta 1e-3
    fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=3, dp="distributed",
                     secure_aggregation="secagg", noise_multiplier=2.0, delta=1e-3,
                     out=str(tmp_path))  # fmt: skip
    noise, sensitivity = distributed_noise(1.0, 2.0, cohort=10, least=6, dim=650, modulus_bits=32)
    rho = ddg_rho(sensitivity, None, noise.sigma, 9, 650)
    rho_replace = ddg_rho(2 * sensitivity, None, noise.sigma, 9, 650)

    # Execute
    report = audit_run(tmp_path)

    # Assert: replacing a client's data moves the integer sum by up to twice the sensitivity
    assert report.epsilon == pytest.approx(ddg_epsilon([rho] * 3, 1e-3), rel=1e-9)
    assert report.ceiling_epsilon == pytest.approx(ddg_epsilon([rho_replace] * 3, 1e-3), rel=1e-9)
    assert report.ceiling_epsilon > report.epsilon


@pytest.fixture(scope="module")
def overfit_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An MLP trained hard by 2 clients on a tenth of digits: it remembers its training rows."""
    out = tmp_path_factory.mktemp("overfit")
    status = main(["simulate", "--quiet", "--dataset", "digits", "--model", "mlp", "--clients",
                   "2", "--rounds", "5", "--local-epochs", "50", "--lr", "0.1",
                   "--test-fraction", "0.9", "--out", str(out)])  # fmt: skip
    assert status == 0
    return out


def test_fedloom_audit_finds_an_overfit_models_members(
    overfit_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the run's split: 179 training rows over 2 clients, ceil(0.9 * 1797) = 1618 held
    # out, of which 179 are drawn
    capsys.readouterr()
    ds = fedloom.load_dataset("digits", num_clients=2, test_fraction=0.9)
    report_file = tmp_path / "audit.json"

    # Execute
    status = main(["audit", str(overfit_run), "--json", str(report_file)])

    # Assert: about 0.60 (its standard error on 179 + 179 examples is about 0.03)
    out = capsys.readouterr().out
    report = json.loads(report_file.read_text())
    assert status == 0
    assert "AUC" in out and "no DP" in out
    assert report["clients"] == [0, 1]
    assert report["member_pool"] == int(ds.client_sizes().sum()) == 179
    assert report["non_member_pool"] == len(ds.test) == 1618
    assert report["attack"]["members"] == report["attack"]["non_members"] == 179
    assert report["attack"]["auc"] > 0.55
    assert report["ceiling"] is None


def _without(name: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        (run / name).unlink()

    return corrupt


def _write(name: str, text: str) -> Callable[[Path], None]:
    def corrupt(run: Path) -> None:
        (run / name).write_text(text)

    return corrupt


@pytest.mark.parametrize(
    ("corrupt", "message"),
    [
        (None, "does not exist"),
        (_without("model.npz"), "has no model.npz"),
        (_without("history.json"), "has no history.json"),
        (_without("config.toml"), "has no config.toml"),
        (_write("history.json", "{"), "is not a fedloom history"),
        (_write("history.json", '{"rounds": [{"round": 1}]}'), "is not a fedloom history"),
        (_write("history.json", '{"rounds": []}'), "records no completed round"),
        (_write("model.npz", "not a model"), "is not a fedloom checkpoint"),
        (_write("config.toml", 'model = "custom"'), "pass its trainer"),
        (_write("config.toml", 'model = "logreg"'), "do not fit"),
        (_write("config.toml", 'dataset = "imagenet"'), "cannot rebuild the run's dataset"),
    ],
)
def test_bad_runs_are_one_line_and_exit_status_2(
    corrupt: Callable[[Path], None] | None, message: str, overfit_run: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    # Prepare
    run = tmp_path / "run"
    if corrupt is not None:
        shutil.copytree(overfit_run, run)
        corrupt(run)
    capsys.readouterr()

    # Execute
    status = main(["audit", str(run)])

    # Assert
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("fedloom: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--json", "{tmp}"], "cannot write --json"), (["--seed", "-1"], "--seed must be 0 or more")],
)
def test_bad_options_are_one_line_and_exit_status_2(
    argv: list[str],
    message: str,
    overfit_run: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    capsys.readouterr()  # --json to a folder

    status = main(["audit", str(overfit_run), *(a.format(tmp=tmp_path) for a in argv)])

    err = capsys.readouterr().err
    assert status == 2
    assert message in err and len(err.strip().splitlines()) == 1
