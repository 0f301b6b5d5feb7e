"""The run store: one SQLite database (WAL mode) that lets a killed server resume its run.

Each completed round is committed in one transaction: its record, the global model after it, the
strategy's opaque state and who took part. A process killed at any moment, even by ``SIGKILL``,
leaves the last committed round whole (``synchronous=FULL`` also keeps it through power loss).

Examples
--------
>>> import tempfile, numpy as np
>>> from fedloom.params import ParamSpec
>>> spec = ParamSpec(("w",), ((2,),), ("float32",))
>>> with tempfile.TemporaryDirectory() as tmp, RunStore(f"{tmp}/run.db") as store:
...     _ = store.create_run({"rounds": 3}, spec, np.zeros(2, np.float32))
...     store.latest().round, store.run_config()
(0, {'rounds': 3})
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np

from fedloom.errors import ConfigError, DataError
from fedloom.messages import RoundRecord
from fedloom.params import ParamSpec, Vector
from fedloom.tracking import History

__all__ = ["ClientRecord", "Participation", "RoundState", "RunStore"]

_APPLICATION_ID = 0x464C4F4D  # "FLOM": marks the file as a fedloom run store
_SCHEMA_VERSION = 1
_MODELS_KEPT = 2
_STATUSES = ("accepted", "rejected", "dropped")
_SCHEMA = f"""
CREATE TABLE run (one INTEGER PRIMARY KEY CHECK (one = 1),
    run_id TEXT NOT NULL, config TEXT NOT NULL, spec TEXT NOT NULL, info TEXT NOT NULL);
CREATE TABLE rounds (round INTEGER PRIMARY KEY CHECK (round >= 1), record TEXT NOT NULL);
CREATE TABLE models (round INTEGER PRIMARY KEY CHECK (round >= 0),
    parameters BLOB NOT NULL, states BLOB NOT NULL);
CREATE TABLE participation (round INTEGER NOT NULL REFERENCES rounds (round),
    seq INTEGER NOT NULL, client_id TEXT NOT NULL, phase TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN {_STATUSES!r}), reason TEXT NOT NULL,
    num_examples INTEGER NOT NULL, PRIMARY KEY (round, seq));
PRAGMA application_id = {_APPLICATION_ID};
PRAGMA user_version = {_SCHEMA_VERSION};
"""


@dataclass(frozen=True)
class RoundState:
    """Everything needed to continue after a completed round.

    ``round`` is the last completed round (0 before the first), ``parameters`` the global model
    after it, ``states`` the strategy's opaque state as the caller pickled it (empty at round 0)
    and ``history`` every completed round's record, with the run's ``info``.
    """

    round: int
    parameters: Vector
    states: bytes
    history: History


@dataclass(frozen=True)
class Participation:
    """One client's part in one phase of a round: ``"accepted"``, ``"rejected"``, ``"dropped"``."""

    client_id: str
    phase: str
    status: str
    reason: str = ""
    num_examples: int = 0

    def __post_init__(self) -> None:
        if self.status not in _STATUSES:
            raise ConfigError(f"participation status {self.status!r} is not one of {_STATUSES}")


@dataclass(frozen=True)
class ClientRecord:
    """One client's part in a run: rounds whose update was accepted, rejected or dropped, and
    the last round it was selected for."""

    accepted: int
    rejected: int
    dropped: int
    last_round: int


class RunStore:
    """A run's config, model, strategy state, history and participation, in one SQLite file.

    Parameters
    ----------
    path
        The database file; created, with its schema, if it does not exist.

    Raises
    ------
    DataError
        The file cannot be opened, is not SQLite, or is not a fedloom run store of this version.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        # readable by its owner only, as the run's other files (SQLite gives its -wal and -shm
        # files the database's mode); an empty file is an empty database
        with contextlib.suppress(OSError):  # there already, or a folder SQLite will refuse
            os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        try:
            self._con = sqlite3.connect(self.path, isolation_level=None, timeout=10.0)
        except sqlite3.Error as exc:
            raise DataError(f"cannot open the run store {self.path}: {exc}") from None
        try:
            self._open(self._con)
        except sqlite3.OperationalError as exc:  # locked, unreadable, ...
            self._con.close()
            raise DataError(f"cannot open the run store {self.path}: {exc}") from None
        except sqlite3.DatabaseError as exc:  # not a database at all
            self._con.close()
            raise DataError(f"{self.path} is not a fedloom run store: {exc}") from None
        except BaseException:
            self._con.close()
            raise

    def _open(self, con: sqlite3.Connection) -> None:
        # identify the file before anything writes to it (WAL mode would change it)
        app, version = (
            con.execute(f"PRAGMA {p}").fetchone()[0] for p in ("application_id", "user_version")
        )
        tables = con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
        fresh = app == 0 and version == 0 and tables == 0
        if not fresh and app != _APPLICATION_ID:
            raise DataError(f"{self.path} is an SQLite file, but not a fedloom run store")
        if not fresh and version != _SCHEMA_VERSION:
            raise DataError(
                f"{self.path} is a fedloom run store of schema version {version}; this "
                f"fedloom reads version {_SCHEMA_VERSION}: use a matching fedloom or a new "
                "--out folder"
            )
        mode = con.execute("PRAGMA journal_mode = WAL").fetchone()[0]
        if str(mode).lower() != "wal":
            raise DataError(f"{self.path}: SQLite cannot use WAL mode there (mode {mode!r})")
        con.execute("PRAGMA synchronous = FULL")
        con.execute("PRAGMA foreign_keys = ON")
        if fresh:
            with self._transaction():  # unless another process created it meanwhile
                if con.execute("SELECT count(*) FROM sqlite_master").fetchone()[0] == 0:
                    for statement in filter(str.strip, _SCHEMA.split(";")):
                        con.execute(statement)

    @contextmanager
    def _transaction(self, mode: str = "IMMEDIATE") -> Iterator[sqlite3.Connection]:
        """All or nothing: ``BEGIN``, then ``COMMIT``, or ``ROLLBACK`` on any exception."""
        self._con.execute(f"BEGIN {mode}")
        try:
            yield self._con
            self._con.execute("COMMIT")
        except BaseException:
            if self._con.in_transaction:
                self._con.execute("ROLLBACK")
            raise

    def _run_row(self, column: str) -> str:
        row = self._con.execute(f"SELECT {column} FROM run").fetchone()
        if row is None:
            raise DataError(f"{self.path} holds no run yet; start one (without --resume)")
        return str(row[0])

    def create_run(
        self,
        config: Mapping[str, Any],
        spec: ParamSpec,
        parameters: Vector,
        *,
        run_id: str | None = None,
    ) -> str:
        """Start a run: store its config, spec and initial model (as round 0); return its id
        (``run_id``, or a fresh one).

        Raises
        ------
        ConfigError
            The store already holds a run, or the config is not JSON-serializable.
        DataError
            ``parameters`` do not fit ``spec``.
        """
        try:
            config_json = json.dumps(dict(config), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the run config cannot be stored as JSON: {exc}") from None
        blob = _blob(spec, parameters)
        run_id = run_id or uuid.uuid4().hex
        with self._transaction() as con:
            existing = con.execute("SELECT run_id FROM run").fetchone()
            if existing is not None:
                raise ConfigError(
                    f"{self.path} already holds run {existing[0]}; use --resume to continue it, "
                    "or a new --out folder"
                )
            con.execute(
                "INSERT INTO run VALUES (1, ?, ?, ?, '{}')", (run_id, config_json, spec.to_json())
            )
            con.execute("INSERT INTO models VALUES (0, ?, ?)", (blob, b""))
        return run_id

    @property
    def run_id(self) -> str | None:
        """The run's id, or ``None`` before :meth:`create_run`."""
        row = self._con.execute("SELECT run_id FROM run").fetchone()
        return None if row is None else str(row[0])

    def update_config(self, config: Mapping[str, Any]) -> None:
        """Replace the run's stored config (a resumed run given more rounds, say)."""
        try:
            config_json = json.dumps(dict(config), sort_keys=True)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"the run config cannot be stored as JSON: {exc}") from None
        self._run_row("config")  # refuses a store without a run
        with self._transaction() as con:
            con.execute("UPDATE run SET config = ?", (config_json,))

    def run_config(self) -> dict[str, Any]:
        """The config the run was created with."""
        config: dict[str, Any] = json.loads(self._run_row("config"))
        return config

    def spec(self) -> ParamSpec:
        """The spec of the run's model."""
        return ParamSpec.from_json(self._run_row("spec"))

    def latest(self) -> RoundState:
        """The state after the last completed round (round 0 right after :meth:`create_run`)."""
        with self._transaction("DEFERRED") as con:
            spec = ParamSpec.from_json(self._run_row("spec"))
            info = json.loads(self._run_row("info"))
            round, blob, states = con.execute(
                "SELECT round, parameters, states FROM models ORDER BY round DESC LIMIT 1"
            ).fetchone()
            records = [
                json.loads(r) for (r,) in con.execute("SELECT record FROM rounds ORDER BY round")
            ]
        parameters = np.frombuffer(blob, dtype="<f4").astype(np.float32)
        if len(records) != round or parameters.shape != (spec.size,):
            raise DataError(f"{self.path} is inconsistent at round {round}; it cannot be resumed")
        return RoundState(round, parameters, bytes(states), History.from_records(records, info))

    def commit_round(
        self,
        record: RoundRecord,
        parameters: Vector,
        states: bytes,
        participation: Sequence[Participation],
        info: Mapping[str, Any] | None = None,
    ) -> None:
        """Store a completed round in one transaction: all of it, or (on any error) none of it.

        Only the models of the last two rounds are kept; records and participation stay.

        Raises
        ------
        DataError
            ``record.round`` is not the round after the latest one, or ``parameters`` do not
            fit the run's spec.
        """
        record_json = json.dumps(record.to_dict())
        info_json = None if info is None else json.dumps(dict(info), sort_keys=True)
        with self._transaction() as con:
            blob = _blob(ParamSpec.from_json(self._run_row("spec")), parameters)
            (last,) = con.execute("SELECT max(round) FROM models").fetchone()
            if record.round != last + 1:
                raise DataError(
                    f"cannot commit round {record.round}: the latest committed round is {last}"
                )
            con.execute("INSERT INTO rounds VALUES (?, ?)", (record.round, record_json))
            # delete first, so that the new model can reuse the old one's pages
            con.execute("DELETE FROM models WHERE round <= ?", (record.round - _MODELS_KEPT,))
            con.execute("INSERT INTO models VALUES (?, ?, ?)", (record.round, blob, states))
            con.executemany(
                "INSERT INTO participation VALUES (?, ?, ?, ?, ?, ?, ?)",
                [
                    (record.round, i, p.client_id, p.phase, p.status, p.reason, p.num_examples)
                    for i, p in enumerate(participation)
                ],
            )
            if info_json is not None:
                con.execute("UPDATE run SET info = ?", (info_json,))

    def participation(self, round: int) -> list[Participation]:
        """Who took part in ``round``, in the order committed."""
        rows = self._con.execute(
            "SELECT client_id, phase, status, reason, num_examples FROM participation "
            "WHERE round = ? ORDER BY seq",
            (round,),
        )
        return [Participation(*row) for row in rows]

    def taken_part(self) -> dict[str, ClientRecord]:
        """Each client's part in the run so far (its fit phases), by client id."""
        rows = self._con.execute(
            "SELECT client_id, status, count(*), max(round) FROM participation "
            "WHERE phase = 'fit' GROUP BY client_id, status"
        )
        counts: dict[str, dict[str, int]] = {}
        for client_id, status, count, last in rows:
            seen = counts.setdefault(client_id, {"last": 0})
            seen[status] = count
            seen["last"] = max(seen["last"], last)
        return {
            c: ClientRecord(
                v.get("accepted", 0), v.get("rejected", 0), v.get("dropped", 0), v["last"]
            )
            for c, v in counts.items()
        }

    def close(self) -> None:
        """Close the database; committed rounds are already on disk."""
        self._con.close()

    def __enter__(self) -> RunStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


def _blob(spec: ParamSpec, parameters: Vector) -> memoryview:
    """The model's bytes (little-endian float32), checked against ``spec``, without a copy."""
    vector = np.ascontiguousarray(spec.check(parameters), dtype="<f4")
    return vector.data.cast("B")
