"""``simulate``: a whole federated run on one machine, from settings or from the user's objects."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from fedloom._io import atomic_write
from fedloom.client import (
    DEFAULT_MODS,
    ClientApp,
    Mod,
    SklearnTrainer,
    TorchTrainer,
    Trainer,
    is_correctable,
    secagg_mod,
)
from fedloom.config import SimulationConfig
from fedloom.data import FederatedDataset, load_dataset
from fedloom.errors import ConfigError
from fedloom.messages import EvalResult, RoundRecord
from fedloom.models import make_trainer
from fedloom.params import Vector
from fedloom.privacy import LocalDP, RunPrivacy
from fedloom.recipes._kept import RUN_DB, committer, loop_state, reopen
from fedloom.recipes._plan import RunPlan, local_sgd, plan
from fedloom.recipes._use import check_out_dir, write_model_file
from fedloom.server import Fleet, RoundState, RunResult, RunStore, run_rounds
from fedloom.simulation import (
    Attack,
    ClientStates,
    InProcessFleet,
    RayFleet,
    SimulatedConditions,
    WorkerLaunch,
    WorkerPool,
    attack_mod,
)
from fedloom.strategy import (
    NumberedClients,
    ScaffoldRound,
    Strategy,
    required_updates,
    requirement,
    round_half_up,
)
from fedloom.tracking import History, Loggers, ProgressBar, RunLogger

__all__ = ["builtin_dataset", "builtin_trainer", "conditions_for", "simulate", "stopper"]

log = logging.getLogger("fedloom.simulation")


def builtin_dataset(cfg: SimulationConfig) -> FederatedDataset:
    """The dataset the settings name, split and partitioned as they say."""
    return load_dataset(
        cfg.dataset,
        num_clients=cfg.clients,
        partition=cfg.partition,
        seed=cfg.seed,
        local_test_fraction=cfg.local_test_fraction,
        test_fraction=cfg.test_fraction,
        central_test_rows=cfg.central_test_rows,
    )


def builtin_trainer(cfg: SimulationConfig, ds: FederatedDataset) -> Trainer:
    """The built-in model the settings name, shaped for ``ds``, with the settings' SGD."""
    sgd = local_sgd(cfg)
    return make_trainer(
        cfg.model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        lr=sgd.lr,
        local_epochs=sgd.local_epochs,
        batch_size=sgd.batch_size,
        momentum=cfg.momentum,
    )


@dataclass(frozen=True)
class _ClientSide:
    """What builds the simulated clients, picklable so a worker process can build its own:
    the settings, the attack and its victims (chosen once, by the driver), and the user's own
    dataset and trainer when they brought them. The mods put the attack inside secure
    aggregation's, so that a malicious client masks its poisoned update."""

    config: SimulationConfig
    cohort: int
    attack: Attack | None
    malicious: tuple[str, ...]
    dataset: FederatedDataset | None = None
    trainer: Trainer | None = None

    @classmethod
    def of(cls, run: RunPlan, ds: FederatedDataset) -> _ClientSide:
        cfg = run.config
        if cfg.attack is None:
            if cfg.attack_scale is not None:
                raise ConfigError("--attack-scale needs --attack KIND:FRACTION")
            return cls(cfg, run.cohort, None, ())
        attack = Attack.parse(cfg.attack)
        if cfg.attack_scale is not None:
            attack = dataclasses.replace(attack, scale=cfg.attack_scale)
        return cls(
            cfg, run.cohort, attack, attack.choose(NumberedClients(ds.num_clients), cfg.seed)
        )

    def info(self) -> dict[str, Any]:
        """The run facts the attack adds to the history."""
        if self.attack is None:
            return {}
        return {"attack": self.config.attack, "malicious_clients": list(self.malicious)}

    def mods(self, num_classes: int) -> tuple[Mod, ...]:
        if self.attack is None:
            return DEFAULT_MODS
        poisoned = attack_mod(
            self.attack, self.malicious, num_classes=num_classes, cohort_size=self.cohort
        )
        rest = tuple(m for m in DEFAULT_MODS if m is not secagg_mod)
        return (secagg_mod, poisoned, *rest)

    def __call__(self) -> tuple[FederatedDataset, Trainer, ClientApp]:
        """Build the population, trainer and client runtime (in a worker process)."""
        ds = self.dataset if self.dataset is not None else builtin_dataset(self.config)
        trainer = self.trainer if self.trainer is not None else builtin_trainer(self.config, ds)
        return ds, trainer, ClientApp(mods=self.mods(ds.num_classes))


def _fleet(
    run: RunPlan,
    ds: FederatedDataset,
    trainer: Trainer,
    *,
    given: tuple[FederatedDataset | None, Trainer | None],
    launch: WorkerLaunch | None,
) -> tuple[Fleet, Fleet, dict[str, Any]]:
    """The in-process fleet, the worker pool or the Ray fleet, with attackers, dropout and
    stragglers as the settings ask; that fleet alone (which keeps the clients' state); and the
    run facts the attack adds to the history."""
    cfg, strategy, cohort = run.config, run.strategy, run.cohort
    side = dataclasses.replace(_ClientSide.of(run, ds), dataset=given[0], trainer=given[1])
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
    fleet: Fleet
    if cfg.engine == "ray":
        fleet = RayFleet(
            side, ds.num_clients, cfg.workers, address=cfg.ray_address,
            worker_cpus=cfg.worker_cpus or 1.0, worker_gpus=cfg.worker_gpus or 0.0,
        )  # fmt: skip
    elif launch is not None:
        fleet = WorkerPool(side, ds.num_clients, launch)
    else:
        fleet = InProcessFleet(ds, trainer, app=ClientApp(mods=side.mods(ds.num_classes)))
    try:
        made = conditions_for(fleet, cfg, policy, custom_trainer=given[1] is not None)
        return made, fleet, side.info()
    except BaseException:
        fleet.close()
        raise


def conditions_for(
    fleet: Fleet, cfg: SimulationConfig, policy: str, *, custom_trainer: bool = False
) -> Fleet:
    """``fleet`` behind the settings' simulated dropout and stragglers (itself without them);
    ``policy`` is the straggler policy in force (the setting's, else the strategy's)."""
    if not (cfg.dropout or cfg.stragglers):
        return fleet
    epochs = cfg.local_epochs
    if epochs is None and not custom_trainer:
        epochs = local_sgd(cfg).local_epochs
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


def stopper(cfg: SimulationConfig, privacy: RunPrivacy | None) -> Callable[[History], str | None]:
    """Stop at the target accuracy, or before a round that would pass the target epsilon; the
    answer is why, in words."""

    def stop(history: History) -> str | None:
        accuracy = history.final_accuracy
        target = cfg.stop_at_accuracy
        if target is not None and accuracy is not None and accuracy >= target:
            return f"accuracy {accuracy:.4f} reached --stop-at-accuracy {target:g}"
        if privacy is not None and privacy.exhausted(len(history)):
            cost = privacy.next_epsilon(len(history))
            return (
                f"round {len(history) + 1} would spend epsilon {cost:.3g}, past "
                f"--target-epsilon {cfg.target_epsilon:g}"
            )
        return None

    return stop


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
    resume: bool = False,
    loggers: Sequence[RunLogger | str] = (),
    **settings: Any,
) -> RunResult:
    """Run a federated simulation and return the final model and its history.

    With ``out`` (a folder), the run is kept there as it goes: ``run.db`` (every round
    committed), ``model.npz``, ``history.json``, ``config.toml`` and ``model.json``. ``resume``
    continues the run kept in ``out`` after its last committed round (after a crash, Ctrl-C, or
    to train it for more ``rounds``), and ends with the model and history an uninterrupted run
    would have had.

    Parameters
    ----------
    config
        The settings; defaults to :class:`~fedloom.config.SimulationConfig`'s.
    dataset, trainer, strategy
        Your own objects, used instead of what the settings name; ``dataset`` and ``strategy``
        may also be names, like the settings of the same name.
    progress
        Show a progress bar over rounds (on stderr, or on the given stream).
    loggers
        Experiment trackers told the settings, every round and the results
        (:class:`~fedloom.tracking.RunLogger`; or ``--log`` specs such as
        ``"tensorboard:runs/tb"``, ``"mlflow:sqlite:///mlflow.db"``).
    resume
        Continue the run kept in ``out`` with its own settings; of the settings given, only
        ``rounds`` (to extend it) and where it runs (``workers``, ``engine``, ``ray_address``,
        ``worker_cpus``, ``worker_gpus``) may differ from the kept ones. Bring the same
        ``dataset``, ``trainer`` and ``strategy`` objects when the run was given its own.
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
    tracked = Loggers(loggers)
    kept: tuple[RunStore, RoundState] | None = None
    if resume:
        store, cfg, state = _reopen(cfg, config, settings)
        kept = (store, state)
    launch = None
    if cfg.workers > 1 and cfg.engine == "local":
        # started first, so that the workers' imports overlap this process's set-up
        torch_model = cfg.model in ("mlp", "cnn") or isinstance(trainer, TorchTrainer)
        launch = WorkerLaunch(cfg.workers, preload=("fedloom.recipes", "torch")[: 1 + torch_model])
    try:
        return _simulate(cfg, dataset, trainer, strategy, progress, launch, kept, tracked)
    finally:
        if launch is not None:
            launch.close()
        if kept is not None:
            kept[0].close()


_WHERE_IT_RUNS = ("workers", "engine", "ray_address", "worker_cpus", "worker_gpus")


def _reopen(
    cfg: SimulationConfig, config: SimulationConfig | None, settings: dict[str, Any]
) -> tuple[RunStore, SimulationConfig, RoundState]:
    """The kept run ``cfg.out`` holds, its settings (with the new ``rounds`` and where it runs,
    when given) and its last committed state; a setting given that differs from the kept one
    is refused."""
    if cfg.out is None:
        raise ConfigError("--resume needs --out DIR, the folder of the run to continue")
    defaults = SimulationConfig()
    given = set(settings) | {
        f.name for f in dataclasses.fields(SimulationConfig)
        if config is not None and getattr(config, f.name) != getattr(defaults, f.name)
    }  # fmt: skip
    store, kept, state = reopen(cfg.out, cfg.rounds if "rounds" in given else None)
    try:
        for name in sorted(given - {"rounds", "out", *_WHERE_IT_RUNS}):
            if getattr(cfg, name) != getattr(kept, name):
                flag = "--" + name.replace("_", "-")
                was, now = (_shown(getattr(c, name)) for c in (kept, cfg))
                raise ConfigError(
                    f"--resume continues the run in {cfg.out} with its own settings, and its "
                    f"{flag} is {was}, not {now}: leave {flag} out, or start a new run in "
                    "another --out"
                )
    except BaseException:
        store.close()
        raise
    if state.round >= kept.rounds:
        log.warning(
            "the run in %s is complete (%d of %d rounds): nothing to resume; give --rounds N to "
            "train it further", cfg.out, state.round, kept.rounds,
        )  # fmt: skip
    return store, kept.replace(**{k: getattr(cfg, k) for k in _WHERE_IT_RUNS if k in given}), state


def _simulate(
    cfg: SimulationConfig,
    dataset: FederatedDataset | None,
    trainer: Trainer | None,
    strategy: Strategy | None,
    progress: bool | TextIO,
    launch: WorkerLaunch | None,
    kept: tuple[RunStore, RoundState] | None,
    tracked: Loggers,
) -> RunResult:
    if kept is not None and cfg.model == "custom" and trainer is None:
        raise ConfigError(
            f"the run in {cfg.out} trained your own trainer; give the same trainer= to resume it"
        )
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
    run = plan(cfg, population=ds.num_clients, dim=tr.spec.size, strategy=strategy)
    if isinstance(run.strategy.mechanism, ScaffoldRound) and not is_correctable(tr):
        raise ConfigError(
            f"SCAFFOLD corrects every local step, and {type(tr).__name__}.fit takes no "
            "correction= argument: use another strategy, or a trainer that does (logreg, mlp, "
            "cnn)"
        )
    if isinstance(tr, SklearnTrainer) and run.strategy.client_config.get("mu"):
        raise ConfigError(
            f"{run.strategy.name} adds a proximal term to the clients' loss, and scikit-learn's "
            "partial_fit has none: use fedavg (or another strategy), or a fedloom trainer "
            "(logreg, mlp, cnn)"
        )
    if cfg.local_dp_noise is not None:
        check_local_dp(cfg, tr, ds)
    fleet, base, run_info = _fleet(run, ds, tr, given=(dataset, trainer), launch=launch)
    test = ds.test

    def evaluate(parameters: Vector) -> EvalResult:
        return tr.evaluate(parameters, test)

    bar = None
    store, state = kept if kept is not None else (None, None)
    finished: bool | None = None  # None until the loggers have started
    try:  # from here on, the fleet's workers (processes, Ray actors) are released on any exit
        if store is not None and store.spec() != tr.spec:  # before anything is written
            raise ConfigError(
                f"the run in {cfg.out} trained a model of {store.spec().size} parameters; "
                f"this trainer's has {tr.spec.size}: give the trainer the run was started with"
            )
        if cfg.out is not None:
            check_out_dir(cfg.out)
        tracked.start(cfg.to_dict())  # an unreachable tracker stops the run here
        finished = False
        if cfg.out is not None:
            atomic_write(Path(cfg.out) / "config.toml", cfg.to_toml().encode())
            described = {"input_shape": list(ds.input_shape), "num_classes": ds.num_classes}
            write_model_file(cfg.out, {"model": cfg.model, **described})
            if store is None:
                store = _new_store(Path(cfg.out) / RUN_DB)
                store.create_run(cfg.to_dict(), tr.spec, tr.init_parameters(cfg.seed))
            elif store.run_config().get("rounds") != cfg.rounds:
                store.update_config(cfg.to_dict())
        resumed, clients = loop_state(state) if state is not None else (None, {})
        if isinstance(base, ClientStates):
            base.restore_client_states(clients)
        if run.privacy is not None and resumed is not None:
            run.privacy.replay(resumed.history)
        if progress is not False:
            bar = ProgressBar(
                cfg.rounds,
                file=None if progress is True else progress,
                done=resumed.round if resumed is not None else 0,
            )
        commit = None
        if store is not None:
            commit = committer(
                store, base.client_states if isinstance(base, ClientStates) else None
            )

        def on_round(record: RoundRecord) -> None:
            if bar is not None:
                bar(record)
            tracked.log_round(record)

        # after the trainer is made, so that torch (if it uses it) is imported by now
        with _torch_threads(1):
            result = run_rounds(
                fleet,
                run.strategy,
                resumed.parameters if resumed is not None else tr.init_parameters(cfg.seed),
                rounds=cfg.rounds,
                client_config=cfg.client_config(),
                evaluate=evaluate if len(test) > 0 else None,
                federated_evaluation=len(ds.client(0).test) > 0,
                min_clients=cfg.min_clients,
                bounds=cfg.update_bounds(),
                out_dir=cfg.out,
                spec=tr.spec,
                on_round=on_round,
                run_info=run_info,
                stop=stopper(cfg, run.privacy),
                round_metrics=run.privacy.metrics if run.privacy is not None else None,
                resume=resumed,
                on_commit=commit,
            )
        finished = True
        tracked.finish(cfg.out, ok=True)
        return result
    except KeyboardInterrupt:
        if store is not None:
            log.warning(
                "stopped after round %d, the last one committed; continue with --resume",
                store.latest().round,
            )
        raise
    finally:
        if finished is False:  # started, and the run did not finish
            tracked.finish(cfg.out, ok=False)
        fleet.close()
        if bar is not None:
            bar.close()
        if store is not None and kept is None:
            store.close()  # a resumed run's store is closed by whoever opened it


def _shown(value: Any) -> str:
    return "unset (its default)" if value is None else repr(value)


def _new_store(db: Path) -> RunStore:
    """A run store at ``db`` for a new run, replacing a finished run's there (``--overwrite``)."""
    for leftover in (db, db.with_name(db.name + "-wal"), db.with_name(db.name + "-shm")):
        leftover.unlink(missing_ok=True)
    return RunStore(db)
