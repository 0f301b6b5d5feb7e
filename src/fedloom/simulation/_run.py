"""``simulate``: a whole federated run on one machine, from settings or from the user's objects."""

from __future__ import annotations

import contextlib
import dataclasses
import math
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedloom._io import atomic_write
from fedloom.client import EvalResult, TorchTrainer, Trainer, make_trainer
from fedloom.client._local_dp import LocalDP, local_dp_app
from fedloom.config import BUILTIN_MODEL_SGD, SimulationConfig
from fedloom.data import FederatedDataset, load_dataset
from fedloom.errors import ConfigError
from fedloom.params import Vector
from fedloom.privacy import Mechanism, PrivacyLedger, check_delta
from fedloom.privacy._central import AdaptiveClipping, ClipState, DPMean
from fedloom.privacy._discrete import DistributedLedger, integer_l2_sensitivity
from fedloom.secagg import FixedPoint, SecAggRound, SecAggSettings
from fedloom.secagg._graph import secagg_plus_degree
from fedloom.secagg._protocol import DistributedNoise
from fedloom.server import Fleet, RunResult, run_rounds
from fedloom.simulation._attack import Attack, attacked_app
from fedloom.simulation._conditions import SimulatedConditions
from fedloom.simulation._fleet import InProcessFleet
from fedloom.strategy import (
    AllClients,
    CountSampler,
    FractionSampler,
    PlainRound,
    RoundOutcome,
    Sampler,
    Strategy,
    WeightedMean,
    make_strategy,
    required_updates,
    requirement,
)
from fedloom.strategy._sampler import round_half_up
from fedloom.tracking import History, ProgressBar

__all__ = ["simulate"]


def builtin_dataset(cfg: SimulationConfig) -> FederatedDataset:
    """The dataset the settings name, split and partitioned as they say."""
    return load_dataset(
        cfg.dataset,
        num_clients=cfg.clients,
        partition=cfg.partition,
        seed=cfg.seed,
        local_test_fraction=cfg.local_test_fraction,
        test_fraction=cfg.test_fraction,
    )


def builtin_trainer(cfg: SimulationConfig, ds: FederatedDataset) -> Trainer:
    """The built-in model the settings name, shaped for ``ds``, with the settings' SGD."""
    return make_trainer(
        cfg.model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        lr=cfg.lr if cfg.lr is not None else BUILTIN_MODEL_SGD.lr,
        local_epochs=cfg.local_epochs or BUILTIN_MODEL_SGD.local_epochs,
        batch_size=cfg.batch_size or BUILTIN_MODEL_SGD.batch_size,
        momentum=cfg.momentum,
    )


def sampler_for(config: SimulationConfig, num_clients: int) -> Sampler:
    """The sampler the settings ask for: a fraction, a count per round, or every client."""
    if config.clients_per_round is not None:
        if config.clients_per_round > num_clients:
            raise ConfigError(
                f"--clients-per-round {config.clients_per_round} is more than the "
                f"{num_clients} clients; use at most {num_clients}"
            )
        return CountSampler(config.clients_per_round, seed=config.seed)
    if config.fraction is not None:
        return FractionSampler(config.fraction, seed=config.seed, min_clients=config.min_clients)
    return AllClients()


def cohort_size(config: SimulationConfig, num_clients: int) -> int:
    """How many clients the settings sample each round."""
    if config.clients_per_round is not None:
        return config.clients_per_round
    if config.fraction is not None:
        return max(config.min_clients, round_half_up(config.fraction * num_clients))
    return num_clients


def _fleet(
    cfg: SimulationConfig,
    ds: FederatedDataset,
    trainer: Trainer,
    strategy: Strategy,
    *,
    cohort: int,
    custom_trainer: bool,
) -> tuple[Fleet, dict[str, Any]]:
    """The in-process fleet, with attackers, dropout and stragglers as the settings ask."""
    info: dict[str, Any] = {}
    app = local_dp_app() if cfg.local_dp_noise is not None else None
    if cfg.attack is not None:
        attack = Attack.parse(cfg.attack)
        if cfg.attack_scale is not None:
            attack = dataclasses.replace(attack, scale=cfg.attack_scale)
        ids = [str(i) for i in range(ds.num_clients)]
        malicious = attack.choose(ids, cfg.seed)
        app = attacked_app(
            attack, malicious, num_classes=ds.num_classes, cohort_size=cohort, base=app
        )
        info = {"attack": cfg.attack, "malicious_clients": list(malicious)}
    elif cfg.attack_scale is not None:
        raise ConfigError("--attack-scale needs --attack KIND:FRACTION")
    fleet: Fleet = InProcessFleet(ds, trainer, app=app)
    policy = cfg.straggler_policy or strategy.straggler_policy
    answering = cohort - round_half_up(cfg.dropout * cohort)
    if policy == "drop":
        answering -= min(answering, round_half_up(cfg.stragglers * cohort))
    needed = max(cfg.min_clients, required_updates(strategy.aggregator))
    if answering < needed:
        why = requirement(strategy.aggregator) or f"--min-clients is {cfg.min_clients}"
        raise ConfigError(
            f"each round samples {cohort} client(s) and {answering} of them answer, but "
            f"{needed} accepted updates are needed ({why}); sample more clients, or lower "
            f"--dropout, --stragglers, --byzantine or --min-clients"
        )
    return with_conditions(fleet, cfg, policy, custom_trainer=custom_trainer), info


def with_conditions(
    fleet: Fleet, cfg: SimulationConfig, policy: str, *, custom_trainer: bool = False
) -> Fleet:
    """``fleet`` behind the settings' simulated dropout and stragglers (itself without them);
    ``policy`` is the straggler policy in force (the setting's, else the strategy's)."""
    if not (cfg.dropout or cfg.stragglers):
        return fleet
    epochs = cfg.local_epochs
    if epochs is None and not custom_trainer:
        epochs = BUILTIN_MODEL_SGD.local_epochs
    if cfg.stragglers and epochs is None:
        raise ConfigError(
            "--stragglers needs --local-epochs when you bring your own trainer: a straggler "
            "runs between 1 and that many epochs"
        )
    return SimulatedConditions(
        fleet,
        dropout=cfg.dropout,
        stragglers=cfg.stragglers,
        straggler_policy="keep" if policy == "keep" else "drop",
        local_epochs=epochs,
        seed=cfg.seed,
    )


def with_secure_aggregation(strategy: Strategy, cfg: SimulationConfig, cohort: int) -> Strategy:
    """``strategy`` with its round run under secure aggregation; refused where it cannot be."""
    if not isinstance(strategy.aggregator, WeightedMean):
        raise ConfigError(
            f"--secure-aggregation lets the server see only the sum of the updates, but "
            f"{strategy.name} needs every update on its own; use a strategy that averages "
            "(fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad)"
        )
    if not isinstance(strategy.mechanism, PlainRound):
        raise ConfigError(
            f"--secure-aggregation replaces the round's single fit phase, which {strategy.name} "
            "already replaces with its own; they cannot be combined"
        )
    degree = None
    if cfg.secure_aggregation == "secagg+":
        degree = cfg.secagg_degree or secagg_plus_degree(cohort)
    defaults = SecAggSettings()
    enc = defaults.encoding
    settings = SecAggSettings(
        threshold=cfg.secagg_threshold if cfg.secagg_threshold is not None else defaults.threshold,
        degree=degree,
        encoding=FixedPoint(
            cfg.secagg_clip if cfg.secagg_clip is not None else enc.clip,
            cfg.secagg_bits if cfg.secagg_bits is not None else enc.bits,
            cfg.secagg_modulus_bits if cfg.secagg_modulus_bits is not None else enc.modulus_bits,
        ),
        weight_bound=cfg.secagg_weight_bound or defaults.weight_bound,
    )
    if cfg.dp != "distributed" and cohort > settings.encoding.max_summands():
        raise ConfigError(
            f"{cohort} clients per round could overflow the {settings.encoding.modulus_bits}-bit "
            f"sum of {settings.encoding.bits}-bit values; raise --secagg-modulus-bits or lower "
            "--secagg-bits"
        )
    mechanism = SecAggRound(settings, seed=cfg.seed)
    return dataclasses.replace(strategy, name=f"{strategy.name}+{cfg.secure_aggregation}",
                               mechanism=mechanism)  # fmt: skip


def stopper(
    cfg: SimulationConfig, privacy: CentralPrivacy | DistributedPrivacy | None
) -> Callable[[History], bool]:
    """Stop at the target accuracy, or before a round that would pass the target epsilon."""

    def stop(history: History) -> bool:
        accuracy = history.final_accuracy
        target = cfg.stop_at_accuracy
        if target is not None and accuracy is not None and accuracy >= target:
            return True
        return privacy is not None and privacy.exhausted(len(history))

    return stop


@dataclass(frozen=True)
class CentralPrivacy:
    """A run's privacy accounting: epsilon per round, and the budget."""

    ledger: PrivacyLedger | None  # None: clipping alone, without noise: epsilon is unbounded
    target_epsilon: float | None

    def metrics(self, round: int, outcome: RoundOutcome) -> dict[str, float]:
        out = {"epsilon": self.ledger.spent(round) if self.ledger is not None else math.inf}
        aggregator_state = outcome.aggregator_state
        if isinstance(aggregator_state, ClipState):
            out["clip_norm"] = aggregator_state.clip_norm
            if not math.isnan(aggregator_state.unclipped_fraction):
                out["unclipped_fraction"] = aggregator_state.unclipped_fraction
        return out

    def exhausted(self, completed: int) -> bool:
        """Would one more round take epsilon past the target?"""
        target = self.target_epsilon
        if target is None:
            return False
        return self.ledger is None or self.ledger.would_exceed(completed + 1, target)

    def replay(self, history: History) -> None:
        """Nothing to do on resume: central DP's epsilon depends on the round count alone."""


@dataclass(frozen=True)
class DistributedPrivacy:
    """Distributed DP's accounting: epsilon from the clients whose noise reached each round's
    sum, and the budget."""

    ledger: DistributedLedger
    target_epsilon: float | None

    def metrics(self, round: int, outcome: RoundOutcome) -> dict[str, float]:
        return {"epsilon": self.ledger.record(outcome.aggregate.count)}

    def replay(self, history: History) -> None:
        """Record the rounds of a resumed run, from how many clients each one summed."""
        for record in history:
            self.ledger.record(record.clients)

    def exhausted(self, completed: int) -> bool:
        """Would one more round, with the fewest clients it may complete with, pass the target?"""
        target = self.target_epsilon
        return target is not None and self.ledger.would_exceed(target)


def distributed_noise(
    clip_norm: float, noise_multiplier: float, cohort: int, least: int, dim: int, modulus_bits: int
) -> tuple[DistributedNoise, float]:
    """Distributed DP's encoding for a round of ``cohort`` clients that needs ``least`` of them,
    and its L2 sensitivity in integer steps.

    Each client adds discrete Gaussian noise of ``sigma = z·Delta2 / sqrt(least - 1)``, so that
    any ``least - 1`` honest clients besides the one protected add noise of at least ``z``
    times the sensitivity. The scale fills half of the signed range mod 2^k with the sum of
    ``cohort`` clipped updates plus 8 standard deviations of the summed noise, so the sum does
    not wrap; the rounding's share of the sensitivity (``sqrt(d)/2``) must stay small beside
    ``scale·C``.
    """
    contributors = max(1, least - 1)
    headroom = cohort + 8.0 * noise_multiplier * math.sqrt(cohort / contributors)
    scale = ((1 << (modulus_bits - 1)) - 1) / (2.0 * clip_norm * headroom)
    if scale * clip_norm < 20.0 * math.sqrt(dim):
        raise ConfigError(
            f"--secagg-modulus-bits {modulus_bits} leaves too few integer steps for {cohort} "
            f"clients' updates of {dim} values under distributed DP: rounding would dominate the "
            "sensitivity; raise --secagg-modulus-bits (up to 64)"
        )
    sensitivity = integer_l2_sensitivity(clip_norm, scale, dim)
    sigma = noise_multiplier * sensitivity / math.sqrt(contributors)
    return DistributedNoise(clip_norm, scale, sigma), sensitivity


def with_distributed_dp(
    strategy: Strategy, cfg: SimulationConfig, cohort: int, population: int, dim: int
) -> tuple[Strategy, DistributedPrivacy]:
    """``strategy`` under secure aggregation, each client adding its share of discrete Gaussian
    noise; refused where it cannot be."""
    secure = with_secure_aggregation(strategy, cfg, cohort)
    mechanism = secure.mechanism
    if not isinstance(mechanism, SecAggRound):  # with_secure_aggregation always makes one
        raise TypeError(f"expected a SecAggRound, got {type(mechanism).__name__}")
    delta = cfg.delta if cfg.delta is not None else population**-1.1
    check_delta(delta, population)
    least = max(mechanism.least_survivors(cohort), 2)
    z = cfg.noise_multiplier or 0.0
    clip = cfg.clip_norm or 1.0
    k = mechanism.settings.encoding.modulus_bits
    noise, sensitivity = distributed_noise(clip, z, cohort, least, dim, k)
    mechanism = dataclasses.replace(
        mechanism,
        settings=dataclasses.replace(mechanism.settings, noise=noise),
        denominator=cohort,
        min_contributors=least,
    )
    ledger = DistributedLedger(sensitivity, noise.sigma, dim, delta, least)
    privacy = DistributedPrivacy(ledger, cfg.target_epsilon)
    if cfg.target_epsilon is not None and privacy.exhausted(0):
        raise ConfigError(
            f"one round with {least} clients already spends more than --target-epsilon "
            f"{cfg.target_epsilon}; raise --noise-multiplier"
        )
    name = f"ddp-{strategy.name}+{cfg.secure_aggregation}"
    return dataclasses.replace(secure, name=name, mechanism=mechanism), privacy


def with_privacy(
    strategy: Strategy,
    cfg: SimulationConfig,
    cohort: int,
    population: int,
    dim: int,
    *,
    amplified: bool = True,
) -> tuple[Strategy, CentralPrivacy | DistributedPrivacy | None]:
    """``strategy`` with the settings' user-level DP and secure aggregation, and the run's
    privacy accounting (``None`` without DP); ``amplified`` as for :func:`with_central_dp`."""
    if cfg.dp == "central":
        return with_central_dp(strategy, cfg, cohort, population, amplified=amplified)
    if cfg.dp == "distributed":
        return with_distributed_dp(strategy, cfg, cohort, population, dim)
    if cfg.secure_aggregation is not None:
        strategy = with_secure_aggregation(strategy, cfg, cohort)
    return strategy, None


def with_central_dp(
    strategy: Strategy,
    cfg: SimulationConfig,
    cohort: int,
    population: int,
    *,
    amplified: bool = True,
) -> tuple[Strategy, CentralPrivacy]:
    """``strategy`` with DP-FedAvg's clipped, noised mean; refused where it cannot be.

    ``amplified=False`` accounts every round as if all ``population`` clients took part (no
    credit for sampling): the safe choice where the cohort is drawn from whoever is connected
    rather than from all ``population`` users (a deployment)."""
    if not isinstance(strategy.aggregator, WeightedMean):
        raise ConfigError(
            f"--dp central bounds each client's influence on a mean; {strategy.name}'s "
            f"{type(strategy.aggregator).__name__} has no such bound; use a strategy that "
            "averages (fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad)"
        )
    if not isinstance(strategy.mechanism, PlainRound):
        raise ConfigError(f"--dp central cannot be combined with {strategy.name}'s own rounds")
    if cfg.secure_aggregation is not None:
        raise ConfigError(
            "--dp central clips each update on the server, which secure aggregation hides; "
            "use --dp distributed, where each client clips and adds its share of the noise"
        )
    adaptive = None
    if cfg.adaptive_clipping:
        defaults = AdaptiveClipping()
        adaptive = AdaptiveClipping(
            cfg.target_quantile if cfg.target_quantile is not None else defaults.target_quantile,
            cfg.clip_lr if cfg.clip_lr is not None else defaults.learning_rate,
        )
    elif cfg.target_quantile is not None or cfg.clip_lr is not None:
        raise ConfigError("--target-quantile and --clip-lr need --adaptive-clipping")
    z = cfg.noise_multiplier or 0.0
    aggregator = DPMean(cfg.clip_norm or 1.0, z, cohort, adaptive)  # noise from OS entropy
    delta = cfg.delta if cfg.delta is not None else population**-1.1
    check_delta(delta, population)
    ledger = None
    if z > 0:
        if amplified and cohort < population:
            mechanism = Mechanism(z, "fixed-size-without-replacement", population, cohort)
        else:
            mechanism = Mechanism(z, "all", population, population)
        ledger = PrivacyLedger(mechanism, delta, cfg.accountant)
    privacy = CentralPrivacy(ledger, cfg.target_epsilon)
    if cfg.target_epsilon is not None and privacy.exhausted(0):
        spent = f"epsilon {ledger.spent(1):.3g}" if ledger is not None else "an unbounded epsilon"
        raise ConfigError(
            f"one round already spends {spent} > --target-epsilon {cfg.target_epsilon}; raise "
            "--noise-multiplier or sample fewer clients per round"
        )
    name = f"dp-{strategy.name}"
    return dataclasses.replace(strategy, name=name, aggregator=aggregator), privacy


def check_local_dp(cfg: SimulationConfig, trainer: Trainer, ds: FederatedDataset) -> None:
    """Refuse local DP where it cannot run: a trainer without DP-SGD, a delta too large."""
    if not isinstance(trainer, TorchTrainer):
        raise ConfigError(
            f"--local-dp-noise trains each client with DP-SGD (Opacus), which needs a PyTorch "
            f"model; the {cfg.model} model's {type(trainer).__name__} has none: use --model mlp "
            f"or cnn, or bring a TorchTrainer"
        )
    settings = LocalDP.from_config(cfg.client_config())
    if settings is not None:
        settings.check_delta(int(ds.client_sizes().max(initial=0)))  # the largest client


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """One intra-op thread while simulating: small per-client models run fastest that way and
    results do not depend on the machine's core count. Restored afterwards."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate(
    config: SimulationConfig | None = None,
    *,
    dataset: FederatedDataset | str | None = None,
    trainer: Trainer | None = None,
    strategy: Strategy | str | None = None,
    progress: bool | TextIO = False,
    **settings: Any,
) -> RunResult:
    """Run a federated simulation and return the final model and its history.

    Parameters
    ----------
    config
        The settings; defaults to :class:`~fedloom.config.SimulationConfig`'s.
    dataset, trainer, strategy
        Your own objects, used instead of what the settings name; ``dataset`` and ``strategy``
        may also be names, like the settings of the same name.
    progress
        Show a progress bar over rounds (on stderr, or on the given stream).
    **settings
        Any :class:`~fedloom.config.SimulationConfig` field, overriding ``config``.

    Examples
    --------
    >>> import fedloom
    >>> result = fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=2)
    >>> len(result.history)
    2
    """
    if isinstance(dataset, str):
        settings["dataset"], dataset = dataset, None
    if isinstance(strategy, str):
        settings["strategy"], strategy = strategy, None
    cfg = (config or SimulationConfig()).replace(**settings)
    ds = dataset or builtin_dataset(cfg)
    if dataset is not None:
        cfg = cfg.replace(dataset=ds.name, clients=ds.num_clients, partition=None)
    if trainer is not None:
        if cfg.momentum:
            raise ConfigError(
                "momentum configures the built-in models only; give your own trainer its "
                "optimizer settings (TorchTrainer(..., momentum=...)) and leave momentum unset"
            )
        cfg = cfg.replace(model="custom")
    tr = trainer or builtin_trainer(cfg, ds)
    st = strategy or make_strategy(
        cfg.strategy, sampler_for(cfg, ds.num_clients), **cfg.strategy_options()
    )
    if cfg.local_dp_noise is not None:
        check_local_dp(cfg, tr, ds)
    cohort = cohort_size(cfg, ds.num_clients)
    st, privacy = with_privacy(st, cfg, cohort, ds.num_clients, tr.spec.size)
    fleet, run_info = _fleet(cfg, ds, tr, st, cohort=cohort, custom_trainer=trainer is not None)
    test = ds.test

    def evaluate(parameters: Vector) -> EvalResult:
        return tr.evaluate(parameters, test)

    if cfg.out is not None:
        atomic_write(Path(cfg.out) / "config.toml", cfg.to_toml().encode())
    bar = None
    if progress is not False:
        bar = ProgressBar(cfg.rounds, file=None if progress is True else progress)
    try:
        # after the trainer is made, so that torch (if it uses it) is imported by now
        with _torch_threads(1):
            return run_rounds(
                fleet,
                st,
                tr.init_parameters(cfg.seed),
                rounds=cfg.rounds,
                client_config=cfg.client_config(),
                evaluate=evaluate if len(test) > 0 else None,
                federated_evaluation=len(ds.client(0).test) > 0,
                min_clients=cfg.min_clients,
                out_dir=cfg.out,
                spec=tr.spec,
                on_round=bar,
                run_info=run_info,
                stop=stopper(cfg, privacy),
                round_metrics=privacy.metrics if privacy is not None else None,
            )
    finally:
        if bar is not None:
            bar.close()
