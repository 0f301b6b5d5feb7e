"""Strategies and their pieces: samplers, aggregators, server optimizers, round mechanisms."""

from fedloom.strategy._aggregate import Aggregate, Aggregator, WeightedMean
from fedloom.strategy._mechanism import (
    PlainRound,
    RoundContext,
    RoundMechanism,
    RoundOutcome,
    RoundSteps,
)
from fedloom.strategy._optimizer import ServerOptimizer, ServerSGD
from fedloom.strategy._sampler import AllClients, CountSampler, FractionSampler, Sampler
from fedloom.strategy._strategy import STRATEGIES, Strategy, fedavg, make_strategy

__all__ = [
    "STRATEGIES",
    "Aggregate",
    "Aggregator",
    "AllClients",
    "CountSampler",
    "FractionSampler",
    "PlainRound",
    "RoundContext",
    "RoundMechanism",
    "RoundOutcome",
    "RoundSteps",
    "Sampler",
    "ServerOptimizer",
    "ServerSGD",
    "Strategy",
    "WeightedMean",
    "fedavg",
    "make_strategy",
]
