"""Client samplers: which of the available clients take part in a round.

A sampler is a pure function of (available clients, round): it draws from a generator seeded by
``(seed, round)``, so a resumed run samples exactly as an uninterrupted one, and it sorts the
available ids first, so the order in which clients connected does not matter.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol, overload

import numpy as np

from fedloom.errors import ConfigError

__all__ = [
    "AllClients",
    "CountSampler",
    "FractionSampler",
    "NumberedClients",
    "Sampler",
    "round_half_up",
]


class Sampler(Protocol):
    """Chooses the clients of one round."""

    def select(self, available: Sequence[str], round: int) -> list[str]:
        """The ids of the clients that take part in ``round`` (1-based), sorted."""
        ...


class NumberedClients(Sequence[str]):
    """The ids ``"0"`` to ``str(n - 1)``, in sorted (string) order, without building them.

    A simulated population of a million clients is this sequence, not a list of a million
    strings: the ``i``-th id is computed in ``O(log(n) ** 2)`` steps, and samplers draw from it
    without sorting it. It sorts as ``sorted(str(i) for i in range(n))`` does (``"10"`` before
    ``"2"``), so a sampler picks the same clients from it as from that list.

    Examples
    --------
    >>> ids = NumberedClients(12)
    >>> list(ids)
    ['0', '1', '10', '11', '2', '3', '4', '5', '6', '7', '8', '9']
    >>> "11" in ids, "12" in ids, "01" in ids
    (True, False, False)
    """

    __slots__ = ("_n",)

    def __init__(self, n: int) -> None:
        if n < 0:
            raise ConfigError(f"a population cannot have {n} clients")
        self._n = int(n)

    def __len__(self) -> int:
        return self._n

    @overload
    def __getitem__(self, index: int) -> str: ...

    @overload
    def __getitem__(self, index: slice) -> Sequence[str]: ...

    def __getitem__(self, index: int | slice) -> str | Sequence[str]:
        if isinstance(index, slice):
            return [self[i] for i in range(*index.indices(self._n))]
        if index < 0:
            index += self._n
        if not 0 <= index < self._n:
            raise IndexError(f"client rank {index} out of range for {self._n} clients")
        if index == 0:
            return "0"  # "0" sorts first; the ids 1 .. n - 1 form a decimal trie below it
        return str(_kth_in_trie(index, self._n - 1))

    def __iter__(self) -> Iterator[str]:
        # every id at once: sorting the strings beats n trie walks
        return iter(sorted(map(str, range(self._n))))

    def __contains__(self, item: object) -> bool:
        return (
            isinstance(item, str)
            and item.isascii()
            and item.isdigit()
            and (item == "0" or not item.startswith("0"))
            and int(item) < self._n
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NumberedClients) and other._n == self._n

    def __hash__(self) -> int:
        return hash((NumberedClients, self._n))

    def __repr__(self) -> str:
        return f"NumberedClients({self._n})"


def _kth_in_trie(k: int, last: int) -> int:
    """The ``k``-th (1-based) of the numbers 1 .. ``last`` in the order of their decimal
    strings: walk the trie of prefixes, skipping whole subtrees by their size."""
    current = 1
    k -= 1
    while k > 0:
        below = _subtree_size(current, last)
        if below <= k:
            k -= below
            current += 1
        else:
            current *= 10
            k -= 1
    return current


def _subtree_size(prefix: int, last: int) -> int:
    """How many of 1 .. ``last`` have ``prefix``'s digits as their leading digits."""
    size, first, end = 0, prefix, prefix
    while first <= last:
        size += min(last, end) - first + 1
        first, end = first * 10, end * 10 + 9
    return size


def _draw(available: Sequence[str], count: int, seed: int, round: int) -> list[str]:
    pool = available if isinstance(available, NumberedClients) else sorted(available)
    if count >= len(pool):
        return list(pool)
    rng = np.random.default_rng([seed, round])
    chosen = rng.choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(chosen.tolist())]


@dataclass(frozen=True)
class AllClients:
    """Every available client, every round (cross-silo)."""

    def select(self, available: Sequence[str], round: int) -> list[str]:
        if isinstance(available, NumberedClients):
            return list(available)
        return sorted(available)


@dataclass(frozen=True)
class FractionSampler:
    """A uniformly random fraction C of the available clients, without replacement.

    The count is ``max(min_clients, round(C * n))``, as McMahan et al. (2017) take
    ``m = max(C * K, 1)``.
    """

    fraction: float
    seed: int = 0
    min_clients: int = 1

    def __post_init__(self) -> None:
        if not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.min_clients < 1:
            raise ConfigError(f"min_clients must be at least 1, got {self.min_clients}")

    def select(self, available: Sequence[str], round: int) -> list[str]:
        count = max(self.min_clients, round_half_up(self.fraction * len(available)))
        return _draw(available, count, self.seed, round)


@dataclass(frozen=True)
class CountSampler:
    """A fixed number of uniformly random clients per round, without replacement."""

    count: int
    seed: int = 0

    def __post_init__(self) -> None:
        if self.count < 1:
            raise ConfigError(f"clients per round must be at least 1, got {self.count}")

    def select(self, available: Sequence[str], round: int) -> list[str]:
        return _draw(available, self.count, self.seed, round)


def round_half_up(x: float) -> int:
    """Round to the nearest integer, halves up (0.5 -> 1), with float noise forgiven."""
    return int(np.floor(x + 0.5 + 1e-9))
