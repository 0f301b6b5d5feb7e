"""Server optimizers: apply the aggregated update to the global model.

The aggregate is a pseudo-gradient pointing downhill (the mean of ``trained - global``); a server
optimizer takes a step along it. Plain SGD with learning rate 1.0 sets the global model to the
mean of the clients' models: FedAvg as McMahan et al. (2017) define it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np

from fedloom.errors import ConfigError
from fedloom.params import Vector

__all__ = ["ServerOptimizer", "ServerSGD"]


class ServerOptimizer(Protocol):
    """Updates the global model from the round's aggregate."""

    def init(self, parameters: Vector) -> Any:
        """The state before the first round."""
        ...

    def step(self, parameters: Vector, update: Vector, state: Any) -> tuple[Vector, Any]:
        """The next global model and state; ``parameters`` is not modified."""
        ...


@dataclass(frozen=True)
class ServerSGD:
    """``θ ← θ + lr · Δ``: FedAvg when ``lr`` is 1.0."""

    lr: float = 1.0

    def __post_init__(self) -> None:
        if not self.lr > 0:
            raise ConfigError(f"server learning rate must be positive, got {self.lr}")

    def init(self, parameters: Vector) -> None:
        return None

    def step(self, parameters: Vector, update: Vector, state: None) -> tuple[Vector, None]:
        if self.lr == 1.0:
            return (parameters + update).astype(np.float32, copy=False), state
        return (parameters + np.float32(self.lr) * update).astype(np.float32, copy=False), state
