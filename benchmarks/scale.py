"""Scale: a population of a million clients, every core, and Ray; fedloom beside Flower.

Run from the repository root (about 10 minutes with Flower on 2 cores)::

    .venv/bin/python benchmarks/scale.py --repeats 3 --flower --baseline 325c82b \\
        --json benchmarks/results/scale.json

Every run is a fresh process (``_scale_child.py``), so imports and start-up count. Three parts:

1. **Population.** 100 clients a round from 1,000, 10,000, 100,000 and 1,000,000 registered,
   5 rounds, for two workloads: ``cycle`` (client ``i`` holds IID partition ``i mod 100`` of
   digits, the Flower harness's rule for populations beyond its data; MLP) and ``synthetic``
   (``synthetic:1,1`` with logistic regression, the built-in generator). Per run: process start
   to round 1, steady seconds per round (median of rounds 2+), peak RSS of the process, and the
   steady seconds per round as a ratio to the same workload at 1,000 registered clients.
   ``--baseline REV`` also runs ``synthetic`` at 10,000 clients on that commit (a git worktree),
   the "before" of the population-free change.
2. **Workers.** The shared workload (digits over 1,000 clients, every client every round,
   5 rounds, MLP) with ``--workers 1`` and ``--workers 2``, and with ``--engine ray --workers
   2`` (a local Ray instance the run starts): throughput over all rounds and steady seconds per
   round, as ratios to one worker, and whether the final models are bit-identical (SHA-256 of
   the parameters).
3. **Flower** (``--flower``): its harness at 100 registered clients all training and at 10,000
   registered with 100 a round (``run.sh fedavg 10000 3 0.01``), beside fedloom's ``cycle`` runs
   of the same shape, to show how each one's round cost grows with the population; and at
   1,000 clients all training (5 rounds), beside the worker runs.

Runs are interleaved across repeats, so drift on this shared machine touches every
configuration alike; compare ratios from one invocation.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _measure import run_process
from _meta import cpu_model, flower_versions, git_state, log, spread

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_HARNESS = REPO.parent / "shared" / "bench" / "flower" / "run.sh"
POPULATIONS = (1_000, 10_000, 100_000, 1_000_000)
PER_ROUND = 100


def fedloom_run(
    workload: str, population: int, per_round: int, rounds: int, workers: int = 1,
    engine: str = "local", src: Path | None = None,
) -> dict[str, Any]:  # fmt: skip
    cmd = [sys.executable, str(HERE / "_scale_child.py"), workload, str(population),
           str(per_round), str(rounds), str(workers), engine]  # fmt: skip
    env = None
    if src is not None:
        env = {**os.environ, "PYTHONPATH": str(src)}
    measured = run_process(cmd, cwd=REPO, env=env)
    res = measured["result"]
    round_s = res["round_s"]
    return {
        "system": "fedloom",
        "workload": workload,
        "population": population,
        "per_round": per_round,
        "workers": workers,
        "engine": engine,
        "startup_to_round1_s": res["startup_to_round1_s"],
        "round_s": round_s,
        "steady_round_s": statistics.median(round_s[1:]) if len(round_s) > 1 else round_s[0],
        "throughput_updates_per_s": sum(res["clients"]) / sum(round_s),
        "process_wall_s": measured["wall_s"],
        "peak_rss_mib": res["peak_rss_mib"],
        "peak_tree_pss_mib": measured["peak_tree_pss_mib"],
        "parameters_sha256": res["parameters_sha256"],
        "final_test_acc": res["test_acc"][-1],
    }


def flower_run(harness: Path, clients: int, rounds: int, fraction: float) -> dict[str, Any]:
    cmd = [str(harness), "fedavg", str(clients), str(rounds), str(fraction)]
    measured = run_process(cmd, cwd=REPO, marker="sim_fedavg.py")
    res = measured["result"]
    round_s = res["round_s"]
    per_round = round(clients * fraction)
    return {
        "system": "flower",
        "population": clients,
        "per_round": per_round,
        "round_s": round_s,
        "first_round_s": round_s[0],
        "steady_round_s": statistics.median(round_s[1:]),
        "throughput_updates_per_s": per_round * len(round_s) / sum(round_s),
        "harness_wall_s": measured["wall_s"],
        "peak_tree_pss_mib": measured["peak_tree_pss_mib"],
        "final_test_acc": res["test_acc"][-1],
    }


def _median(runs: list[dict[str, Any]], key: str) -> float:
    return statistics.median(r[key] for r in runs)


def summarise(runs: list[dict[str, Any]]) -> dict[str, Any]:
    groups: dict[str, list[dict[str, Any]]] = {}
    for r in runs:
        name = "{system}/{workload}/{population}/{per_round}/{workers}/{engine}".format(
            **{"workload": "-", "workers": "-", "engine": "-", **r}
        )
        groups.setdefault(name, []).append(r)
    out: dict[str, Any] = {}
    for name, group in groups.items():
        keys = [k for k, v in group[0].items() if isinstance(v, float)]
        out[name] = {k: spread([g[k] for g in group]) for k in keys}
        hashes = {g.get("parameters_sha256") for g in group}
        out[name]["parameters_sha256"] = sorted(h for h in hashes if h)
    return out


def markdown(summary: dict[str, Any], repeats: int) -> str:
    def cell(name: str, key: str, digits: int = 2) -> str:
        s = summary.get(name, {}).get(key)
        if s is None:
            return "-"
        if repeats == 1 or s["min"] == s["max"]:
            return f"{s['median']:.{digits}f}"
        return f"{s['median']:.{digits}f} ({s['min']:.{digits}f}-{s['max']:.{digits}f})"

    lines = [
        "| workload | registered | start to round 1, s | steady s/round | vs 1,000 "
        "| peak RSS, MiB |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for workload in ("cycle", "synthetic"):
        base = summary.get(f"fedloom/{workload}/1000/{PER_ROUND}/1/local", {})
        for n in POPULATIONS:
            name = f"fedloom/{workload}/{n}/{PER_ROUND}/1/local"
            if name not in summary:
                continue
            ratio = "-"
            if base:
                steady = summary[name]["steady_round_s"]["median"]
                ratio = f"{steady / base['steady_round_s']['median']:.2f}x"
            lines.append(
                f"| {workload} | {n:,} | {cell(name, 'startup_to_round1_s')} | "
                f"{cell(name, 'steady_round_s', 3)} | {ratio} | {cell(name, 'peak_rss_mib', 0)} |"
            )
    lines += [
        "",
        "| run | throughput, updates/s | steady s/round | process wall, s | PSS of the tree, MiB |",
        "| --- | --- | --- | --- | --- |",
    ]
    for name in sorted(summary):
        if "/shared/" in name or name.startswith("flower/"):
            lines.append(
                f"| {name} | {cell(name, 'throughput_updates_per_s', 0)} | "
                f"{cell(name, 'steady_round_s', 3)} | {cell(name, 'process_wall_s', 1)} | "
                f"{cell(name, 'peak_tree_pss_mib', 0)} |"
            )
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--flower", action="store_true", help="also run the Flower harness")
    p.add_argument("--baseline", help="a commit to run synthetic at 10,000 clients on")
    p.add_argument("--skip-population", action="store_true")
    p.add_argument("--skip-workers", action="store_true")
    p.add_argument("--json", type=Path, default=HERE / "results" / "scale.json")
    p.add_argument("--flower-harness", type=Path, default=DEFAULT_HARNESS)
    args = p.parse_args(argv)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "git": git_state(REPO),
    }
    if args.flower:
        meta["flower"] = flower_versions(args.flower_harness)
    baseline_src = None
    if args.baseline:
        tree = Path(tempfile.mkdtemp(prefix="fedloom-baseline-"))
        subprocess.run(["git", "worktree", "add", "--detach", str(tree), args.baseline],
                       cwd=REPO, check=True, capture_output=True)  # fmt: skip
        baseline_src = tree / "src"
        meta["baseline"] = args.baseline
    runs: list[dict[str, Any]] = []

    def record(run: dict[str, Any]) -> None:
        runs.append(run)
        log(f"  {run['system']} {run.get('workload', '')} {run['population']} "
            f"w{run.get('workers', '-')} {run.get('engine', '')}: steady "
            f"{run['steady_round_s']:.3f} s/round, "
            f"start->r1 {run.get('startup_to_round1_s', float('nan')):.2f} s, "
            f"rss {run.get('peak_rss_mib', float('nan')):.0f} MiB")  # fmt: skip

    try:
        for repeat in range(args.repeats):
            log(f"repeat {repeat + 1}/{args.repeats}")
            if not args.skip_population:
                for workload in ("cycle", "synthetic"):
                    for n in POPULATIONS:
                        record(fedloom_run(workload, n, PER_ROUND, args.rounds))
                record(fedloom_run("cycle", 100, 0, args.rounds))
                if baseline_src is not None:
                    run = fedloom_run("synthetic", 10_000, PER_ROUND, 2, src=baseline_src)
                    record({**run, "system": f"baseline-{args.baseline}"})
            if not args.skip_workers:
                for workers, engine in ((1, "local"), (2, "local"), (2, "ray")):
                    record(fedloom_run("shared", 1000, 0, args.rounds, workers, engine))
            if args.flower:
                record(flower_run(args.flower_harness, 100, 3, 1.0))
                record(flower_run(args.flower_harness, 10_000, 3, 0.01))
                record(flower_run(args.flower_harness, 1000, args.rounds, 1.0))
    finally:
        if baseline_src is not None:
            subprocess.run(["git", "worktree", "remove", "--force", str(baseline_src.parent)],
                           cwd=REPO, capture_output=True)  # fmt: skip
    summary = summarise(runs)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps({"meta": meta, "summary": summary, "runs": runs}, indent=1))
    print(markdown(summary, args.repeats))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
