"""``fedloom server`` and ``fedloom client``: a deployed run, end to end.

The server takes the same settings as a simulation (dataset for its central test set and the
model's shape, model, strategy, rounds, seed), keeps the run in ``OUT/run.db`` (SQLite, WAL)
and serves it over gRPC; ``--resume`` continues the run stored there from its last completed
round. A client builds the model the server describes and trains on its own data.
"""

from __future__ import annotations

import functools
import importlib
import logging
import math
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np

from fedloom.client import ClientContext, Trainer
from fedloom.config import SimulationConfig
from fedloom.data import ArrayData, ClientData, label_names, load_client_data, load_dataset
from fedloom.errors import ConfigError, DataError, RoundFailedError
from fedloom.messages import EvalResult
from fedloom.models import make_trainer
from fedloom.params import ParamSpec, Vector
from fedloom.recipes._kept import RUN_DB, committer, loop_state, reopen
from fedloom.recipes._plan import RunPlan, cohort_size, local_sgd, plan
from fedloom.recipes._simulate import stopper
from fedloom.recipes._use import check_out_dir, write_model_file
from fedloom.server import RoundState, RunResult, RunStore, run_rounds
from fedloom.tracking import Loggers, RunLogger

__all__ = ["ServeSettings", "load_trainer", "model_description", "serve", "serve_client"]

log = logging.getLogger("fedloom.transport")


@dataclass(frozen=True)
class ServeSettings:
    """The network side of ``fedloom server``.

    ``test_data`` (a file in any format ``fedloom client --data`` reads, ``label`` naming a
    CSV's label column, ``fill_missing`` as for :func:`~fedloom.data.load_client_data`) is the
    server's own test set, and describes the model's input and ``classes`` (default: the
    largest label + 1, or the CSV's label names, which the clients then map theirs onto).
    ``features`` and ``classes`` describe the model for a server with no data at all: the run
    is then evaluated on the clients' held-out examples only (``fedloom client
    --local-test-fraction``). Without either, the settings' dataset describes it.
    ``rounds``, with ``resume``, changes the run's length (never below the rounds done).
    """

    address: str = "127.0.0.1:8080"
    certs: str | None = None
    insecure: bool = False
    round_timeout: float = 120.0
    wait_for_clients: float = 300.0
    heartbeat_timeout: float = 15.0
    resume: bool = False
    trainer: str | None = None
    test_data: str | None = None
    features: int | None = None
    label: str = "label"
    classes: int | None = None
    fill_missing: str | None = None
    rounds: int | None = None


def model_description(
    cfg: SimulationConfig, input_shape: tuple[int, ...], classes: int
) -> dict[str, Any]:
    """What a client needs to build the run's model: sent when it joins."""
    sgd = local_sgd(cfg)
    return {
        "model": cfg.model,
        "input_shape": list(input_shape),
        "num_classes": classes,
        "lr": sgd.lr,
        "local_epochs": sgd.local_epochs,
        "batch_size": sgd.batch_size,
        "momentum": cfg.momentum,
    }


def _tls(certs: str | None, insecure: bool, who: str) -> tuple[bytes, bytes, bytes] | None:
    if insecure:
        log.warning(
            "INSECURE: no TLS and no authentication; anyone who can reach this port can read "
            "the model and send updates. Use only on a trusted network for experiments."
        )
        return None
    if certs is None:
        raise ConfigError(
            "give --certs DIR (create it with `fedloom certs`), or --insecure for a local test"
        )
    from fedloom.transport import credentials  # gRPC and X.509 load only for a deployment

    creds = credentials(Path(certs), who)
    return creds.load()


def serve(
    cfg: SimulationConfig, net: ServeSettings, loggers: Sequence[RunLogger | str] = ()
) -> RunResult:
    """Run (or with ``net.resume``, continue) a federated training over gRPC.

    Everything that can be wrong before serving (the address, the certificates, the settings,
    the test data, a port in use) is refused before anything is written: ``OUT/run.db`` is
    created only once the server is listening.

    An interruption (``KeyboardInterrupt``; the command line turns SIGTERM into one) stops the
    run after its last committed round: the clients are told the server pauses, so they keep
    retrying and a ``--resume`` finds them, and the result says where it stopped. A run that
    fails tells its clients so, and they exit with an error.

    ``loggers`` (as for :func:`~fedloom.recipes.simulate`) start before the server listens, so
    a tracker that cannot be reached is refused before anything is served or written.
    """
    from fedloom.transport import GrpcFleet, ServerOptions, check_address, start_server

    if cfg.out is None:
        raise ConfigError("fedloom server needs --out DIR: the run is kept in DIR/run.db")
    check_address(net.address, flag="--address", listening=True)
    _check_times(net)
    check_out_dir(cfg.out)
    tls = _tls(net.certs, net.insecure, "server")
    tracked = Loggers(loggers)
    db = Path(cfg.out) / RUN_DB
    store: RunStore | None = None
    try:
        if net.resume:
            store, cfg, state = reopen(cfg.out, net.rounds)
            if state.round >= cfg.rounds:
                log.warning(
                    "run %s is complete (%d of %d rounds): nothing to resume; give --rounds N "
                    "to train it further",
                    store.run_id, state.round, cfg.rounds,
                )  # fmt: skip
                return RunResult(state.parameters, state.history)
        elif db.exists():
            with RunStore(db) as existing:
                if existing.run_id is not None:
                    raise ConfigError(
                        f"{db} already holds run {existing.run_id}; use --resume to continue "
                        "it, or a new --out folder"
                    )
        test, input_shape, classes, names = _test_set(cfg, net)
        model = model_description(cfg, input_shape, classes)
        model["built_from"] = net.test_data or (
            f"--features {net.features}" if net.features else cfg.dataset
        )
        if names is not None:
            model["labels"] = names  # a client maps its label names onto these classes
        trainer = load_trainer(net.trainer) if net.trainer else _trainer(model)
        model["spec"] = trainer.spec.to_json()
        if net.trainer:
            model["trainer"] = net.trainer
        _refuse_unservable(cfg)
        cohort = (
            cohort_size(cfg, cfg.clients)
            if cfg.clients is not None
            else cfg.clients_per_round or cfg.min_clients
        )
        # the cohort comes from whoever is connected, so central DP takes no credit for sampling
        run = plan(
            cfg,
            population=cfg.clients or cohort,
            dim=trainer.spec.size,
            sampled_from=cfg.clients_per_round or cfg.min_clients,
            cohort=cohort,
            amplified=False,
        )
        run_id = store.run_id if store is not None and store.run_id else uuid.uuid4().hex
        fleet = GrpcFleet(run_id, heartbeat_timeout=net.heartbeat_timeout)
        options = ServerOptions(
            net.address,
            tls,
            model,
            revoked=_revocation(net.certs),
            heartbeat_seconds=net.heartbeat_timeout / 4,  # a lost beat or two is no departure
        )
        tracked.start(cfg.to_dict())
        try:
            server, port = start_server(fleet, options)
        except BaseException:
            tracked.finish(None, ok=False)
            raise
        outcome = "failed"
        try:
            if store is None:  # serving now: the run starts on disk
                db.parent.mkdir(parents=True, exist_ok=True)
                store = RunStore(db)
                params = trainer.init_parameters(cfg.seed)
                store.create_run(cfg.to_dict(), trainer.spec, params, run_id=run_id)
                state = store.latest()
            elif cfg.rounds != store.run_config().get("rounds"):
                store.update_config(cfg.to_dict())
                log.warning("run %s now ends after round %d", run_id, cfg.rounds)
            else:
                log.info("resuming run %s after round %d", run_id, state.round)
            write_model_file(db.parent, model)
            log.warning("serving run %s on port %d", run_id, port)
            if test is None:
                log.warning(
                    "no test set on the server: the run is evaluated on the clients' held-out "
                    "examples alone (federated evaluation; fedloom client --local-test-fraction)"
                )
            elif net.test_data is None:
                log.warning(
                    "evaluating on %s's test split; give --test-data FILE to evaluate on data "
                    "of your own",
                    cfg.dataset,
                )
            result = _rounds(store, state, run, fleet, net, trainer, test, tracked)
            outcome = "done"
            return result
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM through the command line
            if store is None:
                raise
            outcome = "paused"
            latest = store.latest()
            log.warning("stopped after round %d, the last one committed", latest.round)
            why = (
                f"interrupted after round {latest.round}; continue with the same command and "
                "--resume (the clients wait for it)"
            )
            return RunResult(latest.parameters, latest.history, why)
        finally:
            tracked.finish(cfg.out, ok=outcome == "done")
            fleet.finish(outcome)
            # every client still there hears how the run ended (a silent one is waited for
            # up to its heartbeat timeout, at most 10 s)
            fleet.wait_told(min(10.0, net.heartbeat_timeout))
            server.stop(grace=1.0)
    finally:
        if store is not None:
            store.close()


def _check_times(net: ServeSettings) -> None:
    for flag, value in (
        ("--round-timeout", net.round_timeout),
        ("--wait-for-clients", net.wait_for_clients),
        ("--heartbeat-timeout", net.heartbeat_timeout),
    ):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"{flag} must be a positive number of seconds, got {value}")


def _test_set(
    cfg: SimulationConfig, net: ServeSettings
) -> tuple[ArrayData | None, tuple[int, ...], int, list[str] | None]:
    """The server's test set, the model's input shape and classes, and the classes' label
    names (a CSV's, or ``None``): from ``--test-data``, from ``--features`` and ``--classes``
    (no test set of its own), else from the settings' dataset (its central test split)."""
    if net.features is not None:
        if net.test_data is not None:
            raise ConfigError("give --test-data FILE or --features N, not both")
        if net.features < 1 or net.classes is None or net.classes < 2:
            raise ConfigError(
                f"--features {net.features} needs at least 1 feature and --classes K, K >= 2, "
                f"got --classes {net.classes}"
            )
        return None, (net.features,), net.classes, None
    if net.test_data is None:
        ds = load_dataset(
            cfg.dataset,
            num_clients=cfg.clients,
            partition=cfg.partition,
            seed=cfg.seed,
            test_fraction=cfg.test_fraction,
        )
        return ds.test, ds.input_shape, ds.num_classes, None
    names = label_names(net.test_data, net.label)
    test = load_client_data(net.test_data, net.label, classes=names, fill_missing=net.fill_missing)
    if len(test) == 0:
        raise DataError(f"--test-data {net.test_data} holds no examples")
    if names is not None:
        return test, tuple(test.x.shape[1:]), len(names), names
    classes = net.classes if net.classes is not None else int(test.y.max()) + 1
    if classes < 2 or int(test.y.min()) < 0 or int(test.y.max()) >= classes:
        raise DataError(
            f"--test-data {net.test_data}: labels must be 0 to {classes - 1} (give --classes K "
            f"for K classes); found {int(test.y.min())} to {int(test.y.max())}"
        )
    return test, tuple(test.x.shape[1:]), classes, None


def _evaluate_on(trainer: Trainer, data: ArrayData, parameters: Vector) -> EvalResult:
    return trainer.evaluate(parameters, data)


def _refuse_unservable(cfg: SimulationConfig) -> None:
    if cfg.local_dp_noise is not None:
        raise ConfigError(
            "local DP is a client's own promise to its records, so a client must set it, "
            "not the server; fedloom client has no local DP settings yet"
        )
    if cfg.dp is not None and cfg.clients is None:
        raise ConfigError(
            f"--dp {cfg.dp} needs --clients N, the number of users in the federation: delta "
            "must stay below 1/N"
        )


def _rounds(
    store: RunStore,
    state: RoundState,
    run: RunPlan,
    fleet: Any,
    net: ServeSettings,
    trainer: Trainer,
    test: ArrayData | None,
    tracked: Loggers,
) -> RunResult:
    """The served run's rounds, each committed to ``store`` and told to ``tracked``."""
    cfg, privacy = run.config, run.privacy
    if privacy is not None:
        privacy.replay(state.history)
    resume, _ = loop_state(state)
    if not fleet.wait_for_clients(cfg.min_clients, net.wait_for_clients):
        raise RoundFailedError(state.round + 1, "join", len(fleet.clients()), cfg.min_clients)

    central = test if test is not None and len(test) else None
    evaluate = None if central is None else functools.partial(_evaluate_on, trainer, central)

    return run_rounds(
        fleet,
        run.strategy,
        state.parameters,
        rounds=cfg.rounds,
        client_config=cfg.client_config(),
        evaluate=evaluate,
        federated_evaluation=test is None,
        min_clients=cfg.min_clients,
        bounds=cfg.update_bounds(),
        round_timeout=net.round_timeout,
        out_dir=cfg.out,
        spec=trainer.spec,
        resume=resume,
        on_commit=committer(store),
        on_round=tracked,
        stop=stopper(cfg, privacy),
        round_metrics=privacy.metrics if privacy is not None else None,
    )


def load_trainer(entry_point: str) -> Trainer:
    """Your own trainer from ``package.module:function`` (called with no arguments)."""
    module_name, _, attr = entry_point.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"--trainer must look like package.module:function, got {entry_point!r}")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"--trainer {entry_point}: {exc}") from None
    trainer = factory()
    for needed in ("spec", "init_parameters", "fit", "evaluate"):
        if not hasattr(trainer, needed):
            raise ConfigError(f"--trainer {entry_point} returned an object without {needed}()")
    return cast(Trainer, trainer)


def _revocation(certs: str | None) -> Any:
    """What the server refuses, re-read on every call; a revocation file that cannot be read
    (half-written, not UTF-8) keeps the last good list, with an error in the log."""
    from fedloom.transport import Revocations, revocations

    if certs is None:
        return Revocations
    folder = Path(certs)
    last = [revocations(folder)]  # a corrupt file at start-up is a DataError, before serving

    def current() -> Revocations:
        try:
            last[0] = revocations(folder)
        except DataError as exc:
            log.error("%s; keeping the last list read", exc)
        return last[0]

    return current


def _map_labels(data: ClientData, names: list[str], server: Any) -> ClientData:
    """``data`` with its classes (indices into ``names``) renumbered as the server's."""
    if not isinstance(server, list):
        raise DataError(
            f"this client's labels are names ({', '.join(names)}); the server's test data has "
            "numbered classes: use the same kind of labels on both sides"
        )
    unknown = [n for n in names if n not in server]
    if unknown:
        raise DataError(
            f"this client's label {unknown[0]!r} is not one of the server's classes "
            f"({', '.join(map(str, server))})"
        )
    order = np.array([server.index(n) for n in names], dtype=np.int64)
    train, test = data.train, data.test
    return ClientData(ArrayData(train.x, order[train.y]), ArrayData(test.x, order[test.y]))


def _trainer(model: dict[str, Any]) -> Trainer:
    try:
        return make_trainer(
            str(model["model"]),
            input_shape=tuple(int(x) for x in model["input_shape"]),
            num_classes=int(model["num_classes"]),
            lr=float(model["lr"]),
            local_epochs=int(model["local_epochs"]),
            batch_size=int(model["batch_size"]),
            momentum=float(model.get("momentum", 0.0)),
        )
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"the server's model description is malformed: {exc}") from None


def serve_client(
    address: str,
    client_id: str,
    *,
    certs: str | None,
    insecure: bool,
    data: ClientData,
    give_up: float = 60.0,
    trainer: str | None = None,
    labels: list[str] | None = None,
) -> int:
    """Join the server at ``address`` as ``client_id`` and train until the run ends.

    The model is the built-in one the server describes, or your own ``trainer`` entry point
    (the same one the server was started with); either way its parameter spec must match the
    server's. A malformed ``address`` is refused at once (``ConfigError``), never retried.
    ``labels`` are the names this client's classes stand for (its CSV's, sorted): they are
    mapped onto the server's classes when it joins.
    """
    from fedloom.transport import check_address

    check_address(address, flag="--server")
    if not (math.isfinite(give_up) and give_up >= 0):
        raise ConfigError(f"--give-up must be 0 or more seconds, got {give_up}")
    tls = _tls(certs, insecure, client_id)

    def context(model: dict[str, Any]) -> ClientContext:
        if "trainer" in model and trainer is None:
            raise ConfigError(
                f"the server trains its own model {model['trainer']}; start this client with "
                f"--trainer {model['trainer']}"
            )
        own = data if labels is None else _map_labels(data, labels, model.get("labels"))
        local = load_trainer(trainer) if trainer else _trainer(model)
        if "spec" in model and local.spec != ParamSpec.from_json(str(model["spec"])):
            raise DataError("this client's model has other parameters than the server's")
        if trainer:
            return ClientContext(client_id, own, local)
        width = math.prod(int(x) for x in model["input_shape"])
        if own.train.x.shape[1] != width:
            raise DataError(
                f"this client's examples have {own.train.x.shape[1]} features; the server's "
                f"model takes {width}"
            )
        return ClientContext(client_id, own, local)

    from fedloom.transport import ClientOptions, run_client

    width = math.prod(data.train.x.shape[1:]) if trainer is None else None
    options = ClientOptions(address, tls, client_id=client_id, give_up=give_up, features=width)
    return run_client(options, context)
