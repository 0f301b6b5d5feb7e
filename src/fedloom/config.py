"""The settings of a simulation, validated once, from flags, a TOML file, or Python."""

from __future__ import annotations

import dataclasses
import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, get_type_hints

from fedloom.errors import ConfigError
from fedloom.strategy import UpdateBounds

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib  # type: ignore[import-not-found, unused-ignore]

__all__ = ["BUILTIN_MODEL_SGD", "LocalSGD", "SimulationConfig", "load_toml"]


@dataclass(frozen=True)
class LocalSGD:
    """A client's local SGD: learning rate, epochs per round, batch size."""

    lr: float
    local_epochs: int
    batch_size: int


BUILTIN_MODEL_SGD = LocalSGD(lr=0.05, local_epochs=5, batch_size=10)
"""Local SGD of the built-in models when the settings leave it unset: E = 5 and B = 10 as in
McMahan et al. (2017)."""


@dataclass(frozen=True)
class SimulationConfig:
    """Everything ``fedloom simulate`` needs; the TOML file and the flags use the same names.

    Attributes
    ----------
    dataset
        A dataset spec: ``digits``, ``breast_cancer``, ``wine``, ``synthetic:ALPHA,BETA``,
        ``mnist:PATH``, ``heart:PATH`` or ``leaf:PATH``.
    model
        ``mlp``, ``cnn`` or ``logreg``.
    clients
        Number of clients; ``None`` means the dataset's default (100, or its natural count).
    rounds
        Number of rounds, at least 1.
    fraction, clients_per_round
        Clients sampled per round, as a fraction in (0, 1] or a count; neither means all.
    local_epochs, batch_size, lr, momentum
        Each client's local SGD. ``None`` leaves the trainer's own default (for the built-in
        models, :data:`BUILTIN_MODEL_SGD`: lr 0.05, 5 epochs, batch 10); a value is sent to
        every client each round.
        ``momentum`` configures the built-in models' SGD only.
    partition
        ``iid``, ``dirichlet:ALPHA``, ``shards:K``, ``quantity:SIGMA`` or ``natural``; ``None``
        means ``natural`` where the dataset has a natural split, else ``iid``.
    strategy
        The strategy preset (``fedavg``, ``fedprox``, ``fedadam``, ``krum``, ...).
    server_lr, server_momentum, mu, beta1, beta2, tau, trim, byzantine, krum_m
        The preset's hyperparameters; ``None`` takes the preset's default, and setting one the
        preset does not take is an error. ``server_momentum`` is FedAvgM's β, ``mu`` FedProx's
        proximal weight, ``beta1``/``beta2``/``tau`` the FedOpt moments and adaptivity,
        ``trim`` the trimmed mean's fraction cut at each end, ``byzantine`` the number of
        attackers f that Krum, Multi-Krum and Bulyan tolerate, ``krum_m`` Multi-Krum's m.
    stragglers, straggler_policy
        The fraction of each round's clients that can run only 1 to E local epochs (chosen at
        random), and whether their partial work is kept or dropped (``None``: the strategy's
        policy, ``keep`` for fedprox and ``drop`` otherwise, as in the FedProx paper).
    dropout
        The fraction of each round's clients that never answer.
    attack, attack_scale
        ``KIND:FRACTION`` makes that fraction of clients malicious for the whole run
        (``sign-flip``, ``gaussian``, ``label-flip`` or ``scale``); ``attack_scale`` is the
        attack's k (``None``: the kind's default).
    seed
        Seeds sampling, data splits, initialisation and local training.
    local_test_fraction, test_fraction
        Each client's local test share (federated evaluation runs when it is above 0) and the
        central test share for datasets without a natural split.
    central_test_rows
        The most rows of a generated population's central test set (``synthetic``: the local
        test rows of clients 0, 1, 2, ... until this many).
    min_clients
        A round fails unless at least this many clients send acceptable updates.
    max_examples, update_norm_multiple, max_update_norm
        What one client's update may weigh where the server sees the updates one by one (not
        under secure aggregation, whose encoding bounds them instead): a reply claiming more
        than ``max_examples`` examples (2^32) is weighed as that many; an update whose L2 norm
        is more than ``update_norm_multiple`` (10; 0 turns it off) times the round's median
        norm, or above ``max_update_norm`` (``None``: no absolute bound), is refused.
    stop_at_accuracy
        End the run after the first round whose central test accuracy reaches this.
    secure_aggregation
        ``secagg`` (every client masks with every other) or ``secagg+`` (with a random
        neighbourhood of ``secagg_degree`` clients, O(log n) by default); ``None``: off.
    secagg_threshold, secagg_degree, secagg_clip, secagg_bits, secagg_modulus_bits, \
secagg_weight_bound
        The protocol's settings (:class:`fedloom.secagg.SecAggSettings`); ``None`` takes its
        defaults.
    dp, clip_norm, noise_multiplier, adaptive_clipping, target_quantile, clip_lr
        ``central``: DP-FedAvg, each update clipped to L2 norm ``clip_norm`` (1.0) and Gaussian
        noise of ``noise_multiplier`` times it added to the sum on the server. ``distributed``
        (with ``secure_aggregation``): each client clips, encodes and adds discrete Gaussian
        noise itself, so that the clients a round needs add ``noise_multiplier`` times the
        sensitivity between them, and the server sees only the noised sum. With
        ``adaptive_clipping`` the clip norm tracks the ``target_quantile`` (0.5) of update
        norms at rate ``clip_lr`` (0.2).
    delta, target_epsilon, accountant
        The accountant (``rdp`` or ``pld``, from dp-accounting) reports epsilon at ``delta``
        (default 1/N^1.1 for N clients) after every round; the run stops before a round that
        would take it past ``target_epsilon``.
    local_dp_noise, local_dp_clip, local_dp_delta
        Local (record-level) DP: each client trains with DP-SGD, every example's gradient
        clipped to L2 norm ``local_dp_clip`` (1.0) and Gaussian noise of ``local_dp_noise``
        times it added to each Poisson-sampled batch; each client reports its own epsilon at
        ``local_dp_delta`` (1e-5, below 1/n for a client of n examples). PyTorch models only.
    workers
        Simulation only: train each round's clients on this many worker processes (``"auto"``:
        one per core this process may use), or Ray actors; the model is the same as with 1.
    engine, ray_address, worker_cpus, worker_gpus
        ``local`` (this machine) or ``ray``: the workers are Ray actors, on a cluster at
        ``ray_address`` (``None``: a local Ray instance started for the run), each reserving
        ``worker_cpus`` CPUs (1) and ``worker_gpus`` GPUs (0).
    out
        Folder for ``history.json``, ``model.npz`` and ``config.toml``; ``None`` writes nothing.
    """

    dataset: str = "digits"
    model: str = "mlp"
    clients: int | None = None
    rounds: int = 20
    fraction: float | None = None
    clients_per_round: int | None = None
    local_epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    momentum: float = 0.0
    partition: str | None = None
    strategy: str = "fedavg"
    server_lr: float | None = None
    server_momentum: float | None = None
    mu: float | None = None
    beta1: float | None = None
    beta2: float | None = None
    tau: float | None = None
    trim: float | None = None
    byzantine: int | None = None
    krum_m: int | None = None
    stragglers: float = 0.0
    straggler_policy: str | None = None
    dropout: float = 0.0
    attack: str | None = None
    attack_scale: float | None = None
    seed: int = 0
    local_test_fraction: float = 0.0
    test_fraction: float = 0.2
    central_test_rows: int = 10_000
    min_clients: int = 1
    max_examples: int = 1 << 32
    update_norm_multiple: float = 10.0
    max_update_norm: float | None = None
    stop_at_accuracy: float | None = None
    secure_aggregation: str | None = None
    secagg_threshold: float | None = None
    secagg_degree: int | None = None
    secagg_clip: float | None = None
    secagg_bits: int | None = None
    secagg_modulus_bits: int | None = None
    secagg_weight_bound: int | None = None
    dp: str | None = None
    clip_norm: float | None = None
    noise_multiplier: float | None = None
    adaptive_clipping: bool = False
    target_quantile: float | None = None
    clip_lr: float | None = None
    delta: float | None = None
    target_epsilon: float | None = None
    accountant: str = "rdp"
    local_dp_noise: float | None = None
    local_dp_clip: float | None = None
    local_dp_delta: float | None = None
    workers: int = 1
    engine: str = "local"
    ray_address: str | None = None
    worker_cpus: float | None = None
    worker_gpus: float | None = None
    out: str | None = None

    def __post_init__(self) -> None:
        if self.workers == "auto":  # type: ignore[comparison-overlap]  # from TOML or the CLI
            object.__setattr__(self, "workers", available_cores())
        _check_types(self)
        positive = {
            "rounds": self.rounds,
            "local_epochs": self.local_epochs,
            "batch_size": self.batch_size,
            "min_clients": self.min_clients,
        }
        for name, value in positive.items():
            if value is not None and value < 1:
                raise ConfigError(f"{_flag(name)} must be at least 1, got {value}")
        if self.stop_at_accuracy is not None and not 0.0 < self.stop_at_accuracy <= 1.0:
            raise ConfigError(f"--stop-at-accuracy must be in (0, 1], got {self.stop_at_accuracy}")
        if self.secure_aggregation not in (None, "secagg", "secagg+"):
            raise ConfigError(
                f"--secure-aggregation must be secagg or secagg+, got {self.secure_aggregation!r}"
            )
        secagg_set = [k for k in SECAGG_SETTINGS if getattr(self, k) is not None]
        if secagg_set and self.secure_aggregation is None:
            raise ConfigError(f"{_flag(secagg_set[0])} needs --secure-aggregation secagg|secagg+")
        if self.dp not in (None, "central", "distributed"):
            raise ConfigError(f"--dp must be central or distributed, got {self.dp!r}")
        dp_set = [k for k in DP_SETTINGS if getattr(self, k) not in (None, False)]
        if dp_set and self.dp is None:
            raise ConfigError(f"{_flag(dp_set[0])} needs --dp central or --dp distributed")
        if self.dp is not None and self.noise_multiplier is None:
            raise ConfigError(f"--dp {self.dp} needs --noise-multiplier (0 for clipping alone)")
        if self.dp == "distributed":
            _check_distributed_dp(self)
        if self.accountant not in ("rdp", "pld"):
            raise ConfigError(f"--accountant must be rdp or pld, got {self.accountant!r}")
        _check_local_dp(self)
        if self.seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {self.seed}")
        if self.clients is not None and self.clients < 1:
            raise ConfigError(f"--clients must be at least 1, got {self.clients}")
        if self.clients_per_round is not None and self.clients_per_round < 1:
            raise ConfigError(
                f"--clients-per-round must be at least 1, got {self.clients_per_round}"
            )
        if self.fraction is not None and not 0.0 < self.fraction <= 1.0:
            raise ConfigError(f"--fraction must be in (0, 1], got {self.fraction}")
        if self.fraction is not None and self.clients_per_round is not None:
            raise ConfigError("give --fraction or --clients-per-round, not both")
        if self.lr is not None and not (self.lr > 0 and math.isfinite(self.lr)):
            raise ConfigError(f"--lr must be positive and finite, got {self.lr}")
        for name in _FINITE:
            value = getattr(self, name)
            if isinstance(value, float) and not math.isfinite(value):
                raise ConfigError(f"{_flag(name)} must be a finite number, got {value}")
        if self.out is not None and not self.out.strip():
            raise ConfigError("--out must name a folder; leave it unset to write nothing")
        for name in ("stragglers", "dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(f"{_flag(name)} must be in [0, 1), got {getattr(self, name)}")
        if self.straggler_policy not in (None, "drop", "keep"):
            raise ConfigError(
                f"--straggler-policy must be drop or keep, got {self.straggler_policy!r}"
            )
        if not 0.0 <= self.momentum < 1.0:
            raise ConfigError(f"--momentum must be in [0, 1), got {self.momentum}")
        if not 0.0 <= self.local_test_fraction < 1.0:
            raise ConfigError(
                f"--local-test-fraction must be in [0, 1), got {self.local_test_fraction}"
            )
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"--test-fraction must be in (0, 1), got {self.test_fraction}")
        if self.central_test_rows < 1:
            raise ConfigError(
                f"--central-test-rows must be at least 1, got {self.central_test_rows}"
            )
        if self.workers < 1:
            raise ConfigError(f"--workers must be at least 1, or auto, got {self.workers}")
        if not 1 <= self.max_examples <= 1 << 53:
            raise ConfigError(
                f"--max-examples must be from 1 to 2^53 (float64 sums of weights are exact up "
                f"to there), got {self.max_examples}"
            )
        multiple = self.update_norm_multiple
        if multiple != 0 and not multiple >= 1:
            raise ConfigError(
                f"--update-norm-multiple must be at least 1 (or 0 for no screen), got {multiple}: "
                "below 1 it would refuse the round's median update itself"
            )
        if self.max_update_norm is not None and not self.max_update_norm > 0:
            raise ConfigError(f"--max-update-norm must be positive, got {self.max_update_norm}")
        if self.engine not in ("local", "ray"):
            raise ConfigError(f"--engine must be local or ray, got {self.engine!r}")
        ray_set = [k for k in ("ray_address", "worker_cpus", "worker_gpus") if getattr(self, k)]
        if ray_set and self.engine != "ray":
            raise ConfigError(f"{_flag(ray_set[0])} needs --engine ray")

    def client_config(self) -> dict[str, float | int]:
        """The settings sent to every client each round: the seed and any local SGD setting."""
        sent: dict[str, float | int] = {"seed": self.seed}
        for key in ("lr", "local_epochs", "batch_size"):
            value = getattr(self, key)
            if value is not None:
                sent[key] = value
        if self.local_dp_noise is not None:
            sent["local_dp_noise"] = self.local_dp_noise
            sent["local_dp_clip"] = self.local_dp_clip if self.local_dp_clip is not None else 1.0
            delta = self.local_dp_delta
            sent["local_dp_delta"] = delta if delta is not None else 1e-5
        return sent

    def update_bounds(self) -> UpdateBounds:
        """What one client's update may weigh (:class:`fedloom.strategy.UpdateBounds`)."""
        return UpdateBounds(
            self.max_examples, self.update_norm_multiple or None, self.max_update_norm
        )

    def strategy_options(self) -> dict[str, Any]:
        """The strategy hyperparameters that are set, for :func:`fedloom.strategy.make_strategy`."""
        return {k: getattr(self, k) for k in STRATEGY_SETTINGS if getattr(self, k) is not None}

    def replace(self, **changes: Any) -> SimulationConfig:
        """A copy with ``changes`` applied and validated."""
        unknown = sorted(set(changes) - _FIELDS)
        if unknown:
            raise ConfigError(_unknown_message(unknown))
        return dataclasses.replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a flat dict."""
        return dataclasses.asdict(self)

    def to_toml(self) -> str:
        """The settings as TOML that :func:`load_toml` reads back (unset values left out)."""
        lines = []
        for key, value in self.to_dict().items():
            if value is None:
                continue
            if isinstance(value, bool):
                text = "true" if value else "false"
            elif isinstance(value, str):
                text = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            else:
                text = repr(value)
            lines.append(f"{key} = {text}")
        return "\n".join(lines) + "\n"


_FIELDS = {f.name for f in fields(SimulationConfig)}
STRATEGY_SETTINGS = (
    "server_lr", "server_momentum", "mu", "beta1", "beta2", "tau", "trim", "byzantine", "krum_m",
)  # fmt: skip
"""The settings that are strategy hyperparameters."""
SECAGG_SETTINGS = (
    "secagg_threshold", "secagg_degree", "secagg_clip", "secagg_bits", "secagg_modulus_bits",
    "secagg_weight_bound",
)  # fmt: skip
"""The settings of secure aggregation."""
DP_SETTINGS = (
    "clip_norm", "noise_multiplier", "adaptive_clipping", "target_quantile", "clip_lr", "delta",
    "target_epsilon",
)  # fmt: skip
"""The settings of differential privacy (beside ``dp`` and ``accountant``)."""
_HINTS = get_type_hints(SimulationConfig)
_FINITE = tuple(f.name for f in fields(SimulationConfig) if "float" in str(_HINTS[f.name]))
"""The settings that are numbers: none may be NaN or infinite."""


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _unknown_message(unknown: list[str]) -> str:
    return f"unknown setting(s) {', '.join(unknown)}; known settings: {', '.join(sorted(_FIELDS))}"


def _check_local_dp(config: SimulationConfig) -> None:
    noise, clip, delta = config.local_dp_noise, config.local_dp_clip, config.local_dp_delta
    if noise is None:
        if clip is not None or delta is not None:
            flag = "--local-dp-clip" if clip is not None else "--local-dp-delta"
            raise ConfigError(f"{flag} needs --local-dp-noise")
        return
    if not noise > 0:
        raise ConfigError(
            f"--local-dp-noise must be positive, got {noise}: DP-SGD without noise protects "
            "nothing (0.5 to 2 is usual)"
        )
    if clip is not None and not clip > 0:
        raise ConfigError(f"--local-dp-clip must be positive, got {clip}")
    if delta is not None and not 0.0 < delta < 1.0:
        raise ConfigError(f"--local-dp-delta must be in (0, 1), got {delta}")


def _check_distributed_dp(config: SimulationConfig) -> None:
    if config.secure_aggregation is None:
        raise ConfigError(
            "--dp distributed has each client add its share of the noise, which protects only "
            "if the server cannot see the updates one by one; add --secure-aggregation secagg "
            "(or secagg+)"
        )
    unused = [k for k in ("secagg_clip", "secagg_bits", "secagg_weight_bound")
              if getattr(config, k) is not None]  # fmt: skip
    if unused:
        raise ConfigError(
            f"{_flag(unused[0])} does not apply under --dp distributed: each update is clipped "
            "to --clip-norm in L2 norm and scaled to fill --secagg-modulus-bits"
        )
    if config.adaptive_clipping:
        raise ConfigError(
            "--adaptive-clipping is built for --dp central only: under distributed DP its "
            "clipped-update count would need secure aggregation and noise of its own"
        )
    if config.accountant != "rdp":
        raise ConfigError(
            "--dp distributed is accounted in zCDP, which dp-accounting composes with its RDP "
            "accountant only; use --accountant rdp"
        )


def _check_types(config: SimulationConfig) -> None:
    for name in _FIELDS:
        value = getattr(config, name)
        hint = str(_HINTS[name])
        if value is None:
            if "None" not in hint:
                raise ConfigError(f"{_flag(name)} must be set")
            continue
        if _HINTS[name] is bool:
            ok = isinstance(value, bool)
        elif "int" in hint and "float" not in hint:
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif "float" in hint:
            ok = isinstance(value, int | float) and not isinstance(value, bool)
        else:
            ok = isinstance(value, str)
        if not ok:
            kind = (
                "true or false" if _HINTS[name] is bool else "a whole number" if "int" in hint
                else "a number" if "float" in hint else "text"
            )  # fmt: skip
            raise ConfigError(f"setting {name!r} must be {kind}, got {value!r}")


def load_toml(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Read a TOML settings file into a dict of known settings.

    Keys may be written with dashes or underscores; a ``[simulate]`` table, if present, is
    used instead of the top level.
    """
    file = Path(path)
    try:
        raw = tomllib.loads(file.read_text())
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    table: Mapping[str, Any] = raw.get("simulate", raw)
    if not isinstance(table, Mapping):
        raise ConfigError(f"config file {path}: [simulate] must be a table")
    settings = {str(k).replace("-", "_"): v for k, v in table.items()}
    unknown = sorted(set(settings) - _FIELDS)
    if unknown:
        raise ConfigError(f"config file {path}: " + _unknown_message(unknown))
    return settings


def available_cores() -> int:
    """The cores this process may run on (its CPU affinity where the OS has one)."""
    sched = getattr(os, "sched_getaffinity", None)
    if sched is not None:
        return max(1, len(sched(0)))
    return max(1, os.cpu_count() or 1)
