"""The containers that flow out of ``fedloom.data``: arrays, one client's data, a federation."""

from __future__ import annotations

from collections.abc import Callable, Sequence
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
    """A population of clients, each with its own data, plus a central test set.

    A client's data is made when :meth:`client` asks for it and is not kept: a run holds only
    the clients it is training at the moment, so its memory depends on the cohort, not on the
    population. Two kinds of population exist:

    - *pooled*: the rows of every client live once in shared arrays and each client is a pair
      of index arrays into them (what :func:`fedloom.data.load_dataset` and
      :func:`fedloom.data.from_arrays` build; the constructor below);
    - *generated*: a function of the client index makes each client's data on demand
      (:meth:`from_function`; ``synthetic:ALPHA,BETA`` is one), so a million clients cost
      nothing until they are sampled.

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

    __slots__ = (
        "_input_shape",
        "_make",
        "_name",
        "_num_classes",
        "_num_clients",
        "_sizes",
        "_test",
    )

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
        for idx in [*train_indices, *local_test_indices]:
            if idx.size and (idx.min() < 0 or idx.max() >= len(pool)):
                raise DataError(f"client index out of the pool of {len(pool)} rows")
        source = _Pooled(
            pool,
            [np.asarray(i, dtype=np.int64) for i in train_indices],
            [np.asarray(i, dtype=np.int64) for i in local_test_indices],
        )
        sizes = np.array([len(i) for i in source.train], dtype=np.int64)
        self._setup(
            name, num_classes, input_shape, len(sizes), source, test, sizes, pool.x.shape[1]
        )

    @classmethod
    def from_function(
        cls,
        num_clients: int,
        make_client: Callable[[int], ClientData],
        *,
        test: ArrayData,
        num_classes: int,
        input_shape: tuple[int, ...],
        sizes: np.ndarray | None = None,
        name: str = "function",
    ) -> FederatedDataset:
        """A population whose clients are made on demand by ``make_client(index)``.

        ``make_client`` must return the same data for the same index every time (derive any
        randomness from the index, e.g. ``numpy.random.default_rng([seed, index])``); it is
        called when a client is sampled and its result is dropped after the client's turn. To
        run on worker processes (``workers=``), it must be picklable: a module-level function,
        a ``functools.partial`` of one, or an instance of a module-level class.

        Parameters
        ----------
        num_clients
            The size of the population, at least 1; clients are numbered from 0.
        make_client
            Index -> that client's :class:`ClientData`.
        test
            The central test set (keep it a bounded sample: it is held in memory).
        num_classes, input_shape
            As for the constructor.
        sizes
            Optional training-row count of every client (int array of length
            ``num_clients``); only :meth:`client_sizes` needs it.
        name
            The dataset's name.

        Raises
        ------
        ConfigError
            If ``num_clients`` < 1 or ``sizes`` has the wrong length.

        Examples
        --------
        >>> import numpy as np
        >>> def make(i: int) -> ClientData:
        ...     rng = np.random.default_rng([7, i])
        ...     x = rng.normal(size=(5, 3))
        ...     data = ArrayData(x, (x[:, 0] > 0).astype(int))
        ...     return ClientData(data, data.subset(np.arange(0)))
        >>> ds = FederatedDataset.from_function(
        ...     10**6, make, test=make(0).train, num_classes=2, input_shape=(3,))
        >>> ds.num_clients, len(ds.client(999_999).train)
        (1000000, 5)
        """
        if num_clients < 1:
            raise ConfigError(f"a population needs at least 1 client, got {num_clients}")
        if sizes is not None:
            sizes = np.asarray(sizes, dtype=np.int64)
            if sizes.shape != (num_clients,):
                raise ConfigError(
                    f"sizes has shape {sizes.shape}; give one row count per client ({num_clients})"
                )
        width = int(np.prod(input_shape))
        self = cls.__new__(cls)
        self._setup(name, num_classes, input_shape, num_clients, make_client, test, sizes, width)
        return self

    def _setup(
        self,
        name: str,
        num_classes: int,
        input_shape: tuple[int, ...],
        num_clients: int,
        make: Callable[[int], ClientData],
        test: ArrayData,
        sizes: np.ndarray | None,
        width: int,
    ) -> None:
        if int(np.prod(input_shape)) != width or test.x.shape[1] != width:
            raise DataError(
                f"input_shape {input_shape} and test width {test.x.shape[1]} must both match "
                f"the {width} feature columns"
            )
        self._name = name
        self._num_classes = int(num_classes)
        self._input_shape = tuple(int(s) for s in input_shape)
        self._num_clients = int(num_clients)
        self._make = make
        self._sizes = sizes
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
        return self._num_clients

    def client(self, index: int) -> ClientData:
        """Return client ``index``'s train rows and local test rows (made now, not kept).

        Raises
        ------
        ConfigError
            If ``index`` is not in ``0 .. num_clients - 1``.
        DataError
            If a generated client's features do not have the dataset's width.
        """
        if not 0 <= index < self._num_clients:
            raise ConfigError(
                f"client index {index} out of range; this dataset has {self._num_clients} "
                f"clients, numbered 0 to {self._num_clients - 1}"
            )
        data = self._make(index)
        width = self._test.x.shape[1]
        for part in (data.train, data.test):
            if part.x.shape[1] != width:
                raise DataError(
                    f"client {index} of {self._name} has {part.x.shape[1]} feature columns; "
                    f"the dataset has {width}"
                )
        return data

    def client_sizes(self) -> np.ndarray:
        """Number of training rows of each client, as an int64 array.

        Raises
        ------
        ConfigError
            For a generated population made without ``sizes``.
        """
        if self._sizes is None:
            raise ConfigError(
                f"{self._name} does not know its clients' sizes without making every client; "
                "pass sizes= to FederatedDataset.from_function"
            )
        return self._sizes

    def __repr__(self) -> str:
        rows = int(self._sizes.sum()) if self._sizes is not None else "unknown"
        return (
            f"FederatedDataset(name={self._name!r}, num_clients={self.num_clients}, "
            f"num_classes={self._num_classes}, input_shape={self._input_shape}, "
            f"train_rows={rows}, test_rows={len(self._test)})"
        )


@dataclass(frozen=True, eq=False)
class _Pooled:
    """Clients as index arrays into one shared pool of rows."""

    pool: ArrayData
    train: list[np.ndarray]
    local_test: list[np.ndarray]

    def __call__(self, index: int) -> ClientData:
        return ClientData(
            train=self.pool.subset(self.train[index]),
            test=self.pool.subset(self.local_test[index]),
        )
