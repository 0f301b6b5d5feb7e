"""Local (record-level) differential privacy: DP-SGD inside each client's training, with Opacus.

Each step of a client's training draws a Poisson batch (every example joins independently with
probability q = B/n, for batch size B and n examples; q = 1 when B >= n), computes per-example
gradients (Opacus ``GradSampleModule``), clips each to L2 norm C, sums them and adds Gaussian
noise of standard deviation z·C (Opacus ``DPOptimizer``), and divides by the expected batch size
q·n. FedProx's proximal term and SCAFFOLD's correction are added after the noise: they depend on
the data only through earlier noisy steps, so they cost no privacy.

The guarantee covers one *record* of one client, with that client's own (epsilon, delta): whoever
sees everything the client sends, every round, can become at most e^epsilon times surer (either
way) whether one of its records was used, except with probability delta. The analysis is the
Poisson-sampled Gaussian mechanism (add-or-remove-one record), composed over every DP-SGD step the
client has taken, by dp-accounting's RDP accountant; it holds only because batches really are
Poisson-sampled. The client's example count n is treated as public (FedAvg sends it as the update's
weight), and the training loss is not reported, as it is computed from the records without noise.

The batches and the noise come from the operating system's random source, never from the fit's
seed: that seed comes from the server, which could otherwise regenerate the noise and the batches
and undo the protection. So runs with local DP are not bit-for-bit reproducible.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import warnings
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import numpy as np

from fedloom.errors import ConfigError
from fedloom.messages import Config, setting
from fedloom.privacy._accountant import Mechanism, PrivacyLedger

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = [
    "BATCH_METRIC",
    "CLIP_KEY",
    "DELTA_KEY",
    "DPSGD",
    "EPSILON_METRIC",
    "NOISE_KEY",
    "STEPS_METRIC",
    "LocalDP",
    "StepCount",
]

NOISE_KEY = "local_dp_noise"
"""Client-config key of the noise multiplier z; its presence turns local DP on."""
CLIP_KEY = "local_dp_clip"
"""Client-config key of the per-example clip norm C (1.0 when absent)."""
DELTA_KEY = "local_dp_delta"
"""Client-config key of the delta that epsilon is reported at (1e-5 when absent)."""
STEPS_METRIC = "local_dp_steps"
"""Fit metric: the DP-SGD steps of this fit."""
BATCH_METRIC = "local_dp_batch"
"""Fit metric: the expected batch size q·n of this fit's Poisson sampling."""
EPSILON_METRIC = "local_epsilon"
"""Fit metric: the client's record-level epsilon after all its steps so far."""


@dataclasses.dataclass(frozen=True)
class LocalDP:
    """DP-SGD settings of one client: noise multiplier, per-example clip norm, delta.

    Parameters
    ----------
    noise_multiplier
        z: the noise standard deviation divided by ``max_grad_norm``; positive.
    max_grad_norm
        C: each example's gradient is clipped to this L2 norm; positive.
    delta
        The delta that epsilon is reported at; below 1/n for a client of n examples.
    """

    noise_multiplier: float
    max_grad_norm: float = 1.0
    delta: float = 1e-5

    def __post_init__(self) -> None:
        z, c = self.noise_multiplier, self.max_grad_norm
        if not (math.isfinite(z) and z > 0):
            raise ConfigError(
                f"--local-dp-noise must be positive, got {z}: DP-SGD without noise protects "
                "nothing (0.5 to 2 is usual)"
            )
        if not (math.isfinite(c) and c > 0):
            raise ConfigError(f"--local-dp-clip must be positive, got {c}")
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"--local-dp-delta must be in (0, 1), got {self.delta}")

    @classmethod
    def from_config(cls, config: Config) -> LocalDP | None:
        """The settings a client config asks for; ``None`` when it does not ask for local DP."""
        if NOISE_KEY not in config:
            extra = [k for k in (CLIP_KEY, DELTA_KEY) if k in config]
            if extra:
                raise ConfigError(f"client setting {extra[0]!r} needs {NOISE_KEY!r}")
            return None
        return cls(
            setting(config, NOISE_KEY, 0.0, float),
            setting(config, CLIP_KEY, 1.0, float),
            setting(config, DELTA_KEY, 1e-5, float),
        )

    def check_delta(self, num_examples: int) -> None:
        """Refuse a delta at or above 1/``num_examples``: it would allow leaking a record."""
        if num_examples and not self.delta < 1.0 / num_examples:
            raise ConfigError(
                f"--local-dp-delta {self.delta} must be below 1/{num_examples} for a client of "
                f"{num_examples} examples: at or above it, DP allows releasing one record "
                f"outright; use e.g. {num_examples**-1.1:.3g}"
            )


class DPSGD:
    """One fit's DP-SGD on ``model``: Poisson batches, per-example clipping and noise.

    A context manager: on entry the model gets Opacus's per-example gradient hooks, on exit they
    are removed (one model object serves every client). Use :attr:`optimizer` for every step and
    :meth:`batches` for the batch indices.

    Parameters
    ----------
    settings
        z, C (delta is not used here).
    model
        The model to train, in training mode; refused if Opacus cannot compute its per-example
        gradients (batch norm, say).
    optimizer
        The optimizer that applies the privatized gradient.
    num_examples, batch_size
        n and B: each example joins each batch with probability q = min(B/n, 1).
    seed
        Unused for the batches and the noise, which must stay secret from the server; they are
        drawn from the operating system's random source (kept for the trainer's call).
    after_noise
        Called after the noise is added and before the optimizer steps (FedProx, SCAFFOLD).
    """

    def __init__(
        self,
        settings: LocalDP,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        num_examples: int,
        batch_size: int,
        seed: int,
        after_noise: Callable[[], None] | None = None,
    ) -> None:
        import torch
        from opacus.optimizers import DPOptimizer
        from opacus.validators import ModuleValidator

        if num_examples < 1:
            raise ConfigError("DP-SGD needs at least one example")
        errors = ModuleValidator.validate(model, strict=False)
        if errors:
            raise ConfigError(
                "local DP cannot compute this model's per-example gradients: "
                + "; ".join(str(e) for e in errors)
                + " (replace batch norm with group norm, as opacus.validators.ModuleValidator.fix"
                " does)"
            )
        self.num_examples = num_examples
        self.expected_batch = min(batch_size, num_examples)
        self.sample_rate = self.expected_batch / num_examples
        batch_seed, noise_seed = np.random.SeedSequence().generate_state(2)  # OS entropy
        self._batch_rng = torch.Generator().manual_seed(int(batch_seed))
        self._model = model
        self._hooked: Any = None
        self.optimizer = DPOptimizer(
            optimizer,
            noise_multiplier=settings.noise_multiplier,
            max_grad_norm=settings.max_grad_norm,
            expected_batch_size=self.expected_batch,
            loss_reduction="mean",
            generator=torch.Generator().manual_seed(int(noise_seed)),
        )
        if after_noise is not None:
            self.optimizer.attach_step_hook(lambda _: after_noise())
        self._warnings = warnings.catch_warnings()

    def batches(self, epochs: int) -> Iterator[torch.Tensor]:
        """Indices of each step's Poisson batch; ceil(n/B) steps per epoch (may be empty)."""
        import torch
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        steps = epochs * math.ceil(self.num_examples / self.expected_batch)
        sampler = UniformWithReplacementSampler(
            num_samples=self.num_examples,
            sample_rate=self.sample_rate,
            generator=self._batch_rng,
            steps=steps,
        )
        for indices in sampler:
            yield torch.tensor(indices, dtype=torch.int64)

    def __enter__(self) -> DPSGD:
        from opacus import GradSampleModule

        self._hooked = GradSampleModule(self._model, batch_first=True, loss_reduction="mean")
        self._warnings.__enter__()
        # Opacus's backward hooks on a first layer whose input needs no gradient; harmless
        warnings.filterwarnings("ignore", "Full backward hook is firing", UserWarning)
        return self

    def __exit__(self, *exc: object) -> None:
        self._hooked._close()
        self._warnings.__exit__(None, None, None)  # restores the filters, whatever happened


@dataclasses.dataclass(frozen=True)
class StepCount:
    """What one client's DP-SGD has spent: its steps so far, all with the same mechanism.

    Attributes
    ----------
    noise_multiplier
        z of every step.
    examples
        n: the client's examples.
    batch
        The expected batch size q·n = min(B, n); the sampling rate is ``batch / examples``.
    steps
        DP-SGD steps taken, over all rounds.
    """

    noise_multiplier: float
    examples: int
    batch: int
    steps: int = 0

    def epsilon(self, delta: float) -> float:
        """The client's record-level epsilon at ``delta`` after its steps.

        ``steps`` Poisson-sampled Gaussian steps (:class:`fedloom.privacy.Mechanism` with
        ``"poisson"`` sampling, add-or-remove-one record) composed by dp-accounting's RDP
        accountant, through a :class:`fedloom.privacy.PrivacyLedger` kept per mechanism: one
        step's RDP curve is computed once per client and scaled by the step count.

        Examples
        --------
        >>> round(StepCount(1.1, 60_000, 256, steps=10 * 235).epsilon(delta=1e-5), 2)
        1.1
        """
        if not self.steps:
            return 0.0
        return _ledger(self.noise_multiplier, self.examples, self.batch, delta).spent(self.steps)


@functools.lru_cache(maxsize=4096)
def _ledger(noise_multiplier: float, examples: int, batch: int, delta: float) -> PrivacyLedger:
    return PrivacyLedger(Mechanism(noise_multiplier, "poisson", examples, batch), delta, "rdp")
