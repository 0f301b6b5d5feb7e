"""File loaders against the real datasets in ../shared/data, and malformed files in tmp_path."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import load_dataset, load_heart_disease, load_leaf, load_mnist_idx
from fedloom.errors import ConfigError, DataError

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MNIST = DATA / "mnist"
HEART = DATA / "uci_heart_disease"
LEAF = DATA / "leaf_femnist"

needs_mnist = pytest.mark.skipif(not MNIST.is_dir(), reason=f"no MNIST files at {MNIST}")
needs_heart = pytest.mark.skipif(not HEART.is_dir(), reason=f"no heart files at {HEART}")
needs_leaf = pytest.mark.skipif(not LEAF.is_dir(), reason=f"no LEAF files at {LEAF}")


def _idx(magic: int, dims: list[int], payload: bytes) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return header + payload


def _write_pair(folder: Path, split: str, images: np.ndarray, labels: np.ndarray) -> None:
    n, rows, cols = images.shape
    (folder / f"{split}-images-idx3-ubyte").write_bytes(
        _idx(2051, [n, rows, cols], images.astype(np.uint8).tobytes())
    )
    (folder / f"{split}-labels-idx1-ubyte.gz").write_bytes(
        gzip.compress(_idx(2049, [n], labels.astype(np.uint8).tobytes()))
    )


# --------------------------------------------------------------------------------- MNIST


@needs_mnist
def test_mnist_test_set_matches_source_counts() -> None:
    # Execute
    data = load_mnist_idx(MNIST / "t10k-images-idx3-ubyte.gz", MNIST / "t10k-labels-idx1-ubyte.gz")

    # Assert: counts, first labels and mean pixel from SOURCE.txt
    assert data.x.shape == (10_000, 784) and data.x.dtype == np.float32
    assert data.x.min() == 0.0 and data.x.max() == 1.0
    assert np.bincount(data.y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert data.y[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert abs(float(data.x.mean()) * 255 - 33.79) < 0.01


@needs_mnist
def test_mnist_spec_with_only_t10k_files_splits_them() -> None:
    # Execute
    ds = load_dataset("mnist:" + str(MNIST), num_clients=50, partition="shards:2")

    # Assert
    assert (ds.num_classes, ds.input_shape, len(ds.test)) == (10, (1, 28, 28), 2000)
    assert ds.client_sizes().tolist() == [160] * 50


def test_raw_idx_pixels_are_scaled_to_unit_range(tmp_path: Path) -> None:
    # Prepare
    _write_pair(tmp_path, "t10k", np.array([[[0, 255], [51, 102]]]), np.array([3]))

    # Execute
    data = load_mnist_idx(
        tmp_path / "t10k-images-idx3-ubyte", tmp_path / "t10k-labels-idx1-ubyte.gz"
    )

    # Assert
    np.testing.assert_allclose(data.x, [[0.0, 1.0, 0.2, 0.4]])
    assert data.y.tolist() == [3]


def test_mnist_folder_with_train_and_t10k_uses_t10k_as_test(tmp_path: Path) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    _write_pair(tmp_path, "train", rng.integers(0, 256, (30, 2, 2)), np.arange(30) % 10)
    _write_pair(tmp_path, "t10k", rng.integers(0, 256, (7, 2, 2)), np.arange(7))

    # Execute
    ds = load_dataset(f"mnist:{tmp_path}", num_clients=3, test_fraction=0.5)

    # Assert
    assert int(ds.client_sizes().sum()) == 30
    assert ds.test.y.tolist() == list(range(7))
    assert ds.input_shape == (1, 2, 2)


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (_idx(2051, [3, 2, 2], bytes(8)), "truncated"),
        (_idx(2049, [1, 2, 2], bytes(4)), "magic 2051"),
        (b"\x00\x00", "magic 2051"),
        (gzip.compress(_idx(2051, [1, 2, 2], bytes(4)))[:-6], "cannot read"),
    ],
)
def test_malformed_idx_raises_data_error(tmp_path: Path, content: bytes, fragment: str) -> None:
    # Prepare
    _write_pair(tmp_path, "t10k", np.zeros((1, 2, 2)), np.zeros(1))
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(content)

    # Execute / Assert
    with pytest.raises(DataError, match=fragment):
        load_dataset(f"mnist:{tmp_path}", num_clients=1, test_fraction=0.0)


def test_mnist_count_mismatch_and_empty_folder_raise_data_error(tmp_path: Path) -> None:
    # Prepare
    _write_pair(tmp_path, "t10k", np.zeros((2, 2, 2)), np.zeros(2))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(gzip.compress(_idx(2049, [1], b"\0")))
    (tmp_path / "empty").mkdir()

    # Execute / Assert
    with pytest.raises(DataError, match="2 images but"):
        load_dataset(f"mnist:{tmp_path}")
    with pytest.raises(DataError, match="no MNIST IDX files"):
        load_dataset(f"mnist:{tmp_path / 'empty'}")


# ---------------------------------------------------------------------- UCI Heart Disease


@needs_heart
def test_heart_sites_have_source_row_counts_and_label_rates() -> None:
    # Execute
    sites = load_heart_disease(HEART)

    # Assert: rows and positives (num > 0) from SOURCE.txt
    assert [len(s) for s in sites] == [303, 294, 123, 200]
    assert [int(s.y.sum()) for s in sites] == [139, 106, 115, 149]
    rates = [float(s.y.mean()) for s in sites]
    assert rates[2] > rates[0] + 0.4  # Switzerland 93.5% vs Cleveland 45.9%
    pooled = np.concatenate([s.x for s in sites])
    assert pooled.shape[1] == 13 and not np.isnan(pooled).any()
    np.testing.assert_allclose(pooled.mean(axis=0), 0.0, atol=1e-5)
    assert set(np.concatenate([s.y for s in sites]).tolist()) == {0, 1}


@needs_heart
def test_heart_spec_holds_out_a_share_of_each_hospital() -> None:
    # Execute
    ds = load_dataset("heart:" + str(HEART), test_fraction=0.2, seed=0)

    # Assert: ceil(0.2 * rows) = 61, 59, 25, 40
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (4, 2, (13,))
    assert [len(ds.client(i).test) for i in range(4)] == [61, 59, 25, 40]
    assert ds.client_sizes().tolist() == [242, 235, 98, 160]
    assert len(ds.test) == 185 and not np.isnan(ds.test.x).any()


@needs_heart
def test_heart_rejects_a_client_count_other_than_four() -> None:
    # Execute / Assert
    with pytest.raises(
        ConfigError, match=r"heart has 4 hospitals; num_clients \(--clients\) must be 4"
    ):
        load_dataset("heart:" + str(HEART), num_clients=10)


@needs_heart
def test_heart_malformed_or_missing_file_raises_data_error(tmp_path: Path) -> None:
    # Prepare
    for site in ("cleveland", "hungarian", "switzerland"):
        shutil.copy(HEART / f"processed.{site}.data", tmp_path)

    # Execute / Assert
    with pytest.raises(DataError, match=r"processed\.va\.data"):
        load_heart_disease(tmp_path)
    (tmp_path / "processed.va.data").write_text("63,1,4\n")
    with pytest.raises(DataError, match="line 1: 3 fields, expected 14"):
        load_heart_disease(tmp_path)


# ------------------------------------------------------------------------------- LEAF


@needs_leaf
def test_leaf_femnist_has_source_writer_counts() -> None:
    # Execute
    users, clients = load_leaf(LEAF)

    # Assert: totals and a few writers from SOURCE.txt
    assert len(users) == 11
    assert sum(len(c.train) for c in clients) == 1551
    assert sum(len(c.test) for c in clients) == 178
    sizes = {u: (len(c.train), len(c.test)) for u, c in zip(users, clients, strict=True)}
    assert sizes["f3313_11"] == (155, 18) and sizes["f3122_40"] == (7, 1)
    x = np.concatenate([c.train.x for c in clients])
    assert x.shape[1] == 784 and x.min() >= 0.0 and x.max() <= 1.0
    assert len(np.unique(np.concatenate([c.train.y for c in clients]))) == 62


@needs_leaf
def test_leaf_spec_gives_one_client_per_writer() -> None:
    # Execute
    ds = load_dataset("leaf:" + str(LEAF))

    # Assert
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (11, 62, (1, 28, 28))
    assert int(ds.client_sizes().sum()) == 1551 and len(ds.test) == 178
    with pytest.raises(ConfigError, match="leaf has 11 users"):
        load_dataset("leaf:" + str(LEAF), num_clients=10)


def test_leaf_natural_split_of_a_small_handmade_dataset(tmp_path: Path) -> None:
    # Prepare: user b has no test rows; user c only test rows
    for split, data in {
        "train": {"a": ([[1, 2], [3, 4]], [0, 2]), "b": ([[5, 6]], [1])},
        "test": {"a": ([[7, 8]], [2]), "c": ([[9, 9]], [3])},
    }.items():
        (tmp_path / split).mkdir()
        doc = {
            "users": list(data),
            "num_samples": [len(y) for _, y in data.values()],
            "user_data": {u: {"x": x, "y": y} for u, (x, y) in data.items()},
        }
        (tmp_path / split / "part.json").write_text(json.dumps(doc))

    # Execute
    users, clients = load_leaf(tmp_path)
    ds = load_dataset(f"leaf:{tmp_path}")

    # Assert
    assert users == ["a", "b", "c"]
    assert [(len(c.train), len(c.test)) for c in clients] == [(2, 1), (1, 0), (0, 1)]
    assert (ds.num_clients, ds.num_classes, ds.input_shape) == (2, 4, (2,))
    assert sorted(ds.test.y.tolist()) == [2, 3]


def test_leaf_malformed_json_raises_data_error(tmp_path: Path) -> None:
    # Prepare
    for split in ("train", "test"):
        (tmp_path / split).mkdir()
        (tmp_path / split / "bad.json").write_text('{"users": ["a"]}')

    # Execute / Assert
    with pytest.raises(DataError, match="is not LEAF JSON"):
        load_leaf(tmp_path)
