"""partition_indices: coverage, sizes, label skew, seeding and errors."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.data import partition_indices
from fedloom.errors import ConfigError

# 10 classes x 100 samples, sorted by label.
LABELS = np.repeat(np.arange(10), 100)
SPECS = ["iid", "dirichlet:0.5", "shards:2", "quantity:1.0"]


def _mean_label_entropy(parts: list[np.ndarray], labels: np.ndarray) -> float:
    entropies = []
    for part in parts:
        p = np.bincount(labels[part], minlength=10) / len(part)
        p = p[p > 0]
        entropies.append(float(-(p * np.log(p)).sum()))
    return float(np.mean(entropies))


@pytest.mark.parametrize("spec", SPECS)
def test_every_index_lands_in_exactly_one_nonempty_client(spec: str) -> None:
    # Execute
    parts = partition_indices(LABELS, spec, 20, seed=3)

    # Assert
    assert len(parts) == 20
    assert all(p.dtype == np.int64 and len(p) >= 1 for p in parts)
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(len(LABELS)))


@pytest.mark.parametrize("spec", SPECS)
def test_same_seed_same_split_other_seed_differs(spec: str) -> None:
    # Execute
    first = partition_indices(LABELS, spec, 20, seed=7)
    again = partition_indices(LABELS, spec, 20, seed=7)
    other = partition_indices(LABELS, spec, 20, seed=8)

    # Assert
    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(
        len(a) == len(b) and np.array_equal(a, b) for a, b in zip(first, other, strict=True)
    )


def test_iid_sizes_differ_by_at_most_one() -> None:
    # Prepare: 1003 = 3 x 101 + 7 x 100
    labels = np.zeros(1003, dtype=np.int64)

    # Execute
    sizes = sorted(len(p) for p in partition_indices(labels, "iid", 10, seed=0))

    # Assert
    assert sizes == [100] * 7 + [101] * 3


def test_shards_give_each_client_k_shards_of_equal_size() -> None:
    # Execute: 50 clients x 2 shards = 100 shards of 10 samples
    parts = partition_indices(LABELS, "shards:2", 50, seed=0)

    # Assert
    assert [len(p) for p in parts] == [20] * 50


def test_shards_two_give_at_most_two_labels_per_client() -> None:
    # Execute: shards of 10 never straddle a class of 100
    parts = partition_indices(LABELS, "shards:2", 50, seed=1)

    # Assert
    assert max(len(np.unique(LABELS[p])) for p in parts) <= 2


def test_shards_sizes_differ_by_at_most_k_when_uneven() -> None:
    # Prepare: 1003 samples, 30 shards: sizes 33 or 34
    labels = np.arange(1003) % 7

    # Execute
    parts = partition_indices(labels, "shards:3", 10, seed=0)

    # Assert
    assert {len(p) for p in parts} <= set(range(99, 103))
    assert sum(len(p) for p in parts) == 1003


def test_quantity_sizes_vary_and_sum_to_n() -> None:
    # Execute
    sizes = np.array([len(p) for p in partition_indices(LABELS, "quantity:1.0", 20, seed=0)])

    # Assert
    assert sizes.sum() == 1000
    assert sizes.min() >= 1
    assert sizes.max() > 2 * sizes.min()


def test_quantity_sigma_zero_gives_equal_sizes() -> None:
    # Execute: 10 x (1 + 99) = 1000
    sizes = [len(p) for p in partition_indices(LABELS, "quantity:0", 10, seed=0)]

    # Assert
    assert sizes == [100] * 10


def test_quantity_keeps_every_client_nonempty_under_extreme_skew() -> None:
    # Execute
    parts = partition_indices(LABELS, "quantity:5", 500, seed=0)

    # Assert
    assert min(len(p) for p in parts) == 1
    assert sum(len(p) for p in parts) == 1000


def test_dirichlet_small_alpha_skews_labels_and_large_alpha_is_close_to_iid() -> None:
    # Execute
    iid = _mean_label_entropy(partition_indices(LABELS, "iid", 10, seed=0), LABELS)
    skewed = _mean_label_entropy(partition_indices(LABELS, "dirichlet:0.1", 10, seed=0), LABELS)
    flat = _mean_label_entropy(partition_indices(LABELS, "dirichlet:1000", 10, seed=0), LABELS)

    # Assert: ln(10) = 2.30 is the most a client can have
    assert iid > 2.2
    assert skewed < 0.5 * iid
    assert abs(flat - iid) < 0.05 * iid


def test_dirichlet_rebalances_so_no_client_is_empty() -> None:
    # Execute: 100 clients, tiny alpha: most draws leave clients empty
    parts = partition_indices(LABELS, "dirichlet:0.01", 100, seed=0)

    # Assert
    assert min(len(p) for p in parts) >= 1
    np.testing.assert_array_equal(np.sort(np.concatenate(parts)), np.arange(1000))


def test_one_client_gets_everything() -> None:
    # Execute
    parts = partition_indices(LABELS, "dirichlet:0.3", 1, seed=0)

    # Assert
    np.testing.assert_array_equal(np.sort(parts[0]), np.arange(1000))


@pytest.mark.parametrize(
    ("spec", "clients", "fragment"),
    [
        ("foo", 10, "unknown partition 'foo'; choose one of: iid, dirichlet:ALPHA"),
        ("iid:3", 10, "unknown partition 'iid:3'"),
        ("dirichlet", 10, "needs a number ALPHA"),
        ("dirichlet:abc", 10, "needs a number ALPHA"),
        ("dirichlet:nan", 10, "needs a number ALPHA"),
        ("dirichlet:0", 10, "ALPHA must be > 0"),
        ("dirichlet:-1", 10, "ALPHA must be > 0"),
        ("shards:0", 10, "K must be a whole number >= 1"),
        ("shards:1.5", 10, "K must be a whole number >= 1"),
        ("shards:x", 10, "needs a number K"),
        ("shards:200", 10, "needs 2000 shards"),
        ("quantity:-0.5", 10, "SIGMA must be >= 0"),
        ("quantity:", 10, "needs a number SIGMA"),
        ("natural", 10, "only applies to datasets that have one (synthetic, heart, leaf)"),
        ("iid", 0, "at least 1"),
        ("iid", 1001, "1001 clients but only 1000 training samples; use at most 1000 clients"),
    ],
)
def test_bad_settings_raise_config_error(spec: str, clients: int, fragment: str) -> None:
    # Execute
    with pytest.raises(ConfigError) as caught:
        partition_indices(LABELS, spec, clients, seed=0)

    # Assert
    assert fragment in str(caught.value)
    assert "\n" not in str(caught.value)
