"""A federation on the operators' own files: real server and client processes on 127.0.0.1,
each hospital with its own CSV, the server with its own test set; a server whose model does not
fit a client's data refuses it at join, and both say why."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _procs import Fedloom, Proc, rounds

from fedloom.server import RunStore

pytestmark = pytest.mark.slow  # real server and client processes

FEATURES = 4


def _write_csv(
    path: Path, rows: int, seed: int, *, names: bool = False, hole: bool = False
) -> None:
    """Two classes that a linear model separates: the label is whether x·w > 0 (written as
    ``yes``/``no`` with ``names``); with ``hole`` the first row's second feature is empty."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(rows, FEATURES))
    y = (x @ np.array([1.0, -2.0, 0.5, 1.5]) > 0).astype(int)
    cells = [[str(float(v)) for v in row] for row in x]
    if hole:
        cells[0][1] = ""
    labels = [("yes" if v else "no") if names else str(int(v)) for v in y]
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([f"f{i}" for i in range(FEATURES)] + ["label"])
        out.writerows([*row, label] for row, label in zip(cells, labels, strict=True))


def _server(fedloom: Fedloom, *args: str) -> tuple[Proc, int]:
    command = (
        "server --insecure --address 127.0.0.1:0 --model logreg --clients 3 --min-clients 3 "
        "--wait-for-clients 60 --out run"
    )
    server = fedloom.start("server", command, *args)
    return server, fedloom.port(server)


def _client(port: int, client_id: str, data: str) -> tuple[str, ...]:
    return (f"client --insecure --server 127.0.0.1:{port} --client-id {client_id}", "--data", data)


def _federate(fedloom: Fedloom, server: Proc, port: int, *extra: str) -> list[dict[str, Any]]:
    """Start sites 0-2 on their ``siteN.csv`` with ``extra`` flags; assert that the server and
    every site exit 0; the run's history."""
    sites = [
        fedloom.start(f"site{s}", *_client(port, str(s), f"site{s}.csv"), *extra) for s in range(3)
    ]
    assert fedloom.wait(server, 90) == 0, fedloom.logs()
    for site in sites:
        assert fedloom.wait(site, 30) == 0, fedloom.logs()
    return rounds(fedloom.cwd / "run") or []


def test_three_sites_train_on_their_own_csv_files_and_the_server_on_its_test_set(
    fedloom: Fedloom, tmp_path: Path
) -> None:
    # Prepare: three sites of 4 features labelled yes/no, one with an empty cell, and the
    # coordinating site's own test set
    for site in range(3):
        _write_csv(tmp_path / f"site{site}.csv", 120, seed=site, names=True, hole=site == 1)
    _write_csv(tmp_path / "test.csv", 200, seed=9, names=True)
    server, port = _server(fedloom, "--rounds", "3", "--lr", "0.5", "--test-data", "test.csv",
                           "--log", "tensorboard:tb")  # fmt: skip

    # Execute
    history = _federate(fedloom, server, port, "--fill-missing", "mean")

    # Assert: every round with the three sites, evaluated on the server's own test set, and
    # told to TensorBoard (read back with its own reader)
    assert [(r["round"], r["clients"]) for r in history] == [(1, 3), (2, 3), (3, 3)]
    assert history[-1]["accuracy"] > 0.85, fedloom.logs()  # chance is about 0.5
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(tmp_path / "tb"))
    events.Reload()
    logged = [(e.step, e.value) for e in events.Scalars("accuracy")]
    assert logged == [(r["round"], pytest.approx(r["accuracy"], rel=1e-6)) for r in history]
    with RunStore(tmp_path / "run" / "run.db") as store:
        assert store.spec().size == FEATURES * 2 + 2  # logreg, 4 features, 2 classes

    # the trained model, used: predictions by label name, scored as the server scored them;
    # the exported state dict gives the same classes in PyTorch
    fedloom.run("predict", "predict run --data test.csv --out predictions.csv")
    assert f"accuracy {history[-1]['accuracy']:.4f}" in fedloom.procs[-1].out(), fedloom.logs()
    written = (tmp_path / "predictions.csv").read_text().split()
    assert written[0] == "prediction" and set(written[1:]) <= {"no", "yes"}
    fedloom.run("export", "export run --out model.pt")
    import torch

    linear = torch.nn.Linear(FEATURES, 2)
    linear.load_state_dict(torch.load(tmp_path / "model.pt", weights_only=True))
    with (tmp_path / "test.csv").open(newline="") as handle:
        rows = list(csv.reader(handle))[1:]
    x = torch.tensor([[float(v) for v in row[:FEATURES]] for row in rows])
    with torch.no_grad():
        classes = linear(x).argmax(dim=1).tolist()
    assert [["no", "yes"][c] for c in classes] == written[1:]


def test_a_client_whose_data_does_not_fit_the_model_is_refused_at_join_and_both_say_why(
    fedloom: Fedloom, tmp_path: Path
) -> None:
    # Prepare: the server's model is built from digits (64 features); the site has 4
    _write_csv(tmp_path / "site0.csv", 50, seed=0)
    server, port = _server(fedloom, "--rounds", "1", "--dataset", "digits")

    # Execute
    site = fedloom.start("site0", *_client(port, "0", "site0.csv"))
    status = fedloom.wait(site, 30)

    # Assert: the site exits at once with one line; the server logs whom it refused and why
    assert status == 2, fedloom.logs()
    reason = "this client's examples have 4 features; the server's model takes 64"
    assert reason in site.err() and "Traceback" not in site.err(), fedloom.logs()
    assert "built from digits" in site.err(), fedloom.logs()
    fedloom.until(
        "the server's refusal",
        lambda: True if f"refused client 0: {reason}" in server.err() else None,
        10,
    )


def test_a_server_with_no_data_of_its_own_is_evaluated_on_the_clients_held_out_rows(
    fedloom: Fedloom, tmp_path: Path
) -> None:
    # Prepare: the model described by its shape alone; each site holds out a quarter
    for site in range(3):
        _write_csv(tmp_path / f"site{site}.csv", 160, seed=site)
    server, port = _server(
        fedloom, "--rounds", "3", "--lr", "0.5", "--features", "4", "--classes", "2"
    )

    # Execute
    history = _federate(fedloom, server, port, "--local-test-fraction", "0.25")

    # Assert: no central evaluation, federated evaluation on 3 x 40 held-out rows, and said so
    assert [r["accuracy"] for r in history] == [None, None, None]
    assert history[-1]["fed_accuracy"] > 0.85, fedloom.logs()
    assert "evaluated on the clients' held-out examples alone" in server.err()
