"""Aggregators: many client updates in, one update out.

An aggregator takes an iterable of :class:`~fedloom.messages.ClientUpdate` and its state and
returns an :class:`Aggregate` and the next state. The weighted mean consumes the iterable as a
stream, so its memory does not grow with the number of clients.

An aggregator whose guarantee needs a minimum number of updates (Krum, Bulyan) says so with a
``min_updates`` attribute and a ``requirement`` sentence; given fewer it returns zeros, and the
round loop fails the round with that sentence.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

from fedloom.messages import Aggregate, ClientUpdate
from fedloom.params import Vector

__all__ = [
    "Aggregator",
    "Total",
    "WeightedMean",
    "required_updates",
    "requirement",
    "weighted_sum",
]


class Aggregator(Protocol):
    """Turns a round's client updates into one update."""

    def init(self, dim: int) -> Any:
        """The state before the first round, for updates of length ``dim``."""
        ...

    def aggregate(
        self, updates: Iterable[ClientUpdate], dim: int, state: Any
    ) -> tuple[Aggregate, Any]:
        """Combine ``updates`` (each of length ``dim``) and return the result and next state."""
        ...


def required_updates(aggregator: Aggregator) -> int:
    """The fewest updates ``aggregator`` accepts in a round: its ``min_updates`` if it has one
    (Krum's guarantee needs n > 2f + 2, say), else 1."""
    return int(getattr(aggregator, "min_updates", 1))


def requirement(aggregator: Aggregator) -> str | None:
    """Why ``aggregator`` needs :func:`required_updates` updates, in words, if it says."""
    text = getattr(aggregator, "requirement", None)
    return str(text) if text else None


@dataclass(frozen=True)
class Total:
    """A round's contributions before the mean: what the update chain's on-the-sum halves see.

    Attributes
    ----------
    vector
        ``Σ wᵢ·vᵢ`` in float64, or, under secure aggregation, the integers mod 2^k that the
        clients' links encoded, until a link decodes them.
    weight
        ``Σ wᵢ``, the weights the sum was taken with.
    count
        How many updates went in.
    denominator
        What the mean divides by when it is not ``weight`` (DP-FedAvg's fixed number of
        expected clients, say); ``None``: ``weight``.
    """

    vector: npt.NDArray[Any]
    weight: float
    count: int
    denominator: float | None = None

    def mean(self) -> Vector:
        """``vector / denominator`` (or ``/ weight``) as float32; the sum itself when that is 0."""
        by = self.weight if self.denominator is None else self.denominator
        vector = self.vector / by if by > 0 else self.vector
        out: Vector = vector.astype(np.float32)
        return out


def weighted_sum(updates: Iterable[ClientUpdate], dim: int) -> Total:
    """``Σ wᵢ·vᵢ`` in float64 with one reused buffer, streaming over ``updates``."""
    total = np.zeros(dim, dtype=np.float64)
    scaled = np.empty(dim, dtype=np.float64)
    weight_sum = 0.0
    count = 0
    for update in updates:
        np.multiply(update.vector, update.weight, out=scaled, dtype=np.float64)
        total += scaled
        weight_sum += update.weight
        count += 1
    return Total(total, weight_sum, count)


@dataclass(frozen=True)
class WeightedMean:
    """The example-weighted mean of the updates: FedAvg's aggregation.

    Sums in float64 with one reused buffer, streaming over the updates.
    """

    def init(self, dim: int) -> None:
        return None

    def aggregate(
        self, updates: Iterable[ClientUpdate], dim: int, state: None
    ) -> tuple[Aggregate, None]:
        total = weighted_sum(updates, dim)
        return Aggregate(total.mean(), total.count, total.weight), state
