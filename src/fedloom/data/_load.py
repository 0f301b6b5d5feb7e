"""Turn a dataset spec, or arrays the user already holds, into a FederatedDataset."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.data._builtin import (
    SKLEARN_DATASETS,
    SYNTHETIC_CLASSES,
    SYNTHETIC_DIM,
    SyntheticPopulation,
    load_sklearn,
)
from fedloom.data._files import (
    find_mnist_files,
    impute_and_standardise,
    load_leaf,
    load_mnist_idx,
    read_heart_raw,
)
from fedloom.data._partition import (
    NATURAL_DATASETS,
    PARTITIONS,
    carve_local_test,
    check_fraction,
    partition_indices,
)
from fedloom.data._types import ArrayData, ClientData, FederatedDataset
from fedloom.errors import ConfigError, DataError

__all__ = ["DATASETS", "from_arrays", "load_dataset"]

DATASETS: tuple[str, ...] = (
    "digits",
    "breast_cancer",
    "wine",
    "synthetic:ALPHA,BETA",
    "synthetic:iid",
    "mnist:PATH",
    "heart:PATH",
    "leaf:PATH",
)

DEFAULT_CLIENTS = 100
SYNTHETIC_DEVICES = 30
SYNTHETIC_TRAIN_SHARE = 0.9  # as the FedProx generator code: train_len = int(0.9 * n)
FEMNIST_CLASSES = 62


def load_dataset(
    spec: str,
    *,
    num_clients: int | None = None,
    partition: str | None = None,
    seed: int = 0,
    local_test_fraction: float = 0.0,
    test_fraction: float = 0.2,
    central_test_rows: int = 10_000,
) -> FederatedDataset:
    """Load a dataset by spec and split it over clients.

    Datasets without a natural split (``digits``, ``breast_cancer``, ``wine``, ``mnist:PATH``)
    are cut centrally first: ``perm = numpy.random.default_rng(seed).permutation(n)``, the
    first ``ceil(test_fraction * n)`` rows of ``perm`` are the central test set (360 of
    digits' 1,797 rows at 0.2) and the rest are training rows, which
    ``partition_indices(y_train, partition, num_clients, seed + 1)`` spreads over clients.
    ``digits`` pixels are divided by 16 and MNIST's by 255; ``breast_cancer`` and ``wine``
    are standardised with the mean and standard deviation of the training rows only. When
    ``mnist:PATH`` holds both the ``train-*`` and ``t10k-*`` files, those are the train and
    test sets and ``test_fraction`` is unused; with only one pair, it is split as above.

    Datasets with a natural split use partition ``natural`` (the default for them), and each
    client already has its own local test split, whose union is the central test set:

    - ``synthetic:ALPHA,BETA`` / ``synthetic:iid`` (:func:`synthetic`): ``num_clients`` sets
      the number of devices (default 30); each device keeps a seeded 90% for training and 10%
      as its local test. Devices are generated when a round samples them, never all at once,
      so a million of them cost a few numbers each; the central test set is the local test
      rows of devices 0, 1, 2, ... until ``central_test_rows`` of them. ``test_fraction`` is
      unused.
    - ``heart:PATH`` (UCI Heart Disease, :func:`load_heart_disease`): 4 hospitals; each holds
      out a seeded ``ceil(test_fraction * rows)`` as its local test. Missing values are filled
      and features standardised with statistics of all hospitals' training rows.
    - ``leaf:PATH`` (:func:`load_leaf`): one client per user with training rows; local tests
      come from the ``test/`` files. ``test_fraction`` is unused.

    For ``heart`` and ``leaf``, ``num_clients`` must be left unset or equal the natural count.

    Parameters
    ----------
    spec
        One of :data:`DATASETS`, e.g. ``"digits"``, ``"synthetic:1,1"``, ``"mnist:/data/mnist"``.
    num_clients
        Number of clients; unset means 100 for partitioned datasets and the natural count
        (30 synthetic devices) otherwise.
    partition
        One of :data:`PARTITIONS`; unset means ``iid``, or ``natural`` where a dataset has one.
    seed
        Seeds every random choice; the same seed gives the same dataset.
    local_test_fraction
        In [0, 1): share of each client's training rows carved off as its local test split:
        ``int(local_test_fraction * rows)`` of them (rounded down, always leaving one training
        row), picked by a generator seeded with ``(seed, client index)``; 0 gives empty local
        tests. Only for datasets without a natural split (others raise ConfigError unless 0).
    test_fraction
        In [0, 1): share of rows held out for the central test set (see above).
    central_test_rows
        At least 1: the most rows of a generated population's central test set (see above).

    Returns
    -------
    FederatedDataset

    Raises
    ------
    ConfigError
        Unknown dataset or partition, bad parameters, or a setting the dataset cannot honour.
    DataError
        A path is missing or a file is malformed.

    Examples
    --------
    >>> ds = load_dataset("digits", num_clients=10, partition="dirichlet:0.5")
    >>> ds.num_clients, len(ds.test), int(ds.client_sizes().sum())
    (10, 360, 1437)
    """
    check_fraction("local_test_fraction", local_test_fraction)
    check_fraction("test_fraction", test_fraction)
    if central_test_rows < 1:
        raise ConfigError(f"central_test_rows must be at least 1, got {central_test_rows}")
    name, _, arg = spec.partition(":")
    if name in SKLEARN_DATASETS and not arg:
        central = _sklearn(name, test_fraction, seed)
    elif name == "mnist" and arg:
        central = _mnist(arg, test_fraction, seed)
    else:
        return _natural_dataset(
            spec, num_clients, partition, seed, local_test_fraction, test_fraction,
            central_test_rows,
        )  # fmt: skip
    return _partitioned(spec, central, num_clients, partition, seed, local_test_fraction)


def _natural_dataset(
    spec: str,
    num_clients: int | None,
    partition: str | None,
    seed: int,
    local_test_fraction: float,
    test_fraction: float,
    central_test_rows: int,
) -> FederatedDataset:
    name, _, arg = spec.partition(":")
    if name in ("synthetic", "heart", "leaf") and arg:
        if partition not in (None, "natural"):
            raise ConfigError(
                f"{name} has its own natural split; use partition 'natural' (or leave it unset), "
                f"not {partition!r}"
            )
        if local_test_fraction:
            raise ConfigError(
                f"local_test_fraction does not apply to {name}: its clients already have local "
                "test splits; leave it at 0"
            )
        if name == "synthetic":
            return _synthetic(spec, arg, num_clients, seed, central_test_rows)
        if name == "heart":
            return _heart(spec, arg, num_clients, test_fraction, seed)
        return _leaf(spec, arg, num_clients)
    if name in ("synthetic", "mnist", "heart", "leaf"):
        what = "ALPHA,BETA (or iid)" if name == "synthetic" else "PATH"
        raise ConfigError(f"dataset {spec!r} needs a parameter: write {name}:{what}")
    raise ConfigError(f"unknown dataset {spec!r}; choose one of: {', '.join(DATASETS)}")


def from_arrays(
    clients: Sequence[tuple[np.ndarray, np.ndarray]],
    *,
    test: tuple[np.ndarray, np.ndarray] | None = None,
    num_classes: int | None = None,
    input_shape: tuple[int, ...] | None = None,
    local_test_fraction: float = 0.0,
    seed: int = 0,
    name: str = "arrays",
) -> FederatedDataset:
    """Build a federated dataset from per-client arrays the caller already holds.

    The inputs are copied, never modified.

    Parameters
    ----------
    clients
        One ``(x, y)`` per client; ``x`` of shape ``(n, ...)`` (flattened to ``(n, d)``),
        ``y`` integer labels of shape ``(n,)``.
    test
        Central test ``(x, y)``; unset means the union of the clients' local test splits.
    num_classes
        Unset means the largest label seen (clients and test) plus one.
    input_shape
        Per-sample shape for models; unset means the clients' ``x.shape[1:]``.
    local_test_fraction
        In [0, 1): share of each client's rows carved off as its local test split.
    seed
        Seed for carving local test splits.
    name
        Name of the dataset.

    Raises
    ------
    ConfigError
        No clients, or ``local_test_fraction`` out of range.
    DataError
        Arrays with mismatched lengths or sample shapes, or non-integer labels.

    Examples
    --------
    >>> import numpy as np
    >>> a = (np.zeros((3, 2)), np.array([0, 1, 1]))
    >>> b = (np.ones((2, 2)), np.array([2, 0]))
    >>> ds = from_arrays([a, b])
    >>> ds.num_clients, ds.num_classes, ds.client_sizes().tolist()
    (2, 3, [3, 2])
    """
    check_fraction("local_test_fraction", local_test_fraction)
    if not clients:
        raise ConfigError("from_arrays needs at least one client's (x, y)")
    shapes = {np.shape(x)[1:] for x, _ in clients}
    if len(shapes) != 1 or any(np.ndim(x) < 2 for x, _ in clients):
        raise DataError(
            f"client features have sample shapes {sorted(shapes)}; give every client x of the "
            "same shape (n, ...)"
        )
    parts = [ArrayData(np.reshape(x, (len(x), -1)), y) for x, y in clients]
    pool = ArrayData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))
    local = [
        carve_local_test(rows, local_test_fraction, seed, i)
        for i, rows in enumerate(_consecutive_ranges([len(p) for p in parts]))
    ]
    if test is None:
        central = pool.subset(np.concatenate([t for _, t in local]))
    else:
        central = ArrayData(np.reshape(test[0], (len(test[0]), -1)), test[1])
    if num_classes is None:
        labels = np.concatenate([pool.y, central.y])
        num_classes = int(labels.max()) + 1 if labels.size else 0
    return FederatedDataset(
        name=name,
        num_classes=num_classes,
        input_shape=input_shape if input_shape is not None else tuple(shapes.pop()),
        x=pool.x,
        y=pool.y,
        train_indices=[tr for tr, _ in local],
        local_test_indices=[t for _, t in local],
        test=central,
    )


def _consecutive_ranges(sizes: list[int]) -> list[np.ndarray]:
    """Index ranges for blocks of the given sizes laid end to end."""
    ends = np.cumsum(sizes, dtype=np.int64)
    return [
        np.arange(end - size, end, dtype=np.int64) for size, end in zip(sizes, ends, strict=True)
    ]


def _central_split(n: int, fraction: float, seed: int | list[int]) -> tuple[np.ndarray, np.ndarray]:
    """Seeded (train_rows, test_rows): the first ceil(fraction * n) of a permutation are test."""
    perm = np.random.default_rng(seed).permutation(n)
    n_test = int(np.ceil(round(fraction * n, 9)))
    return perm[n_test:], perm[:n_test]


@dataclass(frozen=True, eq=False)
class _Centralised:
    """A dataset without a natural split, cut into central train and test rows."""

    data: ArrayData
    train_rows: np.ndarray
    test_rows: np.ndarray
    num_classes: int
    input_shape: tuple[int, ...]


def _sklearn(name: str, test_fraction: float, seed: int) -> _Centralised:
    data = load_sklearn(name)
    train_rows, test_rows = _central_split(len(data), test_fraction, seed)
    if name == "digits":
        data = ArrayData(data.x / np.float32(16.0), data.y)
    else:
        data = ArrayData(impute_and_standardise(data.x, data.x[train_rows]), data.y)
    classes, shape = SKLEARN_DATASETS[name]
    return _Centralised(data, train_rows, test_rows, classes, shape)


def _mnist(path: str, test_fraction: float, seed: int) -> _Centralised:
    pairs = find_mnist_files(path)
    if len(pairs) == 2:
        train, test = load_mnist_idx(*pairs["train"]), load_mnist_idx(*pairs["t10k"])
        data = ArrayData(np.concatenate([train.x, test.x]), np.r_[train.y, test.y])
        train_rows = np.arange(len(train), dtype=np.int64)
        test_rows = np.arange(len(train), len(data), dtype=np.int64)
    else:
        data = load_mnist_idx(*next(iter(pairs.values())))
        train_rows, test_rows = _central_split(len(data), test_fraction, seed)
    side = round(float(np.sqrt(data.x.shape[1])))
    shape = (1, side, side) if side * side == data.x.shape[1] else (data.x.shape[1],)
    return _Centralised(data, train_rows, test_rows, 10, shape)


def _partitioned(
    spec: str,
    central: _Centralised,
    num_clients: int | None,
    partition: str | None,
    seed: int,
    local_test_fraction: float,
) -> FederatedDataset:
    partition = "iid" if partition is None else partition
    if partition == "natural":
        raise ConfigError(
            f"{spec} has no natural split; partition 'natural' applies to {NATURAL_DATASETS}; "
            f"choose one of: {', '.join(PARTITIONS[:-1])}"
        )
    clients = DEFAULT_CLIENTS if num_clients is None else num_clients
    data, train_rows = central.data, central.train_rows
    parts = partition_indices(data.y[train_rows], partition, clients, seed + 1)
    local = [
        carve_local_test(train_rows[p], local_test_fraction, seed, i) for i, p in enumerate(parts)
    ]
    return FederatedDataset(
        name=spec,
        num_classes=central.num_classes,
        input_shape=central.input_shape,
        x=data.x,
        y=data.y,
        train_indices=[tr for tr, _ in local],
        local_test_indices=[t for _, t in local],
        test=data.subset(central.test_rows),
    )


def _natural(
    spec: str,
    train: list[ArrayData],
    local_test: list[ArrayData],
    extra_test: ArrayData | None,
    num_classes: int,
    input_shape: tuple[int, ...],
) -> FederatedDataset:
    """Pool natural per-client splits: all train rows, then all local test rows (then extras)."""
    blocks = [*train, *local_test] + ([extra_test] if extra_test is not None else [])
    pool = ArrayData(np.concatenate([b.x for b in blocks]), np.concatenate([b.y for b in blocks]))
    ranges = _consecutive_ranges([len(b) for b in blocks])
    first_test = sum(len(t) for t in train)
    return FederatedDataset(
        name=spec,
        num_classes=num_classes,
        input_shape=input_shape,
        x=pool.x,
        y=pool.y,
        train_indices=ranges[: len(train)],
        local_test_indices=ranges[len(train) : 2 * len(train)],
        test=ArrayData(pool.x[first_test:], pool.y[first_test:]),
    )


def _synthetic(
    spec: str, arg: str, num_clients: int | None, seed: int, test_rows: int
) -> FederatedDataset:
    iid = arg == "iid"
    alpha = beta = 0.0
    if not iid:
        try:
            alpha, beta = (float(v) for v in arg.split(","))
        except ValueError:
            raise ConfigError(
                f"bad synthetic spec {spec!r}; use synthetic:ALPHA,BETA (e.g. synthetic:1,1) "
                "or synthetic:iid"
            ) from None
    devices = SYNTHETIC_DEVICES if num_clients is None else num_clients
    make = SyntheticClients(SyntheticPopulation.draw(alpha, beta, devices, seed, iid), seed)
    sizes = _train_rows(make.population.sizes)
    return FederatedDataset.from_function(
        devices,
        make,
        test=central_test(make, devices, test_rows),
        num_classes=SYNTHETIC_CLASSES,
        input_shape=(SYNTHETIC_DIM,),
        sizes=sizes,
        name=spec,
    )


def _train_rows(rows: np.ndarray) -> np.ndarray:
    """A synthetic device's training rows (of ``rows``, an array or a 0-d array)."""
    return (SYNTHETIC_TRAIN_SHARE * rows).astype(np.int64)


@dataclass(frozen=True, eq=False)
class SyntheticClients:
    """Synthetic device ``k`` as a client: a seeded 90% of its rows for training (the order
    from ``default_rng([seed, k])``), the rest as its local test."""

    population: SyntheticPopulation
    seed: int

    def __call__(self, k: int) -> ClientData:
        device = self.population.device(k).data
        order = np.random.default_rng([self.seed, k]).permutation(len(device))
        n_train = int(_train_rows(np.asarray(len(device))))
        return ClientData(device.subset(order[:n_train]), device.subset(order[n_train:]))


def central_test(make: Callable[[int], ClientData], num_clients: int, rows: int) -> ArrayData:
    """The local test rows of clients 0, 1, 2, ... in turn, until ``rows`` of them (the last
    client's cut short): a bounded sample of a population whose clients are alike a priori."""
    parts: list[ArrayData] = []
    have = 0
    for k in range(num_clients):
        if have >= rows:
            break
        local = make(k).test
        take = min(len(local), rows - have)
        parts.append(local.subset(np.arange(take)))
        have += take
    return ArrayData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _heart(
    spec: str, path: str, num_clients: int | None, test_fraction: float, seed: int
) -> FederatedDataset:
    sites = read_heart_raw(path)
    _check_natural_count("heart", len(sites), "hospitals", num_clients)
    train, test = [], []
    for k, site in enumerate(sites):
        train_rows, test_rows = _central_split(len(site), test_fraction, [seed, k])
        train.append(site.subset(train_rows))
        test.append(site.subset(test_rows))
    reference = np.concatenate([t.x for t in train])
    train = [ArrayData(impute_and_standardise(t.x, reference), t.y) for t in train]
    test = [ArrayData(impute_and_standardise(t.x, reference), t.y) for t in test]
    return _natural(spec, train, test, None, 2, (13,))


def _leaf(spec: str, path: str, num_clients: int | None) -> FederatedDataset:
    _, clients = load_leaf(path)
    kept = [c for c in clients if len(c.train)]
    if not kept:
        raise DataError(f"LEAF data in {path} has no training rows")
    _check_natural_count("leaf", len(kept), "users with training data", num_clients)
    extra = [c.test for c in clients if not len(c.train) and len(c.test)]
    extra_test = (
        ArrayData(np.concatenate([e.x for e in extra]), np.concatenate([e.y for e in extra]))
        if extra
        else None
    )
    labels = np.concatenate([c.train.y for c in clients] + [c.test.y for c in clients])
    width = kept[0].train.x.shape[1]
    num_classes = int(labels.max()) + 1
    if width == 784 and 10 < num_classes <= FEMNIST_CLASSES:
        num_classes = FEMNIST_CLASSES  # FEMNIST: digits, upper and lower case letters
    shape = (1, 28, 28) if width == 784 else (width,)
    return _natural(
        spec, [c.train for c in kept], [c.test for c in kept], extra_test, num_classes, shape
    )


def _check_natural_count(name: str, count: int, what: str, num_clients: int | None) -> None:
    if num_clients is not None and num_clients != count:
        raise ConfigError(
            f"{name} has {count} {what}; num_clients (--clients) must be {count} or left unset, "
            f"got {num_clients}"
        )
