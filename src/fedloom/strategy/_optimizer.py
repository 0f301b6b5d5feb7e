"""Server optimizers: apply the aggregated update to the global model.

The aggregate is a pseudo-gradient pointing downhill (the mean of ``trained - global``); a server
optimizer takes a step along it. Plain SGD with learning rate 1.0 sets the global model to the
mean of the clients' models: FedAvg as McMahan et al. (2017) define it. Momentum gives FedAvgM
(Hsu et al., 2019); Adam, Yogi and Adagrad give the FedOpt family (Reddi et al., 2021).

State is explicit: :meth:`~ServerOptimizer.init` makes it, :meth:`~ServerOptimizer.step` takes it
and returns the next one; nothing is kept on the optimizer and no input is modified.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, Protocol

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.params import Vector

__all__ = ["AdaptiveState", "ServerAdaptive", "ServerOptimizer", "ServerSGD"]

F64 = npt.NDArray[np.float64]


class ServerOptimizer(Protocol):
    """Updates the global model from the round's aggregate."""

    def init(self, parameters: Vector) -> Any:
        """The state before the first round."""
        ...

    def step(self, parameters: Vector, update: Vector, state: Any) -> tuple[Vector, Any]:
        """The next global model and state; ``parameters`` is not modified."""
        ...


def _positive(name: str, value: float) -> None:
    if not value > 0:
        raise ConfigError(f"{name} must be positive, got {value}")


def _unit_interval(name: str, value: float) -> None:
    if not 0.0 <= value < 1.0:
        raise ConfigError(f"{name} must be in [0, 1), got {value}")


@dataclass(frozen=True)
class ServerSGD:
    """``v ← β·v + Δ;  θ ← θ + lr · v``.

    With ``momentum`` β = 0 this is ``θ ← θ + lr · Δ``: FedAvg when ``lr`` is 1.0. With β > 0 it
    is FedAvgM (Hsu et al., 2019), whose effective step is about ``lr / (1 - β)``. The momentum
    buffer ``v`` starts at zero and is kept in float64.
    """

    lr: float = 1.0
    momentum: float = 0.0

    def __post_init__(self) -> None:
        _positive("--server-lr", self.lr)
        _unit_interval("--server-momentum", self.momentum)

    def init(self, parameters: Vector) -> F64 | None:
        return np.zeros(parameters.shape, np.float64) if self.momentum else None

    def step(
        self, parameters: Vector, update: Vector, state: F64 | None
    ) -> tuple[Vector, F64 | None]:
        if state is not None:
            state = self.momentum * state + update
            return (parameters + self.lr * state).astype(np.float32), state
        if self.lr == 1.0:
            return (parameters + update).astype(np.float32, copy=False), state
        return (parameters + np.float32(self.lr) * update).astype(np.float32, copy=False), state


@dataclass(frozen=True)
class AdaptiveState:
    """First and second moment estimates of the pseudo-gradient, in float64."""

    m: F64
    v: F64


@dataclass(frozen=True)
class ServerAdaptive:
    """Adaptive server optimizers of Reddi et al. (2021), Algorithm 2 ("FedOpt").

    With Δ the round's aggregate::

        m ← β1·m + (1 - β1)·Δ
        v ← v + Δ²                                   (adagrad)
        v ← v - (1 - β2)·Δ²·sign(v - Δ²)             (yogi)
        v ← β2·v + (1 - β2)·Δ²                       (adam)
        θ ← θ + lr · m / (√v + τ)

    ``m`` starts at 0 and ``v`` at τ², as in the paper; there is no bias correction (the paper
    has none). τ controls the degree of adaptivity: larger τ is closer to momentum SGD.

    Parameters
    ----------
    rule
        ``"adam"``, ``"yogi"`` or ``"adagrad"``.
    lr
        The server learning rate η (the paper tunes it; 10^-2 is a common best value).
    beta1, beta2
        Decay of the first and second moments; β2 is unused by adagrad.
    tau
        The adaptivity constant τ.
    """

    rule: Literal["adam", "yogi", "adagrad"] = "adam"
    lr: float = 0.01
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3

    def __post_init__(self) -> None:
        if self.rule not in ("adam", "yogi", "adagrad"):
            raise ConfigError(f"adaptive rule must be adam, yogi or adagrad, got {self.rule!r}")
        _positive("--server-lr", self.lr)
        _unit_interval("--beta1", self.beta1)
        _unit_interval("--beta2", self.beta2)
        _positive("--tau", self.tau)

    def init(self, parameters: Vector) -> AdaptiveState:
        shape = parameters.shape
        return AdaptiveState(np.zeros(shape, np.float64), np.full(shape, self.tau**2, np.float64))

    def step(
        self, parameters: Vector, update: Vector, state: AdaptiveState
    ) -> tuple[Vector, AdaptiveState]:
        delta = update.astype(np.float64)
        square = delta * delta
        m = self.beta1 * state.m + (1.0 - self.beta1) * delta
        if self.rule == "adagrad":
            v = state.v + square
        elif self.rule == "yogi":
            v = state.v - (1.0 - self.beta2) * square * np.sign(state.v - square)
        else:
            v = self.beta2 * state.v + (1.0 - self.beta2) * square
        new = parameters + self.lr * m / (np.sqrt(v) + self.tau)
        return new.astype(np.float32), AdaptiveState(m, v)
