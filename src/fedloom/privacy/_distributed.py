"""Distributed DP as a client link of the update chain: each client clips, scales, rounds and
adds its share of discrete Gaussian noise before secure aggregation (the guarantee is in
:mod:`fedloom.privacy._discrete`).

The link is linear: the server decodes the unmasked integer sum (read as signed) and divides by
the scale and a fixed denominator, the clients a round expects, as DP-FedAvg does.
"""

from __future__ import annotations

import math
import secrets
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate, Config, Metrics
from fedloom.privacy._discrete import discrete_gaussian, integer_l2_sensitivity
from fedloom.strategy import Total

__all__ = ["DistributedDP", "DistributedNoise", "distributed_noise", "encode_noised"]

U64 = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class DistributedNoise:
    """Distributed DP's encoding: what each client does to its update instead of the fixed-point
    encoding's per-value clip.

    Parameters
    ----------
    clip_norm
        C: the update is scaled down to L2 norm at most C.
    scale
        s: integer steps per unit; the clipped update times s is rounded to the nearest integer.
    sigma
        The standard deviation, in integer steps, of the discrete Gaussian noise each client adds
        to every coordinate; 0 adds none.
    """

    clip_norm: float
    scale: float
    sigma: float

    def __post_init__(self) -> None:
        for name in ("clip_norm", "scale"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"distributed DP {name} must be positive, got {value}")
        if not (math.isfinite(self.sigma) and self.sigma >= 0):
            raise ConfigError(f"distributed DP sigma must be 0 or more, got {self.sigma}")


def encode_noised(
    delta: npt.NDArray[np.floating],
    noise: DistributedNoise,
    modulus_bits: int,
    rng: np.random.Generator | None = None,
) -> U64:
    """Distributed DP's client step: scale ``delta`` down to L2 norm at most ``clip_norm``,
    multiply by ``scale``, round to the nearest integer, add discrete Gaussian noise of
    standard deviation ``sigma``, and store in two's complement mod ``2**modulus_bits``,
    followed by a weight of 1. ``rng`` defaults to a generator seeded from the operating
    system's random source (numpy's PCG64: statistically sound, not a cryptographic RNG).

    ``ValueError`` if ``delta`` holds NaN or infinite values.
    """
    floats = np.asarray(delta, dtype=np.float64)
    bad = np.count_nonzero(~np.isfinite(floats))
    if bad:
        raise ValueError(f"cannot encode non-finite values: {bad} NaN or infinite entries")
    norm = float(np.linalg.norm(floats))
    factor = noise.scale * min(1.0, noise.clip_norm / norm) if norm > 0 else noise.scale
    ints = np.rint(floats * factor).astype(np.int64)
    if noise.sigma > 0:
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        ints += discrete_gaussian(noise.sigma, ints.shape[0], rng)
    mask = np.uint64((1 << modulus_bits) - 1)
    body = ints.astype(np.uint64) & mask
    return np.concatenate([body, np.array([1], dtype=np.uint64)])


def distributed_noise(
    clip_norm: float, noise_multiplier: float, cohort: int, least: int, dim: int, modulus_bits: int
) -> tuple[DistributedNoise, float]:
    """Distributed DP's encoding for a round of ``cohort`` clients that needs ``least`` of them,
    and its L2 sensitivity in integer steps.

    Each client adds discrete Gaussian noise of ``sigma = z·Delta2 / sqrt(least - 1)``, so that
    any ``least - 1`` honest clients besides the one protected add noise of at least ``z``
    times the sensitivity. The scale fills half of the signed range mod 2^k with the sum of
    ``cohort`` clipped updates plus 8 standard deviations of the summed noise, so the sum does
    not wrap; the rounding's share of the sensitivity (``sqrt(d)/2``) must stay small beside
    ``scale·C``.
    """
    contributors = max(1, least - 1)
    headroom = cohort + 8.0 * noise_multiplier * math.sqrt(cohort / contributors)
    scale = ((1 << (modulus_bits - 1)) - 1) / (2.0 * clip_norm * headroom)
    if scale * clip_norm < 20.0 * math.sqrt(dim):
        raise ConfigError(
            f"--secagg-modulus-bits {modulus_bits} leaves too few integer steps for {cohort} "
            f"clients' updates of {dim} values under distributed DP: rounding would dominate the "
            "sensitivity; raise --secagg-modulus-bits (up to 64)"
        )
    sensitivity = integer_l2_sensitivity(clip_norm, scale, dim)
    sigma = noise_multiplier * sensitivity / math.sqrt(contributors)
    return DistributedNoise(clip_norm, scale, sigma), sensitivity


@dataclass(frozen=True)
class DistributedDP:
    """The link: each client encodes with :func:`encode_noised`; the server reads the sum back.

    Parameters
    ----------
    noise
        The clip norm, scale and sigma every client uses.
    modulus_bits
        k: the encoded values are integers mod 2^k (``--secagg-modulus-bits``).
    denominator
        The noised sum of the clipped updates is divided by this fixed number (the clients a
        round expects, as in DP-FedAvg) rather than by the number that took part; ``None``
        divides by the latter.
    min_contributors
        The fewest inputs (and so the least noise) a round may unmask; with fewer, secure
        aggregation fails the round before anything is unmasked.
    """

    noise: DistributedNoise
    modulus_bits: int = 32
    denominator: int | None = None
    min_contributors: int = 0

    name: ClassVar[str] = "--dp distributed"
    side: ClassVar[Literal["client"]] = "client"
    linear: ClassVar[bool] = True
    requirement: ClassVar[str] = (
        "distributed DP needs the noise of this many clients; nothing was unmasked"
    )

    def encoded_size(self, dim: int) -> int:
        """``dim`` encoded values and a weight of 1."""
        return dim + 1

    def init(self, dim: int) -> None:
        return None

    def one(self, update: ClientUpdate, state: None) -> tuple[ClientUpdate, None]:
        encoded = encode_noised(update.vector, self.noise, self.modulus_bits)
        return ClientUpdate(update.client_id, encoded, 1.0, update.metrics), state

    def total(self, total: Total, state: None) -> tuple[Total, None, Metrics]:
        """The noised integer sum read as signed, over ``scale`` times the denominator."""
        k = self.modulus_bits
        shift = 64 - k  # sign-extend bit k-1: the noised sum is read as signed
        signed = (total.vector[:-1] << np.uint64(shift)).view(np.int64) >> shift
        denominator = self.noise.scale * (self.denominator or total.count)
        return Total(signed, float(total.count), total.count, denominator), state, {}

    def to_config(self) -> Config:
        return {
            "secagg.modulus_bits": self.modulus_bits,
            "secagg.dp_clip": self.noise.clip_norm,
            "secagg.dp_scale": self.noise.scale,
            "secagg.dp_sigma": self.noise.sigma,
        }

    @classmethod
    def from_config(cls, config: Config) -> DistributedDP | None:
        """The link a client was sent; ``None`` when the config asks for no distributed DP."""
        if "secagg.dp_scale" not in config:
            return None
        try:
            noise = DistributedNoise(
                float(config["secagg.dp_clip"]),
                float(config["secagg.dp_scale"]),
                float(config["secagg.dp_sigma"]),
            )
            return cls(noise, int(config["secagg.modulus_bits"]))
        except (KeyError, TypeError, ValueError) as exc:
            if isinstance(exc, ConfigError):
                raise
            raise ConfigError(f"distributed DP settings missing or malformed: {exc}") from None
