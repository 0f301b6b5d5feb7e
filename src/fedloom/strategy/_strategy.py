"""A strategy is a composition of small pieces; presets name the compositions from the papers."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal

from fedloom.errors import ConfigError
from fedloom.messages import Config
from fedloom.strategy._aggregate import Aggregator, WeightedMean
from fedloom.strategy._mechanism import PlainRound, RoundMechanism
from fedloom.strategy._optimizer import ServerAdaptive, ServerOptimizer, ServerSGD
from fedloom.strategy._robust import Bulyan, Krum, Median, MultiKrum, TrimmedMean
from fedloom.strategy._sampler import AllClients, Sampler
from fedloom.strategy._scaffold import ScaffoldRound

__all__ = ["STRATEGIES", "STRATEGY_OPTIONS", "Strategy", "fedavg", "make_strategy"]


@dataclass(frozen=True)
class Strategy:
    """How a federation trains: who takes part, what they are told, how updates combine.

    Attributes
    ----------
    name
        A label for histories and logs.
    sampler
        Chooses each round's clients.
    aggregator
        Combines the round's updates.
    optimizer
        Applies the combined update to the global model.
    client_config
        Extra settings sent to every client with its instructions (FedProx's ``mu``, say).
    mechanism
        The round's request/reply phases (one for plain training).
    straggler_policy
        What to do with a straggler's partial work (fewer local epochs than asked):
        ``"drop"`` it, as FedAvg does in the FedProx paper, or ``"keep"`` it, as FedProx does.
    """

    name: str
    sampler: Sampler = field(default_factory=AllClients)
    aggregator: Aggregator = field(default_factory=WeightedMean)
    optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    client_config: Config = field(default_factory=dict)
    mechanism: RoundMechanism = field(default_factory=PlainRound)
    straggler_policy: Literal["drop", "keep"] = "drop"


def _sampler(sampler: Sampler | None) -> Sampler:
    return sampler if sampler is not None else AllClients()


def fedavg(sampler: Sampler | None = None, *, server_lr: float = 1.0) -> Strategy:
    """Federated averaging (McMahan et al., 2017).

    The example-weighted mean of the clients' updates, applied with server SGD; with
    ``server_lr=1.0`` the new global model is the weighted mean of the clients' models.
    """
    return Strategy("fedavg", _sampler(sampler), WeightedMean(), ServerSGD(server_lr))


def fedavgm(
    sampler: Sampler | None = None, *, server_lr: float = 1.0, server_momentum: float = 0.9
) -> Strategy:
    """FedAvg with server momentum (Hsu et al., 2019): ``v ← βv + Δ; θ ← θ + lr·v``."""
    optimizer = ServerSGD(server_lr, server_momentum)
    return Strategy("fedavgm", _sampler(sampler), WeightedMean(), optimizer)


def fedprox(
    sampler: Sampler | None = None, *, mu: float = 0.01, server_lr: float = 1.0
) -> Strategy:
    """FedProx (Li et al., 2020): each client minimises its loss plus ``mu/2·‖w - w_t‖²``.

    Stragglers' partial work is kept, as in the paper.
    """
    if not mu >= 0:
        raise ConfigError(f"--mu must be at least 0, got {mu}")
    return Strategy(
        "fedprox",
        _sampler(sampler),
        WeightedMean(),
        ServerSGD(server_lr),
        client_config={"mu": mu},
        straggler_policy="keep",
    )


def _fedopt(rule: Literal["adam", "yogi", "adagrad"]) -> Callable[..., Strategy]:
    def preset(
        sampler: Sampler | None = None,
        *,
        server_lr: float = 0.01,
        beta1: float = 0.9,
        beta2: float = 0.99,
        tau: float = 1e-3,
    ) -> Strategy:
        optimizer = ServerAdaptive(rule, server_lr, beta1, beta2, tau)
        return Strategy(f"fed{rule}", _sampler(sampler), WeightedMean(), optimizer)

    preset.__name__ = f"fed{rule}"
    preset.__doc__ = (
        f"Fed{rule.capitalize()} (Reddi et al., 2021): the weighted mean of the updates, applied "
        f"with the server optimizer {rule} (learning rate, β1, β2 and adaptivity τ)."
    )
    return preset


fedadam = _fedopt("adam")
fedyogi = _fedopt("yogi")
fedadagrad = _fedopt("adagrad")


def scaffold(sampler: Sampler | None = None, *, server_lr: float = 1.0) -> Strategy:
    """SCAFFOLD (Karimireddy et al., 2020), option II control variates.

    Clients correct every local step by ``c - c_i``; the server keeps ``c``. Updates are averaged
    by example count (the paper averages them unweighted; with equal-sized clients they agree).
    """
    return Strategy(
        "scaffold",
        _sampler(sampler),
        WeightedMean(),
        ServerSGD(server_lr),
        mechanism=ScaffoldRound(),
    )


def median(sampler: Sampler | None = None, *, server_lr: float = 1.0) -> Strategy:
    """Coordinate-wise median of the updates (Yin et al., 2018)."""
    return Strategy("median", _sampler(sampler), Median(), ServerSGD(server_lr))


def trimmed_mean(
    sampler: Sampler | None = None, *, trim: float = 0.1, server_lr: float = 1.0
) -> Strategy:
    """Coordinate-wise trimmed mean: drop the ``trim`` fraction at each end (Yin et al., 2018)."""
    return Strategy("trimmed-mean", _sampler(sampler), TrimmedMean(trim), ServerSGD(server_lr))


def krum(sampler: Sampler | None = None, *, byzantine: int = 0, server_lr: float = 1.0) -> Strategy:
    """Krum (Blanchard et al., 2017): the update closest to its n - f - 2 nearest neighbours."""
    return Strategy("krum", _sampler(sampler), Krum(byzantine), ServerSGD(server_lr))


def multi_krum(
    sampler: Sampler | None = None,
    *,
    byzantine: int = 0,
    krum_m: int | None = None,
    server_lr: float = 1.0,
) -> Strategy:
    """Multi-Krum (Blanchard et al., 2017): the mean of the m best-scored updates (m = n - f)."""
    return Strategy(
        "multi-krum", _sampler(sampler), MultiKrum(byzantine, krum_m), ServerSGD(server_lr)
    )


def bulyan(
    sampler: Sampler | None = None, *, byzantine: int = 0, server_lr: float = 1.0
) -> Strategy:
    """Bulyan (El Mhamdi et al., 2018): Krum selection, then a trimmed mean around the median."""
    return Strategy("bulyan", _sampler(sampler), Bulyan(byzantine), ServerSGD(server_lr))


STRATEGIES: Mapping[str, Callable[..., Strategy]] = {
    "fedavg": fedavg,
    "fedavgm": fedavgm,
    "fedprox": fedprox,
    "fedadam": fedadam,
    "fedyogi": fedyogi,
    "fedadagrad": fedadagrad,
    "scaffold": scaffold,
    "median": median,
    "trimmed-mean": trimmed_mean,
    "krum": krum,
    "multi-krum": multi_krum,
    "bulyan": bulyan,
}
"""Strategy presets by name, as ``--strategy`` accepts them."""

STRATEGY_OPTIONS: Mapping[str, tuple[str, ...]] = {
    name: tuple(p for p in inspect.signature(factory).parameters if p != "sampler")
    for name, factory in STRATEGIES.items()
}
"""The hyperparameters each preset takes, by name (``server_lr``, ``mu``, ...)."""


def make_strategy(name: str, sampler: Sampler | None = None, **options: float | None) -> Strategy:
    """The preset ``name`` with its hyperparameters; options left ``None`` take the defaults.

    Raises
    ------
    ConfigError
        For an unknown name, or an option the preset does not take.
    """
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of: {', '.join(STRATEGIES)}"
        ) from None
    given = {k: v for k, v in options.items() if v is not None}
    extra = sorted(set(given) - set(STRATEGY_OPTIONS[name]))
    if extra:
        takers = sorted(n for n, opts in STRATEGY_OPTIONS.items() if extra[0] in opts)
        flag = "--" + extra[0].replace("_", "-")
        where = f"it applies to: {', '.join(takers)}" if takers else "no strategy takes it"
        raise ConfigError(f"strategy {name!r} does not take {flag}; {where}")
    return factory(sampler, **given)
