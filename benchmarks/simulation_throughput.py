"""Simulation throughput, startup and memory: fedloom beside Flower on the same workload.

Run from the repository root (1.5-2 minutes per repeat with Flower on 2 cores; seconds
without)::

    .venv/bin/python benchmarks/simulation_throughput.py --clients 10 100 1000 --rounds 5 \\
        --repeats 3 --json benchmarks/results/simulation_throughput.json

``--skip-flower`` runs fedloom only. Flower runs through its harness,
``/work/shared/bench/flower/run.sh fedavg N ROUNDS`` (``--flower-harness`` or
``$FLOWER_HARNESS`` to point elsewhere), whose ``setup.sh`` builds its environment once.

The workload (the harness's README): scikit-learn digits, 360 rows held out for central
evaluation (``default_rng(0)`` permutation), the other 1,437 split IID over N clients
(``default_rng(1)`` permutation, ``np.array_split``); MLP 64-128-10; 1 local epoch, batch 32,
SGD lr 0.05 momentum 0.9 (a fresh optimizer each fit); every client every round; central
evaluation after each round. Before timing anything the script checks (``_checks.py``) that
fedloom gives every client the rows the harness gives it and holds out the same test rows, and
that a fedloom round equals a plain PyTorch reference loop; it stops if either differs.

Every run is a fresh process, so imports count for both systems. Per run it records:

- round times: fedloom's ``history.column("seconds")`` (round start to the end of the central
  evaluation of the new model); Flower's time between successive central evaluations.
  Throughput is ``N * rounds / sum(round times)`` (client updates per second, round 1 and its
  warm-up included); steady seconds per round is the median of rounds 2 onwards.
- startup: process start (``/proc/PID/stat`` start time) to the start of round 1. fedloom: the
  start of ``run_rounds``'s first round (see ``_fedloom_child.py``). Flower: the harness's
  ``startup_to_round1_s`` (process start to its first central evaluation, made just before
  round 1), less the sub-second error of its clock arithmetic: it adds the process's start
  ticks to ``btime`` of ``/proc/stat``, which the kernel truncates to whole seconds, so it
  overstates every figure by the same fraction of a second, measured here and subtracted.
- process wall time: fedloom, ``time.perf_counter`` around the child process; Flower, from the
  start of its Python process (``sim_fedavg.py``, start time read from ``/proc``) to the exit
  of ``run.sh`` (``run.sh``'s own wall time, which adds its environment check, is kept too).
- memory: peak RSS of the largest single process (its ``VmHWM``, which counts from its ``exec``;
  ``ru_maxrss`` would also count the pages of this script that the forked child held until
  ``exec``): fedloom's own, read as it finishes; for Flower the largest any process of the tree
  showed the sampler. And the peak RSS and PSS summed over the process tree (Flower runs Ray
  and its workers), sampled every 0.25 s.
- final central test accuracy.

Timings go to stderr as runs finish, then a Markdown summary to stdout, and everything to the
JSON file. The machine is shared and noisy: compare the ratios from one invocation, not
absolute seconds from different days.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import statistics
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _checks import check_split, check_training
from _clock import btime_error_s
from _measure import run_process
from _meta import cpu_model, flower_versions, git_state, log, spread

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_HARNESS = "/work/shared/bench/flower/run.sh"
DEFAULT_JSON = HERE / "results" / "simulation_throughput.json"

# The design targets this benchmark checks.
TARGET_CLIENTS = 1000
TARGET_THROUGHPUT_RATIO = 10.0
TARGET_STARTUP_S = 3.0

Run = dict[str, Any]


# ----------------------------------------------------------------------------- the two systems


def _round_metrics(clients: int, round_s: list[float], acc: list[float]) -> Run:
    steady = statistics.median(round_s[1:]) if len(round_s) > 1 else round_s[0]
    total = sum(round_s)
    return {
        "round_s": round_s,
        "first_round_s": round_s[0],
        "steady_round_s": steady,
        "rounds_total_s": total,
        "throughput_updates_per_s": clients * len(round_s) / total,
        "steady_updates_per_s": clients / steady,
        "final_test_acc": acc[-1],
    }


def run_fedloom(clients: int, rounds: int) -> Run:
    cmd = [sys.executable, str(HERE / "_fedloom_child.py"), str(clients), str(rounds)]
    measured = run_process(cmd, cwd=REPO)
    res = measured["result"]
    return {
        "system": "fedloom",
        "clients": clients,
        **_round_metrics(clients, res["round_s"], res["test_acc"]),
        "startup_to_round1_s": res["startup_to_round1_s"],
        "startup_to_round1_end_s": res["startup_to_round1_s"] + res["round_s"][0],
        "startup_breakdown_s": res["startup_breakdown_s"],
        "process_wall_s": measured["wall_s"],
        "exit_after_simulate_s": measured["wall_s"] - res["simulate_return_since_start_s"],
        "torch_threads_during_rounds": res["torch_threads_during_rounds"],
        **{k: v for k, v in measured.items() if k.startswith(("peak_", "max_", "loadavg"))},
        # exact, from the process itself, instead of the sampler's last look before it exited
        "peak_rss_single_process_mib": res["peak_rss_mib"],
        "test_acc": res["test_acc"],
        "versions": {"fedloom": res["fedloom"], "torch": res["torch"]},
    }


def run_flower(harness: Path, clients: int, rounds: int, clock_error: float) -> Run:
    cmd = [str(harness), "fedavg", str(clients), str(rounds)]
    measured = run_process(cmd, cwd=REPO, marker="sim_fedavg.py")
    res = measured["result"]
    start = measured["marker_start_boottime"]
    return {
        "system": "flower",
        "clients": clients,
        **_round_metrics(clients, res["round_s"], res["test_acc"][1:]),
        "startup_to_round1_s": res["startup_to_round1_s"] - clock_error,
        "startup_to_round1_end_s": res["startup_to_round1_s"] - clock_error + res["round_s"][0],
        "startup_to_round1_reported_s": res["startup_to_round1_s"],
        "process_wall_s": measured["end_boottime"] - start if start is not None else None,
        "harness_wall_s": measured["wall_s"],
        **{k: v for k, v in measured.items() if k.startswith(("peak_", "max_", "loadavg"))},
        "test_acc_before_round1": res["test_acc"][0],
        "test_acc": res["test_acc"][1:],
    }


# ----------------------------------------------------------------------------- summary


METRICS: list[tuple[str, str, str]] = [
    # key, title, how the ratio is taken ("fedloom/flower" or "flower/fedloom")
    ("throughput_updates_per_s", "Throughput, client updates/s over all rounds", "fedloom/flower"),
    ("steady_updates_per_s", "Steady throughput, client updates/s (rounds 2+)", "fedloom/flower"),
    ("steady_round_s", "Steady seconds per round (median of rounds 2+)", "flower/fedloom"),
    ("first_round_s", "Round 1 seconds", "flower/fedloom"),
    ("startup_to_round1_s", "Process start to round 1, s", "flower/fedloom"),
    ("startup_to_round1_end_s", "Process start to the end of round 1, s", "flower/fedloom"),
    ("process_wall_s", "Process wall time, s", "flower/fedloom"),
    ("peak_rss_single_process_mib", "Peak RSS, largest process, MiB", "flower/fedloom"),
    ("peak_tree_pss_mib", "Peak PSS summed over the process tree, MiB", "flower/fedloom"),
    ("peak_tree_rss_mib", "Peak RSS summed over the process tree, MiB", "flower/fedloom"),
    ("final_test_acc", "Final central test accuracy", "fedloom/flower"),
]


def summarise(runs: list[Run], clients: Sequence[int]) -> dict[str, Any]:
    summary: dict[str, Any] = {}
    for n in clients:
        by_system = {
            s: [r for r in runs if r["clients"] == n and r["system"] == s]
            for s in ("fedloom", "flower")
        }
        entry: dict[str, Any] = {}
        for key, _, ratio in METRICS:
            row: dict[str, Any] = {}
            for system, rs in by_system.items():
                values = [r[key] for r in rs if r.get(key) is not None]
                if values:
                    row[system] = spread(values)
            pairs = [
                (f[key], w[key])
                for f, w in zip(by_system["fedloom"], by_system["flower"], strict=False)
                if f.get(key) and w.get(key)
            ]
            if pairs:
                ratios = [f / w if ratio == "fedloom/flower" else w / f for f, w in pairs]
                row["ratio"] = {"of": ratio, **spread(ratios)}
            entry[key] = row
        summary[str(n)] = entry
    return summary


def targets(summary: dict[str, Any]) -> dict[str, Any]:
    """The design targets, judged on the worst repeat."""
    out: dict[str, Any] = {}
    at = summary.get(str(TARGET_CLIENTS))
    if at is not None and "ratio" in at["throughput_updates_per_s"]:
        worst = at["throughput_updates_per_s"]["ratio"]["min"]
        out["throughput_ratio_at_1000"] = {
            "target": f">= {TARGET_THROUGHPUT_RATIO:g}x Flower",
            "worst": worst,
            "met": worst >= TARGET_THROUGHPUT_RATIO,
        }
    startups = [
        v["startup_to_round1_s"]["fedloom"]["max"]
        for v in summary.values()
        if "fedloom" in v["startup_to_round1_s"]
    ]
    if startups:
        out["fedloom_startup_to_round1"] = {
            "target": f"<= {TARGET_STARTUP_S:g} s",
            "worst": max(startups),
            "met": max(startups) <= TARGET_STARTUP_S,
        }
    return out


def _fmt(value: float) -> str:
    if value >= 1000:
        return f"{value:,.0f}"
    if value >= 100:
        return f"{value:.0f}"
    if value >= 10:
        return f"{value:.1f}"
    if value >= 1:
        return f"{value:.2f}"
    return f"{value:.3f}"


def _cell(spread: dict[str, float] | None, repeats: int) -> str:
    if spread is None:
        return "-"
    if repeats == 1 or spread["min"] == spread["max"]:
        return _fmt(spread["median"])
    return f"{_fmt(spread['median'])} ({_fmt(spread['min'])}-{_fmt(spread['max'])})"


def markdown(summary: dict[str, Any], repeats: int) -> str:
    lines = []
    for key, title, ratio in METRICS:
        lines += [
            f"**{title}**",
            "",
            f"| clients | fedloom | Flower | {ratio} |",
            "| --- | --- | --- | --- |",
        ]
        for n, entry in summary.items():
            row = entry[key]
            ratio_cell = _cell(row.get("ratio"), repeats) + ("x" if "ratio" in row else "")
            cells = [
                f"{int(n):,}",
                _cell(row.get("fedloom"), repeats),
                _cell(row.get("flower"), repeats),
                ratio_cell,
            ]
            lines.append("| " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


# ----------------------------------------------------------------------------- main


def _describe(run: Run) -> str:
    return (
        f"{run['throughput_updates_per_s']:.1f} updates/s, "
        f"steady {run['steady_round_s']:.3f} s/round, round 1 {run['first_round_s']:.2f} s, "
        f"startup {run['startup_to_round1_s']:.2f} s, wall {run['process_wall_s'] or 0:.1f} s, "
        f"acc {run['final_test_acc']:.3f}"
    )


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--clients", type=int, nargs="+", default=[10, 100, 1000])
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--skip-flower", action="store_true")
    p.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    p.add_argument(
        "--flower-harness",
        type=Path,
        default=Path(os.environ.get("FLOWER_HARNESS", DEFAULT_HARNESS)),
    )
    args = p.parse_args(argv)
    if args.rounds < 1 or args.repeats < 1 or min(args.clients) < 1:
        p.error("--rounds, --repeats and --clients must be at least 1")
    if max(args.clients) > 1437:
        p.error("digits has 1,437 training rows: use at most 1437 clients")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    started = dt.datetime.now(dt.timezone.utc)
    meta: dict[str, Any] = {
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "date_utc": started.isoformat(timespec="seconds"),
        "machine": {"cpus": os.cpu_count(), "cpu": cpu_model(), "platform": platform.platform()},
        "python": platform.python_version(),
        "git": git_state(REPO),
        "clients": args.clients,
        "rounds": args.rounds,
        "repeats": args.repeats,
    }

    log("checking the workload: data split and one training round ...")
    checks = {
        "split_matches_harness": {str(n): check_split(n) for n in args.clients},
        "training_round_matches_reference": check_training(),
    }
    log(json.dumps(checks))
    if not all(checks["split_matches_harness"].values()):
        log("fedloom's digits split differs from the harness's; the comparison would be unfair")
        return 1
    if not checks["training_round_matches_reference"]["matches"]:
        log("fedloom's training round differs from the reference loop; see the check above")
        return 1

    flower = not args.skip_flower
    if flower:
        meta["flower"] = flower_versions(args.flower_harness)
        meta["flower_harness"] = str(args.flower_harness)
        meta["btime_error_s"] = btime_error_s()
    runs: list[Run] = []
    for repeat in range(args.repeats):
        for n in args.clients:
            for system in ("fedloom", "flower") if flower else ("fedloom",):
                log(f"repeat {repeat + 1}/{args.repeats}: {system}, {n} clients ...")
                if system == "fedloom":
                    run = run_fedloom(n, args.rounds)
                else:
                    run = run_flower(args.flower_harness, n, args.rounds, meta["btime_error_s"])
                runs.append({**run, "repeat": repeat})
                log("  " + _describe(run))
    meta["versions"] = next(r["versions"] for r in runs if r["system"] == "fedloom")
    summary = summarise(runs, args.clients)
    report = {
        "meta": meta,
        "checks": checks,
        "summary": summary,
        "targets": targets(summary),
        "runs": runs,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.json.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report, indent=1) + "\n")
    tmp.replace(args.json)
    print(markdown(summary, args.repeats))
    print("targets:", json.dumps(report["targets"]))
    log(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
