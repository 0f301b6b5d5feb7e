"""Split a labelled dataset over clients: IID, label skew (Dirichlet, shards), quantity skew."""

from __future__ import annotations

import math

import numpy as np

from fedloom.errors import ConfigError

__all__ = [
    "NATURAL_DATASETS",
    "PARTITIONS",
    "carve_local_test",
    "check_fraction",
    "partition_indices",
]

PARTITIONS: tuple[str, ...] = ("iid", "dirichlet:ALPHA", "shards:K", "quantity:SIGMA", "natural")
NATURAL_DATASETS = "synthetic, heart, leaf"

# Dirichlet draws that leave a client empty are re-drawn this many times before rebalancing.
_DIRICHLET_REDRAWS = 100


def partition_indices(
    labels: np.ndarray, spec: str, num_clients: int, seed: int
) -> list[np.ndarray]:
    """Split sample indices over clients.

    Every index of ``labels`` lands in exactly one client, and every client gets at least one.

    Parameters
    ----------
    labels
        Integer labels, shape ``(n,)``; only their values matter (label-skew schemes).
    spec
        One of:

        ``iid``
            A seeded permutation cut into ``num_clients`` near-equal parts (sizes differ by
            at most one).
        ``dirichlet:ALPHA``
            Label skew (Hsu et al. 2019): for each class, client proportions are drawn from
            ``Dir(ALPHA, ..., ALPHA)`` and that class's shuffled indices are cut accordingly.
            Small ALPHA (0.1) gives few classes per client; large ALPHA (1000) is close to IID.
            A draw that leaves a client empty is re-drawn (up to 100 times); if clients are
            still empty, each takes one sample from the currently largest client.
        ``shards:K``
            McMahan et al. 2017: indices sorted by label (ties in seeded random order) are cut
            into ``num_clients * K`` contiguous shards of equal size (sizes differ by at most
            one when they do not divide evenly), and each client gets K random shards.
        ``quantity:SIGMA``
            Quantity skew with IID labels: client sizes proportional to draws from
            ``lognormal(0, SIGMA)``, each at least one; SIGMA = 0 gives equal sizes.
    num_clients
        Number of clients, 1 to ``len(labels)``.
    seed
        Seed for ``numpy.random.default_rng``; the same seed gives the same split.

    Returns
    -------
    list of numpy.ndarray
        ``num_clients`` int64 index arrays into ``labels``.

    Raises
    ------
    ConfigError
        Unknown spec, a missing or out-of-range parameter, ``num_clients`` < 1, or more
        clients than samples.

    Examples
    --------
    >>> import numpy as np
    >>> parts = partition_indices(np.array([0, 0, 1, 1, 2]), "iid", 2, seed=0)
    >>> sorted(len(p) for p in parts)
    [2, 3]
    """
    labels = np.asarray(labels)
    n = int(labels.shape[0])
    kind, _, arg = spec.partition(":")
    if kind == "natural":
        raise ConfigError(
            f"partition 'natural' uses a dataset's own split and only applies to datasets "
            f"that have one ({NATURAL_DATASETS}); choose one of: {', '.join(PARTITIONS[:-1])}"
        )
    if kind not in ("iid", "dirichlet", "shards", "quantity") or (kind == "iid" and arg):
        raise ConfigError(f"unknown partition {spec!r}; choose one of: {', '.join(PARTITIONS)}")
    if num_clients < 1:
        raise ConfigError(f"the number of clients must be at least 1, got {num_clients}")
    if num_clients > n:
        raise ConfigError(
            f"{num_clients} clients but only {n} training samples; use at most {n} clients"
        )
    rng = np.random.default_rng(seed)
    if kind == "iid":
        return _as_int64(np.array_split(rng.permutation(n), num_clients))
    if kind == "dirichlet":
        alpha = _number(spec, arg, "ALPHA")
        if alpha <= 0:
            raise ConfigError(f"partition {spec!r}: ALPHA must be > 0, e.g. dirichlet:0.5")
        return _dirichlet(labels, alpha, num_clients, rng)
    if kind == "shards":
        shards = _number(spec, arg, "K")
        if shards < 1 or shards != int(shards):
            raise ConfigError(f"partition {spec!r}: K must be a whole number >= 1, e.g. shards:2")
        if num_clients * int(shards) > n:
            raise ConfigError(
                f"partition {spec!r} needs {num_clients * int(shards)} shards of at least one "
                f"sample but there are only {n} samples; lower K or the number of clients"
            )
        return _shards(labels, int(shards), num_clients, rng)
    sigma = _number(spec, arg, "SIGMA")
    if sigma < 0:
        raise ConfigError(f"partition {spec!r}: SIGMA must be >= 0, e.g. quantity:1.0")
    return _quantity(n, sigma, num_clients, rng)


def carve_local_test(
    indices: np.ndarray, fraction: float, seed: int, client: int
) -> tuple[np.ndarray, np.ndarray]:
    """Split one client's indices into (train, local test).

    The test part has ``int(fraction * len(indices))`` rows (rounded down, and always leaving
    at least one training row), chosen by a generator seeded with ``(seed, client)``.
    """
    n_test = min(int(fraction * len(indices)), max(len(indices) - 1, 0))
    order = np.random.default_rng([seed, client]).permutation(len(indices))
    return indices[order[n_test:]], indices[order[:n_test]]


def check_fraction(name: str, value: float) -> None:
    """Raise ConfigError unless ``0 <= value < 1``."""
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


def _number(spec: str, arg: str, what: str) -> float:
    try:
        value = float(arg)
    except ValueError:
        value = math.nan
    if not math.isfinite(value):
        kind = spec.partition(":")[0]
        raise ConfigError(f"partition {spec!r} needs a number {what}, e.g. {kind}:{what}")
    return value


def _as_int64(parts: list[np.ndarray]) -> list[np.ndarray]:
    return [p.astype(np.int64, copy=False) for p in parts]


def _dirichlet(
    labels: np.ndarray, alpha: float, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    by_class = [rng.permutation(np.flatnonzero(labels == c)) for c in np.unique(labels)]
    for _ in range(_DIRICHLET_REDRAWS):
        buckets: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
        for idx in by_class:
            share = rng.dirichlet(np.full(num_clients, alpha))
            cuts = np.round(np.cumsum(share)[:-1] * len(idx)).astype(np.int64)
            for client, part in enumerate(np.split(idx, cuts)):
                buckets[client].append(part)
        parts = [np.concatenate(b) for b in buckets]
        if min(len(p) for p in parts) > 0:
            return _as_int64(parts)
    for client in range(num_clients):
        if len(parts[client]) == 0:
            donor = int(np.argmax([len(p) for p in parts]))
            parts[client] = parts[donor][-1:]
            parts[donor] = parts[donor][:-1]
    return _as_int64(parts)


def _shards(
    labels: np.ndarray, per_client: int, num_clients: int, rng: np.random.Generator
) -> list[np.ndarray]:
    shuffled = rng.permutation(len(labels))
    order = shuffled[np.argsort(labels[shuffled], kind="stable")]
    shards = np.array_split(order, num_clients * per_client)
    owners = rng.permutation(num_clients * per_client).reshape(num_clients, per_client)
    return _as_int64([np.concatenate([shards[s] for s in row]) for row in owners])


def _quantity(n: int, sigma: float, num_clients: int, rng: np.random.Generator) -> list[np.ndarray]:
    weights = rng.lognormal(0.0, sigma, num_clients)
    share = weights / weights.sum() * (n - num_clients)
    sizes = 1 + np.floor(share).astype(np.int64)
    leftover = n - int(sizes.sum())
    sizes[np.argsort(-(share - np.floor(share)), kind="stable")[:leftover]] += 1
    cuts = np.cumsum(sizes)[:-1]
    return _as_int64(np.split(rng.permutation(n), cuts))
