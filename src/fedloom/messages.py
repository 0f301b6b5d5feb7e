"""The typed records that flow between the server, the fleet and the clients.

Arrays, metrics and config stay apart: a message carries at most one parameter vector, a mapping
of scalar config or float metrics, and a mapping of opaque byte payloads for protocols (key
exchange, secret shares) that need them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from fedloom.params import Vector

__all__ = [
    "ClientUpdate",
    "Config",
    "Instruction",
    "Metrics",
    "Reply",
    "RoundRecord",
    "Scalar",
]

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

    ``weight`` is the number of examples by default; privacy mechanisms may bound it.
    """

    client_id: str
    vector: Vector
    weight: float
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
