"""``fedloom audit``: the membership inference attack on a finished simulation's model, beside
the ceiling its DP guarantee puts on any attack (see :mod:`fedloom.privacy._membership`)."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedloom.client import Trainer
from fedloom.config import SimulationConfig, load_toml
from fedloom.data import ArrayData, FederatedDataset
from fedloom.errors import ConfigError, DataError
from fedloom.messages import Instruction
from fedloom.params import Vector
from fedloom.privacy import (
    DistributedLedger,
    DistributedPrivacy,
    LocalDP,
    Mechanism,
    MembershipResult,
    StepCount,
    advantage_ceiling,
    balanced_indices,
    epsilon,
    membership_attack,
)
from fedloom.recipes._plan import cohort_size, default_delta, local_sgd, plan, sampler_for
from fedloom.recipes._simulate import builtin_dataset, builtin_trainer, conditions_for
from fedloom.server import load_checkpoint
from fedloom.simulation import ScriptedFleet
from fedloom.strategy import make_strategy
from fedloom.tracking import History

__all__ = ["RunAudit", "audit_run"]

_NATURAL = ("synthetic", "heart", "leaf")  # datasets whose clients come with local test splits


@dataclass(frozen=True)
class RunAudit:
    """The membership inference audit of one finished simulation run.

    Attributes
    ----------
    attack
        The attack's scores.
    clients
        The clients whose training rows are the members: those that trained in at least one
        round, less a simulated attack's malicious clients.
    population
        The number of clients in the run.
    rounds
        The rounds the run completed.
    member_pool, non_member_pool
        How many members and non-members there were before balancing.
    non_member_source
        Where the non-members come from (the central test set, or the local test splits of the
        members' clients for datasets with a natural split).
    epsilon, delta
        The run's final epsilon as its history reports it, and its delta; ``None`` without DP.
    ceiling_epsilon
        The epsilon of the guarantee that covers one example's membership (see
        :func:`audit_run`); ``None`` without DP.
    ceiling
        :func:`advantage_ceiling` at ``ceiling_epsilon`` and ``delta``: no attack's expected
        advantage can pass it. ``None`` without DP (no bound).
    level
        ``"user"`` (central or distributed DP: one client's whole data), ``"record"`` (local
        DP: one example; the epsilon is the largest among the members' clients), or ``None``.
    """

    attack: MembershipResult
    clients: tuple[int, ...]
    population: int
    rounds: int
    member_pool: int
    non_member_pool: int
    non_member_source: str
    epsilon: float | None
    delta: float | None
    ceiling_epsilon: float | None
    ceiling: float | None
    level: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The audit as a JSON-ready dict."""
        out = asdict(self)
        out["clients"] = list(self.clients)
        return out


@runtime_checkable
class _ScoresExamples(Protocol):
    def example_losses(self, parameters: Vector, data: ArrayData) -> np.ndarray: ...


def audit_run(
    run_dir: str | Path,
    *,
    seed: int = 0,
    dataset: FederatedDataset | None = None,
    trainer: Trainer | None = None,
) -> RunAudit:
    """Attack the final model of a ``fedloom simulate --out RUN_DIR`` run.

    Reads ``config.toml`` (the settings), ``history.json`` (the rounds completed, epsilon, any
    malicious clients) and ``model.npz`` (the final model), and rebuilds the run's dataset and
    model from the settings, as :func:`fedloom.simulate` built them: same seed, same split.

    - **Members** are the training rows of the clients that trained in at least one round. The
      run records no participation, so it is replayed: the settings' sampler for every round
      completed, then the simulated dropout and stragglers (a dropped-out client, or a straggler
      whose work was dropped, did not train that round). A simulated attack's malicious clients
      are left out: their updates are not honest training on their rows. A robust aggregator may
      still have discarded an honest update; that can only weaken the measured signal.
    - **Non-members** are examples drawn like the members but never trained on: the central test
      set for datasets cut centrally (``digits``, ``breast_cancer``, ``wine``, ``mnist``, where
      a seeded permutation of one pool gives the test rows; ``mnist`` with both its files uses
      its official test set). For datasets with a natural split (``synthetic``, ``heart``,
      ``leaf``), whose central test set is every client's local test split, only the local test
      splits of the members' clients: each client has its own distribution there.
    - The larger set is subsampled (``seed``) to the size of the smaller.

    The DP ceiling. fedloom's DP-FedAvg guarantee is user level: it hides any change to one
    client's whole data. Adding, removing or changing one example changes one client's data, so
    it is covered, with the neighbouring relation "replace one client's data" (the clipped
    update moves by up to 2C). Fixed-size sampling (``--fraction``, ``--clients-per-round``) is
    accounted under exactly that relation, so the run's epsilon applies; with every client every
    round the run accounts for adding or removing a client, and the ceiling uses the
    replace-one epsilon, that of noise multiplier z/2. The bound is on the expected advantage of
    a fixed test; the measured advantage picks its best threshold on the same data, and on a few
    hundred examples can exceed it by sampling noise. And sampling's amplification assumes an
    adversary who does not know who was sampled, while the members here are the clients known
    to have trained; the two agree when every client took part (``clients`` says).

    Parameters
    ----------
    run_dir
        The run's ``--out`` folder.
    seed
        Seeds the balancing subsample.
    dataset, trainer
        The objects given to :func:`fedloom.simulate`, for a run made with your own (whose
        settings name ``custom`` or a dataset that cannot be rebuilt from its name). A trainer
        needs an ``example_losses(parameters, data)`` method (the built-in ones have it).

    Raises
    ------
    DataError
        A file is missing or malformed, or the model does not fit the settings' model.
    ConfigError
        The dataset or model cannot be rebuilt, the trainer cannot score single examples, or
        the run held out no examples to compare with.
    """
    if seed < 0:
        raise ConfigError(f"--seed must be 0 or more, got {seed}")
    run = Path(run_dir)
    if not run.is_dir():
        raise DataError(f"run folder {run} does not exist; give the --out folder of a simulate run")
    cfg = _run_config(run)
    history = _history(run)
    if not (run / "model.npz").is_file():
        raise DataError(f"{run} has no model.npz; audit a run made with fedloom simulate --out")
    checkpoint = load_checkpoint(run / "model.npz")
    ds = dataset if dataset is not None else _dataset(cfg)
    if ds.num_clients != (cfg.clients or ds.num_clients):
        raise ConfigError(
            f"the run had {cfg.clients} clients but the dataset given has {ds.num_clients}"
        )
    tr = trainer if trainer is not None else _trainer(cfg, ds)
    if tr.spec != checkpoint.spec:
        raise DataError(
            f"{run}/model.npz holds parameters {checkpoint.spec.names} of {checkpoint.spec.size} "
            f"values, which do not fit the run's model {cfg.model!r}: {tr.spec.names} of "
            f"{tr.spec.size}"
        )
    if not isinstance(tr, _ScoresExamples):
        raise ConfigError(
            f"{type(tr).__name__} has no example_losses(parameters, data) method; add one "
            "returning each example's loss as a 1-D array to audit its model"
        )
    malicious = {str(c) for c in history.info.get("malicious_clients", [])}
    fits = _fits(cfg, ds.num_clients, len(history))
    clients = sorted(int(c) for c in set(fits) - malicious)
    if not clients:
        raise ConfigError("no honest client trained in this run: there are no members to attack")
    members = _concat([ds.client(i).train for i in clients])
    natural = ds.name.partition(":")[0] in _NATURAL and cfg.partition in (None, "natural")
    if natural:
        others = _concat([ds.client(i).test for i in clients])
        source = "local test splits of the members' clients"
    else:
        others, source = ds.test, "central test set"
    if len(others) == 0 or len(members) == 0:
        raise ConfigError(
            f"the run has {len(members)} training and {len(others)} held-out examples; the "
            "audit needs both (hold some out with --test-fraction or --local-test-fraction)"
        )
    keep_m, keep_o = balanced_indices(len(members), len(others), seed)
    member_losses = tr.example_losses(checkpoint.parameters, members.subset(keep_m))
    other_losses = tr.example_losses(checkpoint.parameters, others.subset(keep_o))
    attack = membership_attack(member_losses, other_losses, seed=seed)
    eps: float | None
    delta: float | None
    ceiling_eps: float | None
    if cfg.local_dp_noise is not None:
        eps, delta, ceiling_eps = _local_privacy(cfg, ds, fits, clients)
    else:
        eps, delta, ceiling_eps = _privacy(cfg, history, ds.num_clients, tr.spec.size)
    return RunAudit(
        attack=attack,
        clients=tuple(clients),
        population=ds.num_clients,
        rounds=len(history),
        member_pool=len(members),
        non_member_pool=len(others),
        non_member_source=source,
        epsilon=eps,
        delta=delta,
        ceiling_epsilon=ceiling_eps,
        ceiling=None if ceiling_eps is None else advantage_ceiling(ceiling_eps, delta or 0.0),
        level="record" if cfg.local_dp_noise is not None else "user" if cfg.dp else None,
    )


def _run_config(run: Path) -> SimulationConfig:
    path = run / "config.toml"
    if not path.is_file():
        raise DataError(f"{run} has no config.toml; audit a run made with fedloom simulate --out")
    return SimulationConfig().replace(**load_toml(path))


def _history(run: Path) -> History:
    path = run / "history.json"
    try:
        raw = json.loads(path.read_text())
        records, info = raw["rounds"], raw.get("run", {})
        if not isinstance(records, list) or not isinstance(info, Mapping):
            raise TypeError("'rounds' must be a list and 'run' a table")
        history = History.from_records(records, info)
    except FileNotFoundError:
        raise DataError(
            f"{run} has no history.json; audit a run made with fedloom simulate --out"
        ) from None
    except (OSError, UnicodeDecodeError, ValueError, TypeError, KeyError, AttributeError) as exc:
        raise DataError(f"{path} is not a fedloom history: {exc!r}") from None
    if not len(history):
        raise DataError(f"{path} records no completed round; nothing was trained")
    return history


def _dataset(cfg: SimulationConfig) -> FederatedDataset:
    try:
        return builtin_dataset(cfg)
    except ConfigError as exc:
        raise ConfigError(
            f"cannot rebuild the run's dataset {cfg.dataset!r} from its settings ({exc}); for a "
            "run on your own data, pass it: audit_run(run_dir, dataset=...)"
        ) from None


def _trainer(cfg: SimulationConfig, ds: FederatedDataset) -> Trainer:
    if cfg.model == "custom":
        raise ConfigError(
            "the run trained your own model (model = custom); pass its trainer: "
            "audit_run(run_dir, trainer=...)"
        )
    return builtin_trainer(cfg, ds)


def _fits(cfg: SimulationConfig, population: int, rounds: int) -> dict[str, list[int]]:
    """Each client that trained in one of ``rounds`` rounds, as ``simulate`` drew them, with
    the local epochs of each of its fits."""
    ids = [str(i) for i in range(population)]
    sampler = sampler_for(cfg, population)
    recorder = ScriptedFleet(ids, lambda client, ins: None)  # trains nothing, records who
    policy = cfg.straggler_policy
    if policy is None:
        policy = make_strategy(cfg.strategy, sampler, **cfg.strategy_options()).straggler_policy
    conditions = conditions_for(recorder, cfg, policy)
    fit_config = {"local_epochs": local_sgd(cfg).local_epochs}
    for round in range(1, rounds + 1):
        fit = Instruction(round, "fit", config=fit_config)
        for _ in conditions.exchange(dict.fromkeys(sampler.select(ids, round), fit), None):
            pass
    fits: dict[str, list[int]] = {}
    for client, ins in recorder.instructions:
        fits.setdefault(client, []).append(int(ins.config["local_epochs"]))
    return fits


def _local_privacy(
    cfg: SimulationConfig, ds: FederatedDataset, fits: dict[str, list[int]], members: list[int]
) -> tuple[float, float, float]:
    """Local DP's (epsilon, delta, ceiling epsilon): the largest record-level epsilon among the
    members' clients, from the DP-SGD steps each one took (its fits' epochs times its Poisson
    batches per epoch). Adding or removing one example is the relation DP-SGD's accounting
    covers, so that epsilon bounds the example-level attack directly."""
    settings = LocalDP.from_config(cfg.client_config())
    if settings is None:  # local_dp_noise is set, so the config asks for it
        raise DataError("the settings ask for local DP but name no noise")
    batch_size = local_sgd(cfg).batch_size
    worst = 0.0
    for member in members:
        n = len(ds.client(member).train)
        expected = min(batch_size, n)
        steps = sum(epochs * math.ceil(n / expected) for epochs in fits[str(member)])
        spent = StepCount(settings.noise_multiplier, n, expected, steps).epsilon(settings.delta)
        worst = max(worst, spent)
    return worst, settings.delta, worst


def _concat(parts: Sequence[ArrayData]) -> ArrayData:
    return ArrayData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _privacy(
    cfg: SimulationConfig, history: History, population: int, dim: int
) -> tuple[float | None, float | None, float | None]:
    """(the run's final epsilon, its delta, the replace-one epsilon the ceiling uses)."""
    if cfg.dp is None:
        return None, None, None
    spent = history.rounds[-1].metrics.get("epsilon")
    if spent is None:
        raise DataError("the settings turn DP on but history.json records no epsilon")
    delta = default_delta(cfg.delta, population)
    if cfg.dp == "distributed":
        return float(spent), delta, _distributed_replace_one(cfg, history, population, dim)
    if cohort_size(cfg, population) < population:
        return float(spent), delta, float(spent)  # fixed-size sampling: accounted replace-one
    z = cfg.noise_multiplier or 0.0  # set whenever dp is (the settings check it)
    if z == 0:
        return float(spent), delta, math.inf  # clipping alone: no bound
    # every client every round was accounted add-or-remove; replacing a client's data moves the
    # clipped sum by up to 2C, i.e. noise multiplier z/2 for the same Gaussian mechanism
    replace_one = Mechanism(z / 2, "all", population, population)
    return float(spent), delta, epsilon(replace_one, len(history), delta, cfg.accountant)


def _distributed_replace_one(
    cfg: SimulationConfig, history: History, population: int, dim: int
) -> float:
    """Distributed DP's epsilon for replacing one client's data: the run's own ledger (the same
    noise, the same contributors per round) at twice the L2 sensitivity."""
    privacy = plan(cfg, population=population, dim=dim).privacy
    if not isinstance(privacy, DistributedPrivacy):  # dp = "distributed" makes one
        raise DataError("the settings ask for distributed DP but give no distributed ledger")
    run = privacy.ledger
    ledger = DistributedLedger(2 * run.l2_sensitivity, run.sigma, dim, run.delta, run.least)
    for record in history:
        ledger.record(record.clients)
    return ledger.spent()
