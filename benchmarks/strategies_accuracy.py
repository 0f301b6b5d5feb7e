"""Accuracy experiments for the strategies: the FedProx, McMahan et al. and Byzantine tables.

Each experiment runs ``fedloom.simulate`` over a grid of settings and prints a Markdown table;
``--json`` writes every run's settings, per-round accuracy and the summary.

    .venv/bin/python benchmarks/strategies_accuracy.py fedprox --rounds 200 --seeds 0 1 2
    .venv/bin/python benchmarks/strategies_accuracy.py mcmahan --rounds 60
    .venv/bin/python benchmarks/strategies_accuracy.py byzantine --rounds 30

Accuracy is measured on the central test set after every round; seconds are wall time on
whatever machine runs it (shared and noisy: read them as rough).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import fedloom
from fedloom import SimulationConfig
from fedloom.models import make_trainer


def _run(settings: dict[str, Any], label: str) -> dict[str, Any]:
    started = time.perf_counter()
    result = fedloom.simulate(SimulationConfig(**settings))
    seconds = time.perf_counter() - started
    acc = [a if a is not None else float("nan") for a in result.history.column("accuracy")]
    loss = result.history.column("train_loss")
    row = {
        "label": label,
        "settings": settings,
        "accuracy": acc,
        "train_loss": loss,
        "clients": result.history.column("clients"),
        "final_accuracy": acc[-1],
        "last10_accuracy": sum(acc[-10:]) / len(acc[-10:]),
        "seconds": seconds,
        "run": dict(result.history.info),
        "parameters": result.parameters,
    }
    print(
        f"{label}: final accuracy {acc[-1]:.4f}, mean of last 10 rounds "
        f"{row['last10_accuracy']:.4f}, {seconds:.0f} s",
        file=sys.stderr,
        flush=True,
    )
    return row


def _run_all(runs: Sequence[tuple[dict[str, Any], str]], jobs: int) -> list[dict[str, Any]]:
    """Every run, ``jobs`` at a time in worker processes (each single-threaded), in order."""
    if jobs <= 1:
        return [_run(settings, label) for settings, label in runs]
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(jobs, mp_context=context) as pool:
        futures = [pool.submit(_run, settings, label) for settings, label in runs]
        return [f.result() for f in futures]


def _global_train_loss(settings: dict[str, Any], parameters: Any) -> float:
    """The paper's training loss: the global model's mean loss over every device's train data."""
    ds = fedloom.load_dataset(
        settings["dataset"], num_clients=settings["clients"], seed=settings["seed"]
    )
    trainer = make_trainer(
        "logreg", input_shape=ds.input_shape, num_classes=ds.num_classes, lr=0.01,
        local_epochs=1, batch_size=10,
    )  # fmt: skip
    total = count = 0.0
    for i in range(ds.num_clients):
        result = trainer.evaluate(parameters, ds.client(i).train)
        total += result.loss * result.num_examples
        count += result.num_examples
    return total / count


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values)


def fedprox(rounds: int, seeds: Sequence[int]) -> tuple[list[dict[str, Any]], str]:
    """Li et al. (2020), Synthetic(1,1): FedAvg (drops stragglers) vs FedProx mu=1 (keeps)."""
    levels = (0.0, 0.5, 0.9)
    arms: tuple[tuple[str, dict[str, Any]], ...] = (("fedavg", {}), ("fedprox", {"mu": 1.0}))
    rows = []
    for seed in seeds:
        base = {
            "dataset": "synthetic:1,1", "clients": 30, "clients_per_round": 10,
            "model": "logreg", "lr": 0.01, "batch_size": 10, "local_epochs": 20,
            "rounds": rounds, "seed": seed,
        }  # fmt: skip
        for stragglers in levels:
            for strategy, extra in arms:
                settings = {**base, "strategy": strategy, "stragglers": stragglers, **extra}
                row = _run(settings, f"{strategy} stragglers={stragglers:.0%} seed={seed}")
                row["global_train_loss"] = _global_train_loss(settings, row["parameters"])
                rows.append(row)
    lines = [
        "| stragglers | FedAvg (drops them) | FedProx μ = 1 (keeps them) |",
        "| --- | --- | --- |",
    ]
    for stragglers in levels:
        cells = []
        for strategy, _ in arms:
            mine = [
                r for r in rows
                if r["settings"]["strategy"] == strategy
                and r["settings"]["stragglers"] == stragglers
            ]  # fmt: skip
            acc = [r["last10_accuracy"] for r in mine]
            loss = [r["global_train_loss"] for r in mine]
            cells.append(
                f"accuracy {_mean(acc):.3f} ({min(acc):.3f}-{max(acc):.3f}), "
                f"training loss {_mean(loss):.3f} ({min(loss):.3f}-{max(loss):.3f})"
            )
        lines.append(f"| {stragglers:.0%} | " + " | ".join(cells) + " |")
    return rows, "\n".join(lines)


def _rounds_to(acc: Sequence[float], target: float) -> int | None:
    for i, a in enumerate(acc, start=1):
        if a >= target:
            return i
    return None


MCMAHAN_STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "fedavgm": {},
    "fedadam": {},
    "scaffold": {},
}
"""Every strategy at its preset's defaults (FedAvgM: server lr 1, β 0.9; FedAdam: η 0.01,
τ 0.001) with the clients' lr 0.05. Ten-round probes on the 2-shard split chose these over
FedAvgM with server lr 0.1 or 0.3 and over FedAdam with η 0.003; FedAdam with η 0.03 was
about as good as 0.01."""


def mcmahan(
    rounds: int,
    seed: int,
    mnist: str,
    target: float,
    jobs: int,
    strategies: Sequence[str] = tuple(MCMAHAN_STRATEGIES),
    partitions: Sequence[str] = ("iid", "shards:2"),
    overrides: dict[str, Any] | None = None,
) -> tuple[list[dict[str, Any]], str]:
    """McMahan et al. (2017) on the MNIST test set split 8,000 / 2,000: rounds to ``target``.

    Each run stops at the first round that reaches the target (or after ``rounds``);
    ``overrides`` replace settings of every run (``lr``, say).
    """
    base = {
        "dataset": f"mnist:{mnist}", "test_fraction": 0.2, "clients": 100, "fraction": 0.1,
        "model": "cnn", "local_epochs": 5, "batch_size": 10, "lr": 0.05, "rounds": rounds,
        "seed": seed, "stop_at_accuracy": target,
    }  # fmt: skip
    runs = [
        (
            {**base, "partition": p, "strategy": s, **MCMAHAN_STRATEGIES.get(s, {}),
             **(overrides or {})},
            f"{s} {p}",
        )
        for p in partitions
        for s in strategies
    ]  # fmt: skip
    rows = _run_all(runs, jobs)
    lines = [
        f"| strategy | partition | client lr | rounds to {target:.0%} | best | last |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        reached = _rounds_to(row["accuracy"], target)
        row["rounds_to_target"] = reached
        st = row["settings"]
        lines.append(
            f"| {st['strategy']} | {st['partition']} | {st['lr']} | "
            f"{reached if reached else f'not in {rounds}'} | {max(row['accuracy']):.4f} | "
            f"{row['accuracy'][-1]:.4f} |"
        )
    return rows, "\n".join(lines)


BYZANTINE_STRATEGIES: dict[str, dict[str, Any]] = {
    "fedavg": {},
    "median": {},
    "trimmed-mean": {"trim": 0.2},
    "krum": {"byzantine": 20},
    "multi-krum": {"byzantine": 20},
    "bulyan": {"byzantine": 20},
}


def byzantine(rounds: int, seed: int, attack: str) -> tuple[list[dict[str, Any]], str]:
    """100 clients on digits, every client every round, a fifth of them attackers."""
    base = {"dataset": "digits", "clients": 100, "model": "mlp", "rounds": rounds, "seed": seed}
    rows = []
    for strategy, extra in BYZANTINE_STRATEGIES.items():
        clean = _run({**base, "strategy": strategy, **extra}, f"{strategy} no attack")
        attacked = _run(
            {**base, "strategy": strategy, "attack": attack, **extra}, f"{strategy} {attack}"
        )
        rows += [clean, attacked]
    lines = [
        f"| aggregator | no attack | {attack} |",
        "| --- | --- | --- |",
    ]
    for i, strategy in enumerate(BYZANTINE_STRATEGIES):
        clean, attacked = rows[2 * i], rows[2 * i + 1]
        lines.append(
            f"| {strategy} | {clean['final_accuracy']:.3f} | {attacked['final_accuracy']:.3f} |"
        )
    return rows, "\n".join(lines)


def _setting(text: str) -> tuple[str, Any]:
    key, _, value = text.partition("=")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def main(argv: Iterable[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("experiment", choices=("fedprox", "mcmahan", "byzantine"))
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--seeds", type=int, nargs="+", help="fedprox: seeds to average over")
    parser.add_argument("--mnist", default="../shared/data/mnist")
    parser.add_argument("--target", type=float, default=0.97)
    parser.add_argument("--attack", default="sign-flip:0.2")
    parser.add_argument("--json", type=Path)
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time (processes)")
    parser.add_argument("--strategies", nargs="+", help="mcmahan: only these strategies")
    parser.add_argument("--partitions", nargs="+", help="mcmahan: only these partitions")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="mcmahan: override a setting of every run, e.g. lr=0.02",
    )
    args = parser.parse_args(list(argv) if argv is not None else None)
    if args.experiment == "fedprox":
        rows, table = fedprox(args.rounds or 200, args.seeds or [0, 1, 2])
    elif args.experiment == "mcmahan":
        overrides = dict(_setting(kv) for kv in args.set)
        rows, table = mcmahan(
            args.rounds or 100, args.seed, args.mnist, args.target, args.jobs,
            args.strategies or tuple(MCMAHAN_STRATEGIES), args.partitions or ("iid", "shards:2"),
            overrides,
        )  # fmt: skip
    else:
        rows, table = byzantine(args.rounds or 30, args.seed, args.attack)
    print(table)
    for row in rows:
        row.pop("parameters", None)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"table": table, "runs": rows}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
