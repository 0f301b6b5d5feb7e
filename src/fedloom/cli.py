"""The ``fedloom`` command.

Every user mistake ends in one line on stderr naming the problem and what is accepted, and exit
status 2; no traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import importlib.metadata
import logging
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

import numpy as np

from fedloom.config import BUILTIN_MODEL_SGD, SimulationConfig, load_toml
from fedloom.data import DATASETS, PARTITIONS
from fedloom.errors import ConfigError, DataError, FedloomError
from fedloom.models import EXPORT_FORMATS, MODELS
from fedloom.simulation import ATTACKS
from fedloom.strategy import STRATEGIES
from fedloom.tracking import summary

__all__ = ["main"]

_EPILOG = """\
Settings may also come from a TOML file with the same names (dashes or underscores):
  fedloom simulate run.toml --rounds 50     (flags override the file)
Outputs with --out DIR: DIR/history.json, DIR/model.npz, DIR/config.toml.
"""


class _Parser(argparse.ArgumentParser):
    """argparse, with a mistake reported in one line (and the nearest option for a misspelt
    one) instead of the whole usage."""

    def error(self, message: str) -> NoReturn:
        hint = ""
        unknown = [w for w in message.partition(": ")[2].split() if w.startswith("--")]
        if message.startswith("unrecognized arguments") and unknown:
            near = difflib.get_close_matches(unknown[0].split("=")[0], _options(self), n=1)
            hint = f"; did you mean {near[0]}?" if near else ""
        command = " ".join(self.prog.split()[:2])
        self.exit(2, f"{self.prog}: error: {message}{hint} (see {command} --help)\n")


def _options(parser: argparse.ArgumentParser) -> list[str]:
    """Every option string of ``parser`` and its subcommands."""
    found: list[str] = []
    for action in parser._actions:
        found += [o for o in action.option_strings if o.startswith("--")]
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                found += _options(child)
    return sorted(set(found))


def _parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="fedloom", description="Federated learning: simulate, deploy, keep data private."
    )
    version = importlib.metadata.version("fedloom")
    parser.add_argument("--version", action="version", version=f"fedloom {version}")
    sub = parser.add_subparsers(
        dest="command", required=True, metavar="COMMAND", parser_class=_Parser
    )
    sim = sub.add_parser(
        "simulate",
        help="run a federated simulation on this machine",
        description="Run a federated training simulation: many virtual clients, one process.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_settings(sim, simulation=True)
    _privacy_parser(sub)
    _audit_parser(sub)
    _deploy_parsers(sub)
    return parser


def _run_settings(sim: argparse.ArgumentParser, *, simulation: bool) -> None:
    """The settings a simulation and a server share (and, for a simulation, its own)."""
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
    _common_tail(sim)
    bound = sim.add_argument_group(
        "what one client's update may weigh", "where the server sees each update (not under "
        "secure aggregation, whose encoding bounds them)",
    )  # fmt: skip
    bound.add_argument("--max-examples", type=int, help="a larger claim is weighed as this (2^32)")
    bound.add_argument(
        "--update-norm-multiple",
        type=float,
        help="refuse an update whose L2 norm is above this times the round's median (10; 0: off)",
    )
    bound.add_argument("--max-update-norm", type=float, help="refuse an update above this norm")
    sec = sim.add_argument_group("secure aggregation")
    sec.add_argument(
        "--secure-aggregation",
        choices=("secagg", "secagg+"),
        help="the server sees only the sum of the updates",
    )
    sec.add_argument("--secagg-threshold", type=float, help="t as a share of neighbours (2/3)")
    sec.add_argument("--secagg-degree", type=int, help="secagg+: neighbours per client (log n)")
    sec.add_argument("--secagg-clip", type=float, help="per-coordinate clip before encoding (1)")
    sec.add_argument("--secagg-bits", type=int, help="fixed-point bits per value (20)")
    sec.add_argument("--secagg-modulus-bits", type=int, help="sums modulo 2^k (32)")
    sec.add_argument("--secagg-weight-bound", type=int, help="example count cap per client (1000)")
    dp = sim.add_argument_group("differential privacy (user level)")
    dp.add_argument(
        "--dp",
        choices=("central", "distributed"),
        help="central: DP-FedAvg, noise added by the server; distributed: each client adds "
        "discrete Gaussian noise under --secure-aggregation",
    )
    dp.add_argument("--clip-norm", type=float, help="L2 bound on each update (1.0)")
    dp.add_argument("--noise-multiplier", type=float, help="noise std / clip norm, z")
    dp.add_argument(
        "--adaptive-clipping",
        action="store_true",
        default=None,
        help="track a quantile of update norms (Andrew et al. 2021)",
    )
    dp.add_argument("--target-quantile", type=float, help="with --adaptive-clipping (0.5)")
    dp.add_argument("--clip-lr", type=float, help="with --adaptive-clipping (0.2)")
    dp.add_argument("--delta", type=float, help="the delta epsilon is reported at (1/N^1.1)")
    dp.add_argument("--target-epsilon", type=float, help="stop before epsilon passes this")
    dp.add_argument("--accountant", choices=("rdp", "pld"), help="dp-accounting's (rdp)")
    sim.add_argument(
        "--log",
        action="append",
        metavar="TRACKER",
        help="report the run to an experiment tracker (repeatable): tensorboard:DIR, mlflow "
        "(MLflow's default tracking URI) or mlflow:TRACKING_URI",
    )
    if not simulation:
        return
    local = sim.add_argument_group("differential privacy (record level, on each client)")
    local.add_argument("--local-dp-noise", type=float, help="DP-SGD: noise std / clip, z")
    local.add_argument("--local-dp-clip", type=float, help="L2 bound per example gradient (1.0)")
    local.add_argument("--local-dp-delta", type=float, help="each client's epsilon at it (1e-5)")
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
    sim.add_argument("--stop-at-accuracy", type=float, help="end the run once accuracy reaches it")
    par = sim.add_argument_group("scale")
    par.add_argument(
        "--workers",
        type=_workers,
        help="train each round's clients on N worker processes, or auto: one per core (1)",
    )
    par.add_argument(
        "--engine", choices=("local", "ray"), help="where the workers run (local; ray: Ray actors)"
    )
    par.add_argument(
        "--ray-address", help="with --engine ray: a cluster to join (default: start one)"
    )
    par.add_argument("--worker-cpus", type=float, help="with --engine ray: CPUs per actor (1)")
    par.add_argument("--worker-gpus", type=float, help="with --engine ray: GPUs per actor (0)")
    par.add_argument(
        "--central-test-rows",
        type=int,
        help="most rows of a generated population's central test set (10000)",
    )
    sim.add_argument("--quiet", action="store_true", help="no progress bar")
    if simulation:
        sim.add_argument(
            "--overwrite", action="store_true", help="replace the run already in --out"
        )
        sim.add_argument(
            "--resume",
            action="store_true",
            help="continue the run in --out after its last round (give --rounds N to extend "
            "it); it keeps its own settings",
        )


def _workers(text: str) -> int | str:
    """``--workers``: a whole number, or ``auto``."""
    if text == "auto":
        return text
    try:
        return int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"must be a whole number of processes or auto, got {text!r}"
        ) from None


def _common_tail(sim: argparse.ArgumentParser) -> None:
    add = sim.add_argument
    add("--seed", type=int, help="random seed (default 0)")
    add("--local-test-fraction", type=float, help="each client's local test share (default 0)")
    add("--test-fraction", type=float, help="central test share (default 0.2)")
    add("--min-clients", type=int, help="fewest accepted updates for a round (default 1)")
    add("--out", help="folder for history.json, model.npz and config.toml")


_DEPLOY_EPILOG = """\
  fedloom certs --out certs --server-host 127.0.0.1 --clients alice,bob,carol
  fedloom server --certs certs --address 127.0.0.1:8080 --min-clients 3 --rounds 20 --out run
  fedloom client --certs certs --server 127.0.0.1:8080 --client-id alice --data alice.csv
"""


def _privacy_parser(sub: Any) -> None:
    priv = sub.add_parser(
        "privacy",
        help="epsilon for a noise level, or the noise for a target epsilon",
        description="User-level DP-FedAvg accounting with Google's dp-accounting. Give "
        "--noise-multiplier to get epsilon, or --target-epsilon to get the noise multiplier.",
    )
    add = priv.add_argument
    add("--clients", type=int, required=True, help="N: clients that could be sampled")
    add("--clients-per-round", type=int, required=True, help="clients per round")
    add("--rounds", type=int, required=True, help="rounds of training")
    add("--delta", type=float, help="delta (default 1/N^1.1)")
    group = priv.add_mutually_exclusive_group(required=True)
    group.add_argument("--noise-multiplier", type=float, help="z, the noise std / clip norm")
    group.add_argument("--target-epsilon", type=float, help="the epsilon to reach")
    add(
        "--sampling",
        default="fixed-size-without-replacement",
        choices=("fixed-size-without-replacement", "poisson", "all"),
        help="how rounds sample clients (fedloom's samplers: fixed size without replacement)",
    )
    add("--accountant", default="rdp", choices=("rdp", "pld"), help="rdp (default) or pld")


def _audit_parser(sub: Any) -> None:
    audit = sub.add_parser(
        "audit",
        help="measure what a trained model leaks: a membership inference attack",
        description="Attack the final model of a `fedloom simulate --out RUN_DIR` run with the "
        "loss-threshold membership inference attack (Yeom et al. 2018): its training examples "
        "against held-out ones, in equal numbers. Reports the attack's AUC (0.5: no signal) and "
        "advantage, and, for a DP run, the most advantage its epsilon allows any attack.",
    )
    audit.add_argument("run_dir", metavar="RUN_DIR", help="the --out folder of a simulate run")
    audit.add_argument("--seed", type=int, default=0, help="seed of the balancing subsample (0)")
    audit.add_argument("--json", metavar="FILE", help="also write the audit as JSON to FILE")
    use = sub.add_parser(
        "predict",
        help="the classes a finished run's model gives a file's examples",
        description="Predict with the final model of a run (the --out folder of fedloom "
        "simulate or fedloom server): one class per example of --data, written as a CSV of one "
        "`prediction` column; with a label column in --data, the accuracy too.",
    )
    use.add_argument("run_dir", metavar="RUN_DIR", help="the run's --out folder")
    use.add_argument("--data", required=True, help="examples: .csv (label column optional), "
                     ".npz (x, y), MNIST IDX folder, or LEAF .json")  # fmt: skip
    use.add_argument("--label", default="label", help="the CSV's label column, if any")
    use.add_argument("--out", metavar="FILE", help="where to write the predictions (CSV)")
    export = sub.add_parser(
        "export",
        help="a finished run's model as a PyTorch state dict or ONNX",
        description="Write the final model of a run as a PyTorch state dict: it loads into "
        "fedloom.models.mlp or cnn with the run's shape (RUN_DIR/model.json), and a logreg or "
        "sklearn-sgd model into torch.nn.Linear(features, classes). --format onnx writes the same "
        "module as ONNX (input x: a batch of examples, flattened except for a cnn; output "
        "logits); it needs fedloom[onnx].",
    )
    export.add_argument("run_dir", metavar="RUN_DIR", help="the run's --out folder")
    export.add_argument("--format", choices=EXPORT_FORMATS, help="torch (the default) or onnx; "
                        "an --out ending in .onnx means onnx")  # fmt: skip
    export.add_argument("--out", metavar="FILE",
                        help="where to write it (RUN_DIR/model.pt or model.onnx)")  # fmt: skip
    status = sub.add_parser(
        "status",
        help="where a run stands, live or finished, from its run.db",
        description="Print where a run kept in RUN_DIR/run.db stands (a fedloom server's, or a "
        "simulation with --out), while it runs or after: the rounds committed of those "
        "planned, the last round's numbers, and each client's part (rounds accepted, rejected "
        "and dropped, and the last round it was selected for).",
    )
    status.add_argument("run_dir", metavar="RUN_DIR", help="the run's --out folder")


def _deploy_parsers(sub: Any) -> None:
    certs = sub.add_parser(
        "certs",
        help="create a federation's TLS certificates",
        description="Create a CA, a server certificate and one certificate per client (mutual "
        "TLS: a client's id is its certificate's common name). Run again with new --clients "
        "to add clients to an existing federation; --revoke ID refuses a client from now on.",
        epilog=_DEPLOY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    certs.add_argument("--out", required=True, help="folder for the certificates and keys")
    certs.add_argument(
        "--server-host",
        action="append",
        default=[],
        help="an IP address or DNS name clients dial (repeatable; 127.0.0.1 and localhost "
        "are always added, unless --no-local-hosts)",
    )
    certs.add_argument(
        "--no-local-hosts",
        action="store_true",
        help="leave 127.0.0.1 and localhost out of the server's certificate",
    )
    certs.add_argument("--clients", default="", help="comma-separated client ids to issue")
    certs.add_argument("--revoke", metavar="ID", help="revoke this client")
    certs.add_argument("--days", type=int, default=365, help="validity (default 365)")

    server = sub.add_parser(
        "server",
        help="serve a federated run to remote clients over gRPC",
        description="Serve a federated training run over gRPC with mutual TLS. The run is kept "
        "in OUT/run.db; --resume continues it after a crash.",
        epilog=_DEPLOY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _run_settings(server, simulation=False)
    net = server.add_argument_group("network")
    net.add_argument(
        "--address",
        default="127.0.0.1:8080",
        help="HOST:PORT to listen on (default 127.0.0.1:8080; port 0: any free one)",
    )
    net.add_argument(
        "--test-data",
        metavar="FILE",
        help="the server's own test set, in any format `fedloom client --data` reads; it also "
        "describes the model's input (default: the --dataset's test split)",
    )
    net.add_argument(
        "--features",
        type=int,
        help="or, for a server with no data: the clients' feature count (with --classes); the "
        "run is then evaluated on the clients' held-out examples",
    )
    net.add_argument("--label", default="label", help="--test-data's CSV label column")
    net.add_argument("--classes", type=int, help="with --test-data: the number of classes")
    net.add_argument(
        "--fill-missing",
        choices=("mean", "zero"),
        help="fill --test-data's empty cells with the column mean or 0 (default: refuse them)",
    )
    net.add_argument("--certs", help="the folder `fedloom certs` wrote")
    net.add_argument("--insecure", action="store_true", help="no TLS, no authentication")
    net.add_argument("--round-timeout", type=float, default=120.0, help="seconds (default 120)")
    net.add_argument(
        "--wait-for-clients",
        type=float,
        default=300.0,
        help="seconds to wait for --min-clients to join (default 300)",
    )
    net.add_argument("--resume", action="store_true", help="continue the run in OUT/run.db")
    net.add_argument(
        "--heartbeat-timeout",
        type=float,
        default=15.0,
        help="seconds of silence before a client counts as gone (default 15)",
    )
    net.add_argument(
        "--trainer",
        metavar="MODULE:FUNCTION",
        help="your own model: a function returning a fedloom Trainer",
    )

    client = sub.add_parser(
        "client",
        help="join a federated run and train on local data",
        description="Join a fedloom server and train its model on this machine's data.",
        epilog=_DEPLOY_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    client.add_argument("--server", required=True, help="host:port of the server")
    client.add_argument(
        "--trainer",
        metavar="MODULE:FUNCTION",
        help="your own model, the same entry point as the server's",
    )
    client.add_argument("--client-id", required=True, help="this client's id (its certificate)")
    client.add_argument("--certs", help="folder with ca.pem and clients/ID.pem, clients/ID.key")
    client.add_argument("--insecure", action="store_true", help="no TLS (local tests only)")
    client.add_argument(
        "--data",
        help="this client's data: .csv (label column), .npz (x, y), MNIST IDX folder, "
        "or LEAF .json",
    )
    client.add_argument("--user", help="with a LEAF .json --data: which user's data")
    client.add_argument("--label", default="label", help="the CSV's label column (default label)")
    client.add_argument(
        "--fill-missing",
        choices=("mean", "zero"),
        help="fill the CSV's empty cells with the column mean or 0 (default: refuse them)",
    )
    client.add_argument(
        "--local-test-fraction",
        type=float,
        default=0.0,
        help="hold out this share of --data for the run's federated evaluation (default 0)",
    )
    client.add_argument("--dataset", help="or: a built-in dataset, one partition of it (demos)")
    client.add_argument("--partition", help="with --dataset: how it is split")
    client.add_argument("--clients", type=int, help="with --dataset: into how many clients")
    client.add_argument(
        "--partition-index",
        type=int,
        help="with --dataset: which partition (default: --client-id as a number)",
    )
    client.add_argument("--seed", type=int, default=0, help="with --dataset: the split's seed")
    client.add_argument(
        "--give-up",
        type=float,
        default=60.0,
        help="seconds to keep retrying an unreachable server (default 60)",
    )


_NOT_SETTINGS = {
    "command", "config", "quiet", "address", "certs", "insecure", "round_timeout",
    "wait_for_clients", "resume", "trainer", "heartbeat_timeout", "test_data", "label", "classes",
    "overwrite", "fill_missing", "features", "log",
}  # fmt: skip


def _given(args: argparse.Namespace) -> dict[str, Any]:
    """The settings the command line (and its TOML file) gives, and no others."""
    settings: dict[str, Any] = load_toml(args.config) if args.config else {}
    for key, value in vars(args).items():
        if key in _NOT_SETTINGS or value is None:
            continue
        settings[key] = value
    return settings


def _settings(args: argparse.Namespace) -> SimulationConfig:
    return SimulationConfig().replace(**_given(args))


def _privacy(args: argparse.Namespace) -> int:
    from fedloom.privacy import Mechanism, epsilon, noise_for_epsilon
    from fedloom.recipes import default_delta

    delta = default_delta(args.delta, args.clients)
    cohort, sampling = args.clients_per_round, args.sampling
    if args.noise_multiplier is not None:
        mech = Mechanism(args.noise_multiplier, sampling, args.clients, cohort)
        eps = epsilon(mech, args.rounds, delta, args.accountant)
        print(
            f"epsilon = {eps:.4g} at delta = {delta:.3g} after {args.rounds} rounds "
            f"(noise multiplier {args.noise_multiplier}, {cohort} of {args.clients} clients "
            f"per round, {sampling}, {args.accountant})"
        )
    else:
        z = noise_for_epsilon(
            args.target_epsilon, delta, args.rounds, sampling, args.clients, cohort, args.accountant
        )
        print(
            f"noise multiplier = {z:.4g} for epsilon {args.target_epsilon} at delta "
            f"{delta:.3g} after {args.rounds} rounds ({cohort} of {args.clients} clients "
            f"per round, {sampling}, {args.accountant})"
        )
    return 0


def _certs(args: argparse.Namespace) -> int:
    from pathlib import Path

    from fedloom.transport import create_federation, revoke

    out = Path(args.out)
    if args.revoke:
        had = (out / "clients" / f"{args.revoke}.pem").exists()
        revoke(out, args.revoke)
        reissue = f"`fedloom certs --out {out} --clients {args.revoke}` issues it a new one"
        print(
            f"revoked {args.revoke}'s certificate; a running server refuses it from its next "
            f"call ({reissue})"
            if had
            else f"revoked every certificate of {args.revoke} (this folder holds none of it)"
        )
        return 0
    clients = [c for c in args.clients.split(",") if c]
    local = [] if args.no_local_hosts else ["127.0.0.1", "localhost"]
    hosts = list(dict.fromkeys([*args.server_host, *local]))
    made = create_federation(out, server_hosts=hosts, clients=clients, days=args.days)
    print(f"credentials in {out}/: ca.pem, server.pem/.key, clients/ for {', '.join(clients)}")
    return 0 if made else 2


def _server(args: argparse.Namespace) -> int:
    from fedloom.recipes import ServeSettings, serve

    config = _settings(args)
    net = ServeSettings(
        args.address,
        args.certs,
        args.insecure,
        args.round_timeout,
        args.wait_for_clients,
        heartbeat_timeout=args.heartbeat_timeout,
        resume=args.resume,
        trainer=args.trainer,
        test_data=args.test_data,
        features=args.features,
        label=args.label,
        classes=args.classes,
        fill_missing=args.fill_missing,
        rounds=args.rounds if args.resume else None,
    )
    started = time.perf_counter()
    with _sigterm_as_interrupt():
        result = serve(config, net, args.log or ())
    _closing(result, time.perf_counter() - started)
    return 0


def _client(args: argparse.Namespace) -> int:
    from fedloom.data import label_names, load_client_data, load_dataset
    from fedloom.recipes import serve_client

    if (args.data is None) == (args.dataset is None):
        raise ConfigError("give this client's data: --data FILE, or --dataset NAME (a demo)")
    names = None
    if args.data is not None:
        names = label_names(args.data, args.label)
        train = load_client_data(
            args.data, args.label, args.user, classes=names, fill_missing=args.fill_missing
        )
        data = _held_out(train, args.local_test_fraction, args.client_id)
    else:
        index = args.partition_index
        if index is None:
            if not args.client_id.isdigit():
                raise ConfigError(
                    "--dataset needs --partition-index when --client-id is not a number"
                )
            index = int(args.client_id)
        ds = load_dataset(
            args.dataset, num_clients=args.clients, partition=args.partition, seed=args.seed
        )
        if not 0 <= index < ds.num_clients:
            raise ConfigError(f"partition {index} does not exist: the split has {ds.num_clients}")
        data = ds.client(index)
    answered = serve_client(
        args.server,
        args.client_id,
        certs=args.certs,
        insecure=args.insecure,
        data=data,
        give_up=args.give_up,
        trainer=args.trainer,
        labels=names,
    )
    print(f"the run is over; this client answered {answered} instructions")
    return 0


def _audit(args: argparse.Namespace) -> int:
    import json
    from pathlib import Path

    from fedloom._io import atomic_write
    from fedloom.recipes import audit_run

    report = audit_run(args.run_dir, seed=args.seed)
    attack = report.attack
    if report.ceiling is None:
        dp = ["  epsilon          none: no DP, so no bound on the advantage"]
    else:
        relation = ""
        if report.ceiling_epsilon != report.epsilon:
            relation = f" at replace-one epsilon {report.ceiling_epsilon:.3g}"
        dp = [
            f"  epsilon          {report.epsilon:.3g} at delta {report.delta:.3g} "
            + (
                "(record level: the largest of the members' clients)"
                if report.level == "record"
                else "(user level)"
            ),
            f"  DP ceiling       {report.ceiling:.3f}  (the most advantage any attack can "
            f"have{relation})",
        ]
    print(
        "\n".join([
            f"membership inference (loss threshold) on {args.run_dir}, seed {args.seed}",
            f"  members          {attack.members} of {report.member_pool} training examples of "
            f"{len(report.clients)} of {report.population} clients",
            f"  non-members      {attack.non_members} of {report.non_member_pool} "
            f"({report.non_member_source})",
            f"  AUC              {attack.auc:.3f}  (0.5: no signal)",
            f"  advantage        {attack.advantage:.3f}  (best TPR - FPR; chance alone reaches "
            f"{attack.chance_advantage:.3f} 1 time in 20)",
            f"  TPR at 1% FPR    {attack.tpr_at_1pct_fpr:.3f}",
            f"  TPR at 10% FPR   {attack.tpr_at_10pct_fpr:.3f}",
            *dp,
        ])
    )  # fmt: skip
    if args.json:
        try:
            atomic_write(Path(args.json), json.dumps(report.to_dict(), indent=1).encode())
        except OSError as exc:
            raise ConfigError(f"cannot write --json {args.json}: {exc}") from None
    return 0


def _simulate(args: argparse.Namespace) -> int:
    from fedloom.recipes import simulate

    config = _settings(args)
    if args.resume and args.overwrite:
        raise ConfigError("give --resume to continue the run in --out, or --overwrite to "
                          "replace it, not both")  # fmt: skip
    if (
        config.out is not None
        and (Path(config.out) / "history.json").exists()
        and not (args.overwrite or args.resume)
    ):
        raise ConfigError(
            f"{config.out} already holds a run (history.json); give another --out, --resume "
            "to continue it, or --overwrite to replace it"
        )
    started = time.perf_counter()
    with _sigterm_as_interrupt():
        loggers = args.log or ()
        if args.resume:
            result = simulate(progress=not args.quiet, resume=True, loggers=loggers,
                              **_given(args))  # fmt: skip
        else:
            result = simulate(config, progress=not args.quiet, loggers=loggers)
    _closing(result, time.perf_counter() - started)
    if config.out:
        print(f"history, model and config written to {config.out}/")
    else:
        print("nothing written: give --out DIR to keep the history, the model and the settings")
    return 0


def _predict(args: argparse.Namespace) -> int:
    from fedloom.recipes import predict

    made = predict(args.run_dir, args.data, label=args.label, out=args.out)
    where = f"; written to {args.out}" if args.out else ""
    scored = f", accuracy {made.accuracy:.4f}" if made.accuracy is not None else ""
    print(f"{len(made.classes)} predictions{scored}{where}")
    return 0


def _export(args: argparse.Namespace) -> int:
    from fedloom.recipes import export

    written = export(args.run_dir, args.out, format=args.format)
    print(f"{'ONNX model' if written.suffix == '.onnx' else 'state dict'} written to {written}")
    return 0


def _status(args: argparse.Namespace) -> int:
    from fedloom.recipes import run_status

    found = run_status(args.run_dir)
    lines = [f"run {found.run_id}: {found.rounds_done} of {found.rounds_planned} rounds committed"]
    if found.history.rounds:
        last = found.history.rounds[-1]
        scored = f", accuracy {last.accuracy:.4f}" if last.accuracy is not None else ""
        lines.append(
            f"round {last.round}: {last.clients} client(s) accepted{scored}, {last.seconds:.2f} s"
        )
    lines.append(f"{len(found.clients)} client(s) have taken part")
    if found.clients:
        lines.append(f"  {'client':<16} {'accepted':>8} {'rejected':>8} {'dropped':>8} {'last':>6}")
        for client_id in sorted(found.clients, key=lambda c: (len(c), c)):
            c = found.clients[client_id]
            lines.append(
                f"  {client_id:<16} {c.accepted:>8} {c.rejected:>8} {c.dropped:>8} "
                f"{c.last_round:>6}"
            )
    print("\n".join(lines))
    return 0


def _held_out(train: Any, fraction: float, client_id: str) -> Any:
    """A client's own examples split into training and a held-out share, seeded by its id."""
    import zlib

    from fedloom.data import ClientData

    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"--local-test-fraction must be in [0, 1), got {fraction}")
    order = np.random.default_rng(zlib.crc32(client_id.encode())).permutation(len(train))
    held = round(fraction * len(train))
    return ClientData(train.subset(np.sort(order[held:])), train.subset(np.sort(order[:held])))


def _closing(result: Any, seconds: float) -> None:
    """The run's summary, and why it ended early when it did."""
    print(summary(result.history, seconds))
    if result.stopped:
        print(f"stopped early: {result.stopped}")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops a run as Ctrl-C does: after its last committed round (a server tells its
    clients it pauses)."""

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    before = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, before)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``fedloom`` command; returns the exit status."""
    # gRPC's own log lines (a TLS handshake refused, say) are for debugging: GRPC_VERBOSITY=INFO
    os.environ.setdefault("GRPC_VERBOSITY", "ERROR")
    args = _parser().parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="fedloom: %(message)s")
    # dp-accounting logs (through absl) each RDP order it cannot evaluate and leaves out; the
    # epsilon stays a valid bound, and the command line shows the result, not those lines
    logging.getLogger("absl").setLevel(logging.ERROR)
    try:
        commands = {
            "simulate": _simulate, "privacy": _privacy, "certs": _certs, "server": _server,
            "client": _client, "audit": _audit, "predict": _predict, "export": _export,
            "status": _status,
        }  # fmt: skip
        return commands[args.command](args)
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
