import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate
from fedloom.strategy import (
    AllClients,
    CountSampler,
    FractionSampler,
    ServerSGD,
    WeightedMean,
    make_strategy,
)


def _update(cid: str, values: list[float], weight: float) -> ClientUpdate:
    return ClientUpdate(cid, np.array(values, dtype=np.float32), weight)


def test_weighted_mean_matches_hand_computed_value() -> None:
    # Prepare: (1*[1,2] + 3*[3,4] + 0*[100,100]) / 4 = [10/4, 14/4]
    updates = [_update("a", [1, 2], 1), _update("b", [3, 4], 3), _update("c", [100, 100], 0)]

    # Execute
    agg, state = WeightedMean().aggregate(updates, 2, WeightedMean().init(2))

    # Assert
    assert agg.vector.dtype == np.float32
    np.testing.assert_allclose(agg.vector, [2.5, 3.5])
    assert (agg.count, agg.total_weight, state) == (3, 4.0, None)


def test_weighted_mean_consumes_a_stream_once() -> None:
    # Prepare: a generator can be iterated only once, as the fleet's replies are.
    stream = (_update(str(i), [float(i)], 1.0) for i in range(1, 5))

    # Execute
    agg, _ = WeightedMean().aggregate(stream, 1, None)

    # Assert: mean of 1..4
    np.testing.assert_allclose(agg.vector, [2.5])
    assert agg.count == 4


def test_weighted_mean_of_nothing_is_zero_with_count_zero() -> None:
    agg, _ = WeightedMean().aggregate([], 3, None)
    assert agg.count == 0 and agg.vector.tolist() == [0.0, 0.0, 0.0]


def test_weighted_mean_does_not_mutate_inputs() -> None:
    u = _update("a", [1.0, 2.0], 2.0)
    WeightedMean().aggregate([u], 2, None)
    assert u.vector.tolist() == [1.0, 2.0]


def test_server_sgd_with_lr_one_replaces_model_by_mean_client_model() -> None:
    # Prepare
    params = np.array([1.0, -1.0], np.float32)
    delta = np.array([0.5, 0.25], np.float32)

    # Execute
    new, _ = ServerSGD(1.0).step(params, delta, None)
    half, _ = ServerSGD(0.5).step(params, delta, None)

    # Assert
    assert new.tolist() == [1.5, -0.75]
    assert half.tolist() == [1.25, -0.875]
    assert params.tolist() == [1.0, -1.0]
    assert new.dtype == np.float32


def test_server_sgd_refuses_non_positive_lr() -> None:
    with pytest.raises(ConfigError, match="positive"):
        ServerSGD(0.0)


def test_all_clients_returns_every_id_sorted() -> None:
    assert AllClients().select(["b", "c", "a"], 1) == ["a", "b", "c"]


def test_fraction_sampler_picks_round_c_times_k_without_replacement() -> None:
    # Prepare
    ids = [str(i) for i in range(100)]

    # Execute
    picked = FractionSampler(0.1, seed=3).select(ids, 1)

    # Assert: m = max(1, round(0.1 * 100)) = 10, distinct, sorted
    assert len(picked) == 10 and len(set(picked)) == 10
    assert picked == sorted(picked)
    assert FractionSampler(0.001).select(ids, 1).__len__() == 1
    assert len(FractionSampler(0.125).select([str(i) for i in range(20)], 1)) == 3  # 2.5 -> 3


def test_samplers_are_pure_functions_of_seed_and_round() -> None:
    # Prepare
    ids = [str(i) for i in range(50)]
    shuffled = list(reversed(ids))
    sampler = CountSampler(5, seed=7)

    # Execute
    first = sampler.select(ids, 4)

    # Assert: same (seed, round) same pick, whatever the order ids arrive in
    assert first == sampler.select(shuffled, 4)
    assert first != sampler.select(ids, 5)
    assert first != CountSampler(5, seed=8).select(ids, 4)


def test_count_sampler_takes_all_when_asking_for_more_than_available() -> None:
    assert CountSampler(10).select(["x", "y"], 1) == ["x", "y"]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_fraction_outside_unit_interval_is_refused(fraction: float) -> None:
    with pytest.raises(ConfigError, match=r"fraction must be in \(0, 1\]"):
        FractionSampler(fraction)


def test_count_sampler_refuses_zero() -> None:
    with pytest.raises(ConfigError, match="at least 1"):
        CountSampler(0)


def test_make_strategy_names_the_choices_for_an_unknown_strategy() -> None:
    with pytest.raises(ConfigError, match="unknown strategy 'fedfoo'; choose one of: fedavg"):
        make_strategy("fedfoo")


def test_make_strategy_refuses_options_the_preset_does_not_take() -> None:
    with pytest.raises(ConfigError, match="does not take"):
        make_strategy("fedavg", mu=0.1)
