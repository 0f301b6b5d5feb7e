"""The typed records that flow between the server, the fleet and the clients.

Arrays, metrics and config stay apart: a message carries at most one parameter vector, a mapping
of scalar config or float metrics, and a mapping of opaque byte payloads for protocols (key
exchange, secret shares) that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.params import Vector

__all__ = [
    "REFUSED",
    "Aggregate",
    "ClientUpdate",
    "Config",
    "EvalResult",
    "FitResult",
    "Instruction",
    "Metrics",
    "Reply",
    "RoundRecord",
    "Scalar",
    "setting",
]

REFUSED = "fedloom.refused"
"""Payload key of a reply a fleet refused before the round saw it (the reason, UTF-8): the
round records the client as rejected with that reason rather than waiting for it."""

Scalar = bool | int | float | str
Config = Mapping[str, Scalar]
Metrics = Mapping[str, float]


@dataclass(frozen=True)
class Instruction:
    """What the server asks one client to do in one phase of a round.

    Attributes
    ----------
    round
        The round, counted from 1.
    phase
        The name of the request/reply exchange: ``"fit"``, ``"evaluate"``, or a phase that a
        round mechanism (secure aggregation, say) adds.
    parameters
        The global model as a flat vector, when the phase needs it.
    config
        Scalar settings for the client (learning rate, local epochs, seed, ...).
    payload
        Opaque bytes for protocol messages.
    """

    round: int
    phase: str
    parameters: Vector | None = None
    config: Config = field(default_factory=dict)
    payload: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class Reply:
    """A client's answer to one :class:`Instruction`.

    For ``"fit"`` the vector is the client's update (trained parameters minus the global model it
    was sent) and ``num_examples`` the examples it trained on; for ``"evaluate"`` there is no
    vector and ``num_examples`` counts the examples evaluated.
    """

    client_id: str
    round: int
    phase: str
    vector: Vector | None = None
    num_examples: int = 0
    metrics: Metrics = field(default_factory=dict)
    payload: Mapping[str, bytes] = field(default_factory=dict)


@dataclass(frozen=True)
class ClientUpdate:
    """One client's contribution, as an aggregator sees it.

    ``vector`` is the float32 update a client sends, unless a link of the update chain changed
    it on the way (clipped in float64, or encoded as integers mod 2^k for secure aggregation).
    ``weight`` is the number of examples by default; privacy mechanisms may bound it.
    """

    client_id: str
    vector: npt.NDArray[Any]
    weight: float
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class FitResult:
    """Trained parameters, the number of examples trained on, and training metrics.

    ``steps`` (local optimizer steps taken) and ``lr`` (the local learning rate) are what
    SCAFFOLD's control variate update needs; trainers that support SCAFFOLD report them.
    """

    parameters: Vector
    num_examples: int
    metrics: Metrics = field(default_factory=dict)
    steps: int | None = None
    lr: float | None = None


@dataclass(frozen=True)
class EvalResult:
    """Mean loss and accuracy over ``num_examples`` examples."""

    loss: float
    accuracy: float
    num_examples: int


@dataclass(frozen=True)
class Aggregate:
    """The result of aggregating one round's updates.

    ``count`` is the number of updates that went in and ``total_weight`` their summed weight
    (example counts, each capped by the round's ``max_examples``); with no updates,
    ``vector`` is all zeros and ``count`` is 0.
    ``metrics`` are what the aggregation itself reports (the next clip norm, say); they go
    into the round's record.
    """

    vector: Vector
    count: int
    total_weight: float
    metrics: Metrics = field(default_factory=dict)


@dataclass(frozen=True)
class RoundRecord:
    """What one round did, as written to ``history.json``.

    ``accuracy`` and ``loss`` are the server's centralized evaluation of the new global model;
    ``fed_accuracy`` and ``fed_loss`` the example-weighted federated evaluation on the clients'
    local test splits; ``train_loss`` the example-weighted mean of the clients' training losses.
    A value is ``None`` when that evaluation did not run. ``seconds`` is the round's wall time,
    the one field that differs between two runs with the same seed.
    """

    round: int
    clients: int
    train_loss: float | None
    accuracy: float | None
    loss: float | None
    fed_accuracy: float | None
    fed_loss: float | None
    seconds: float
    metrics: Mapping[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict."""
        out = asdict(self)
        out["metrics"] = dict(self.metrics)
        return out


def setting(config: Config, key: str, default: float, kind: type[float] | type[int]) -> float:
    """``config[key]`` as ``kind`` (int or float), ``default`` when absent; a clear error else."""
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(f"client setting {key!r} must be a number, got {value!r}")
    if kind is int and int(value) != value:
        raise ConfigError(f"client setting {key!r} must be a whole number, got {value!r}")
    return kind(value)
