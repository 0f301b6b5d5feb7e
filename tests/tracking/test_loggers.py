"""Experiment trackers: what a run sends to TensorBoard and MLflow, read back with their own
readers, and a tracker's failure, which must not cost the federation its run."""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

import fedloom
from fedloom.cli import main
from fedloom.errors import ConfigError
from fedloom.messages import RoundRecord
from fedloom.tracking import History, Loggers

RUN: dict[str, Any] = {"dataset": "digits", "model": "logreg", "clients": 5, "rounds": 3}


def test_tensorboard_holds_every_rounds_numbers_and_the_settings(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    # Execute: a central-DP run, so that a metric (epsilon) rides along
    result = fedloom.simulate(
        **RUN, dp="central", noise_multiplier=0.5, clip_norm=1.0,
        loggers=[f"tensorboard:{tmp_path / 'tb'}"],
    )  # fmt: skip

    # Assert: read back with TensorBoard's own reader
    events = EventAccumulator(str(tmp_path / "tb"), size_guidance={"tensors": 0})
    events.Reload()
    accuracy = events.Scalars("accuracy")
    assert [e.step for e in accuracy] == [1, 2, 3]
    for event, record in zip(accuracy, result.history.rounds, strict=True):
        assert event.value == pytest.approx(record.accuracy, rel=1e-6)
    assert [e.value for e in events.Scalars("clients")] == [5.0, 5.0, 5.0]
    epsilons = [e.value for e in events.Scalars("epsilon")]
    assert epsilons == pytest.approx([r.metrics["epsilon"] for r in result.history.rounds])
    assert {"loss", "seconds"} <= set(events.Tags()["scalars"])
    (settings,) = events.Tensors("settings")
    table = settings.tensor_proto.string_val[0].decode()
    assert "| dp | central |" in table and "| rounds | 3 |" in table


# MLflow's SQL store uses a loader strategy SQLAlchemy 2.1 deprecates (MLflow's to change)
@pytest.mark.filterwarnings("ignore:The ``noload`` loader strategy is deprecated")
def test_mlflow_holds_the_settings_every_round_and_the_runs_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from mlflow.tracking import MlflowClient

    # Prepare: MLflow keeps artifacts beside the working directory by default
    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    # Execute: through the command line, with --out so that the files exist
    out = tmp_path / "run"
    flags = ["--dataset", "digits", "--model", "logreg", "--clients", "5", "--rounds", "3"]
    assert main(["simulate", "--quiet", *flags, "--out", str(out), "--log", f"mlflow:{uri}"]) == 0

    # Assert: read back with MLflow's client
    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("fedloom")
    (run,) = client.search_runs([experiment.experiment_id])
    written = json.loads((out / "history.json").read_text())["rounds"]
    assert run.info.status == "FINISHED"
    assert run.data.params["dataset"] == "digits" and run.data.params["rounds"] == "3"
    accuracy = client.get_metric_history(run.info.run_id, "accuracy")
    assert [m.step for m in accuracy] == [1, 2, 3]
    assert [m.value for m in accuracy] == pytest.approx([r["accuracy"] for r in written])
    files = {f.path for f in client.list_artifacts(run.info.run_id)}
    assert {"history.json", "model.npz", "config.toml"} <= files


class _Flaky:
    """A tracker that is down from round 2 on."""

    def __init__(self) -> None:
        self.rounds: list[int] = []
        self.finished: tuple[int, bool] | None = None

    def start(self, settings: Mapping[str, Any]) -> None:
        self.settings = dict(settings)

    def log_round(self, record: RoundRecord) -> None:
        if record.round >= 2:
            raise ConnectionError("tracker unreachable\nsecond line")
        self.rounds.append(record.round)

    def finish(self, history: History, out_dir: str | None, ok: bool) -> None:
        self.finished = (len(history), ok)


def test_a_tracker_down_mid_run_is_warned_about_once_and_the_run_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Execute
    flaky = _Flaky()
    with caplog.at_level(logging.WARNING, logger="fedloom.tracking"):
        result = fedloom.simulate(**RUN, loggers=[flaky])

    # Assert: three rounds trained; one warning, and the count of missed calls at the end
    assert len(result.history) == 3 and flaky.rounds == [1]
    assert flaky.finished == (3, True) and flaky.settings["rounds"] == 3
    failed = [r for r in caplog.records if "failed (ConnectionError" in r.message]
    assert len(failed) == 1 and "second line" not in failed[0].message
    assert "_Flaky missed 2 call(s) of this run" in caplog.text


def test_a_tracker_that_cannot_start_stops_the_run_before_anything_is_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: an MLflow server that is not there (the discard port on this machine)
    out = tmp_path / "run"
    status = main(["simulate", "--quiet", "--dataset", "digits", "--model", "logreg",
                   "--out", str(out), "--log", "mlflow:http://127.0.0.1:9"])  # fmt: skip

    # Assert: one line naming the URI, status 2, no run folder
    err = capsys.readouterr().err.strip().splitlines()
    assert status == 2 and len(err) == 1, err
    assert "--log mlflow: cannot use the tracking store at http://127.0.0.1:9" in err[0]
    assert not out.exists()


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("wandb", "unknown logger 'wandb'; choose one of: tensorboard:DIR, mlflow"),
        ("tensorboard", "--log tensorboard needs a folder: --log tensorboard:DIR"),
    ],
)
def test_an_unknown_tracker_is_one_line(spec: str, message: str, capsys) -> None:
    assert main(["simulate", "--quiet", "--log", spec]) == 2
    assert message in capsys.readouterr().err


def test_a_logger_without_the_three_methods_is_refused() -> None:
    with pytest.raises(ConfigError, match="a logger needs start, log_round and finish"):
        Loggers([object()])  # type: ignore[list-item]
