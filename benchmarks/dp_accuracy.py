"""Differential privacy's price in accuracy at epsilon about 1, 3 and 8, and what it buys against a
membership inference attack (issue 6).

Run from the repository root (about 7 minutes on 2 cores with the defaults, one run at a time;
4 with ``--jobs 2``; ``--quick`` is a smoke run of under a minute: one seed, a few rounds)::

    .venv/bin/python benchmarks/dp_accuracy.py --jobs 2 --json benchmarks/results/dp_accuracy.json

Every configuration runs ``fedloom.simulate`` once per seed (``--seeds``, 0-4: the seed moves the
data split, the initialisation and the sampling); the tables give the median over seeds with the
range in brackets. Every DP mechanism's noise comes from the operating system (no one who knows
the run's seed may regenerate it), so the DP rows change a little from one run of the script to
the next. User-level delta is 1e-5 everywhere (below 1/N for both
federations; fedloom's default 1/N^1.1 would be 0.0063 for 100 clients and 0.22 for 4, which
protects nothing), record-level delta is local DP's default 1e-5. Each noise multiplier z is
calibrated before the run to spend at most the target epsilon in the run's rounds; the epsilon in
the tables is the one the run's history reports after its last round, and the script exits with
status 1 (after writing the JSON) if it differs from the calibration's by more than 1e-6
(relative).

**Digits, 100 clients** (IID, logistic regression, 40 rounds, the built-in local SGD: lr 0.05, 5
epochs, batch 10). Logistic regression (650 parameters) rather than the MLP (9,610): the norm of
the noise grows with the square root of the dimension. Every DP row clips updates to C = 0.3,
chosen once at epsilon 3 on seed 0 from {0.1, 0.3, 1} (accuracy 0.82, 0.86, 0.62: 0.3 leaves about
60 % of the updates unclipped, 1 clips none and adds over three times the noise). 40 rounds: at
epsilon 3 (seeds 0 and 1), 20 rounds lost 1 and 7 points, 80 gained 4 on one seed and lost 2 on
the other. Rows:

- *central, all 100*: DP-FedAvg, every client every round, accounted add-or-remove-one without
  sampling ("all"), z from :func:`fedloom.privacy.noise_for_epsilon`.
- *central, 20 of 100*: 20 clients sampled per round (fixed size, without replacement).
  Sampling amplifies privacy and z comes out lower, but the noise is averaged over 20 updates
  instead of 100, so the noise on the mean is larger; and the analysis is replace-one (a
  stricter relation than add-or-remove, its epsilon not directly comparable). Shown to say why
  the other rows take everyone.
- *distributed, SecAgg+*: each client adds discrete Gaussian noise under SecAgg+ (degree 16,
  threshold 2/3), all 100 clients every round. Distributed DP gets no amplification by
  sampling: the server that samples is the party it guards against, and secure aggregation
  tells it who took part, so there is no secret sample (fedloom's zCDP ledger has no sampling
  term). Each client's noise is sized so that the fewest survivors the protocol tolerates (11 of
  100: 2/3 of a neighbourhood of 16) still add z times the sensitivity between them; when all
  100 finish the sum carries ten times that variance, and the history accounts for the noise
  that really reached the sum (99 clients besides the one protected). So z is calibrated by
  bisection on the epsilon the run will report when nobody drops: rho per round is
  ``ddg_rho(sensitivity, None, sigma, cohort - 1, dim)`` with sigma and the sensitivity from
  ``distributed_noise(C, z, cohort, least, dim, 32)``, epsilon ``ddg_epsilon([rho] * rounds,
  delta)``. A small ``least`` therefore costs no accuracy here, only a weaker worst case: the
  table gives the noise on the mean update (its standard deviation over C: z/100 for central
  DP with everyone) and the epsilon the run would spend if only the fewest survivors finished
  every round.
- *distributed, SecAgg*: the same with the complete graph (66 of 100 must survive), at epsilon 3
  only: a round costs about 1 s against SecAgg+'s 0.2 s at 100 clients, and at equal reported
  epsilon the sum carries the same noise, which this row checks.

**UCI heart disease, 4 hospitals** (``heart:PATH``, ``--heart``: Cleveland, Hungary,
Switzerland, VA Long Beach; each holds out 20 % as its local test, the union is the test set of
185 patients; 10 rounds of 2 local epochs with batch 32). With 4 users, user-level DP must hide a
whole hospital, and the noise on the mean of 4 clipped updates is z·C/4: the user-level rows use
logistic regression (28 parameters) clipped to C = 0.1 (best of {0.1, 0.3, 1} at epsilon 1, 3
and 8 on 6 seeds), central (all 4, no sampling) and distributed (SecAgg; SecAgg+ builds the same
complete graph below 12 clients). Distributed DP's ledger leaves the protected hospital's own
noise out, so at equal epsilon its sum carries sqrt(4/3) times central's noise (sqrt(100/99) on
digits). The guarantee a hospital owes its patients is record level: the local DP rows train
the MLP (13-128-2) with DP-SGD at each hospital (Opacus, per-example clip 1, Poisson batches of
expected size 32). ``local_dp_noise`` is calibrated so that the *smallest*
hospital (Switzerland, 98 training patients, the highest sampling rate) spends the target; the
others spend less. The history reports the example-weighted mean of the hospitals' epsilons;
the table gives that and the largest, which the script recomputes per hospital with
:class:`fedloom.privacy.StepCount` and checks against the reported mean.

**Membership inference** (:func:`fedloom.recipes.audit_run`: Yeom et al.'s loss threshold on the
final global model, members = the training rows, non-members = as many rows of the central test
set). A setting that overfits without DP: digits, logistic regression, 10 clients every round,
10 rounds of 50 local epochs at lr 0.5, on 5 % of the rows (89 training rows, 9 per client; the
other 1,708 are the test set): AUC 0.68, advantage 0.27 against a chance level of 0.18.
The same with clipping alone (C = 1, z = 0: an unbounded epsilon), with central DP at
epsilon 8, 3, 1 and 0.5, and with distributed DP (SecAgg, 10 clients) at the same targets. The
table gives the accuracy, the AUC, the advantage (best threshold's TPR - FPR), the advantage a
model that leaks nothing exceeds once in 20 at these set sizes, how many seeds beat it, and the
DP ceiling: no attack's expected advantage can pass ``(e^eps - 1 + 2 delta) / (e^eps + 1)`` at the
replace-one epsilon that covers one example, as the audit computes it (for central DP from the
run's z/2; for distributed DP from the run's own ledger at twice the sensitivity); the script
checks both against its own calculation.

Markdown tables on stdout, every run (settings, per-round accuracy and epsilon, audits) and the
summaries in the JSON.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import logging
import math
import multiprocessing
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from _meta import cpu_model, git_state, log, spread

import fedloom
from fedloom.compression import FixedPoint
from fedloom.data import load_dataset
from fedloom.data._files import HEART_SITES
from fedloom.models import make_trainer
from fedloom.privacy import Mechanism, StepCount, distributed_noise, epsilon, noise_for_epsilon
from fedloom.privacy._discrete import ddg_epsilon, ddg_rho
from fedloom.recipes import audit_run
from fedloom.secagg import SecAggRound, SecAggSettings, secagg_plus_degree

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "dp_accuracy.json"
DEFAULT_HEART = REPO.parent / "shared" / "data" / "uci_heart_disease"

DELTA = 1e-5  # user level, every DP row
LOCAL_DELTA = 1e-5  # record level (local DP's default)
TARGETS = (1.0, 3.0, 8.0)
MIA_TARGETS = (8.0, 3.0, 1.0, 0.5)
CLIP_ONLY_Z = 0.0  # clipping alone: an unbounded epsilon
TOLERANCE = 1e-6  # reported vs calibrated epsilon, relative
MODULUS_BITS = FixedPoint().modulus_bits

DIGITS: dict[str, Any] = {"dataset": "digits", "clients": 100, "model": "logreg", "rounds": 40}
DIGITS_CLIP = 0.3
DIGITS_SAMPLED = 20
HEART_SGD: dict[str, Any] = {"rounds": 10, "local_epochs": 2, "batch_size": 32}
HEART_CLIP = 0.1
MIA: dict[str, Any] = {
    "dataset": "digits", "clients": 10, "model": "logreg", "rounds": 10, "local_epochs": 50,
    "lr": 0.5, "test_fraction": 0.95,
}  # fmt: skip
MIA_CLIP = 1.0
HOSPITALS = {"cleveland": "Cleveland", "hungarian": "Hungary", "switzerland": "Switzerland",
             "va": "VA Long Beach"}  # fmt: skip

Job = dict[str, Any]
"""One run: ``settings`` for ``fedloom.simulate`` and what the tables need beside them."""


# ---- calibration ------------------------------------------------------------------------------


def central_noise(target: float, rounds: int, population: int, cohort: int) -> tuple[float, float]:
    """(z, the epsilon it spends in ``rounds``) for DP-FedAvg, accounted as ``simulate`` does."""
    sampling = "all" if cohort == population else "fixed-size-without-replacement"
    z = noise_for_epsilon(target, DELTA, rounds, sampling, population, cohort)
    return z, epsilon(Mechanism(z, sampling, population, cohort), rounds, DELTA)


@dataclass(frozen=True)
class Distributed:
    """A distributed-DP calibration: z, the fewest survivors, what the run will report, the worst
    case, the noise in the sum over the sensitivity, and the replace-one epsilon."""

    z: float
    least: int
    epsilon: float
    worst_epsilon: float
    noise_on_sum: float
    replace_one_epsilon: float


def _ddg_epsilon(
    z: float, clip: float, cohort: int, least: int, dim: int, rounds: int, *,
    contributors: int, replace_one: bool = False,
) -> float:  # fmt: skip
    noise, sensitivity = distributed_noise(clip, z, cohort, least, dim, MODULUS_BITS)
    l2 = 2 * sensitivity if replace_one else sensitivity
    rho = ddg_rho(l2, None, noise.sigma, max(1, contributors), dim)
    return ddg_epsilon([rho] * rounds, DELTA)


def _bisect(spent: Callable[[float], float], target: float, lo: float, hi: float) -> float:
    """The smallest z in [lo, hi] (relative precision 1e-10) with ``spent(z) <= target``;
    ``spent`` falls as z grows."""
    if spent(hi) > target:
        raise SystemExit(f"epsilon {target} is out of reach even with noise multiplier {hi:g}")
    while hi / lo > 1 + 1e-10:
        middle = math.sqrt(lo * hi)
        if spent(middle) > target:
            lo = middle
        else:
            hi = middle
    return hi


def distributed_calibration(
    target: float, clip: float, cohort: int, dim: int, rounds: int, degree: int | None
) -> Distributed:
    """z for distributed DP whose reported epsilon, when nobody drops, is the target."""
    least = max(SecAggRound(SecAggSettings(degree=degree)).least_survivors(cohort), 2)

    def spent(z: float, contributors: int = cohort - 1, replace_one: bool = False) -> float:
        return _ddg_epsilon(
            z, clip, cohort, least, dim, rounds, contributors=contributors,
            replace_one=replace_one,
        )  # fmt: skip

    z = _bisect(spent, target, 1e-3, 1e3)
    return Distributed(
        z=z,
        least=least,
        epsilon=spent(z),
        worst_epsilon=spent(z, contributors=least - 1),
        noise_on_sum=z * math.sqrt(cohort / max(1, least - 1)),
        replace_one_epsilon=spent(z, replace_one=True),
    )


def local_epsilons(
    z: float, sizes: Sequence[int], rounds: int, epochs: int, batch: int
) -> list[float]:
    """Each client's record-level epsilon after ``rounds`` fits of DP-SGD, as it accounts."""
    out = []
    for n in sizes:
        expected = min(batch, n)
        steps = rounds * epochs * math.ceil(n / expected)
        out.append(StepCount(z, n, expected, steps).epsilon(LOCAL_DELTA))
    return out


def local_noise(
    target: float, sizes: Sequence[int], rounds: int, epochs: int, batch: int
) -> tuple[float, list[float]]:
    """The DP-SGD noise multiplier with which the client that spends most spends the target."""
    z = _bisect(lambda z: max(local_epsilons(z, sizes, rounds, epochs, batch)), target, 0.3, 100.0)
    return z, local_epsilons(z, sizes, rounds, epochs, batch)


def model_size(settings: dict[str, Any]) -> int:
    """The number of parameters of the run's model."""
    ds = load_dataset(
        settings["dataset"], num_clients=settings.get("clients"), seed=0,
        test_fraction=settings.get("test_fraction", 0.2),
    )  # fmt: skip
    trainer = make_trainer(
        settings["model"], input_shape=ds.input_shape, num_classes=ds.num_classes, lr=0.05,
        local_epochs=1, batch_size=10,
    )  # fmt: skip
    return trainer.spec.size


# ---- the grid -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Plan:
    seeds: tuple[int, ...]
    digits_rounds: int
    heart_rounds: int
    mia_rounds: int
    heart: str


def _job(experiment: str, mechanism: str, target: float | None, settings: dict[str, Any],
         **extra: Any) -> Job:  # fmt: skip
    return {"experiment": experiment, "mechanism": mechanism, "target": target,
            "settings": settings, **extra}  # fmt: skip


def digits_jobs(plan: Plan) -> list[Job]:
    base = {**DIGITS, "rounds": plan.digits_rounds}
    n, rounds = base["clients"], base["rounds"]
    dim = model_size(base)
    jobs = []
    for seed in plan.seeds:
        at = {**base, "seed": seed}
        jobs.append(_job("digits", "no DP", None, at, cohort=n))
        for target in TARGETS:
            dp = {"clip_norm": DIGITS_CLIP, "delta": DELTA}
            z, eps = central_noise(target, rounds, n, n)
            jobs.append(_job(
                "digits", "central, all 100", target,
                {**at, "dp": "central", "noise_multiplier": z, **dp},
                cohort=n, z=z, expected_epsilon=eps, noise_on_sum=z,
            ))  # fmt: skip
            z, eps = central_noise(target, rounds, n, DIGITS_SAMPLED)
            jobs.append(_job(
                "digits", f"central, {DIGITS_SAMPLED} of 100 (replace-one)", target,
                {**at, "dp": "central", "noise_multiplier": z, "clients_per_round": DIGITS_SAMPLED,
                 **dp},
                cohort=DIGITS_SAMPLED, z=z, expected_epsilon=eps, noise_on_sum=z,
            ))  # fmt: skip
            for secure, degree in (("secagg+", secagg_plus_degree(n)), ("secagg", None)):
                if secure == "secagg" and target != 3.0:
                    continue
                cal = distributed_calibration(target, DIGITS_CLIP, n, dim, rounds, degree)
                name = "SecAgg+" if secure == "secagg+" else "SecAgg"
                jobs.append(_job(
                    "digits", f"distributed, {name}", target,
                    {**at, "dp": "distributed", "secure_aggregation": secure,
                     "noise_multiplier": cal.z, **dp},
                    cohort=n, z=cal.z, expected_epsilon=cal.epsilon, least=cal.least,
                    worst_epsilon=cal.worst_epsilon, noise_on_sum=cal.noise_on_sum,
                ))  # fmt: skip
    return jobs


def heart_jobs(plan: Plan) -> list[Job]:
    base = {"dataset": f"heart:{plan.heart}", **HEART_SGD, "rounds": plan.heart_rounds}
    rounds, epochs, batch = base["rounds"], base["local_epochs"], base["batch_size"]
    logreg = {**base, "model": "logreg"}
    dim = model_size(logreg)
    jobs = []
    for seed in plan.seeds:
        sizes = [int(s) for s in load_dataset(base["dataset"], seed=seed).client_sizes()]
        n = len(sizes)
        at = {**logreg, "seed": seed}
        dp = {"clip_norm": HEART_CLIP, "delta": DELTA}
        jobs.append(_job("heart", "no DP", None, at, cohort=n))
        for target in TARGETS:
            z, eps = central_noise(target, rounds, n, n)
            jobs.append(_job(
                "heart", "central, user level", target,
                {**at, "dp": "central", "noise_multiplier": z, **dp},
                cohort=n, z=z, expected_epsilon=eps, noise_on_sum=z,
            ))  # fmt: skip
            cal = distributed_calibration(target, HEART_CLIP, n, dim, rounds, None)
            jobs.append(_job(
                "heart", "distributed (SecAgg), user level", target,
                {**at, "dp": "distributed", "secure_aggregation": "secagg",
                 "noise_multiplier": cal.z, **dp},
                cohort=n, z=cal.z, expected_epsilon=cal.epsilon, least=cal.least,
                worst_epsilon=cal.worst_epsilon, noise_on_sum=cal.noise_on_sum,
            ))  # fmt: skip
        mlp = {**base, "model": "mlp", "seed": seed}
        jobs.append(_job("heart", "no DP", None, mlp, cohort=n))
        for target in TARGETS:
            z, per_client = local_noise(target, sizes, rounds, epochs, batch)
            mean = sum(e * s for e, s in zip(per_client, sizes, strict=True)) / sum(sizes)
            jobs.append(_job(
                "heart", "local DP-SGD, record level", target,
                {**mlp, "local_dp_noise": z, "local_dp_delta": LOCAL_DELTA},
                cohort=n, z=z, expected_local_epsilon=mean, hospital_epsilon=per_client,
                hospital_sizes=sizes,
            ))  # fmt: skip
    return jobs


def mia_jobs(plan: Plan) -> list[Job]:
    base = {**MIA, "rounds": plan.mia_rounds}
    n, rounds = base["clients"], base["rounds"]
    dim = model_size(base)
    dp = {"clip_norm": MIA_CLIP, "delta": DELTA}
    jobs = []
    for seed in plan.seeds:
        at = {**base, "seed": seed}
        jobs.append(_job("mia", "no DP", None, at, cohort=n, audit=True))
        jobs.append(_job(
            "mia", f"clipping only (C = {MIA_CLIP:g}, z = {CLIP_ONLY_Z:g})", None,
            {**at, "dp": "central", "noise_multiplier": CLIP_ONLY_Z, **dp},
            cohort=n, z=CLIP_ONLY_Z, audit=True,
        ))  # fmt: skip
        for target in MIA_TARGETS:
            z, eps = central_noise(target, rounds, n, n)
            replace_one = epsilon(Mechanism(z / 2, "all", n, n), rounds, DELTA)
            jobs.append(_job(
                "mia", "central", target, {**at, "dp": "central", "noise_multiplier": z, **dp},
                cohort=n, z=z, expected_epsilon=eps, noise_on_sum=z,
                expected_ceiling_epsilon=replace_one, audit=True,
            ))  # fmt: skip
        for target in MIA_TARGETS:
            cal = distributed_calibration(target, MIA_CLIP, n, dim, rounds, None)
            jobs.append(_job(
                "mia", "distributed (SecAgg)", target,
                {**at, "dp": "distributed", "secure_aggregation": "secagg",
                 "noise_multiplier": cal.z, **dp},
                cohort=n, z=cal.z, expected_epsilon=cal.epsilon, least=cal.least,
                worst_epsilon=cal.worst_epsilon, noise_on_sum=cal.noise_on_sum,
                expected_ceiling_epsilon=cal.replace_one_epsilon, audit=True,
            ))  # fmt: skip
    return jobs


# ---- running ------------------------------------------------------------------------------------


def _quiet() -> None:
    # dp-accounting logs, through absl, every RDP order it drops while computing local DP's epsilon
    logging.getLogger("absl").setLevel(logging.ERROR)


def run(job: Job) -> Job:
    """One simulation (and its audit); the job with what it measured."""
    _quiet()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="dp-accuracy-") as out:
        settings = {**job["settings"], "out": out} if job.get("audit") else job["settings"]
        result = fedloom.simulate(**settings)
        audit = audit_run(out, seed=job["settings"]["seed"]) if job.get("audit") else None
    history = result.history
    accuracy = [a if a is not None else math.nan for a in history.column("accuracy")]
    metrics = [r.metrics for r in history]
    row = {
        **job,
        "accuracy": accuracy,
        "final_accuracy": accuracy[-1],
        "last3_accuracy": statistics.fmean(accuracy[-3:]),
        "epsilon": [m.get("epsilon") for m in metrics],
        "local_epsilon": [m.get("local_epsilon") for m in metrics],
        "clients": history.column("clients"),
        "unclipped_fraction": [m.get("unclipped_fraction") for m in metrics],
        "seconds": time.perf_counter() - started,
    }
    if audit is not None:
        row["audit"] = audit.to_dict()
        row["audit"].pop("clients")
        row["ceiling_epsilon"] = audit.ceiling_epsilon
        row["ceiling"] = audit.ceiling
    log(
        f"{job['experiment']} {job['mechanism']} eps={job['target']} seed="
        f"{job['settings']['seed']}: accuracy {row['last3_accuracy']:.3f}"
        + (f", AUC {audit.attack.auc:.3f}" if audit else "")
        + f", {row['seconds']:.1f} s"
    )
    return row


def _cost(job: Job) -> float:
    """A rough guess at a run's seconds, to start the longest first."""
    s = job["settings"]
    per_round = {"secagg": 1.0, "secagg+": 0.2}.get(s.get("secure_aggregation") or "", 0.03)
    per_round *= (job["cohort"] / 100) ** 2 if s.get("secure_aggregation") else 1
    return float(s["rounds"] * per_round)


def run_all(jobs: Sequence[Job], workers: int) -> list[Job]:
    """Every job, ``workers`` at a time in fresh processes, longest first; results in order."""
    if workers <= 1:
        return [run(j) for j in jobs]
    order = sorted(range(len(jobs)), key=lambda i: -_cost(jobs[i]))
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(workers, mp_context=context) as pool:
        futures = {i: pool.submit(run, jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


def check(rows: Sequence[Job]) -> list[str]:
    """Where the epsilon a run reports differs from its calibration."""
    problems = []
    for r in rows:
        label = f"{r['experiment']} {r['mechanism']} eps={r['target']} seed={r['settings']['seed']}"
        if "expected_epsilon" in r:
            got, want = r["epsilon"][-1], r["expected_epsilon"]
        elif "expected_local_epsilon" in r:
            got, want = r["local_epsilon"][-1], r["expected_local_epsilon"]
        else:
            continue
        if got is None or abs(got - want) > TOLERANCE * want:
            problems.append(f"{label}: reported epsilon {got}, calibrated {want}")
        if r.get("target") is not None and want > r["target"] * (1 + TOLERANCE):
            problems.append(f"{label}: calibrated epsilon {want} is above the target")
        ceiling, expected = r.get("ceiling_epsilon"), r.get("expected_ceiling_epsilon")
        if expected is not None and (
            ceiling is None or abs(ceiling - expected) > TOLERANCE * expected
        ):
            problems.append(
                f"{label}: the audit's replace-one epsilon {ceiling}, expected {expected}"
            )
    return problems


# ---- tables -------------------------------------------------------------------------------------


def _cell(values: Sequence[float], digits: int = 3) -> str:
    s = spread(values)
    median = f"{s['median']:.{digits}f}"
    if f"{s['min']:.{digits}f}" == f"{s['max']:.{digits}f}":
        return median
    return f"{median} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"


def _num(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.3g}" if value < 100 else f"{value:.0f}"


def _groups(rows: Sequence[Job], experiment: str) -> list[list[Job]]:
    """The experiment's rows grouped by (model, mechanism, target), in the order they ran."""
    groups: dict[tuple[Any, ...], list[Job]] = {}
    for r in rows:
        if r["experiment"] == experiment:
            key = (r["settings"]["model"], r["mechanism"], r["target"])
            groups.setdefault(key, []).append(r)
    return list(groups.values())


def _same(group: Sequence[Job], key: str) -> float | None:
    values = [r[key] for r in group if r.get(key) is not None]
    return float(statistics.median(values)) if values else None


def _mean_noise(group: Sequence[Job]) -> float | None:
    """The noise's standard deviation on the averaged update, over the clip norm."""
    on_sum = _same(group, "noise_on_sum")
    return None if on_sum is None else on_sum / group[0]["cohort"]


def summarise(group: Sequence[Job]) -> dict[str, Any]:
    """A configuration's summary over seeds, for the JSON."""
    first = group[0]
    out: dict[str, Any] = {
        "experiment": first["experiment"],
        "model": first["settings"]["model"],
        "mechanism": first["mechanism"],
        "target_epsilon": first["target"],
        "seeds": [r["settings"]["seed"] for r in group],
        "z": _same(group, "z"),
        "noise_on_sum": _same(group, "noise_on_sum"),
        "noise_on_mean": _mean_noise(group),
        "least_survivors": _same(group, "least"),
        "worst_case_epsilon": _same(group, "worst_epsilon"),
        "final_accuracy": spread([r["final_accuracy"] for r in group]),
        "last3_accuracy": spread([r["last3_accuracy"] for r in group]),
    }
    if first["epsilon"][-1] is not None:
        out["reported_epsilon"] = spread([r["epsilon"][-1] for r in group])
    if first["local_epsilon"][-1] is not None:
        out["reported_local_epsilon"] = spread([r["local_epsilon"][-1] for r in group])
        out["largest_hospital_epsilon"] = spread([max(r["hospital_epsilon"]) for r in group])
    if "audit" in first:
        attack = [r["audit"]["attack"] for r in group]
        out["auc"] = spread([a["auc"] for a in attack])
        out["advantage"] = spread([a["advantage"] for a in attack])
        out["chance_advantage"] = spread([a["chance_advantage"] for a in attack])
        out["seeds_above_chance"] = sum(a["advantage"] > a["chance_advantage"] for a in attack)
        out["tpr_at_1pct_fpr"] = spread([a["tpr_at_1pct_fpr"] for a in attack])
        if first.get("ceiling") is not None:
            out["ceiling_epsilon"] = spread([r["ceiling_epsilon"] for r in group])
            out["ceiling"] = spread([r["ceiling"] for r in group])
    return out


def _reported(group: Sequence[Job]) -> str:
    eps = [r["epsilon"][-1] for r in group]
    if eps[0] is None or (group[0]["target"] is None and group[0]["settings"].get("dp")):
        return "-"
    return _num(statistics.median(eps))


def digits_table(rows: Sequence[Job]) -> str:
    lines = [
        "| mechanism | target ε | reported ε | z | noise std on the mean / C "
        "| fewest survivors | ε if only they finish | accuracy (mean of last 3 rounds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in _groups(rows, "digits"):
        first = g[0]
        least = first.get("least")
        lines.append(
            f"| {first['mechanism']} | {_num(first['target'])} | {_reported(g)} | "
            f"{_num(_same(g, 'z'))} | {_num(_mean_noise(g))} | "
            f"{least if least else '-'} | {_num(_same(g, 'worst_epsilon'))} | "
            f"{_cell([r['last3_accuracy'] for r in g])} |"
        )
    return "\n".join(lines)


def heart_table(rows: Sequence[Job]) -> str:
    lines = [
        "| model | mechanism | target ε | reported ε | z | noise std on the mean / C "
        "| fewest survivors | ε if only they finish | accuracy (mean of last 3 rounds) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in _groups(rows, "heart"):
        first = g[0]
        if first.get("hospital_epsilon"):
            mean = statistics.median(r["local_epsilon"][-1] for r in g)
            largest = max(max(r["hospital_epsilon"]) for r in g)
            sizes = first["hospital_sizes"]
            smallest = HOSPITALS[HEART_SITES[sizes.index(min(sizes))]]
            reported = f"{_num(mean)} (mean of hospitals), {_num(largest)} ({smallest})"
        else:
            reported = _reported(g)
        least = first.get("least")
        lines.append(
            f"| {first['settings']['model']} | {first['mechanism']} | {_num(first['target'])} | "
            f"{reported} | {_num(_same(g, 'z'))} | {_num(_mean_noise(g))} | "
            f"{least if least else '-'} | {_num(_same(g, 'worst_epsilon'))} | "
            f"{_cell([r['last3_accuracy'] for r in g])} |"
        )
    return "\n".join(lines)


def mia_table(rows: Sequence[Job]) -> str:
    lines = [
        "| mechanism | target ε | reported ε | replace-one ε | DP ceiling on the advantage "
        "| accuracy (final model) | AUC | advantage | chance advantage | seeds above chance |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for g in _groups(rows, "mia"):
        first = g[0]
        attack = [r["audit"]["attack"] for r in g]
        above = sum(a["advantage"] > a["chance_advantage"] for a in attack)
        ceiling = "-" if first.get("target") is None else _cell([r["ceiling"] for r in g])
        ceiling_eps = "-" if first.get("target") is None else _num(_same(g, "ceiling_epsilon"))
        lines.append(
            f"| {first['mechanism']} | {_num(first['target'])} | {_reported(g)} | {ceiling_eps} | "
            f"{ceiling} | {_cell([r['final_accuracy'] for r in g])} | "
            f"{_cell([a['auc'] for a in attack])} | {_cell([a['advantage'] for a in attack])} | "
            f"{_cell([a['chance_advantage'] for a in attack])} | {above}/{len(g)} |"
        )
    return "\n".join(lines)


# ---- main -------------------------------------------------------------------------------------


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument(
        "--heart", type=Path, default=DEFAULT_HEART, help="UCI heart disease folder"
    )
    parser.add_argument(
        "--quick", action="store_true", help="smoke run: seed 0, 4 rounds (MIA 3, heart 3)"
    )
    parser.add_argument(
        "--experiments", nargs="+", default=["digits", "heart", "mia"],
        choices=["digits", "heart", "mia"],
    )  # fmt: skip
    args = parser.parse_args(list(argv) if argv is not None else None)
    _quiet()
    plan = Plan(
        seeds=(args.seeds[0],) if args.quick else tuple(args.seeds),
        digits_rounds=4 if args.quick else DIGITS["rounds"],
        heart_rounds=3 if args.quick else HEART_SGD["rounds"],
        mia_rounds=3 if args.quick else MIA["rounds"],
        heart=str(args.heart.resolve()),
    )
    started = dt.datetime.now(dt.timezone.utc)
    clock = time.perf_counter()
    build = {"digits": digits_jobs, "heart": heart_jobs, "mia": mia_jobs}
    jobs = [j for name in args.experiments for j in build[name](plan)]
    log(f"{len(jobs)} runs, {args.jobs} at a time ...")
    rows = run_all(jobs, args.jobs)
    problems = check(rows)
    tables = {}
    mia_data = load_dataset(
        "digits", num_clients=MIA["clients"], test_fraction=MIA["test_fraction"]
    )
    train_rows = int(mia_data.client_sizes().sum())
    titles = {
        "digits": f"Digits, 100 clients, logistic regression, {plan.digits_rounds} rounds (user "
        "level, δ = 1e-5)",
        "heart": f"UCI heart disease, 4 hospitals, {plan.heart_rounds} rounds (user level and "
        "record level, δ = 1e-5)",
        "mia": f"Membership inference (loss threshold) on digits: 10 clients, {train_rows} "
        f"training rows, {plan.mia_rounds} rounds (δ = 1e-5)",
    }
    formatters = {"digits": digits_table, "heart": heart_table, "mia": mia_table}
    for name in args.experiments:
        tables[name] = formatters[name](rows)
        print(f"### {titles[name]}\n\n{tables[name]}\n")
    meta = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "python": platform.python_version(),
        "fedloom": fedloom.__version__,
        "git": git_state(REPO),
        "jobs": args.jobs,
        "quick": args.quick,
        "plan": dataclasses.asdict(plan),
        "delta": DELTA,
        "local_delta": LOCAL_DELTA,
        "seconds": time.perf_counter() - clock,
    }
    summary = [summarise(g) for name in args.experiments for g in _groups(rows, name)]
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(
        json.dumps(
            {
                "meta": meta,
                "tables": tables,
                "summary": summary,
                "problems": problems,
                "runs": rows,
            },
            indent=1,
        )
    )
    log(f"done in {meta['seconds']:.0f} s; wrote {args.json}")
    if problems:
        log("reported epsilon differs from the calibration:\n" + "\n".join(problems))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
