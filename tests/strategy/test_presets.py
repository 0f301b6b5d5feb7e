"""Strategy presets: every name builds the pieces its paper describes, options are checked."""

import pytest

from fedloom.errors import ConfigError
from fedloom.strategy import (
    STRATEGIES,
    STRATEGY_OPTIONS,
    Bulyan,
    CountSampler,
    Krum,
    Median,
    MultiKrum,
    PlainRound,
    ScaffoldRound,
    ServerAdaptive,
    ServerSGD,
    TrimmedMean,
    WeightedMean,
    make_strategy,
)


def test_every_preset_named_in_the_issue_exists() -> None:
    assert set(STRATEGIES) == {
        "fedavg", "fedavgm", "fedprox", "fedadam", "fedyogi", "fedadagrad", "scaffold",
        "median", "trimmed-mean", "krum", "multi-krum", "bulyan",
    }  # fmt: skip


@pytest.mark.parametrize(
    ("name", "options", "aggregator", "optimizer", "client_config"),
    [
        ("fedavg", {}, WeightedMean(), ServerSGD(1.0), {}),
        ("fedavgm", {}, WeightedMean(), ServerSGD(1.0, 0.9), {}),
        ("fedavgm", {"server_momentum": 0.5, "server_lr": 0.3}, WeightedMean(),
         ServerSGD(0.3, 0.5), {}),
        ("fedprox", {"mu": 1.0}, WeightedMean(), ServerSGD(1.0), {"mu": 1.0}),
        ("fedadam", {}, WeightedMean(), ServerAdaptive("adam", 0.01, 0.9, 0.99, 1e-3), {}),
        ("fedyogi", {"tau": 0.1}, WeightedMean(), ServerAdaptive("yogi", tau=0.1), {}),
        ("fedadagrad", {"server_lr": 0.1}, WeightedMean(), ServerAdaptive("adagrad", 0.1), {}),
        ("scaffold", {}, WeightedMean(), ServerSGD(1.0), {}),
        ("median", {}, Median(), ServerSGD(1.0), {}),
        ("trimmed-mean", {"trim": 0.2}, TrimmedMean(0.2), ServerSGD(1.0), {}),
        ("krum", {"byzantine": 2}, Krum(2), ServerSGD(1.0), {}),
        ("multi-krum", {"byzantine": 2, "krum_m": 5}, MultiKrum(2, 5), ServerSGD(1.0), {}),
        ("bulyan", {"byzantine": 1}, Bulyan(1), ServerSGD(1.0), {}),
    ],
)  # fmt: skip
def test_presets_compose_the_papers_pieces(
    name: str, options: dict, aggregator: object, optimizer: object, client_config: dict
) -> None:
    # Execute
    strategy = make_strategy(name, CountSampler(3), **options)

    # Assert
    assert strategy.name == name
    assert strategy.sampler == CountSampler(3)
    assert strategy.aggregator == aggregator
    assert strategy.optimizer == optimizer
    assert dict(strategy.client_config) == client_config
    expected_mechanism = ScaffoldRound() if name == "scaffold" else PlainRound()
    assert strategy.mechanism == expected_mechanism
    assert strategy.straggler_policy == ("keep" if name == "fedprox" else "drop")


def test_options_left_none_take_the_presets_defaults() -> None:
    assert make_strategy("fedprox", mu=None, server_lr=None).client_config == {"mu": 0.01}


def test_an_option_for_another_preset_is_refused_naming_who_takes_it() -> None:
    with pytest.raises(ConfigError, match="'fedavg' does not take --mu; it applies to: fedprox"):
        make_strategy("fedavg", mu=0.1)
    with pytest.raises(ConfigError, match="applies to: bulyan, krum, multi-krum"):
        make_strategy("median", byzantine=1)


def test_the_options_table_lists_each_presets_hyperparameters() -> None:
    assert STRATEGY_OPTIONS["fedadam"] == ("server_lr", "beta1", "beta2", "tau")
    assert STRATEGY_OPTIONS["fedprox"] == ("mu", "server_lr")
    assert "byzantine" in STRATEGY_OPTIONS["bulyan"]


@pytest.mark.parametrize(
    ("name", "options", "message"),
    [
        ("fedprox", {"mu": -1.0}, "--mu must be at least 0"),
        ("fedavgm", {"server_momentum": 1.0}, "--server-momentum must be in"),
        ("trimmed-mean", {"trim": 0.5}, "--trim"),
        ("krum", {"byzantine": -1}, "--byzantine"),
    ],
)
def test_bad_hyperparameters_are_refused(name: str, options: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make_strategy(name, **options)
