"""The run store: round trips with exact values, refusals, and a real SIGKILL mid-commit."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import textwrap
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import ConfigError, DataError
from fedloom.messages import RoundRecord
from fedloom.params import ParamSpec
from fedloom.server._store import Participation, RunStore

SPEC = ParamSpec(("w", "b"), ((2, 2), (1,)), ("float32", "float32"))
CONFIG = {"rounds": 3, "seed": 7, "strategy": {"name": "fedavg", "lr": 0.5}}


def _record(r: int) -> RoundRecord:
    return RoundRecord(r, 2, 1.0 / r, 0.25 * r, None, None, None, 0.5, {"norm": float(r)})


def _model(r: int) -> np.ndarray:
    return np.arange(5, dtype=np.float32) + 10 * r


@pytest.fixture
def store(tmp_path: Path) -> Iterator[RunStore]:
    with RunStore(tmp_path / "run.db") as s:
        s.create_run(CONFIG, SPEC, _model(0))
        yield s


def _commit(store: RunStore, r: int, info: dict[str, object] | None = None) -> None:
    part = [
        Participation("a", "fit", "accepted", "", r),
        Participation("b", "fit", "dropped", "timeout"),
    ]
    store.commit_round(_record(r), _model(r), f"state{r}".encode(), part, info)


def test_create_run_is_round_zero_with_the_initial_model(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run.db") as s:
        assert s.run_id is None

        run_id = s.create_run(CONFIG, SPEC, _model(0))
        state = s.latest()

        assert s.run_id == run_id and len(run_id) == 32
        assert s.run_config() == CONFIG
        assert s.spec() == SPEC
        assert state.round == 0 and state.states == b"" and len(state.history) == 0
        np.testing.assert_array_equal(state.parameters, [0, 1, 2, 3, 4])
        assert state.parameters.dtype == np.float32 and state.parameters.flags.writeable


def test_the_store_and_its_log_are_readable_by_their_owner_only(tmp_path: Path) -> None:
    with RunStore(tmp_path / "run.db") as s:
        s.create_run(CONFIG, SPEC, _model(0))
        _commit(s, 1)
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert modes["run.db"] == 0o600 and modes.get("run.db-wal", 0o600) == 0o600, modes


def test_three_rounds_come_back_exactly(store: RunStore) -> None:
    for r in (1, 2, 3):
        _commit(store, r, {"malicious_clients": ["b"]} if r == 2 else None)

    state = store.latest()

    assert state.round == 3 and state.states == b"state3"
    np.testing.assert_array_equal(state.parameters, [30, 31, 32, 33, 34])
    assert state.history.rounds == (_record(1), _record(2), _record(3))
    assert state.history.info == {"malicious_clients": ["b"]}


def test_a_round_out_of_order_is_refused_and_nothing_is_written(store: RunStore) -> None:
    for r in (1, 2, 3):
        _commit(store, r)

    with pytest.raises(ValueError, match="cannot commit round 5: the latest committed round is 3"):
        _commit(store, 5)
    with pytest.raises(ValueError, match="round 3"):
        _commit(store, 3)

    assert store.latest().round == 3 and store.participation(5) == []


def test_a_second_run_is_refused_with_the_resume_hint(store: RunStore) -> None:
    with pytest.raises(ConfigError, match="use --resume to continue it, or a new --out folder"):
        store.create_run(CONFIG, SPEC, _model(1))

    assert store.run_config() == CONFIG


def test_only_the_last_two_models_are_kept(store: RunStore) -> None:
    for r in (1, 2, 3, 4):
        _commit(store, r)

    con = sqlite3.connect(store.path)
    models = [r for (r,) in con.execute("SELECT round FROM models ORDER BY round")]
    records = con.execute("SELECT count(*) FROM rounds").fetchone()[0]
    parts = con.execute("SELECT count(*) FROM participation").fetchone()[0]
    con.close()

    assert models == [3, 4] and records == 4 and parts == 8


def test_a_failure_inside_the_transaction_writes_nothing(store: RunStore) -> None:
    _commit(store, 1)
    bad = Participation("a", "fit", "accepted", "", [1])  # type: ignore[arg-type]

    with pytest.raises(sqlite3.Error):  # fails after the record and model rows went in
        store.commit_round(_record(2), _model(2), b"state2", [bad])

    state = store.latest()
    assert state.round == 1 and state.states == b"state1" and len(state.history) == 1
    np.testing.assert_array_equal(state.parameters, [10, 11, 12, 13, 14])
    assert store.participation(2) == []
    _commit(store, 2)
    assert store.latest().round == 2


def test_participation_round_trip(store: RunStore) -> None:
    _commit(store, 1)

    assert store.participation(1) == [
        Participation("a", "fit", "accepted", "", 1),
        Participation("b", "fit", "dropped", "timeout", 0),
    ]
    assert store.participation(2) == []
    with pytest.raises(ValueError, match="status 'late'"):
        Participation("c", "fit", "late")


def test_wal_mode_is_on(store: RunStore) -> None:
    con = sqlite3.connect(store.path)

    assert con.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert con.execute("PRAGMA user_version").fetchone()[0] == 1
    con.close()


def test_a_non_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "history.json"
    path.write_text('{"rounds": []}' * 100)

    with pytest.raises(DataError, match=f"{path} is not a fedloom run store"):
        RunStore(path)

    assert path.read_text() == '{"rounds": []}' * 100


def test_another_apps_sqlite_file_is_refused_and_left_alone(tmp_path: Path) -> None:
    path = tmp_path / "other.db"
    con = sqlite3.connect(path)
    con.execute("CREATE TABLE notes (text TEXT)")
    con.commit()
    con.close()
    before = path.read_bytes()

    with pytest.raises(DataError, match=f"{path} is an SQLite file, but not a fedloom run store"):
        RunStore(path)

    assert path.read_bytes() == before


def test_another_schema_version_is_refused(store: RunStore) -> None:
    store.close()
    con = sqlite3.connect(store.path)
    con.execute("PRAGMA user_version = 2")
    con.close()

    with pytest.raises(DataError, match=f"{store.path} is a fedloom run store of schema version 2"):
        RunStore(store.path)


def test_a_model_of_the_wrong_size_is_refused(store: RunStore) -> None:
    with pytest.raises(DataError, match=r"has shape \(4,\); this model needs \(5,\)"):
        store.commit_round(_record(1), np.zeros(4, np.float32), b"", [])

    assert store.latest().round == 0 and store.participation(1) == []


def test_a_reopened_store_sees_everything(store: RunStore) -> None:
    _commit(store, 1)
    _commit(store, 2, {"malicious_clients": ["a"]})
    run_id = store.run_id
    store.close()

    with RunStore(store.path) as again:
        state = again.latest()

        assert again.run_id == run_id and again.run_config() == CONFIG and again.spec() == SPEC
        assert state.round == 2 and state.states == b"state2"
        np.testing.assert_array_equal(state.parameters, [20, 21, 22, 23, 24])
        assert state.history.rounds == (_record(1), _record(2))
        assert state.history.info == {"malicious_clients": ["a"]}
        assert again.participation(1)[0] == Participation("a", "fit", "accepted", "", 1)


def test_a_missing_folder_is_a_data_error(tmp_path: Path) -> None:
    path = tmp_path / "nowhere" / "run.db"

    with pytest.raises(DataError, match=f"cannot open the run store {path}"):
        RunStore(path)


# Commits rounds as fast as it can, from wherever the store stands, until it is killed.
_WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from fedloom.messages import RoundRecord
    from fedloom.params import ParamSpec
    from fedloom.server._store import Participation, RunStore

    N = 250_000  # 1 MB models, so a kill is likely to land inside a commit
    store = RunStore(sys.argv[1])
    if store.run_id is None:
        store.create_run({}, ParamSpec(("w",), ((N,),), ("float32",)), np.zeros(N, np.float32))
    r = store.latest().round
    print("ready", flush=True)
    while True:
        r += 1
        record = RoundRecord(r, 1, None, None, None, None, None, 0.0)
        part = [Participation(f"c{i}", "fit", "accepted", "", r) for i in range(50)]
        store.commit_round(record, np.full(N, r, np.float32), bytes([r % 256]) * r, part)
    """
)


@pytest.mark.slow
def test_sigkill_at_any_moment_leaves_the_last_round_whole(tmp_path: Path) -> None:
    path = tmp_path / "run.db"
    rounds = []
    for _ in range(3):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None and child.stdout.readline() == "ready\n"
        time.sleep(0.3)
        child.send_signal(signal.SIGKILL)
        child.wait(timeout=10)
        child.stdout.close()

        with RunStore(path) as store:
            state = store.latest()
            r = state.round
            rounds.append(r)

            assert state.history.column("round") == list(range(1, r + 1))
            np.testing.assert_array_equal(state.parameters, np.full(250_000, r, np.float32))
            assert state.states == bytes([r % 256]) * r
            assert len(store.participation(r)) == 50 and store.participation(r + 1) == []
            store.commit_round(
                RoundRecord(r + 1, 0, None, None, None, None, None, 0.0),
                np.full(250_000, r + 1, np.float32),
                bytes([(r + 1) % 256]) * (r + 1),
                [Participation(f"c{i}", "fit", "accepted", "", r + 1) for i in range(50)],
            )
            assert store.latest().round == r + 1

    assert rounds[0] >= 1 and rounds[0] < rounds[1] < rounds[2]
