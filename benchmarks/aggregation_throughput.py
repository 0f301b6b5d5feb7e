"""Aggregation throughput: each aggregator beside the memory-bandwidth floor of one pass.

Run from the repository root (20-30 seconds on 2 cores)::

    .venv/bin/python benchmarks/aggregation_throughput.py \\
        --json benchmarks/results/aggregation_throughput.json

The workload: ``--clients`` (100) updates of ``--dim`` (1,000,000) float32 parameters, drawn
standard normal from ``default_rng(0)``, the rows of one ``(clients, dim)`` array, each wrapped
in a ``ClientUpdate`` with an example count from the same generator. Each aggregator gets that
list and a fresh state from ``init``; its time is the whole ``aggregate`` call, so the robust
rules' stacking of the updates into their own matrix counts. The aggregators: ``WeightedMean``
(FedAvg), ``Median``, ``TrimmedMean(0.1)``, ``Krum``, ``MultiKrum`` (m = n - f) and ``Bulyan``,
the last three with f = ``--byzantine`` (20).

The baseline is ``np.sum(X, axis=0)`` over the same array: one read of the input, the least any
aggregation of it can cost. Each repeat times every aggregator right after its own baseline
run, and the ratio is taken per repeat (time / baseline time, the two a moment apart) and
summarised by its median. GB/s is the input read,
``clients * dim * 4`` bytes, over the time. Before timing, a check compares every aggregator's
first coordinates with a plain numpy computation and stops if one differs.

Everything runs on one thread: the aggregators do, and the one BLAS call, the Gram matrix of
Krum, Multi-Krum and Bulyan, holds OpenBLAS to one thread itself.

Two parts of the robust rules are timed alone too: the stacking (``_stack``) and the pairwise
squared distances (``_pairwise_sq_distances``, the float64 Gram matrix) that Krum, Multi-Krum
and Bulyan share.

Timings go to stderr as they finish, then a Markdown table to stdout, and everything to the
JSON file. The machine is shared and noisy: compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import resource
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from _meta import cpu_model, git_state, log, spread
from threadpoolctl import threadpool_info  # type: ignore[import-untyped]

from fedloom.messages import ClientUpdate
from fedloom.strategy import Aggregator, WeightedMean
from fedloom.strategy._robust import (
    Bulyan,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
    _pairwise_sq_distances,
    _stack,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_JSON = HERE / "results" / "aggregation_throughput.json"
CHECK_COLUMNS = 2048


def aggregators(byzantine: int) -> dict[str, Aggregator]:
    return {
        "WeightedMean": WeightedMean(),
        "Median": Median(),
        "TrimmedMean(0.1)": TrimmedMean(0.1),
        f"Krum(f={byzantine})": Krum(byzantine),
        f"MultiKrum(f={byzantine})": MultiKrum(byzantine),
        f"Bulyan(f={byzantine})": Bulyan(byzantine),
    }


def workload(clients: int, dim: int) -> tuple[np.ndarray, list[ClientUpdate]]:
    rng = np.random.default_rng(0)
    matrix = rng.standard_normal((clients, dim), dtype=np.float32)
    counts = rng.integers(10, 1000, size=clients)
    updates = [ClientUpdate(str(i), matrix[i], float(counts[i])) for i in range(clients)]
    return matrix, updates


# ----------------------------------------------------------------------------- check


def check(byzantine: int, clients: int, columns: int = CHECK_COLUMNS) -> dict[str, bool]:
    """Each aggregator on the workload's first ``columns`` coordinates against plain numpy."""
    matrix, updates = workload(clients, columns)
    wide = matrix.astype(np.float64)
    weights = np.array([u.weight for u in updates])
    ordered = np.sort(wide, axis=0)
    k = int(0.1 * clients)
    dist = ((wide[:, None, :] - wide[None, :, :]) ** 2).sum(axis=2)
    scores = np.sort(dist, axis=1)[:, 1 : clients - byzantine - 1].sum(axis=1)
    best = np.argsort(scores, kind="stable")[: clients - byzantine]
    remaining, chosen = list(range(clients)), list[int]()
    while len(chosen) < clients - 2 * byzantine:  # Bulyan: Krum again and again, theta picks
        sub = dist[np.ix_(remaining, remaining)]
        near = max(len(remaining) - byzantine - 2, 0)
        chosen.append(remaining.pop(int(np.argmin(np.sort(sub)[:, 1 : near + 1].sum(axis=1)))))
    picked = wide[chosen]
    beta = len(chosen) - 2 * byzantine
    closest = np.argsort(np.abs(picked - np.median(picked, axis=0)), axis=0, kind="stable")
    expected = {
        "WeightedMean": weights @ wide / weights.sum(),
        "Median": np.median(wide, axis=0),
        "TrimmedMean(0.1)": ordered[k : clients - k].mean(axis=0),
        f"Krum(f={byzantine})": wide[np.argmin(scores)],
        f"MultiKrum(f={byzantine})": wide[best].mean(axis=0),
        f"Bulyan(f={byzantine})": np.take_along_axis(picked, closest[:beta], axis=0).mean(axis=0),
    }
    result = {}
    for name, aggregator in aggregators(byzantine).items():
        agg, _ = aggregator.aggregate(updates, columns, aggregator.init(columns))
        ok = agg.vector.shape == (columns,) and agg.vector.dtype == np.float32
        result[name] = ok and np.allclose(agg.vector, expected[name], rtol=1e-5, atol=1e-6)
    return result


# ----------------------------------------------------------------------------- timing


def _seconds(call: Callable[[], object]) -> float:
    started = time.perf_counter()
    call()
    return time.perf_counter() - started


def measure(clients: int, dim: int, byzantine: int, repeats: int) -> dict[str, Any]:
    matrix, updates = workload(clients, dim)
    runs: dict[str, list[dict[str, float]]] = {}

    def baseline() -> object:
        return np.sum(matrix, axis=0)

    parts: dict[str, Callable[[], object]] = {
        "stack (part)": lambda: _stack(updates, dim),
        "pairwise distances (part)": lambda: _pairwise_sq_distances(matrix),
    }

    def run(aggregator: Aggregator) -> Callable[[], object]:
        return lambda: aggregator.aggregate(updates, dim, aggregator.init(dim))

    timed = {name: run(a) for name, a in aggregators(byzantine).items()} | parts
    for call in (baseline, *timed.values()):  # warm-up: first-touch page faults, imports
        call()
    for repeat in range(repeats):
        for name, call in timed.items():
            base = _seconds(baseline)
            seconds = _seconds(call)
            runs.setdefault(name, []).append({"seconds": seconds, "baseline_s": base})
            log(f"repeat {repeat + 1}/{repeats}: {name}: {seconds:.3f} s, base {base:.4f} s")
    return runs


def summarise(runs: dict[str, list[dict[str, float]]], input_bytes: int) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for name, rs in runs.items():
        seconds = [r["seconds"] for r in rs]
        summary[name] = {
            "ratio_to_baseline": spread([r["seconds"] / r["baseline_s"] for r in rs]),
            "seconds": spread(seconds),
            "gb_per_s": input_bytes / statistics.median(seconds) / 1e9,
        }
    base = [r["baseline_s"] for rs in runs.values() for r in rs]
    summary["baseline np.sum(X, axis=0)"] = {
        "ratio_to_baseline": spread([1.0]),
        "seconds": spread(base),
        "gb_per_s": input_bytes / statistics.median(base) / 1e9,
    }
    return summary


def _num(value: float) -> str:
    return f"{value:.1f}" if value >= 10 else f"{value:.2f}" if value >= 1 else f"{value:.3f}"


def markdown(summary: dict[str, Any]) -> str:
    lines = [
        "| aggregator | time / baseline | seconds | GB/s read |",
        "| --- | --- | --- | --- |",
    ]
    for name, row in summary.items():
        ratio, seconds = row["ratio_to_baseline"], row["seconds"]
        lines.append(
            f"| {name} | {_num(ratio['median'])}x ({_num(ratio['min'])}-{_num(ratio['max'])}) "
            f"| {_num(seconds['median'])} ({_num(seconds['min'])}-{_num(seconds['max'])}) "
            f"| {row['gb_per_s']:.1f} |"
        )
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _blas_libraries() -> list[dict[str, Any]]:
    return [
        {k: i.get(k) for k in ("internal_api", "num_threads", "version")} for i in threadpool_info()
    ]


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, default=100)
    p.add_argument("--dim", type=int, default=1_000_000)
    p.add_argument("--byzantine", type=int, default=20, help="f for Krum, Multi-Krum, Bulyan")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = p.parse_args(argv)
    if args.repeats < 1 or args.dim < 1:
        p.error("--repeats and --dim must be at least 1")
    if args.clients < 4 * args.byzantine + 3:
        p.error("Bulyan needs --clients >= 4 * --byzantine + 3")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "python": platform.python_version(),
        "numpy": np.__version__,
        "blas_libraries": _blas_libraries(),  # the Gram matrix holds BLAS to 1 thread
        "git": git_state(REPO),
        "clients": args.clients,
        "dim": args.dim,
        "byzantine": args.byzantine,
        "repeats": args.repeats,
        "loadavg_before": os.getloadavg(),
    }
    checks = check(args.byzantine, args.clients)
    log(f"check against plain numpy: {json.dumps(checks)}")
    if not all(checks.values()):
        log("an aggregator differs from its plain numpy computation; not timing it")
        return 1
    runs = measure(args.clients, args.dim, args.byzantine, args.repeats)
    meta["loadavg_after"] = os.getloadavg()
    meta["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    summary = summarise(runs, args.clients * args.dim * 4)
    report = {"meta": meta, "checks": checks, "summary": summary, "runs": runs}
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.json)
    print(markdown(summary))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
