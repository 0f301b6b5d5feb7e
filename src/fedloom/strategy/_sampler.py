"""Client samplers: which of the available clients take part in a round.

A sampler is a pure function of (available clients, round): it draws from a generator seeded by
``(seed, round)``, so a resumed run samples exactly as an uninterrupted one, and it sorts the
available ids first, so the order in which clients connected does not matter.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from fedloom.errors import ConfigError

__all__ = ["AllClients", "CountSampler", "FractionSampler", "Sampler", "round_half_up"]


class Sampler(Protocol):
    """Chooses the clients of one round."""

    def select(self, available: Sequence[str], round: int) -> list[str]:
        """The ids of the clients that take part in ``round`` (1-based), sorted."""
        ...


def _draw(available: Sequence[str], count: int, seed: int, round: int) -> list[str]:
    pool = sorted(available)
    if count >= len(pool):
        return pool
    rng = np.random.default_rng([seed, round])
    chosen = rng.choice(len(pool), size=count, replace=False)
    return [pool[i] for i in sorted(chosen.tolist())]


@dataclass(frozen=True)
class AllClients:
    """Every available client, every round (cross-silo)."""

    def select(self, available: Sequence[str], round: int) -> list[str]:
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
