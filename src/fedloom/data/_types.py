"""The containers that flow out of ``fedloom.data``: arrays, one client's data, a federation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.errors import ConfigError, DataError

__all__ = ["ArrayData", "ClientData", "FederatedDataset"]


@dataclass(frozen=True, eq=False)
class ArrayData:
    """Features and labels of a set of samples.

    Parameters
    ----------
    x
        Features, shape ``(n, d)``; always flat (image shapes live in
        ``FederatedDataset.input_shape``). Stored as ``float32``.
    y
        Integer class labels, shape ``(n,)``. Stored as ``int64``.

    Raises
    ------
    DataError
        If ``x`` is not two-dimensional, ``y`` is not one-dimensional integers, or their
        lengths differ.
    """

    x: np.ndarray
    y: np.ndarray

    def __post_init__(self) -> None:
        x = np.asarray(self.x, dtype=np.float32)
        y = np.asarray(self.y)
        if x.ndim != 2:
            raise DataError(f"features must have shape (n, d), got shape {x.shape}; flatten them")
        if y.ndim != 1:
            raise DataError(f"labels must have shape (n,), got shape {y.shape}")
        if y.size and y.dtype.kind not in "iub":
            raise DataError(f"labels must be integers, got dtype {y.dtype}; cast them to int")
        if len(x) != len(y):
            raise DataError(f"{len(x)} feature rows but {len(y)} labels; they must match")
        object.__setattr__(self, "x", x)
        object.__setattr__(self, "y", y.astype(np.int64, copy=False))

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def subset(self, idx: np.ndarray) -> ArrayData:
        """Return the rows ``idx`` (integer indices or a boolean mask) of both arrays."""
        return ArrayData(self.x[idx], self.y[idx])


@dataclass(frozen=True, eq=False)
class ClientData:
    """One client's data: what it trains on and its own held-out split (may have 0 rows)."""

    train: ArrayData
    test: ArrayData


class FederatedDataset:
    """A dataset split over clients, plus a central test set for server-side evaluation.

    Lazy: the rows of every client live once in shared arrays; :meth:`client` slices out one
    client's rows on demand. Build one with :func:`fedloom.data.load_dataset` or
    :func:`fedloom.data.from_arrays` rather than calling this constructor.

    Parameters
    ----------
    name
        Human-readable name (the spec it was loaded from).
    num_classes
        Number of label classes.
    input_shape
        Per-sample shape for models, e.g. ``(64,)`` or ``(1, 28, 28)``; the product equals the
        number of feature columns.
    x, y
        The shared pool of rows that client indices point into.
    train_indices, local_test_indices
        Per client, int indices into the pool: its training rows and its local test rows.
    test
        The central held-out test set.

    Raises
    ------
    DataError
        If the parts disagree (index out of the pool, shape mismatch).
    """

    __slots__ = ("_input_shape", "_local_test", "_name", "_num_classes", "_pool", "_test", "_train")

    def __init__(
        self,
        name: str,
        num_classes: int,
        input_shape: tuple[int, ...],
        x: np.ndarray,
        y: np.ndarray,
        train_indices: Sequence[np.ndarray],
        local_test_indices: Sequence[np.ndarray],
        test: ArrayData,
    ) -> None:
        pool = ArrayData(x, y)
        if len(train_indices) != len(local_test_indices):
            raise DataError(
                f"{len(train_indices)} train index arrays but {len(local_test_indices)} "
                "local test index arrays; give one of each per client"
            )
        width = pool.x.shape[1]
        if int(np.prod(input_shape)) != width or test.x.shape[1] != width:
            raise DataError(
                f"input_shape {input_shape} and test width {test.x.shape[1]} must both match "
                f"the {width} feature columns"
            )
        parts = [*train_indices, *local_test_indices]
        for idx in parts:
            if idx.size and (idx.min() < 0 or idx.max() >= len(pool)):
                raise DataError(f"client index out of the pool of {len(pool)} rows")
        self._name = name
        self._num_classes = int(num_classes)
        self._input_shape = tuple(int(s) for s in input_shape)
        self._pool = pool
        self._train = [np.asarray(i, dtype=np.int64) for i in train_indices]
        self._local_test = [np.asarray(i, dtype=np.int64) for i in local_test_indices]
        self._test = test

    @property
    def name(self) -> str:
        """The dataset's name."""
        return self._name

    @property
    def num_classes(self) -> int:
        """Number of label classes."""
        return self._num_classes

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Per-sample shape for models (features themselves are always flat)."""
        return self._input_shape

    @property
    def test(self) -> ArrayData:
        """The central held-out test set (server-side evaluation)."""
        return self._test

    @property
    def num_clients(self) -> int:
        """Number of clients."""
        return len(self._train)

    def client(self, index: int) -> ClientData:
        """Return client ``index``'s train rows and local test rows.

        Raises
        ------
        ConfigError
            If ``index`` is not in ``0 .. num_clients - 1``.
        """
        if not 0 <= index < self.num_clients:
            raise ConfigError(
                f"client index {index} out of range; this dataset has {self.num_clients} "
                f"clients, numbered 0 to {self.num_clients - 1}"
            )
        return ClientData(
            train=self._pool.subset(self._train[index]),
            test=self._pool.subset(self._local_test[index]),
        )

    def client_sizes(self) -> np.ndarray:
        """Number of training rows of each client, as an int64 array."""
        return np.array([len(i) for i in self._train], dtype=np.int64)

    def __repr__(self) -> str:
        return (
            f"FederatedDataset(name={self._name!r}, num_clients={self.num_clients}, "
            f"num_classes={self._num_classes}, input_shape={self._input_shape}, "
            f"train_rows={int(self.client_sizes().sum())}, test_rows={len(self._test)})"
        )
