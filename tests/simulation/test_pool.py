"""The worker pool: the same model as one process, and what a worker's failure costs."""

from __future__ import annotations

import errno
import functools
import itertools
import os
import pickle
import threading
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from _workers import broken_setup, crashes_setup, cycle, fails_in_fit, given, killer_setup

import fedloom
from fedloom.client import LinearTrainer
from fedloom.data import FederatedDataset, load_dataset
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Reply
from fedloom.simulation import InProcessFleet, Outcome, WorkerError, WorkerPool, _pool
from fedloom.strategy import CountSampler, fedavg

BASE: dict[str, Any] = {
    "dataset": "digits", "model": "logreg", "clients": 30, "rounds": 3, "fraction": 0.5,
    "partition": "dirichlet:0.5", "seed": 4,
}  # fmt: skip


def _same_run(**settings: Any) -> tuple[fedloom.RunResult, fedloom.RunResult]:
    one = fedloom.simulate(**{**BASE, **settings})
    two = fedloom.simulate(**{**BASE, **settings, "workers": 2})
    return one, two


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"strategy": "scaffold"},  # control variates travel with each task
        {"secure_aggregation": "secagg+", "clients": 12, "fraction": 1.0},  # keys across phases
        {"dropout": 0.2, "stragglers": 0.3, "local_test_fraction": 0.2},
        {"attack": "sign-flip:0.2", "strategy": "median"},
    ],
    ids=["fedavg", "scaffold", "secagg+", "dropout-stragglers", "attack-median"],
)
def test_two_workers_give_exactly_the_model_of_one_process(settings: dict[str, Any]) -> None:
    # Execute
    one, two = _same_run(**settings)

    # Assert: replies reach the round in instruction order, so even the float sums are equal
    np.testing.assert_array_equal(one.parameters, two.parameters)
    assert [r.clients for r in one.history.rounds] == [r.clients for r in two.history.rounds]
    assert one.history.column("accuracy") == two.history.column("accuracy")


def test_a_torch_model_gives_the_same_model_on_workers() -> None:
    # Execute
    one, two = _same_run(model="mlp", rounds=2, momentum=0.9)

    # Assert
    np.testing.assert_array_equal(one.parameters, two.parameters)


def test_a_worker_that_dies_mid_round_drops_its_clients_and_the_run_goes_on(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # Prepare: the client with the most rows kills its worker in round 1, once
    ds, _, _ = killer_setup()
    rows = int(ds.client_sizes().max())
    victim = str(int(ds.client_sizes().argmax()))
    pool = WorkerPool(killer_setup, ds.num_clients, 2)
    trainer = LinearTrainer(64, 10, lr=0.1)
    config = {"marker": str(tmp_path / "killed"), "victim_rows": rows, "seed": 0}
    pids = pool.pids()

    # Execute
    try:
        result = fedloom.run_rounds(
            pool, fedavg(), trainer.init_parameters(0), rounds=3, client_config=config
        )
        after = pool.pids()
    finally:
        pool.close()

    # Assert: round 1 lost the dead worker's clients (the victim, and the batch queued behind
    # it if there was one); a new worker took its place and the later rounds had everyone
    clients = [r.clients for r in result.history.rounds]
    assert clients[0] in (8, 9) and clients[1:] == [10, 10]
    assert len(set(after) - set(pids)) == 1
    assert f"died in round 1; its client(s) {victim}" in caplog.text


def test_a_client_error_in_a_worker_stops_the_run_or_drops_the_client() -> None:
    # Prepare
    setup = functools.partial(fails_in_fit, "disk full")
    start = LinearTrainer(64, 10).init_parameters(0)

    # Execute / Assert: "raise" names the client and the reason
    pool = WorkerPool(setup, 4, 2)
    try:
        with pytest.raises(ClientError, match="client 2 failed in round 1, phase 'fit': disk full"):
            fedloom.run_rounds(pool, fedavg(), start, rounds=1)
    finally:
        pool.close()
    dropping = WorkerPool(setup, 4, 2, on_error="drop")
    try:
        result = fedloom.run_rounds(dropping, fedavg(), start, rounds=1)
    finally:
        dropping.close()
    assert result.history.rounds[0].clients == 3


def test_a_worker_that_cannot_set_up_is_a_worker_error_with_the_reason() -> None:
    # Prepare
    pool = WorkerPool(broken_setup, 4, 1)
    start = LinearTrainer(64, 10).init_parameters(0)

    # Execute / Assert
    with pytest.raises(WorkerError, match="could not set up its clients: OSError: no such file"):
        fedloom.run_rounds(pool, fedavg(), start, rounds=1)
    pool.close()


def test_an_unpicklable_setup_is_refused_before_any_round() -> None:
    # Prepare
    lock = threading.Lock()

    # Execute / Assert
    with pytest.raises(ConfigError, match="picklable setup"):
        WorkerPool(functools.partial(fails_in_fit, lock), 4, 2)  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="--workers must be at least 1"):
        WorkerPool(broken_setup, 4, 0)


def test_closing_the_pool_ends_its_processes() -> None:
    # Prepare
    pool = WorkerPool(functools.partial(fails_in_fit, "x"), 4, 2)
    pids = pool.pids()

    # Execute
    pool.close()

    # Assert
    for pid in pids:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_pool_equals_the_in_process_fleet_for_a_user_population() -> None:
    # Prepare: a population of the user's own, from a function of the client index
    base = load_dataset("digits", num_clients=100, seed=0)
    ds = FederatedDataset.from_function(
        10_000, functools.partial(cycle, base), test=base.test, num_classes=10,
        input_shape=(64,),
    )  # fmt: skip
    trainer = LinearTrainer(64, 10, lr=0.1)
    start = trainer.init_parameters(0)
    strategy = fedavg(CountSampler(20, seed=1))

    # Execute
    here = fedloom.run_rounds(InProcessFleet(ds, trainer), strategy, start, rounds=2)
    pool = WorkerPool(functools.partial(given, ds, trainer), ds.num_clients, 2)
    try:
        there = fedloom.run_rounds(pool, strategy, start, rounds=2)
    finally:
        pool.close()

    # Assert
    np.testing.assert_array_equal(here.parameters, there.parameters)


def test_the_cli_with_workers_writes_the_model_of_one_process(tmp_path: Path) -> None:
    # Prepare
    from fedloom.cli import main

    argv = ["simulate", "--quiet", "--dataset", "digits", "--model", "logreg", "--clients",
            "20", "--rounds", "2", "--seed", "3"]  # fmt: skip

    # Execute
    assert main([*argv, "--out", str(tmp_path / "one")]) == 0
    assert main([*argv, "--workers", "auto", "--out", str(tmp_path / "auto")]) == 0

    # Assert: auto is this machine's core count, written down for the record
    one = np.load(tmp_path / "one" / "model.npz")["parameters"]
    auto = np.load(tmp_path / "auto" / "model.npz")["parameters"]
    np.testing.assert_array_equal(one, auto)
    written = (tmp_path / "auto" / "config.toml").read_text()
    assert f"workers = {len(os.sched_getaffinity(0))}" in written


def test_a_bug_in_a_worker_stops_the_run_with_its_traceback_even_when_dropping() -> None:
    # Prepare: making a client's data raises ValueError (not a ClientError: a bug), which
    # in-process would propagate too
    pool = WorkerPool(crashes_setup, 4, 2, on_error="drop")
    start = LinearTrainer(64, 10).init_parameters(0)

    # Execute / Assert
    try:
        with pytest.raises(
            ClientError, match=r"(?s)running it raised, in the worker:.*ValueError: corrupt shard 2"
        ):
            fedloom.run_rounds(pool, fedavg(), start, rounds=1)
    finally:
        pool.close()


def _outcomes(count: int, size: int) -> list[Outcome]:
    rng = np.random.default_rng(0)
    return [
        Outcome(str(i), Reply(str(i), 1, "fit", rng.normal(size=size).astype(np.float32), 5),
                {"n": i})
        for i in range(count)
    ]  # fmt: skip


def test_a_batchs_update_vectors_travel_beside_its_message_and_come_back_whole() -> None:
    # Prepare: 12 updates of the digits MLP's size (38 KB each), and a batch of one small one
    outcomes = _outcomes(12, 9610)
    small = _outcomes(1, 100)

    # Execute
    kind, body = _pool._done(7, outcomes, itertools.count())
    file = Path(body[2])
    on_disk = file.stat().st_size
    token, landed = _pool._landed(body)
    plain = _pool._done(7, small, itertools.count())

    # Assert: the message holds no vector (a few hundred bytes, not 461 KB); the driver gets
    # every vector back equal, in place, and the file is gone
    assert kind == "done-oob" and on_disk == 12 * 9610 * 4
    assert all(o.reply is not None and o.reply.vector is None for o in body[1])
    assert len(pickle.dumps(body)) < 4096
    assert token == 7 and not file.exists()
    for sent, got in zip(outcomes, landed, strict=True):
        assert got.reply is not None and sent.reply is not None
        np.testing.assert_array_equal(got.reply.vector, sent.reply.vector)
        assert (got.client_id, got.state, got.reply.num_examples) == (sent.client_id, sent.state, 5)
    assert plain == ("done", (7, small))


def test_a_full_dev_shm_sends_the_vectors_in_the_message_and_leaves_no_file(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: writing to /dev/shm fails as a full tmpfs does
    def full(fd: int, buffers: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(_pool.os, "writev", full)
    outcomes = _outcomes(4, 9610)

    # Execute
    message = _pool._done(3, outcomes, itertools.count())

    # Assert
    assert message == ("done", (3, outcomes))
    assert not list(Path("/dev/shm").glob(f"fedloom-{os.getppid()}-{os.getpid()}-*"))


def test_the_files_a_dead_worker_left_are_removed_and_no_one_elses() -> None:
    # Prepare: two workers' unread files (the pids are made up)
    mine = _pool._vectors_file(os.getpid(), 999_991, 0)
    other = _pool._vectors_file(os.getpid(), 999_992, 0)
    for path in (mine, other):
        path.write_bytes(b"x")

    # Execute
    _pool._remove_vectors_of(999_991)

    # Assert
    try:
        assert not mine.exists() and other.exists()
    finally:
        other.unlink()


def test_updates_large_enough_to_travel_out_of_band_give_the_model_of_one_process() -> None:
    # Execute: 40 clients a round on two workers: batches of 5 MLP updates, 192 KB each
    one, two = _same_run(model="mlp", clients=40, fraction=1.0, rounds=2)

    # Assert: the same model to the bit, and no file left behind
    np.testing.assert_array_equal(one.parameters, two.parameters)
    assert not list(Path("/dev/shm").glob(f"fedloom-{os.getpid()}-*"))
