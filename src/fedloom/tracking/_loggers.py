"""Experiment trackers: a run's settings, every round's numbers and its results, sent where the
rest of a researcher's experiments already are (TensorBoard, MLflow, or a logger of your own).

A logger is any object with the three methods of :class:`RunLogger`. The round loop's caller
(``simulate``, ``fedloom server``) calls them through :class:`Loggers`, which keeps a tracker's
outage from costing the federation a round: a failure while the run goes on is logged once per
logger and the training continues. Only :meth:`RunLogger.start` may stop a run, before its first
round, so that a tracker that cannot be reached is said at once.

    fedloom simulate --log tensorboard:runs/tb --log mlflow:sqlite:///mlflow.db ...
"""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from fedloom.errors import ConfigError
from fedloom.messages import RoundRecord
from fedloom.tracking._history import History

__all__ = [
    "LOGGERS",
    "Loggers",
    "MlflowLogger",
    "RunLogger",
    "TensorBoardLogger",
    "make_logger",
    "round_scalars",
]

log = logging.getLogger("fedloom.tracking")

LOGGERS = ("tensorboard", "mlflow")
"""The trackers ``--log`` names: ``tensorboard:DIR``, ``mlflow`` or ``mlflow:TRACKING_URI``."""


@runtime_checkable
class RunLogger(Protocol):
    """What a run tells an experiment tracker. Implement the three methods to add your own."""

    def start(self, settings: Mapping[str, Any]) -> None:
        """The run begins with these settings (every :class:`~fedloom.config.SimulationConfig`
        field). Raise :class:`~fedloom.errors.ConfigError` if the tracker cannot be used."""

    def log_round(self, record: RoundRecord) -> None:
        """A round ended (``record.round`` is its number, from 1)."""

    def finish(self, history: History, out_dir: str | None, ok: bool) -> None:
        """The run ended, finished (``ok``) or failed; ``out_dir`` holds ``history.json`` and
        ``model.npz`` when the run wrote them."""


def round_scalars(record: RoundRecord) -> dict[str, float]:
    """The numbers of a round a tracker plots: its evaluations, clients, seconds and every
    metric (privacy spent, say), the finite ones."""
    values: dict[str, float] = {"clients": float(record.clients), "seconds": record.seconds}
    for key in ("accuracy", "loss", "train_loss", "fed_accuracy", "fed_loss"):
        value = getattr(record, key)
        if value is not None:
            values[key] = float(value)
    for key, value in record.metrics.items():
        values[key] = float(value)
    return {k: v for k, v in values.items() if math.isfinite(v)}


def _shown_settings(settings: Mapping[str, Any]) -> dict[str, str]:
    return {k: str(v) for k, v in sorted(settings.items()) if v is not None}


class TensorBoardLogger:
    """Writes a run to TensorBoard event files in ``logdir`` with TensorBoard's own writer
    (``pip install 'fedloom[tensorboard]'``): one scalar per number of each round, the round as
    its step, and the settings as a text table (tag ``settings``)."""

    def __init__(self, logdir: str | os.PathLike[str]) -> None:
        self.logdir = Path(logdir)
        self._writer: Any = None

    def start(self, settings: Mapping[str, Any]) -> None:
        try:
            from tensorboard.compat.proto.summary_pb2 import Summary, SummaryMetadata
            from tensorboard.compat.proto.tensor_pb2 import TensorProto
            from tensorboard.compat.proto.tensor_shape_pb2 import TensorShapeProto
            from tensorboard.summary.writer.event_file_writer import EventFileWriter
        except ImportError:
            raise ConfigError(
                "--log tensorboard needs TensorBoard: install fedloom[tensorboard]"
            ) from None
        try:
            self.logdir.mkdir(parents=True, exist_ok=True)
            self._writer = EventFileWriter(str(self.logdir))
        except OSError as exc:
            raise ConfigError(f"--log tensorboard:{self.logdir}: {exc}") from None
        rows = "\n".join(f"| {k} | {v} |" for k, v in _shown_settings(settings).items())
        table = f"| setting | value |\n| --- | --- |\n{rows}".encode()
        text = Summary.Value(
            tag="settings",
            metadata=SummaryMetadata(plugin_data=SummaryMetadata.PluginData(plugin_name="text")),
            tensor=TensorProto(
                dtype=7,  # DT_STRING
                string_val=[table],
                tensor_shape=TensorShapeProto(dim=[TensorShapeProto.Dim(size=1)]),
            ),
        )
        self._add(0, [text])

    def log_round(self, record: RoundRecord) -> None:
        from tensorboard.compat.proto.summary_pb2 import Summary

        values = [Summary.Value(tag=k, simple_value=v) for k, v in round_scalars(record).items()]
        self._add(record.round, values)
        self._writer.flush()

    def finish(self, history: History, out_dir: str | None, ok: bool) -> None:
        if self._writer is not None:
            self._writer.close()

    def _add(self, step: int, values: list[Any]) -> None:
        from tensorboard.compat.proto.event_pb2 import Event
        from tensorboard.compat.proto.summary_pb2 import Summary

        event = Event(wall_time=time.time(), step=step, summary=Summary(value=values))
        self._writer.add_event(event)


class MlflowLogger:
    """Logs a run to MLflow with its own client (``pip install 'fedloom[mlflow]'``): the settings
    as params, every round's numbers as metrics with the round as step, and at the end
    ``history.json`` and ``model.npz`` as artifacts, in experiment ``experiment``.

    ``tracking_uri`` is any MLflow tracking URI (``sqlite:///mlflow.db``, ``http://host:5000``);
    without one, MLflow's own default (``MLFLOW_TRACKING_URI``, else ``sqlite:///mlflow.db``).
    """

    def __init__(
        self, tracking_uri: str | None = None, *, experiment: str = "fedloom", run_name: str = ""
    ) -> None:
        self.tracking_uri = tracking_uri
        self.experiment = experiment
        self.run_name = run_name
        self._client: Any = None
        self._run_id: str | None = None

    def start(self, settings: Mapping[str, Any]) -> None:
        # an unreachable server fails in seconds, not after MLflow's minutes of retries
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "1")
        os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", "10")
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError:
            raise ConfigError("--log mlflow needs MLflow: install fedloom[mlflow]") from None
        mlflow_log = logging.getLogger("mlflow")  # its INFO lines (tables created...) are noise
        mlflow_log.setLevel(max(mlflow_log.getEffectiveLevel(), logging.WARNING))
        where = self.tracking_uri or "MLflow's default tracking URI"
        try:
            self._client = MlflowClient(tracking_uri=self.tracking_uri)
            found = self._client.get_experiment_by_name(self.experiment)
            experiment = (
                found.experiment_id
                if found is not None
                else self._client.create_experiment(self.experiment)
            )
            run = self._client.create_run(experiment, run_name=self.run_name or None)
            self._run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in _shown_settings(settings).items()]
            self._client.log_batch(self._run_id, params=params)
        except Exception as exc:  # MLflow raises many kinds: say which URI, and why
            raise ConfigError(
                f"--log mlflow: cannot use the tracking store at {where}: "
                f"{_first_line(exc)}; check the URI (sqlite:///FILE, http://HOST:PORT)"
            ) from None

    def log_round(self, record: RoundRecord) -> None:
        from mlflow.entities import Metric

        stamp = int(time.time() * 1000)
        metrics = [Metric(k, v, stamp, record.round) for k, v in round_scalars(record).items()]
        self._client.log_batch(self._run_id, metrics=metrics)

    def finish(self, history: History, out_dir: str | None, ok: bool) -> None:
        if self._run_id is None:
            return
        if out_dir is not None:
            for name in ("history.json", "model.npz", "config.toml"):
                path = Path(out_dir) / name
                if path.is_file():
                    self._client.log_artifact(self._run_id, str(path))
        self._client.set_terminated(self._run_id, "FINISHED" if ok else "FAILED")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def make_logger(spec: str) -> RunLogger:
    """The logger ``--log SPEC`` names: ``tensorboard:DIR``, ``mlflow`` or ``mlflow:URI``."""
    kind, _, where = spec.partition(":")
    if kind == "tensorboard":
        if not where:
            raise ConfigError("--log tensorboard needs a folder: --log tensorboard:DIR")
        return TensorBoardLogger(where)
    if kind == "mlflow":
        return MlflowLogger(where or None)
    raise ConfigError(
        f"--log {spec}: unknown logger {kind!r}; choose one of: tensorboard:DIR, mlflow, "
        "mlflow:TRACKING_URI"
    )


class Loggers:
    """Several loggers called as one, each guarded: a failure after :meth:`start` is logged
    once per logger (with how many calls it missed at the end) and the run goes on. Loggers
    may be named by their ``--log`` spec (``"tensorboard:DIR"``)."""

    def __init__(self, loggers: Iterable[RunLogger | str]) -> None:
        self.loggers = [make_logger(x) if isinstance(x, str) else x for x in loggers]
        for logger in self.loggers:
            if not isinstance(logger, RunLogger):
                raise ConfigError(
                    f"a logger needs start, log_round and finish; {logger!r} lacks one"
                )
        self.history = History()
        self._missed: dict[int, int] = {}

    def start(self, settings: Mapping[str, Any]) -> None:
        """Start every logger; a :class:`~fedloom.errors.ConfigError` from one stops the run
        before it begins, after the ones already started are finished as failed."""
        started: list[RunLogger] = []
        settings = json.loads(json.dumps(dict(settings), default=str))  # plain values only
        for logger in self.loggers:
            try:
                logger.start(settings)
            except BaseException:
                for done in started:
                    self._guarded(done, "finish", History(), None, False)
                raise
            started.append(logger)

    def log_round(self, record: RoundRecord) -> None:
        self.history = self.history.append(record)
        for logger in self.loggers:
            self._guarded(logger, "log_round", record)

    def finish(self, out_dir: str | None, ok: bool) -> None:
        """End every logger's run with the rounds logged; ``ok`` when the run finished."""
        for logger in self.loggers:
            self._guarded(logger, "finish", self.history, out_dir, ok)
            missed = self._missed.get(id(logger), 0)
            if missed:
                log.warning("%s missed %d call(s) of this run", _name(logger), missed)

    def __call__(self, record: RoundRecord) -> None:
        """The round loop's ``on_round``."""
        self.log_round(record)

    def _guarded(self, logger: RunLogger, method: str, *args: Any) -> None:
        try:
            getattr(logger, method)(*args)
        except Exception as exc:
            count = self._missed.get(id(logger), 0)
            if count == 0:
                log.warning(
                    "%s failed (%s: %s); the run goes on without it",
                    _name(logger), type(exc).__name__, _first_line(exc),
                )  # fmt: skip
            self._missed[id(logger)] = count + 1


def _name(logger: RunLogger) -> str:
    return type(logger).__name__
