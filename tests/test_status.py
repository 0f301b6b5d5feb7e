"""fedloom status: where a kept run stands, read from its run.db while it runs and after."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

import fedloom
from fedloom.cli import main
from fedloom.recipes import run_status


def test_a_finished_run_says_each_clients_part_accepted_rejected_and_dropped(
    tmp_path: Path, capsys
) -> None:
    # Prepare: 10 clients, all selected every round; 2 attackers scaling their updates 100x,
    # which the norm screen refuses, and a tenth of each round dropping out
    out = tmp_path / "run"
    result = fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=4,
                              attack="scale:0.2", attack_scale=100.0, dropout=0.1,
                              out=str(out))  # fmt: skip
    attackers = set(result.history.info["malicious_clients"])

    # Execute
    found = run_status(out)
    assert main(["status", str(out)]) == 0
    printed = capsys.readouterr().out

    # Assert: every client selected in each of the 4 rounds, each round's accepted count, and
    # the attackers never accepted (refused unless they dropped out that round)
    assert (found.rounds_done, found.rounds_planned) == (4, 4) and len(found.clients) == 10
    for client_id, part in found.clients.items():
        assert part.accepted + part.rejected + part.dropped == 4 and part.last_round == 4
        if client_id in attackers:
            assert part.accepted == 0 and part.rejected >= 1
        else:
            assert part.rejected == 0
    assert sum(p.accepted for p in found.clients.values()) == sum(
        r.clients for r in result.history.rounds
    )
    assert sum(p.dropped for p in found.clients.values()) == 4  # one of 10 per round
    assert f"run {found.run_id}: 4 of 4 rounds committed" in printed
    assert "10 client(s) have taken part" in printed


def _committed(out: Path) -> int:
    try:
        return len(json.loads((out / "history.json").read_text())["rounds"])
    except (FileNotFoundError, ValueError):
        return 0


@pytest.mark.slow
def test_a_live_run_is_read_while_it_runs_and_goes_on_undisturbed(tmp_path: Path) -> None:
    # Prepare: a command-line run of 20 rounds, long enough to be read mid-run
    out = tmp_path / "run"
    running = subprocess.Popen(
        [sys.executable, "-m", "fedloom.cli", "simulate", "--quiet", "--dataset", "digits",
         "--model", "mlp", "--clients", "10", "--rounds", "20", "--local-epochs", "3",
         "--out", str(out)],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    deadline = time.monotonic() + 120
    while _committed(out) < 2 and running.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)

    # Execute: read it while it runs, then after
    live = run_status(out)
    still_running = running.poll() is None
    _, err = running.communicate(timeout=300)
    done = run_status(out)

    # Assert
    assert still_running and 1 <= live.rounds_done < 20 and live.rounds_planned == 20
    assert running.returncode == 0, err
    assert done.rounds_done == 20 and len(done.history) == 20
    assert all(p.accepted == 20 for p in done.clients.values())


def test_a_folder_without_a_run_is_one_line_and_nothing_is_created(tmp_path: Path, capsys) -> None:
    assert main(["status", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "holds no run.db; give the --out folder" in err[0]
    assert list(tmp_path.iterdir()) == []
