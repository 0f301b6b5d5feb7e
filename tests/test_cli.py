"""The fedloom command: bad input is one line and exit status 2; good input writes a run."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from fedloom.cli import main
from fedloom.config import SimulationConfig
from fedloom.strategy import STRATEGIES

DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--dataset", "imagenet"], "unknown dataset 'imagenet'"),
        (
            ["--model", "resnet"],
            "unknown model 'resnet'; choose one of: mlp, cnn, logreg, sklearn-sgd",
        ),
        (["--strategy", "fedfoo"], "unknown strategy 'fedfoo'; choose one of: fedavg"),
        (["--partition", "zipf:2"], "unknown partition"),
        (["--fraction", "1.5"], r"--fraction must be in (0, 1], got 1.5"),
        (["--fraction", "0"], r"--fraction must be in (0, 1], got 0"),
        (["--rounds", "0"], "--rounds must be at least 1, got 0"),
        (["--clients", "5000"], "5000 clients but only 1437 training samples"),
        (["--clients-per-round", "200"], "more than the 100 clients"),
        (["--lr", "-1"], "--lr must be positive"),
        (["--dataset", "mnist:/no/such/dir"], "/no/such/dir"),
        (["missing.toml"], "config file missing.toml does not exist"),
        (["--model", "cnn", "--dataset", "wine"], "cnn model needs image data"),
        (["--mu", "0.1"], "strategy 'fedavg' does not take --mu; it applies to: fedprox"),
        (["--strategy", "krum", "--byzantine", "60"], "needs n > 2f + 2"),
        (["--strategy", "trimmed-mean", "--trim", "0.5"], "--trim"),
        (["--strategy", "fedadam", "--tau", "0"], "--tau must be positive"),
        (["--attack", "sign-flip"], "--attack"),
        (["--dropout", "1"], "--dropout must be in [0, 1)"),
        (["--straggler-policy", "maybe"], "--straggler-policy must be drop or keep"),
        (["--workers", "0"], "--workers must be at least 1, or auto, got 0"),
        (["--central-test-rows", "0"], "--central-test-rows must be at least 1"),
        (["--max-examples", "0"], "--max-examples must be from 1 to 2^53"),
        (["--max-examples", str(2**53 + 1)], "--max-examples must be from 1 to 2^53"),
        (["--update-norm-multiple", "0.5"], "--update-norm-multiple must be at least 1 (or 0"),
        (["--update-norm-multiple", "nan"], "--update-norm-multiple must be"),
        (["--max-update-norm", "-1"], "--max-update-norm must be positive"),
        (["--max-update-norm", "inf"], "--max-update-norm must be a finite number"),
    ],
)
def test_bad_input_is_one_line_and_exit_status_2(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    status = main(["simulate", "--quiet", "--rounds", "1", *argv])

    # Assert
    err = capsys.readouterr().err
    assert status == 2
    assert err.startswith("fedloom: error: ")
    assert message in err
    assert len(err.strip().splitlines()) == 1
    assert "Traceback" not in err


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("rounds = [", "is not valid TOML"),
        ("roundz = 3", "unknown setting(s) roundz"),
        ('rounds = "three"', "setting 'rounds' must be a whole number"),
        ("fraction = true", "setting 'fraction' must be a number"),
    ],
)
def test_malformed_config_file_is_refused(
    tmp_path: Path, text: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "run.toml"
    path.write_text(text)
    assert main(["simulate", "--quiet", str(path)]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


def test_flags_override_the_config_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    path = tmp_path / "run.toml"
    path.write_text(
        'dataset = "wine"\nmodel = "logreg"\nclients = 4\nrounds = 5\nlocal-epochs = 2\n'
    )
    out = tmp_path / "out"

    # Execute
    status = main(["simulate", str(path), "--rounds", "2", "--quiet", "--out", str(out)])

    # Assert
    assert status == 0
    history = json.loads((out / "history.json").read_text())
    assert [r["round"] for r in history["rounds"]] == [1, 2]
    assert {"accuracy", "loss", "train_loss", "clients", "seconds"} <= set(history["rounds"][0])
    assert history["rounds"][0]["clients"] == 4
    config = (out / "config.toml").read_text()
    assert "rounds = 2" in config and "local_epochs = 2" in config
    assert (out / "model.npz").exists()
    assert "final accuracy" in capsys.readouterr().out


def test_heart_disease_runs_on_its_natural_hospital_split(tmp_path: Path) -> None:
    heart = DATA / "uci_heart_disease"
    if not heart.is_dir():
        pytest.skip("../shared/data is not present")
    status = main(
        ["simulate", "--quiet", "--dataset", f"heart:{heart}", "--model", "logreg",
         "--rounds", "3", "--out", str(tmp_path)]
    )  # fmt: skip
    assert status == 0
    rounds = json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert rounds[-1]["clients"] == 4
    assert rounds[-1]["fed_accuracy"] is not None


def test_the_console_command_is_installed_and_has_help() -> None:
    done = subprocess.run(
        [str(Path(sys.executable).with_name("fedloom")), "simulate", "--help"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 0
    for flag in ("--dataset", "--clients-per-round", "--local-epochs", "--partition", "--out"):
        assert flag in done.stdout


def test_a_data_error_from_a_real_process_has_no_traceback(tmp_path: Path) -> None:
    bad = tmp_path / "mnist"
    bad.mkdir()
    (bad / "t10k-images-idx3-ubyte").write_bytes(b"garbage")
    (bad / "t10k-labels-idx1-ubyte").write_bytes(b"garbage")
    done = subprocess.run(
        [sys.executable, "-m", "fedloom.cli", "simulate", "--quiet", "--dataset", f"mnist:{bad}"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stderr.startswith("fedloom: error: ")
    assert "Traceback" not in done.stderr


def test_help_lists_every_strategy_and_its_hyperparameters(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit):
        main(["simulate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    for name in STRATEGIES:
        assert name in out
    for flag in (
        "--mu",
        "--server-momentum",
        "--beta1",
        "--beta2",
        "--tau",
        "--trim",
        "--byzantine",
        "--krum-m",
        "--stragglers",
        "--dropout",
        "--attack",
    ):
        assert flag in out


def test_a_robust_strategy_under_attack_runs_from_the_cli(tmp_path: Path) -> None:
    # Execute
    status = main([
        "simulate", "--quiet", "--model", "logreg", "--clients", "20", "--rounds", "3",
        "--strategy", "bulyan", "--byzantine", "4", "--attack", "sign-flip:0.2",
        "--out", str(tmp_path),
    ])  # fmt: skip

    # Assert
    history = json.loads((tmp_path / "history.json").read_text())
    assert status == 0
    assert len(history["run"]["malicious_clients"]) == 4
    assert history["rounds"][-1]["accuracy"] > 0.8
    assert 'strategy = "bulyan"' in (tmp_path / "config.toml").read_text()


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_strategy_runs_from_the_cli(
    name: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    status = main([
        "simulate", "--quiet", "--model", "logreg", "--clients", "10", "--rounds", "2",
        "--strategy", name, "--out", str(tmp_path),
    ])  # fmt: skip
    history = json.loads((tmp_path / "history.json").read_text())
    assert status == 0
    assert [r["clients"] for r in history["rounds"]] == [10, 10]
    assert history["rounds"][-1]["accuracy"] > 0.3


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["simulate", "--epochs", "3"],
            "unrecognized arguments: --epochs; did you mean --local-epochs?",
        ),
        (["simulate", "--rounds", "three"], "argument --rounds: invalid int value: 'three'"),
        (["server", "--adress", "127.0.0.1:1"], "did you mean --address?"),
    ],
)
def test_a_flag_mistake_is_one_line_with_the_nearest_flag_not_the_usage(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    err = capsys.readouterr().err
    assert stopped.value.code == 2
    assert message in err and len(err.strip().splitlines()) == 1, err


def test_version_is_the_installed_one(capsys: pytest.CaptureFixture[str]) -> None:
    import fedloom

    with pytest.raises(SystemExit) as stopped:
        main(["--version"])
    assert stopped.value.code == 0
    assert capsys.readouterr().out.strip() == f"fedloom {fedloom.__version__}"


ONE_ROUND = ["simulate", "--quiet", "--dataset", "digits", "--model", "logreg", "--clients", "5",
             "--rounds", "1"]  # fmt: skip


def test_a_run_without_out_says_that_nothing_was_written(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert main(ONE_ROUND) == 0
    assert "nothing written: give --out DIR" in capsys.readouterr().out


def test_a_run_already_in_out_is_kept_unless_overwrite_is_given(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a first run in OUT
    out = tmp_path / "run"
    assert main([*ONE_ROUND, "--out", str(out)]) == 0
    first = (out / "history.json").read_text()

    # Execute / Assert: the same OUT is refused in one line, and the first run is untouched
    assert main([*ONE_ROUND, "--seed", "1", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert (out / "history.json").read_text() == first
    assert main([*ONE_ROUND, "--seed", "1", "--out", str(out), "--overwrite"]) == 0
    assert (out / "history.json").read_text() != first


def test_a_run_that_stops_early_says_why(capsys: pytest.CaptureFixture[str]) -> None:
    assert main([*ONE_ROUND[:-1], "5", "--stop-at-accuracy", "0.2"]) == 0
    out = capsys.readouterr().out
    assert "stopped early: accuracy 0." in out and "reached --stop-at-accuracy 0.2" in out


def test_a_run_that_stops_at_its_privacy_budget_says_what_the_next_round_would_cost(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # every client every round at z = 1: round 1 spends about 3.4, round 2 more than 4
    argv = [*ONE_ROUND[:-1], "5", "--dp", "central", "--noise-multiplier", "1",
            "--target-epsilon", "4", "--delta", "1e-3"]  # fmt: skip
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "1 rounds in" in out and "epsilon spent" in out
    assert "stopped early: round 2 would spend epsilon" in out
    assert "past --target-epsilon 4" in out


def test_the_update_bounds_are_settings_a_run_writes_down(tmp_path: Path) -> None:
    # the defaults are in config.toml, where an operator sees them; 0 turns the screen off
    out = tmp_path / "run"
    argv = ["simulate", "--quiet", "--rounds", "1", "--model", "logreg", "--out", str(out)]

    assert main([*argv, "--max-examples", "500", "--max-update-norm", "7.5"]) == 0
    written = (out / "config.toml").read_text()

    assert "max_examples = 500\n" in written and "update_norm_multiple = 10.0\n" in written
    assert "max_update_norm = 7.5\n" in written
    off = SimulationConfig(update_norm_multiple=0).update_bounds()
    assert (off.max_examples, off.norm_multiple, off.max_norm) == (1 << 32, None, None)
