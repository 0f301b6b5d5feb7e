"""Central differential privacy: DP-FedAvg with fixed or adaptive clipping, on the server.

DP-FedAvg (McMahan et al., ICLR 2018): every client's update is clipped to L2 norm ``C``, the
clipped updates are summed with equal weights, Gaussian noise of standard deviation ``z·C`` is
added to the sum, and the sum is divided by the number of clients the round expected (a fixed
denominator, so one client's presence changes the sum by at most ``C``: the sensitivity the
accountant assumes). This is user-level privacy: it bounds what the model reveals about any one
client's whole data set.

Adaptive clipping (Andrew et al., NeurIPS 2021) moves ``C`` towards a target quantile ``gamma`` of
the update norms: each round, the fraction ``b`` of updates whose norm was at most ``C`` is
counted with noise of standard deviation ``sigma_b`` (the count is private too) and
``C ← C · exp(-η · (b - gamma))``. The count's noise spends part of the budget, so the update's
noise multiplier becomes ``(z⁻² - (2sigma_b)⁻²)^(-1/2)`` (their Theorem 1), for the same total
privacy as ``z`` alone.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate, Config, Metrics
from fedloom.strategy import Total

__all__ = ["AdaptiveClipping", "CentralDP", "ClipState"]

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True)
class AdaptiveClipping:
    """Andrew et al.'s quantile tracking; the defaults are the paper's.

    Parameters
    ----------
    target_quantile
        gamma: the fraction of updates that should fit under the clip norm.
    learning_rate
        η: the geometric step of the clip norm per round.
    count_noise
        sigma_b as a fraction of the expected clients per round (the paper uses m / 20).
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    count_noise: float = 0.05

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError(f"--target-quantile must be in (0, 1), got {self.target_quantile}")
        if not self.learning_rate > 0:
            raise ConfigError(f"--clip-lr must be positive, got {self.learning_rate}")
        if not self.count_noise > 0:
            raise ConfigError(f"the clipped-count noise must be positive, got {self.count_noise}")


@dataclass(frozen=True)
class ClipState:
    """The clip norm for the next round, how many rounds have drawn noise, and, with adaptive
    clipping, the noised fraction of last round's updates that fit under the clip norm (the
    only count the accountant covers; NaN with a fixed clip norm, where none is released)."""

    clip_norm: float
    rounds: int = 0
    unclipped_fraction: float = float("nan")
    unclipped: int = 0  # this round's updates that fit so far (the exact count, never released)


@dataclass(frozen=True)
class CentralDP:
    """DP-FedAvg as a server link of the update chain: clip each update, noise the sum.

    Its per-update half scales each update down to L2 norm at most C and gives it weight 1; its
    on-the-sum half adds Gaussian noise of standard deviation ``z_update·C`` to the sum, divides
    by m (the fixed denominator), and, with adaptive clipping, moves C.

    Parameters
    ----------
    clip_norm
        C, the initial (or, without ``adaptive``, the fixed) L2 bound on each update.
    noise_multiplier
        z: the total noise standard deviation over C (what the accountant is told).
    expected_clients
        m, the clients a round samples: the fixed denominator.
    adaptive
        Track a quantile of the update norms instead of a fixed C.
    seed
        ``None`` (the default) draws each round's noise from the operating system's random
        source. A number seeds it from ``(seed, round)``, reproducibly, which is for tests only:
        whoever knows the seed can regenerate the noise and subtract it. (NumPy's PCG64 is not a
        cryptographically secure generator either way.)
    """

    clip_norm: float
    noise_multiplier: float
    expected_clients: int
    adaptive: AdaptiveClipping | None = None
    seed: int | None = None

    name: ClassVar[str] = "--dp central"
    counts_each_update_alone: ClassVar[bool] = True
    """One client moves the noised sum by at most C only if no other update is kept or refused
    because of it: a screen by the round's median norm would void that (clipping bounds the
    norms instead)."""
    side: ClassVar[Literal["server"]] = "server"
    linear: ClassVar[bool] = False
    alternative: ClassVar[str] = (
        "use --dp distributed, where each client clips and adds its share of the noise"
    )

    def __post_init__(self) -> None:
        if not self.clip_norm > 0:
            raise ConfigError(f"--clip-norm must be positive, got {self.clip_norm}")
        if not self.noise_multiplier >= 0:
            raise ConfigError(f"--noise-multiplier must be 0 or more, got {self.noise_multiplier}")
        if self.expected_clients < 1:
            raise ConfigError(f"DP needs at least 1 client per round, got {self.expected_clients}")
        if self.adaptive is not None and self.noise_multiplier > 0:
            sigma_b = self.adaptive.count_noise * self.expected_clients
            if self.noise_multiplier >= 2 * sigma_b:
                raise ConfigError(
                    f"with adaptive clipping the noise multiplier {self.noise_multiplier} must "
                    f"be below 2 * sigma_b = {2 * sigma_b:g}, or the count's noise leaves none "
                    "for the update; sample more clients per round"
                )

    @property
    def update_noise_multiplier(self) -> float:
        """The noise multiplier the update gets: z itself, or more with adaptive clipping.

        The clipped count's noise spends part of the budget, so the update's own noise must
        grow to keep the total at z: ``z_update = (z⁻² - (2sigma_b)⁻²)^(-1/2) > z`` (Andrew et
        al. 2021, Theorem 1).
        """
        z = self.noise_multiplier
        if self.adaptive is None or z == 0:
            return z
        sigma_b = self.adaptive.count_noise * self.expected_clients
        return float((z**-2 - (2 * sigma_b) ** -2) ** -0.5)

    def init(self, dim: int) -> ClipState:
        return ClipState(self.clip_norm)

    def one(self, update: ClientUpdate, state: ClipState) -> tuple[ClientUpdate, ClipState]:
        """The update clipped to L2 norm C (in float64) with weight 1; counts it if it fit."""
        clip = state.clip_norm
        vec = update.vector.astype(np.float64)
        norm = float(np.linalg.norm(vec))
        if norm <= clip:
            state = dataclasses.replace(state, unclipped=state.unclipped + 1)
        else:
            vec *= clip / norm
        return ClientUpdate(update.client_id, vec, 1.0, update.metrics), state

    def total(self, total: Total, state: ClipState) -> tuple[Total, ClipState, Metrics]:
        """The noised sum over m; the next clip norm (and, adaptive, the noised count)."""
        clip = state.clip_norm
        rng = np.random.default_rng(None if self.seed is None else [self.seed, state.rounds])
        m = self.expected_clients
        dim = total.vector.shape[0]
        noised = total.vector + rng.normal(0.0, self.update_noise_multiplier * clip, size=dim)
        released = math.nan
        if self.adaptive is not None:
            a = self.adaptive
            noisy = float(state.unclipped)
            if self.noise_multiplier:
                noisy += rng.normal(0.0, a.count_noise * m)
            released = noisy / m
            clip *= math.exp(-a.learning_rate * (released - a.target_quantile))
        metrics = {"clip_norm": clip}
        if not math.isnan(released):
            metrics["unclipped_fraction"] = released
        after = ClipState(clip, state.rounds + 1, released)
        return Total(noised, total.weight, total.count, denominator=m), after, metrics

    def to_config(self) -> Config:
        return {}
