"""A measured privacy audit: a membership inference attack on a trained global model.

The attack is the loss threshold of Yeom et al. (2018, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting"): a model fits the examples it was trained on better than
fresh ones, so a lower loss means "member". It needs nothing but the model and the examples, and
is the baseline every stronger attack must beat; its AUC over members and non-members says how
much membership leaks (0.5: nothing the attack can see).

Differential privacy caps what any attack can achieve. By the hypothesis-testing view of
(epsilon, delta)-DP (Kairouz, Oh and Viswanath 2015, "The Composition Theorem for Differential
Privacy", Theorem 2.1), every test for "member or not" has ``FPR + e^eps * FNR >= 1 - delta`` and
``e^eps * FPR + FNR >= 1 - delta``; adding the two bounds its advantage ``TPR - FPR`` by
``(e^eps - 1 + 2 delta) / (e^eps + 1)`` (Humphries et al. 2020, "Differentially Private Learning
Does Not Bound Membership Inference", arXiv:2010.12112). :func:`advantage_ceiling` computes it.

A measured advantage is a lower bound on the leakage (a better attack may do more); the ceiling is
an upper bound. fedloom's DP is user level (one client's data at once); the attack here is example
level, which the user-level guarantee covers: see :func:`audit_run`.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from fedloom.client import Trainer
from fedloom.config import BUILTIN_MODEL_SGD, SimulationConfig, load_toml
from fedloom.data import ArrayData, FederatedDataset
from fedloom.errors import ConfigError, DataError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.privacy._accountant import Mechanism, epsilon
from fedloom.server import load_checkpoint
from fedloom.tracking import History

__all__ = ["MembershipResult", "RunAudit", "advantage_ceiling", "audit_run", "membership_attack"]

_NATURAL = ("synthetic", "heart", "leaf")  # datasets whose clients come with local test splits


@dataclass(frozen=True)
class MembershipResult:
    """How well the loss threshold tells members from non-members, on balanced sets.

    Attributes
    ----------
    auc
        ROC AUC of "lower loss means member": the chance that a random member has a lower loss
        than a random non-member (ties count half). 0.5 is chance.
    advantage
        The best threshold's ``TPR - FPR`` (Yeom et al.'s membership advantage), in [0, 1].
    chance_advantage
        The advantage that a model leaking nothing exceeds by chance once in 20 on sets of these
        sizes: the best threshold's ``TPR - FPR`` is the one-sided two-sample
        Kolmogorov-Smirnov statistic, whose 95 % point is about
        ``sqrt(ln(20) / 2 * (m + n) / (m * n))`` (asymptotic; conservative with ties). A
        measured advantage below it is no evidence of leakage.
    tpr_at_1pct_fpr, tpr_at_10pct_fpr
        The highest true positive rate among thresholds with a false positive rate of at most
        1 % and 10 % (Carlini et al. 2022: leakage that matters is confident leakage).
    members, non_members
        The examples scored; equal, after balancing.
    """

    auc: float
    advantage: float
    chance_advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_10pct_fpr: float
    members: int
    non_members: int


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

    def to_dict(self) -> dict[str, Any]:
        """The audit as a JSON-ready dict."""
        out = asdict(self)
        out["clients"] = list(self.clients)
        return out


@runtime_checkable
class _ScoresExamples(Protocol):
    def example_losses(self, parameters: Vector, data: ArrayData) -> np.ndarray: ...


def balanced_indices(
    n_members: int, n_non_members: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equally many members and non-members: the larger set is subsampled (sorted,
    without replacement, by ``numpy.random.default_rng(seed)``), the smaller kept whole."""
    size = min(n_members, n_non_members)
    rng = np.random.default_rng(seed)

    def pick(n: int) -> np.ndarray:
        if n == size:
            return np.arange(n)
        return np.sort(rng.choice(n, size=size, replace=False))

    return pick(n_members), pick(n_non_members)


def membership_attack(
    member_losses: np.ndarray | Sequence[float],
    non_member_losses: np.ndarray | Sequence[float],
    *,
    seed: int = 0,
) -> MembershipResult:
    """Score the loss-threshold attack (Yeom et al. 2018): lower loss, guess member.

    The larger of the two sets is first subsampled to the size of the smaller (seeded), so that
    AUC 0.5 and advantage 0 mean no leakage the attack can see. Scored with scikit-learn's
    ``roc_auc_score`` and ``roc_curve``.

    Parameters
    ----------
    member_losses, non_member_losses
        Per-example losses of training examples and of examples the model never saw.
    seed
        Seeds the subsampling.

    Raises
    ------
    DataError
        If either set is empty or holds NaN.

    Examples
    --------
    >>> r = membership_attack([0.1, 0.2, 0.5, 0.9], [0.3, 0.6, 0.7, 1.0])
    >>> r.auc, r.advantage, r.tpr_at_1pct_fpr
    (0.75, 0.5, 0.5)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    members = np.asarray(member_losses, dtype=np.float64).reshape(-1)
    others = np.asarray(non_member_losses, dtype=np.float64).reshape(-1)
    for what, losses in (("member", members), ("non-member", others)):
        if losses.size == 0:
            raise DataError(f"no {what} losses to attack; give at least one of each")
        if np.isnan(losses).any():
            raise DataError(f"the {what} losses hold NaN; the model's loss is undefined there")
    if seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {seed}")
    keep_m, keep_o = balanced_indices(members.size, others.size, seed)
    members, others = members[keep_m], others[keep_o]
    labels = np.r_[np.ones(members.size), np.zeros(others.size)]
    big = np.finfo(np.float64).max  # only the order matters: an infinite loss ranks last
    scores = -np.clip(np.r_[members, others], -big, big)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return MembershipResult(
        auc=float(roc_auc_score(labels, scores)),
        advantage=float(max(0.0, np.max(tpr - fpr))),
        chance_advantage=math.sqrt(math.log(20) / 2 * (1 / members.size + 1 / others.size)),
        tpr_at_1pct_fpr=float(tpr[fpr <= 0.01].max()),
        tpr_at_10pct_fpr=float(tpr[fpr <= 0.1].max()),
        members=int(members.size),
        non_members=int(others.size),
    )


def advantage_ceiling(epsilon: float, delta: float) -> float:
    """The most membership advantage (``TPR - FPR``) any attack can have on an
    (epsilon, delta)-DP model: ``(e^eps - 1 + 2 delta) / (e^eps + 1)``.

    From the hypothesis-testing region of (epsilon, delta)-DP (Kairouz et al. 2015, Theorem
    2.1): ``FPR + e^eps FNR >= 1 - delta`` and ``e^eps FPR + FNR >= 1 - delta``; their sum gives
    ``TPR - FPR <= 1 - 2 (1 - delta) / (e^eps + 1)``, the bound of Humphries et al. (2020,
    arXiv:2010.12112). Computed as ``tanh(eps / 2) + 2 delta / (e^eps + 1)``, which stays finite
    for any epsilon (infinite epsilon: 1).

    Raises
    ------
    ConfigError
        If epsilon is negative or NaN, or delta is outside [0, 1].

    Examples
    --------
    >>> advantage_ceiling(0.0, 1e-5)
    1e-05
    >>> round(advantage_ceiling(1.0, 0.0), 4)  # tanh(1/2)
    0.4621
    """
    if not epsilon >= 0:
        raise ConfigError(f"epsilon must be 0 or more, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ConfigError(f"delta must be in [0, 1], got {delta}")
    shrink = math.exp(-epsilon)  # 2 delta / (e^eps + 1) = 2 delta e^-eps / (1 + e^-eps)
    return min(1.0, math.tanh(epsilon / 2) + 2 * delta * shrink / (1 + shrink))


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
    clients = _participants(cfg, ds.num_clients, len(history), malicious)
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
    from fedloom.simulation._run import builtin_dataset

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
    from fedloom.simulation._run import builtin_trainer

    return builtin_trainer(cfg, ds)


class _Recorder:
    """A fleet that trains nothing and records who was instructed (behind the conditions)."""

    def __init__(self, ids: Sequence[str]) -> None:
        self._ids = tuple(ids)
        self.instructed: set[str] = set()

    def clients(self) -> Sequence[str]:
        return self._ids

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        self.instructed.update(instructions)
        return iter(())

    def close(self) -> None:
        pass


def _participants(
    cfg: SimulationConfig, population: int, rounds: int, malicious: set[str]
) -> list[int]:
    """The clients that trained in at least one of ``rounds`` rounds, as ``simulate`` drew them."""
    from fedloom.simulation._run import sampler_for, with_conditions
    from fedloom.strategy import make_strategy

    ids = [str(i) for i in range(population)]
    sampler = sampler_for(cfg, population)
    recorder = _Recorder(ids)
    policy = cfg.straggler_policy
    if policy is None:
        policy = make_strategy(cfg.strategy, sampler, **cfg.strategy_options()).straggler_policy
    conditions = with_conditions(recorder, cfg, policy)
    fit_config = {"local_epochs": cfg.local_epochs or BUILTIN_MODEL_SGD.local_epochs}
    for round in range(1, rounds + 1):
        selected = sampler.select(ids, round)
        if conditions is recorder:
            recorder.instructed.update(selected)
            continue
        fit = Instruction(round, "fit", config=fit_config)
        for _ in conditions.exchange(dict.fromkeys(selected, fit), None):
            pass
    return sorted(int(c) for c in recorder.instructed - malicious)


def _concat(parts: Sequence[ArrayData]) -> ArrayData:
    return ArrayData(np.concatenate([p.x for p in parts]), np.concatenate([p.y for p in parts]))


def _privacy(
    cfg: SimulationConfig, history: History, population: int, dim: int
) -> tuple[float | None, float | None, float | None]:
    """(the run's final epsilon, its delta, the replace-one epsilon the ceiling uses)."""
    if cfg.dp is None:
        return None, None, None
    from fedloom.simulation._run import cohort_size

    spent = history.rounds[-1].metrics.get("epsilon")
    if spent is None:
        raise DataError("the settings turn DP on but history.json records no epsilon")
    delta = cfg.delta if cfg.delta is not None else population**-1.1
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
    from fedloom.privacy._discrete import DistributedLedger
    from fedloom.simulation._run import cohort_size, sampler_for, with_distributed_dp
    from fedloom.strategy import make_strategy

    strategy = make_strategy(cfg.strategy, sampler_for(cfg, population), **cfg.strategy_options())
    cohort = cohort_size(cfg, population)
    _, privacy = with_distributed_dp(strategy, cfg, cohort, population, dim)
    run = privacy.ledger
    ledger = DistributedLedger(2 * run.l2_sensitivity, run.sigma, dim, run.delta, run.least)
    for record in history:
        ledger.record(record.clients)
    return ledger.spent()
