"""The ``fedloom`` command.

Every user mistake ends in one line on stderr naming the problem and what is accepted, and exit
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import logging
import sys
import time
from collections.abc import Sequence
from typing import Any

from fedloom.client import MODELS
from fedloom.config import BUILTIN_MODEL_SGD, SimulationConfig, load_toml
from fedloom.data import DATASETS, PARTITIONS
from fedloom.errors import ConfigError, DataError, FedloomError
from fedloom.simulation._attack import ATTACKS
from fedloom.strategy import STRATEGIES
from fedloom.tracking import summary

__all__ = ["main"]

_EPILOG = """\
Settings may also come from a TOML file with the same names (dashes or underscores):
  fedloom simulate run.toml --rounds 50     (flags override the file)
Outputs with --out DIR: DIR/history.json, DIR/model.npz, DIR/config.toml.
"""


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedloom", description="Federated learning: simulate, deploy, keep data private."
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    sim = sub.add_parser(
        "simulate",
        help="run a federated simulation on this machine",
        description="Run a federated training simulation: many virtual clients, one process.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sim.add_argument("config", nargs="?", help="a TOML file of settings")
    add = sim.add_argument
    add("--dataset", help=f"one of: {', '.join(DATASETS)} (default digits)")
    add("--model", help=f"one of: {', '.join(MODELS)} (default mlp)")
    add("--clients", type=int, help="number of clients (default 100, or the natural count)")
    add("--rounds", type=int, help="number of rounds (default 20)")
    group = sim.add_mutually_exclusive_group()
    group.add_argument("--fraction", type=float, help="fraction of clients per round, in (0, 1]")
    group.add_argument("--clients-per-round", type=int, help="clients sampled per round")
    sgd = BUILTIN_MODEL_SGD
    add("--local-epochs", type=int, help=f"local epochs per round (default {sgd.local_epochs})")
    add("--batch-size", type=int, help=f"local batch size (default {sgd.batch_size})")
    add("--lr", type=float, help=f"client learning rate (default {sgd.lr})")
    add("--momentum", type=float, help="client SGD momentum (default 0)")
    add("--partition", help=f"one of: {', '.join(PARTITIONS)} (default iid, or natural)")
    add("--strategy", help=f"one of: {', '.join(STRATEGIES)} (default fedavg)")
    opts = sim.add_argument_group(
        "strategy hyperparameters", "unset ones take the strategy's default (see the README)"
    )
    opt = opts.add_argument
    opt("--server-lr", type=float, help="server learning rate (1.0; FedOpt 0.01)")
    opt("--server-momentum", type=float, help="fedavgm: server momentum β (0.9)")
    opt("--mu", type=float, help="fedprox: proximal term weight μ (0.01)")
    opt("--beta1", type=float, help="fedadam/fedyogi/fedadagrad: first moment decay (0.9)")
    opt("--beta2", type=float, help="fedadam/fedyogi: second moment decay (0.99)")
    opt("--tau", type=float, help="fedadam/fedyogi/fedadagrad: adaptivity τ (0.001)")
    opt("--trim", type=float, help="trimmed-mean: fraction cut at each end (0.1)")
    opt("--byzantine", type=int, help="krum/multi-krum/bulyan: attackers tolerated, f (0)")
    opt("--krum-m", type=int, help="multi-krum: updates averaged, m (n - f)")
    cond = sim.add_argument_group("simulated conditions and adversaries")
    cond.add_argument(
        "--stragglers", type=float, help="fraction of each round's clients that run 1..E epochs"
    )
    cond.add_argument(
        "--straggler-policy", help="keep or drop stragglers' partial work (fedprox keeps)"
    )
    cond.add_argument("--dropout", type=float, help="fraction of each round's clients that vanish")
    cond.add_argument(
        "--attack", metavar="KIND:FRACTION", help=f"malicious clients: {', '.join(ATTACKS)}"
    )
    cond.add_argument("--attack-scale", type=float, help="the attack's k (its default if unset)")
    sec = sim.add_argument_group("secure aggregation")
    sec.add_argument("--secure-aggregation", choices=("secagg", "secagg+"),
                     help="the server sees only the sum of the updates")  # fmt: skip
    sec.add_argument("--secagg-threshold", type=float, help="t as a share of neighbours (2/3)")
    sec.add_argument("--secagg-degree", type=int, help="secagg+: neighbours per client (log n)")
    sec.add_argument("--secagg-clip", type=float, help="per-coordinate clip before encoding (1)")
    sec.add_argument("--secagg-bits", type=int, help="fixed-point bits per value (20)")
    sec.add_argument("--secagg-modulus-bits", type=int, help="sums modulo 2^k (32)")
    sec.add_argument("--secagg-weight-bound", type=int, help="example count cap per client (1000)")
    add("--seed", type=int, help="random seed (default 0)")
    add("--local-test-fraction", type=float, help="each client's local test share (default 0)")
    add("--test-fraction", type=float, help="central test share (default 0.2)")
    add("--min-clients", type=int, help="fewest accepted updates for a round (default 1)")
    add("--stop-at-accuracy", type=float, help="end the run once test accuracy reaches this")
    add("--out", help="folder for history.json, model.npz and config.toml")
    add("--quiet", action="store_true", help="no progress bar")
    return parser


def _settings(args: argparse.Namespace) -> SimulationConfig:
    settings: dict[str, Any] = load_toml(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in ("command", "config", "quiet") or value is None:
            continue
        settings[key] = value
    return SimulationConfig().replace(**settings)


def _simulate(args: argparse.Namespace) -> int:
    from fedloom.simulation import simulate

    config = _settings(args)
    started = time.perf_counter()
    result = simulate(config, progress=not args.quiet)
    print(summary(result.history, time.perf_counter() - started))
    if config.out:
        print(f"history, model and config written to {config.out}/")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedloom`` command; returns the exit status."""
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fedloom: %(message)s")
    try:
        if args.command == "simulate":
            return _simulate(args)
    except (ConfigError, DataError) as exc:
        print(f"fedloom: error: {exc}", file=sys.stderr)
        return 2
    except FedloomError as exc:
        print(f"fedloom: run failed: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("fedloom: interrupted", file=sys.stderr)
        return 130
    return 2


if __name__ == "__main__":
    sys.exit(main())
