"""Settings, resolved once: a :class:`RunPlan` of typed pieces, with every default applied here.

``fedloom simulate`` and ``fedloom server`` build their runs from the same plan, so they cannot
drift apart: the local SGD of the built-in models, who takes part each round, the strategy with
its update chain and round mechanism, and the privacy ledger. Nothing below this package reads
:class:`~fedloom.config.SimulationConfig`.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

from fedloom.compression import FixedPoint
from fedloom.config import BUILTIN_MODEL_SGD, LocalSGD, SimulationConfig
from fedloom.errors import ConfigError
from fedloom.privacy import (
    AdaptiveClipping,
    CentralDP,
    CentralPrivacy,
    DistributedDP,
    DistributedLedger,
    DistributedPrivacy,
    Mechanism,
    PrivacyLedger,
    RunPrivacy,
    check_delta,
    distributed_noise,
)
from fedloom.secagg import SecAggRound, SecAggSettings, secagg_plus_degree
from fedloom.strategy import (
    AllClients,
    CountSampler,
    FractionSampler,
    Link,
    Sampler,
    Strategy,
    compose,
    make_strategy,
    round_half_up,
)

__all__ = ["RunPlan", "cohort_size", "default_delta", "local_sgd", "plan", "sampler_for"]

log = logging.getLogger("fedloom.recipes")


@dataclass(frozen=True)
class RunPlan:
    """A run's pieces, resolved from its settings.

    Attributes
    ----------
    config
        The settings it was made from.
    sgd
        The built-in models' local SGD, the defaults of :data:`BUILTIN_MODEL_SGD` filled in.
    strategy
        The strategy, with its update chain (DP, the fixed-point encoding) and its round
        mechanism (secure aggregation) in place.
    privacy
        The run's privacy ledger; ``None`` without DP.
    cohort
        Clients per round.
    population
        Clients in the federation (what delta and sampling's amplification are counted on).
    """

    config: SimulationConfig
    sgd: LocalSGD
    strategy: Strategy
    privacy: RunPrivacy | None
    cohort: int
    population: int


def local_sgd(cfg: SimulationConfig) -> LocalSGD:
    """The built-in models' local SGD: the settings', else :data:`BUILTIN_MODEL_SGD`'s."""
    sgd = BUILTIN_MODEL_SGD
    return LocalSGD(
        lr=cfg.lr if cfg.lr is not None else sgd.lr,
        local_epochs=cfg.local_epochs or sgd.local_epochs,
        batch_size=cfg.batch_size or sgd.batch_size,
    )


def default_delta(delta: float | None, population: int) -> float:
    """``delta``, else ``population ** -1.1``; checked against the population."""
    if population < 1:
        raise ConfigError(f"--clients must be at least 1, got {population}")
    chosen = delta if delta is not None else population**-1.1
    check_delta(chosen, population)
    return chosen


@dataclass(frozen=True)
class _DP:
    """User-level DP's settings with their defaults: clip norm 1, no noise, delta N^-1.1."""

    clip_norm: float
    noise_multiplier: float
    delta: float

    @classmethod
    def of(cls, cfg: SimulationConfig, population: int) -> _DP:
        clip = cfg.clip_norm if cfg.clip_norm is not None else 1.0
        z = cfg.noise_multiplier if cfg.noise_multiplier is not None else 0.0
        return cls(clip, z, default_delta(cfg.delta, population))


def sampler_for(config: SimulationConfig, num_clients: int) -> Sampler:
    """The sampler the settings ask for: a fraction, a count per round, or every client."""
    if config.clients_per_round is not None:
        if config.clients_per_round > num_clients:
            raise ConfigError(
                f"--clients-per-round {config.clients_per_round} is more than the "
                f"{num_clients} clients; use at most {num_clients}"
            )
        return CountSampler(config.clients_per_round, seed=config.seed)
    if config.fraction is not None:
        return FractionSampler(config.fraction, seed=config.seed, min_clients=config.min_clients)
    return AllClients()


def cohort_size(config: SimulationConfig, num_clients: int) -> int:
    """How many clients the settings sample each round."""
    if config.clients_per_round is not None:
        return config.clients_per_round
    if config.fraction is not None:
        return max(config.min_clients, round_half_up(config.fraction * num_clients))
    return num_clients


def plan(
    cfg: SimulationConfig,
    *,
    population: int,
    dim: int,
    strategy: Strategy | None = None,
    sampled_from: int | None = None,
    cohort: int | None = None,
    amplified: bool = True,
) -> RunPlan:
    """Resolve ``cfg`` for a federation of ``population`` clients and a model of ``dim``
    parameters.

    Parameters
    ----------
    strategy
        Your own strategy, used instead of the settings' preset (DP and secure aggregation
        still wrap it).
    sampled_from
        How many clients the sampler draws from (``population`` by default).
    cohort
        Clients per round, when the settings' sampling does not say (a deployment, where the
        cohort is whoever is connected).
    amplified
        Whether central DP takes credit for sampling: ``False`` accounts every round as if all
        ``population`` clients took part, the safe choice where the cohort comes from whoever
        is connected rather than from all users.
    """
    drawn = sampled_from if sampled_from is not None else population
    base = strategy or make_strategy(
        cfg.strategy, sampler_for(cfg, drawn), **cfg.strategy_options()
    )
    size = cohort if cohort is not None else cohort_size(cfg, population)
    built, privacy = _privacy_plan(base, cfg, size, population, dim, amplified=amplified)
    return RunPlan(cfg, local_sgd(cfg), built, privacy, size, population)


def _privacy_plan(
    strategy: Strategy,
    cfg: SimulationConfig,
    cohort: int,
    population: int,
    dim: int,
    *,
    amplified: bool,
) -> tuple[Strategy, RunPrivacy | None]:
    """``strategy`` with the settings' DP and secure aggregation, and the run's ledger: the
    one place that builds the update chain."""
    links: list[Link] = []
    mechanism = None
    privacy: RunPrivacy | None = None
    name = strategy.name
    if cfg.secure_aggregation is not None:
        mechanism = _secure_aggregation(cfg, cohort)
        name = f"{name}+{cfg.secure_aggregation}"
    if cfg.dp is not None:
        dp = _DP.of(cfg, population)
        _warn_if_noise_drowns_the_mean(cfg.dp, dp, cohort, dim)
        if cfg.dp == "central":
            central, privacy = _central_dp(cfg, dp, cohort, population, amplified)
            links.append(central)
            name = f"dp-{strategy.name}"
        elif mechanism is not None:  # distributed DP: the settings check it has secure agg
            distributed, privacy = _distributed_dp(cfg, dp, mechanism, cohort, dim)
            links.append(distributed)
            name = f"ddp-{name}"
    elif mechanism is not None:
        links.append(_fixed_point(cfg, cohort))
    composed = compose(strategy, links, mechanism, name=name)
    if cfg.target_epsilon is not None and privacy is not None and privacy.exhausted(0):
        raise ConfigError(_first_round_too_costly(cfg, privacy))
    return composed, privacy


def _warn_if_noise_drowns_the_mean(mode: str, dp: _DP, cohort: int, dim: int) -> None:
    """Say so when each round's noise outweighs the largest mean the clients could send.

    User-level DP adds noise of norm about ``z·C·sqrt(d)`` to a sum of ``m`` updates each of
    norm at most ``C``, so the noise on the mean is about ``z·sqrt(d)/m`` times the largest
    signal; above 1, rounds are mostly noise.
    """
    ratio = dp.noise_multiplier * math.sqrt(dim) / cohort
    if ratio > 1:
        needed = math.ceil(dp.noise_multiplier * math.sqrt(dim))
        log.warning(
            "--dp %s with %d clients per round: the noise on each round's mean is about %.1fx "
            "the largest update the clients can send (z*sqrt(d)/m = %g*sqrt(%d)/%d), so the "
            "model will learn little; it takes %d or more clients per round (or less noise) "
            "for the signal to outweigh the noise",
            mode, cohort, ratio, dp.noise_multiplier, dim, cohort, needed,
        )  # fmt: skip


def _secure_aggregation(cfg: SimulationConfig, cohort: int) -> SecAggRound:
    degree = None
    if cfg.secure_aggregation == "secagg+":
        degree = cfg.secagg_degree or secagg_plus_degree(cohort)
    defaults = SecAggSettings()
    threshold = cfg.secagg_threshold if cfg.secagg_threshold is not None else defaults.threshold
    return SecAggRound(SecAggSettings(threshold=threshold, degree=degree), seed=cfg.seed)


def _modulus_bits(cfg: SimulationConfig) -> int:
    """k of the integers secure aggregation sums: the setting's, else the encoding's default."""
    k = cfg.secagg_modulus_bits
    return k if k is not None else FixedPoint().modulus_bits


def _fixed_point(cfg: SimulationConfig, cohort: int) -> FixedPoint:
    enc = FixedPoint()
    encoding = FixedPoint(
        cfg.secagg_clip if cfg.secagg_clip is not None else enc.clip,
        cfg.secagg_bits if cfg.secagg_bits is not None else enc.bits,
        _modulus_bits(cfg),
        cfg.secagg_weight_bound or enc.weight_bound,
    )
    if cohort > encoding.max_summands():
        raise ConfigError(
            f"{cohort} clients per round could overflow the {encoding.modulus_bits}-bit "
            f"sum of {encoding.bits}-bit values; raise --secagg-modulus-bits or lower "
            "--secagg-bits"
        )
    return encoding


def _central_dp(
    cfg: SimulationConfig, dp: _DP, cohort: int, population: int, amplified: bool
) -> tuple[CentralDP, CentralPrivacy]:
    """DP-FedAvg's link and ledger (noise from OS entropy)."""
    adaptive = None
    if cfg.adaptive_clipping:
        defaults = AdaptiveClipping()
        adaptive = AdaptiveClipping(
            cfg.target_quantile if cfg.target_quantile is not None else defaults.target_quantile,
            cfg.clip_lr if cfg.clip_lr is not None else defaults.learning_rate,
        )
    elif cfg.target_quantile is not None or cfg.clip_lr is not None:
        raise ConfigError("--target-quantile and --clip-lr need --adaptive-clipping")
    z = dp.noise_multiplier
    link = CentralDP(dp.clip_norm, z, cohort, adaptive)
    ledger = None
    if z > 0:
        if amplified and cohort < population:
            mechanism = Mechanism(z, "fixed-size-without-replacement", population, cohort)
        else:
            mechanism = Mechanism(z, "all", population, population)
        ledger = PrivacyLedger(mechanism, dp.delta, cfg.accountant)
    return link, CentralPrivacy(ledger, cfg.target_epsilon)


def _distributed_dp(
    cfg: SimulationConfig, dp: _DP, mechanism: SecAggRound, cohort: int, dim: int
) -> tuple[DistributedDP, DistributedPrivacy]:
    """Distributed DP's link and ledger: each client adds its share of discrete Gaussian noise,
    so that the fewest clients a round can complete with add the noise asked for."""
    least = max(mechanism.least_survivors(cohort), 2)
    k = _modulus_bits(cfg)
    noise, sensitivity = distributed_noise(dp.clip_norm, dp.noise_multiplier, cohort, least, dim, k)
    link = DistributedDP(noise, k, denominator=cohort, min_contributors=least)
    ledger = DistributedLedger(sensitivity, noise.sigma, dim, dp.delta, least)
    return link, DistributedPrivacy(ledger, cfg.target_epsilon)


def _first_round_too_costly(cfg: SimulationConfig, privacy: RunPrivacy) -> str:
    if isinstance(privacy, DistributedPrivacy):
        return (
            f"one round with {privacy.ledger.least} clients already spends more than "
            f"--target-epsilon {cfg.target_epsilon}; raise --noise-multiplier"
        )
    ledger = privacy.ledger
    spent = f"epsilon {ledger.spent(1):.3g}" if ledger is not None else "an unbounded epsilon"
    return (
        f"one round already spends {spent} > --target-epsilon {cfg.target_epsilon}; raise "
        "--noise-multiplier or sample fewer clients per round"
    )
