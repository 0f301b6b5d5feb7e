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

from fedloom.messages import ClientUpdate
from fedloom.params import Vector

__all__ = ["Aggregate", "Aggregator", "WeightedMean", "required_updates", "requirement"]


@dataclass(frozen=True)
class Aggregate:
    """The result of aggregating one round's updates.

    ``count`` is the number of updates that went in and ``total_weight`` their summed weight;
    with no updates, ``vector`` is all zeros and ``count`` is 0.
    """

    vector: Vector
    count: int
    total_weight: float


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
class WeightedMean:
    """The example-weighted mean of the updates: FedAvg's aggregation.

    Sums in float64 with one reused buffer, streaming over the updates.
    """

    def init(self, dim: int) -> None:
        return None

    def aggregate(
        self, updates: Iterable[ClientUpdate], dim: int, state: None
    ) -> tuple[Aggregate, None]:
        total = np.zeros(dim, dtype=np.float64)
        scaled = np.empty(dim, dtype=np.float64)
        weight_sum = 0.0
        count = 0
        for update in updates:
            np.multiply(update.vector, update.weight, out=scaled, dtype=np.float64)
            total += scaled
            weight_sum += update.weight
            count += 1
        if weight_sum > 0:
            total /= weight_sum
        return Aggregate(total.astype(np.float32), count, weight_sum), state
