"""load_dataset for built-in datasets, from_arrays, the containers, and spec errors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.datasets import load_digits

import fedloom.data
from fedloom.data import ArrayData, from_arrays, load_dataset
from fedloom.errors import ConfigError, DataError


def _sorted_rows(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    table = np.column_stack([x.astype(np.float64), y])
    return table[np.lexsort(table.T[::-1])]


def _all_train(ds: fedloom.data.FederatedDataset) -> ArrayData:
    clients = [ds.client(i).train for i in range(ds.num_clients)]
    return ArrayData(np.concatenate([c.x for c in clients]), np.concatenate([c.y for c in clients]))


def test_public_api_is_exactly_this_set() -> None:
    # Assert
    assert set(fedloom.data.__all__) == {
        "ArrayData",
        "ClientData",
        "DATASETS",
        "FILL_MISSING",
        "FederatedDataset",
        "PARTITIONS",
        "from_arrays",
        "label_names",
        "load_client_data",
        "load_dataset",
        "load_heart_disease",
        "load_leaf",
        "load_mnist_idx",
        "partition_indices",
        "synthetic",
    }


def test_digits_matches_the_reference_split_of_360_test_rows() -> None:
    # Prepare: the benchmark's split
    raw = load_digits()
    perm = np.random.default_rng(0).permutation(1797)
    test_rows, train_rows = perm[:360], perm[360:]

    # Execute
    ds = load_dataset("digits", test_fraction=0.2, seed=0)
    train = _all_train(ds)

    # Assert
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (100, 10, (1, 8, 8))
    assert len(ds.test) == 360 and int(ds.client_sizes().sum()) == 1437
    np.testing.assert_array_equal(ds.test.x, (raw.data[test_rows] / 16.0).astype(np.float32))
    np.testing.assert_array_equal(ds.test.y, raw.target[test_rows])
    np.testing.assert_array_equal(
        _sorted_rows(train.x, train.y),
        _sorted_rows((raw.data[train_rows] / 16.0).astype(np.float32), raw.target[train_rows]),
    )
    assert train.x.dtype == np.float32 and train.y.dtype == np.int64
    assert train.x.min() == 0.0 and train.x.max() == 1.0


def test_client_sizes_follow_the_partition_of_training_rows() -> None:
    # Execute
    ds = load_dataset("digits", num_clients=7, partition="iid", seed=2)

    # Assert: 1437 = 2 x 206 + 5 x 205
    assert sorted(ds.client_sizes().tolist()) == [205] * 5 + [206] * 2
    assert [len(ds.client(i).train) for i in range(7)] == ds.client_sizes().tolist()


@pytest.mark.parametrize(("name", "rows", "width"), [("breast_cancer", 569, 30), ("wine", 178, 13)])
def test_tabular_sets_are_standardised_on_training_rows(name: str, rows: int, width: int) -> None:
    # Execute
    ds = load_dataset(name, num_clients=5)
    train = _all_train(ds)

    # Assert
    assert len(train) + len(ds.test) == rows
    assert ds.input_shape == (width,)
    np.testing.assert_allclose(train.x.mean(axis=0), 0.0, atol=1e-5)
    np.testing.assert_allclose(train.x.std(axis=0), 1.0, atol=1e-4)


def test_local_test_split_is_carved_from_each_clients_rows() -> None:
    # Prepare
    whole = load_dataset("digits", num_clients=10, seed=0)

    # Execute
    carved = load_dataset("digits", num_clients=10, seed=0, local_test_fraction=0.25)

    # Assert: int(0.25 * 143) = 35, int(0.25 * 144) = 36
    for i in range(10):
        before, after = whole.client(i), carved.client(i)
        assert len(after.test) == int(0.25 * len(before.train))
        assert len(after.train) + len(after.test) == len(before.train)
        np.testing.assert_array_equal(
            _sorted_rows(
                np.concatenate([after.train.x, after.test.x]), np.r_[after.train.y, after.test.y]
            ),
            _sorted_rows(before.train.x, before.train.y),
        )


def test_no_local_test_gives_empty_arrays_of_the_right_shape() -> None:
    # Execute
    test = load_dataset("wine", num_clients=3).client(0).test

    # Assert
    assert test.x.shape == (0, 13) and test.x.dtype == np.float32
    assert test.y.shape == (0,) and test.y.dtype == np.int64


def test_same_seed_same_dataset_other_seed_differs() -> None:
    # Execute
    first = load_dataset("digits", num_clients=4, seed=0)
    again = load_dataset("digits", num_clients=4, seed=0)
    other = load_dataset("digits", num_clients=4, seed=1)

    # Assert
    np.testing.assert_array_equal(first.test.x, again.test.x)
    np.testing.assert_array_equal(first.client(3).train.x, again.client(3).train.x)
    assert not np.array_equal(first.test.x, other.test.x)


def test_synthetic_spec_is_split_90_10_as_the_fedprox_code_on_every_device() -> None:
    # Execute
    ds = load_dataset("synthetic:0.5,0.5", num_clients=6, seed=1)

    # Assert
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (6, 10, (60,))
    sizes = [len(d) for d in fedloom.data.synthetic(0.5, 0.5, num_devices=6, seed=1)]
    assert ds.client_sizes().tolist() == [int(0.9 * n) for n in sizes]
    assert [len(ds.client(i).test) for i in range(6)] == [n - int(0.9 * n) for n in sizes]
    assert len(ds.test) == sum(len(ds.client(i).test) for i in range(6))


def test_synthetic_defaults_to_30_devices_and_iid_variant_loads() -> None:
    # Execute
    ds = load_dataset("synthetic:iid")

    # Assert
    assert ds.num_clients == 30


def test_client_index_out_of_range_raises_config_error() -> None:
    # Prepare
    ds = load_dataset("wine", num_clients=3)

    # Execute / Assert
    for bad in (3, -1):
        with pytest.raises(ConfigError, match="has 3 clients, numbered 0 to 2"):
            ds.client(bad)


@pytest.mark.parametrize(
    ("spec", "kwargs", "fragment"),
    [
        (
            "foo",
            {},
            "unknown dataset 'foo'; choose one of: digits, breast_cancer, wine, "
            "synthetic:ALPHA,BETA, synthetic:iid, mnist:PATH, heart:PATH, leaf:PATH",
        ),
        ("digits:3", {}, "unknown dataset 'digits:3'"),
        ("synthetic", {}, "write synthetic:ALPHA,BETA (or iid)"),
        ("mnist", {}, "write mnist:PATH"),
        ("synthetic:1", {}, "bad synthetic spec 'synthetic:1'; use synthetic:ALPHA,BETA"),
        ("synthetic:a,b", {}, "bad synthetic spec"),
        ("synthetic:-1,0", {}, "alpha must be a number >= 0"),
        ("synthetic:1,1", {"partition": "iid"}, "use partition 'natural'"),
        ("synthetic:1,1", {"local_test_fraction": 0.1}, "does not apply to synthetic"),
        ("digits", {"partition": "bogus"}, "unknown partition 'bogus'"),
        ("digits", {"partition": "natural"}, "digits has no natural split"),
        ("digits", {"test_fraction": 1.0}, "test_fraction must be in [0, 1)"),
        ("digits", {"test_fraction": -0.1}, "test_fraction must be in [0, 1)"),
        ("digits", {"local_test_fraction": 1.0}, "local_test_fraction must be in [0, 1)"),
        (
            "digits",
            {"num_clients": 2000},
            "2000 clients but only 1437 training samples; use at most 1437 clients",
        ),
    ],
)
def test_bad_settings_raise_config_error(
    spec: str, kwargs: dict[str, object], fragment: str
) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        load_dataset(spec, **kwargs)  # type: ignore[arg-type]

    # Assert
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)


@pytest.mark.parametrize("name", ["mnist", "heart", "leaf"])
def test_missing_path_raises_data_error(name: str, tmp_path: Path) -> None:
    # Execute / Assert
    with pytest.raises(DataError, match="does not exist"):
        load_dataset(f"{name}:{tmp_path}/absent")


def test_from_arrays_flattens_images_and_infers_shape_and_classes() -> None:
    # Prepare
    x0 = np.arange(32, dtype=np.float64).reshape(2, 1, 4, 4)
    x1 = np.ones((3, 1, 4, 4))
    copy0 = x0.copy()

    # Execute
    ds = from_arrays([(x0, np.array([0, 4])), (x1, np.array([1, 1, 2]))])

    # Assert
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (2, 5, (1, 4, 4))
    np.testing.assert_array_equal(ds.client(0).train.x, x0.reshape(2, 16))
    assert ds.client_sizes().tolist() == [2, 3]
    assert len(ds.test) == 0 and ds.test.x.shape == (0, 16)
    np.testing.assert_array_equal(x0, copy0)


def test_from_arrays_carves_local_tests_and_uses_their_union_as_central_test() -> None:
    # Prepare
    clients = [(np.full((10, 2), i, dtype=np.float32), np.full(10, i)) for i in range(3)]

    # Execute
    ds = from_arrays(clients, local_test_fraction=0.3, seed=1)

    # Assert
    assert ds.client_sizes().tolist() == [7, 7, 7]
    assert sorted(ds.test.y.tolist()) == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    assert ds.client(2).test.y.tolist() == [2, 2, 2]


def test_from_arrays_takes_an_explicit_test_set_and_settings() -> None:
    # Execute
    ds = from_arrays(
        [(np.zeros((4, 3)), np.zeros(4, dtype=np.int64))],
        test=(np.ones((2, 3)), np.array([1, 0])),
        num_classes=7,
        name="mine",
    )

    # Assert
    assert (ds.name, ds.num_classes, len(ds.test), ds.input_shape) == ("mine", 7, 2, (3,))


def test_from_arrays_rejects_bad_input() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="at least one client"):
        from_arrays([])
    with pytest.raises(DataError, match="same shape"):
        from_arrays([(np.zeros((2, 3)), np.zeros(2)), (np.zeros((2, 4)), np.zeros(2))])
    with pytest.raises(DataError, match="2 feature rows but 3 labels"):
        from_arrays([(np.zeros((2, 3)), np.zeros(3, dtype=np.int64))])


def test_array_data_subset_and_validation() -> None:
    # Prepare
    data = ArrayData(np.arange(6).reshape(3, 2), np.array([5, 6, 7]))

    # Execute
    part = data.subset(np.array([2, 0]))

    # Assert
    assert data.x.dtype == np.float32 and data.y.dtype == np.int64
    np.testing.assert_array_equal(part.x, [[4, 5], [0, 1]])
    assert part.y.tolist() == [7, 5] and len(part) == 2
    with pytest.raises(DataError, match="labels must be integers"):
        ArrayData(np.zeros((2, 1)), np.array([0.5, 1.0]))
    with pytest.raises(DataError, match=r"shape \(n, d\)"):
        ArrayData(np.zeros(3), np.zeros(3, dtype=np.int64))


def test_digits_read_without_importing_sklearn_equal_load_digits() -> None:
    # Prepare
    from fedloom.data._builtin import _bundled_digits

    # Execute
    ours = _bundled_digits()
    reference = load_digits()

    # Assert
    assert ours is not None
    np.testing.assert_array_equal(ours.x, reference.data)
    np.testing.assert_array_equal(ours.y, reference.target)
