"""A strategy is a composition of small pieces; presets name the compositions from the papers."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from fedloom.errors import ConfigError
from fedloom.messages import Config
from fedloom.strategy._aggregate import Aggregator, WeightedMean
from fedloom.strategy._mechanism import PlainRound, RoundMechanism
from fedloom.strategy._optimizer import ServerOptimizer, ServerSGD
from fedloom.strategy._sampler import AllClients, Sampler

__all__ = ["STRATEGIES", "Strategy", "fedavg", "make_strategy"]


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
    """

    name: str
    sampler: Sampler = field(default_factory=AllClients)
    aggregator: Aggregator = field(default_factory=WeightedMean)
    optimizer: ServerOptimizer = field(default_factory=ServerSGD)
    client_config: Config = field(default_factory=dict)
    mechanism: RoundMechanism = field(default_factory=PlainRound)


def fedavg(sampler: Sampler | None = None, *, server_lr: float = 1.0) -> Strategy:
    """Federated averaging (McMahan et al., 2017).

    The example-weighted mean of the clients' updates, applied with server SGD; with
    ``server_lr=1.0`` the new global model is the weighted mean of the clients' models.
    """
    return Strategy(
        name="fedavg",
        sampler=sampler if sampler is not None else AllClients(),
        aggregator=WeightedMean(),
        optimizer=ServerSGD(server_lr),
    )


STRATEGIES: Mapping[str, Callable[..., Strategy]] = {"fedavg": fedavg}
"""Strategy presets by name, as ``--strategy`` accepts them."""


def make_strategy(name: str, sampler: Sampler | None = None, **options: float) -> Strategy:
    """The preset ``name`` with its hyperparameters; a clear error for an unknown name."""
    try:
        factory = STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown strategy {name!r}; choose one of: {', '.join(sorted(STRATEGIES))}"
        ) from None
    try:
        return factory(sampler, **options)
    except TypeError as exc:
        raise ConfigError(f"strategy {name!r} does not take these options: {exc}") from None
