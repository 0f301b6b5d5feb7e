"""The trainer protocol: what a client needs from a machine-learning framework."""

from __future__ import annotations

import zlib
from typing import Protocol

import numpy as np

from fedloom.data import ArrayData
from fedloom.errors import ConfigError
from fedloom.messages import Config, EvalResult, FitResult, setting
from fedloom.params import ParamSpec, Vector

__all__ = [
    "CorrectableTrainer",
    "Trainer",
    "client_seed",
    "proximal_mu",
]


class Trainer(Protocol):
    """Trains and evaluates one model architecture, starting from a given parameter vector.

    A trainer owns no federated state: every call gets the parameters to start from, so one
    trainer (and one model object) serves every client a worker simulates.

    ``fit`` reads ``lr``, ``local_epochs`` and ``batch_size`` from ``config`` when present, and
    ``mu``: FedProx's proximal term ``mu/2 * ||w - parameters||^2`` added to the local objective.
    """

    @property
    def spec(self) -> ParamSpec:
        """The names, shapes and dtypes of the model's parameters."""
        ...

    def init_parameters(self, seed: int) -> Vector:
        """A freshly initialised model, packed; the same seed gives the same vector."""
        ...

    def fit(self, parameters: Vector, data: ArrayData, config: Config, seed: int) -> FitResult:
        """Train from ``parameters`` on ``data``; ``config`` may override lr, epochs, batch."""
        ...

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        """Loss and accuracy of ``parameters`` on ``data``."""
        ...


class CorrectableTrainer(Trainer, Protocol):
    """A trainer whose local steps can take a fixed gradient correction: SCAFFOLD's ``c - c_i``.

    Each local step descends along ``gradient + correction`` (``correction`` is a packed vector
    like the parameters), and :class:`FitResult` reports ``steps`` and ``lr``. The built-in
    trainers are correctable.
    """

    def fit(
        self,
        parameters: Vector,
        data: ArrayData,
        config: Config,
        seed: int,
        correction: Vector | None = None,
    ) -> FitResult:
        """Train as :meth:`Trainer.fit`, adding ``correction`` to every step's gradient."""
        ...


def proximal_mu(config: Config) -> float:
    """FedProx's ``mu`` from a client config: 0 when absent; a clear error when negative."""
    mu = setting(config, "mu", 0.0, float)
    if mu < 0:
        raise ConfigError(f"client setting 'mu' must be at least 0, got {mu}")
    return mu


def client_seed(run_seed: int, round: int, client_id: str) -> int:
    """A seed for one client's work in one round, the same in every process and on every run."""
    entropy = [run_seed & 0xFFFFFFFF, round, zlib.crc32(client_id.encode())]
    return int(np.random.SeedSequence(entropy).generate_state(1)[0])
