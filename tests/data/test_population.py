"""Populations whose clients are made when sampled: from_function, synthetic per device."""

from __future__ import annotations

import numpy as np
import pytest

import fedloom
from fedloom.data import ArrayData, ClientData, FederatedDataset, load_dataset
from fedloom.data._builtin import SyntheticPopulation, generate_synthetic
from fedloom.errors import ConfigError, DataError


class _Counted:
    """Client i: 4 rows of 3 features seeded by i; counts the clients it made."""

    def __init__(self) -> None:
        self.made: list[int] = []

    def __call__(self, i: int) -> ClientData:
        self.made.append(i)
        rng = np.random.default_rng([11, i])
        x = rng.normal(size=(4, 3))
        data = ArrayData(x, (x[:, 0] > 0).astype(np.int64))
        return ClientData(data.subset(np.arange(3)), data.subset(np.arange(3, 4)))


def _population(n: int, make: _Counted) -> FederatedDataset:
    return FederatedDataset.from_function(
        n, make, test=make(0).train, num_classes=2, input_shape=(3,), name="counted"
    )


def test_from_function_makes_a_client_only_when_asked_and_the_same_each_time() -> None:
    # Prepare
    make = _Counted()
    ds = _population(10**6, make)
    make.made.clear()

    # Execute
    first, again = ds.client(123_456), ds.client(123_456)

    # Assert
    assert make.made == [123_456, 123_456]
    np.testing.assert_array_equal(first.train.x, again.train.x)
    assert ds.num_clients == 10**6 and len(first.train) == 3 and len(first.test) == 1


def test_a_simulation_over_a_million_clients_makes_only_the_sampled_ones() -> None:
    # Prepare
    make = _Counted()
    ds = _population(10**6, make)
    make.made.clear()

    # Execute
    result = fedloom.simulate(dataset=ds, model="logreg", clients_per_round=5, rounds=2, lr=0.1)

    # Assert: 5 clients per round fit; client 0 is made once more to ask if it has a local test
    assert [r.clients for r in result.history.rounds] == [5, 5]
    assert len(set(make.made) - {0}) <= 10 and len(make.made) <= 2 * 5 * 2 + 1


def test_client_sizes_need_sizes_and_bad_shapes_are_refused() -> None:
    # Prepare
    make = _Counted()
    ds = _population(4, make)

    # Execute / Assert
    with pytest.raises(ConfigError, match=r"pass sizes= to FederatedDataset\.from_function"):
        ds.client_sizes()
    sized = FederatedDataset.from_function(
        4, make, test=make(0).train, num_classes=2, input_shape=(3,), sizes=np.full(4, 3)
    )
    assert sized.client_sizes().tolist() == [3, 3, 3, 3]
    with pytest.raises(ConfigError, match="one row count per client"):
        FederatedDataset.from_function(
            4, make, test=make(0).train, num_classes=2, input_shape=(3,), sizes=np.ones(3)
        )
    with pytest.raises(ConfigError, match="at least 1 client"):
        FederatedDataset.from_function(0, make, test=make(0).train, num_classes=2, input_shape=(3,))
    with pytest.raises(DataError, match="must both match"):
        FederatedDataset.from_function(4, make, test=make(0).train, num_classes=2, input_shape=(4,))
    with pytest.raises(ConfigError, match="out of range"):
        ds.client(4)


def test_a_generated_client_of_the_wrong_width_is_a_data_error_naming_it() -> None:
    # Prepare
    def make(i: int) -> ClientData:
        width = 3 if i != 2 else 5
        data = ArrayData(np.zeros((2, width)), np.zeros(2, dtype=np.int64))
        return ClientData(data, data.subset(np.arange(0)))

    ds = FederatedDataset.from_function(
        4, make, test=make(0).train, num_classes=2, input_shape=(3,)
    )

    # Execute / Assert
    with pytest.raises(DataError, match="client 2 of function has 5 feature columns"):
        ds.client(2)


def test_one_synthetic_device_made_alone_equals_it_made_with_the_rest() -> None:
    # Prepare
    every = generate_synthetic(1.0, 1.0, 40, 3, False)
    population = SyntheticPopulation.draw(1.0, 1.0, 40, 3, False)

    # Execute
    alone = population.device(37)

    # Assert
    np.testing.assert_array_equal(alone.data.x, every[37].data.x)
    np.testing.assert_array_equal(alone.weights, every[37].weights)
    assert len(alone.data) == int(population.sizes[37])


def test_synthetic_clients_are_generated_and_the_central_test_is_bounded() -> None:
    # Execute
    ds = load_dataset("synthetic:1,1", num_clients=100_000, central_test_rows=500)

    # Assert: the first clients' local tests in turn, cut at 500 rows
    assert ds.num_clients == 100_000 and len(ds.test) == 500
    first = [ds.client(k).test for k in range(60)]
    pooled = np.concatenate([t.x for t in first])[:500]
    np.testing.assert_array_equal(ds.test.x, pooled)
    k = 99_999
    client = ds.client(k)
    assert len(client.train) == ds.client_sizes()[k]
    assert len(client.train) + len(client.test) == 50 + int(
        np.random.default_rng(0).lognormal(4, 2, 100_000)[k]
    )


def test_central_test_rows_must_be_positive() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="central_test_rows must be at least 1"):
        load_dataset("synthetic:1,1", central_test_rows=0)
    with pytest.raises(ConfigError, match="--central-test-rows must be at least 1"):
        fedloom.SimulationConfig(central_test_rows=0)
