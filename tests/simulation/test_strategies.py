"""Strategies, stragglers, dropout and attackers through ``simulate``, end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import fedloom
from fedloom.errors import ConfigError, RoundFailedError
from fedloom.simulation import InProcessFleet
from fedloom.strategy import STRATEGIES, make_strategy

SMALL = {"dataset": "digits", "model": "logreg", "clients": 20, "rounds": 5}


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_learns_digits_from_python(name: str) -> None:
    # Execute: 5 rounds of every client; chance is 0.1.
    result = fedloom.simulate(strategy=name, **SMALL)

    # Assert: every preset learns; the adaptive ones at their default η = 0.01 learn slower,
    # and Krum, which keeps one client's update, is noisier.
    accuracy = result.history.final_accuracy
    assert accuracy is not None
    assert accuracy > (0.6 if name in ("fedadagrad", "krum") else 0.75)


def test_dropout_leaves_the_round_to_whoever_answered() -> None:
    # 20 clients per round, 30 % drop out: round_half_up(6.0) = 6 never answer.
    result = fedloom.simulate(dropout=0.3, **SMALL)
    assert result.history.column("clients") == [14] * 5


@pytest.mark.parametrize(
    ("strategy", "policy", "clients"),
    [
        ("fedavg", None, 10),  # FedAvg drops the 10 stragglers' work
        ("fedprox", None, 20),  # FedProx keeps their partial work
        ("fedavg", "keep", 20),
        ("fedprox", "drop", 10),
    ],
)
def test_straggler_policy_follows_the_strategy_unless_set(
    strategy: str, policy: str | None, clients: int
) -> None:
    result = fedloom.simulate(strategy=strategy, stragglers=0.5, straggler_policy=policy, **SMALL)
    assert result.history.column("clients") == [clients] * 5


def test_kept_stragglers_change_the_model_dropped_ones_are_absent() -> None:
    plain = fedloom.simulate(strategy="fedprox", **SMALL)
    kept = fedloom.simulate(strategy="fedprox", stragglers=0.5, **SMALL)
    assert not np.array_equal(plain.parameters, kept.parameters)


def test_attackers_are_fixed_per_run_and_recorded_in_the_history(tmp_path: Path) -> None:
    # Execute
    result = fedloom.simulate(attack="sign-flip:0.2", out=str(tmp_path), **SMALL)

    # Assert: 20 % of 20 clients, the same ids on a rerun, written to history.json
    malicious = result.history.info["malicious_clients"]
    assert len(malicious) == 4 and len(set(malicious)) == 4
    again = fedloom.simulate(attack="sign-flip:0.2", **SMALL)
    assert again.history.info["malicious_clients"] == malicious
    saved = json.loads((tmp_path / "history.json").read_text())
    assert saved["run"] == {"attack": "sign-flip:0.2", "malicious_clients": malicious}


def test_sign_flip_attackers_break_fedavg_but_not_the_median() -> None:
    # 4 of 20 clients send -4 times their update: the mean moves backwards, the median does not.
    settings = {**SMALL, "rounds": 8, "attack": "sign-flip:0.2"}
    fedavg = fedloom.simulate(strategy="fedavg", **settings).history.final_accuracy
    median = fedloom.simulate(strategy="median", **settings).history.final_accuracy
    assert fedavg is not None and median is not None
    assert fedavg < 0.3 < 0.85 < median


def test_attack_scale_sets_k() -> None:
    mild = fedloom.simulate(attack="sign-flip:0.2", attack_scale=0.1, **SMALL)
    assert (mild.history.final_accuracy or 0) > 0.8


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "krum", "byzantine": 9}, r"needs n > 2f \+ 2"),
        ({"strategy": "bulyan", "byzantine": 5}, "at least 23"),
        ({"dropout": 0.5, "min_clients": 15}, "--min-clients is 15"),
        ({"strategy": "fedavg", "mu": 0.1}, "does not take --mu; it applies to: fedprox"),
        ({"attack": "nope:0.1"}, "--attack"),
        ({"attack_scale": 2.0}, "--attack-scale needs --attack"),
        ({"stragglers": 1.0}, r"--stragglers must be in \[0, 1\)"),
        ({"straggler_policy": "sometimes"}, "--straggler-policy must be drop or keep"),
    ],
)
def test_configurations_without_a_guarantee_are_refused_before_training(
    settings: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fedloom.simulate(**{**SMALL, **settings})


def test_stragglers_with_your_own_trainer_need_local_epochs() -> None:
    ds = fedloom.load_dataset("digits", num_clients=5)
    trainer = fedloom.LinearTrainer(64, 10)
    with pytest.raises(ConfigError, match="--stragglers needs --local-epochs"):
        fedloom.simulate(dataset=ds, trainer=trainer, stragglers=0.5, rounds=1)
    result = fedloom.simulate(dataset=ds, trainer=trainer, stragglers=0.4, local_epochs=2, rounds=1)
    assert result.history.column("clients") == [3]


def test_a_round_below_the_aggregators_minimum_fails_naming_its_guarantee() -> None:
    # Krum with f = 1 needs 5 updates; a federation of 4 clients cannot give them.
    ds = fedloom.load_dataset("digits", num_clients=4)
    trainer = fedloom.LinearTrainer(64, 10)
    with pytest.raises(RoundFailedError, match=r"4 client\(s\) answered.*5 needed.*krum"):
        fedloom.run_rounds(
            InProcessFleet(ds, trainer),
            make_strategy("krum", byzantine=1),
            trainer.init_parameters(0),
            rounds=1,
        )


def test_stop_at_accuracy_ends_the_run_at_the_first_round_that_reaches_it() -> None:
    full = fedloom.simulate(**{**SMALL, "rounds": 10})
    accuracy = full.history.column("accuracy")
    target = accuracy[3]  # reached for the first time at round 4 at the latest
    first = next(i for i, a in enumerate(accuracy, start=1) if a >= target)

    stopped = fedloom.simulate(**{**SMALL, "rounds": 10}, stop_at_accuracy=target)

    assert len(stopped.history) == first
    assert stopped.history.column("accuracy") == accuracy[:first]
