"""A kept simulation (``--out``) continues with ``--resume`` as if it had never stopped: the same
model and history as an uninterrupted run, after an extension, a SIGINT or a SIGTERM."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedloom
from fedloom.cli import main
from fedloom.errors import ConfigError
from fedloom.server import RunStore

# Each kind of state a run carries across rounds: the server optimizer's (FedAdam's moments),
# the clients' own (SCAFFOLD's control variates; local DP's step counts, which its epsilon
# counts), and a resumed run on other workers than it started on. Local DP's noise comes from
# the OS's entropy, unrepeatable by design, so that run is compared by its privacy spent.
CASES = {
    "fedadam": {"model": "mlp", "strategy": "fedadam"},
    "scaffold-on-two-workers": {"model": "logreg", "strategy": "scaffold", "workers": 2},
    "local-dp": {"model": "mlp", "local_dp_noise": 1.0, "local_dp_clip": 1.0, "batch_size": 32},
}


def _comparable(history: fedloom.History) -> list[dict[str, Any]]:
    return [{k: v for k, v in r.to_dict().items() if k != "seconds"} for r in history.rounds]


@pytest.mark.parametrize("case", list(CASES))
def test_a_resumed_run_ends_with_the_model_and_history_of_an_uninterrupted_one(
    case: str, tmp_path: Path
) -> None:
    # Prepare
    settings = dict(CASES[case])
    where = {"workers": settings.pop("workers")} if "workers" in settings else {}
    common = {"dataset": "digits", "clients": 8, "clients_per_round": 4, **settings}
    whole = fedloom.simulate(rounds=4, out=str(tmp_path / "whole"), **common)
    fedloom.simulate(rounds=2, out=str(tmp_path / "split"), **common)

    # Execute: two more rounds, from the folder alone
    resumed = fedloom.simulate(out=str(tmp_path / "split"), rounds=4, resume=True, **where)

    # Assert: bit for bit (local DP: the same privacy spent), and so on disk; every round
    # once in run.db
    if case == "local-dp":
        spent = [[r.metrics["local_epsilon"] for r in h.rounds] for h in (resumed.history,
                 whole.history)]  # fmt: skip
        assert spent[0] == spent[1] and spent[0][0] < spent[0][1] < spent[0][3]
    else:
        np.testing.assert_array_equal(resumed.parameters, whole.parameters)
        assert _comparable(resumed.history) == _comparable(whole.history)
    written = json.loads((tmp_path / "split" / "history.json").read_text())
    assert [r["round"] for r in written["rounds"]] == [1, 2, 3, 4]
    with RunStore(tmp_path / "split" / "run.db") as store:
        assert store.latest().round == 4 and store.run_config()["rounds"] == 4


def test_the_clients_own_state_is_what_makes_a_resumed_scaffold_run_exact(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the same resumption with the clients' control variates forgotten
    from fedloom.recipes import _simulate

    common = {"dataset": "digits", "model": "logreg", "clients": 8, "strategy": "scaffold"}
    whole = fedloom.simulate(rounds=3, **common)
    fedloom.simulate(rounds=2, out=str(tmp_path), **common)
    real = _simulate.loop_state
    monkeypatch.setattr(_simulate, "loop_state", lambda state: (real(state)[0], {}))

    # Execute
    forgetful = fedloom.simulate(out=str(tmp_path), rounds=3, resume=True)

    # Assert: the test above would catch a run store that dropped them
    assert not np.array_equal(forgetful.parameters, whole.parameters)


def test_a_kept_secure_aggregation_run_holds_no_client_state_between_rounds(
    tmp_path: Path,
) -> None:
    # a round's keys are over with the round, and the fixed-point link keeps no state
    from fedloom.recipes._kept import loop_state

    fedloom.simulate(dataset="digits", model="logreg", clients=6, rounds=2, out=str(tmp_path),
                     secure_aggregation="secagg")  # fmt: skip
    with RunStore(tmp_path / "run.db") as store:
        assert loop_state(store.latest())[1] == {}


def test_a_run_that_stopped_early_stays_stopped_when_resumed(tmp_path: Path) -> None:
    common = {"dataset": "digits", "model": "logreg", "clients": 5, "stop_at_accuracy": 0.5}
    first = fedloom.simulate(rounds=20, out=str(tmp_path), **common)
    assert first.stopped is not None and len(first.history) < 20

    again = fedloom.simulate(out=str(tmp_path), resume=True)

    assert again.stopped == first.stopped and len(again.history) == len(first.history)


def test_resume_refuses_what_it_cannot_continue(tmp_path: Path, capsys, caplog) -> None:
    # Prepare: a finished three-round run
    run = str(tmp_path / "run")
    fedloom.simulate(dataset="digits", model="logreg", clients=5, rounds=3, lr=0.2, out=run)
    kept = sorted(p.name for p in Path(run).iterdir())
    before = (Path(run) / "run.db").read_bytes()

    # Execute and assert: each refusal is one line, exit status 2, the run untouched
    refused = {
        ("--lr", "0.3"): "its --lr is 0.2, not 0.3: leave --lr out, or start a new run",
        ("--strategy", "fedprox"): "its --strategy is 'fedavg', not 'fedprox'",
        ("--rounds", "2"): "--rounds 2 is fewer than the 3 rounds this run has done",
        ("--overwrite",): "give --resume to continue the run in --out, or --overwrite",
    }
    for extra, message in refused.items():
        assert main(["simulate", "--quiet", "--out", run, "--resume", *extra]) == 2
        err = capsys.readouterr().err
        assert message in err and len(err.strip().splitlines()) == 1, err
    assert main(["simulate", "--quiet", "--out", str(tmp_path / "none"), "--resume"]) == 2
    assert "none/run.db does not exist" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()
    assert sorted(p.name for p in Path(run).iterdir()) == kept
    assert (Path(run) / "run.db").read_bytes() == before
    with pytest.raises(ConfigError, match="needs --out DIR"):
        fedloom.simulate(resume=True)

    # a finished run resumed: nothing to do, and the log says how to go on
    assert main(["simulate", "--quiet", "--out", run, "--resume"]) == 0
    assert "complete (3 of 3 rounds): nothing to resume; give --rounds N" in caplog.text


def test_resume_refuses_another_trainer_than_the_runs_and_leaves_the_run_as_it_was(
    tmp_path: Path,
) -> None:
    # Prepare: a run of the user's own 10-class trainer
    from fedloom.client import LinearTrainer

    fedloom.simulate(dataset="digits", clients=5, rounds=1, out=str(tmp_path),
                     trainer=LinearTrainer(64, 10))  # fmt: skip
    kept = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    # Execute and assert: without it, and with a 12-class one
    with pytest.raises(ConfigError, match="trained your own trainer; give the same trainer="):
        fedloom.simulate(out=str(tmp_path), rounds=2, resume=True)
    with pytest.raises(ConfigError, match="a model of 650 parameters; this trainer's has 780"):
        fedloom.simulate(out=str(tmp_path), rounds=2, resume=True, trainer=LinearTrainer(64, 12))
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == kept


def _rounds_written(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text())["rounds"])
    except (FileNotFoundError, ValueError):  # not yet, or being replaced
        return 0


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_a_signalled_simulation_stops_after_a_committed_round_and_resumes_to_the_end(
    stop: signal.Signals, tmp_path: Path
) -> None:
    # Prepare: a command-line run of rounds long enough to be caught mid-run
    out = tmp_path / "run"
    flags = ["--dataset", "digits", "--model", "mlp", "--clients", "10", "--rounds", "30",
             "--local-epochs", "3", "--seed", "4"]  # fmt: skip
    command = [sys.executable, "-m", "fedloom.cli", "simulate", "--quiet", *flags]
    running = subprocess.Popen([*command, "--out", str(out)], stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while _rounds_written(out) < 2 and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)

    # Execute: the signal, then the same folder resumed
    running.send_signal(stop)
    _, stopped_err = running.communicate(timeout=60)
    resumed = subprocess.run(
        [*command[:-len(flags)], "--out", str(out), "--resume"],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip

    # Assert: stopped with status 130 after a committed round, which it names; resumed to the
    # end with every round once, and the model an uninterrupted run has
    assert running.returncode == 130, stopped_err
    done = RunStore(out / "run.db")
    history = done.latest().history
    done.close()
    assert "continue with --resume" in stopped_err, stopped_err
    assert resumed.returncode == 0, resumed.stderr
    assert [r.round for r in history.rounds] == list(range(1, 31))
    whole = fedloom.simulate(dataset="digits", model="mlp", clients=10, rounds=30,
                             local_epochs=3, seed=4)  # fmt: skip
    np.testing.assert_array_equal(fedloom.load_checkpoint(out / "model.npz").parameters,
                                  whole.parameters)  # fmt: skip
    assert _comparable(history) == _comparable(whole.history)
