"""A run kept in ``OUT/run.db``: ``fedloom server`` and ``fedloom simulate --out`` commit every
round there (the model, the strategy's states, the record, who took part and, in simulation,
the simulated clients' own state), and ``--resume`` continues from the last committed round as
if the run had never stopped."""

from __future__ import annotations

import pickle
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedloom.config import SimulationConfig
from fedloom.errors import ConfigError, DataError
from fedloom.secagg import STATE_KEY as SECAGG_STATE_KEY
from fedloom.server import ClientRecord, Commit, LoopState, Participation, RoundState, RunStore
from fedloom.strategy import RoundOutcome
from fedloom.tracking import History

__all__ = [
    "RUN_DB",
    "RunStatus",
    "committer",
    "loop_state",
    "participation",
    "reopen",
    "run_status",
]

RUN_DB = "run.db"
"""The run store's name in a run's folder."""

_Clients = dict[str, dict[str, Any]]  # the simulated clients' own state, by client id


def reopen(out: str | Path, rounds: int | None) -> tuple[RunStore, SimulationConfig, RoundState]:
    """The run stored in ``out``, its settings and its last committed state, for ``--resume``.

    ``rounds``, when given, is the run's new length (more to extend it; never fewer than the
    rounds done). The caller closes the store.
    """
    db = Path(out) / RUN_DB
    if not db.is_file():
        raise ConfigError(f"--resume: {db} does not exist; start the run without --resume")
    store = RunStore(db)
    try:
        cfg = SimulationConfig().replace(**{**store.run_config(), "out": str(out)})
        state = store.latest()
        if rounds is not None and rounds != cfg.rounds:
            if rounds < state.round:
                raise ConfigError(
                    f"--rounds {rounds} is fewer than the {state.round} rounds this run has "
                    f"done; give at least {state.round}"
                )
            cfg = cfg.replace(rounds=rounds)
    except BaseException:
        store.close()
        raise
    return store, cfg, state


def loop_state(state: RoundState) -> tuple[LoopState, _Clients]:
    """The round loop's state after ``state``'s round, and the simulated clients' state."""
    clients: _Clients = {}
    agg = opt = mech = None
    if state.states:
        try:
            kept = pickle.loads(state.states)
            agg, opt, mech = kept[:3]
            if len(kept) == 4:
                clients = kept[3]
        except (pickle.UnpicklingError, ValueError, TypeError, EOFError) as exc:
            raise DataError(
                f"the strategy state of round {state.round} cannot be read: {exc}"
            ) from None
    return LoopState(state.round, state.parameters, state.history, agg, opt, mech), clients


def committer(store: RunStore, client_states: Callable[[], _Clients] | None = None) -> Commit:
    """The round loop's ``on_commit``: each round into ``store`` in one transaction, with the
    clients' state ``client_states`` gives (in simulation). A secure aggregation round's keys
    are left out: they belong to a round that is over."""

    def commit(loop: LoopState, outcome: RoundOutcome, selected: Sequence[str]) -> None:
        kept: tuple[Any, ...] = (loop.aggregator_state, loop.optimizer_state, loop.mechanism_state)
        if client_states is not None:
            kept += (_lasting(client_states()),)
        store.commit_round(
            loop.history.rounds[-1],
            loop.parameters,
            pickle.dumps(kept),
            participation(outcome, selected),
            loop.history.info,
        )

    return commit


def _lasting(states: Mapping[str, Mapping[str, Any]]) -> _Clients:
    """The clients' state that outlives a round; clients with none are left out."""
    lasting = {}
    for client_id, state in states.items():
        kept = {k: v for k, v in state.items() if k != SECAGG_STATE_KEY}
        if kept:
            lasting[client_id] = kept
    return lasting


def participation(outcome: RoundOutcome, selected: Sequence[str]) -> list[Participation]:
    """Who took part in a round's fit phase: accepted, rejected (with why) or dropped."""
    rows = [Participation(c, "fit", "accepted") for c in outcome.accepted]
    rows += [Participation(c, "fit", "rejected", r) for c, r in outcome.rejected.items()]
    seen = set(outcome.accepted) | set(outcome.rejected)
    rows += [Participation(c, "fit", "dropped") for c in selected if c not in seen]
    return rows


@dataclass(frozen=True)
class RunStatus:
    """Where a kept run stands, read from its ``run.db`` while it runs or after: its id, the
    rounds committed of those planned, every committed round's record, and each client's part.
    """

    run_id: str
    rounds_done: int
    rounds_planned: int
    history: History
    clients: dict[str, ClientRecord]


def run_status(run_dir: str | Path) -> RunStatus:
    """The status of the run kept in ``run_dir`` (``fedloom status``); a live run is read
    without disturbing it (SQLite's write-ahead log lets a reader in beside the writer)."""
    db = Path(run_dir) / RUN_DB
    if not db.is_file():
        raise DataError(
            f"{run_dir} holds no {RUN_DB}; give the --out folder of a fedloom server run or of "
            "a simulation kept with --out"
        )
    with RunStore(db) as store:
        if store.run_id is None:
            raise DataError(f"{db} holds no run yet")
        state = store.latest()
        planned = int(store.run_config().get("rounds", state.round))
        return RunStatus(str(store.run_id), state.round, planned, state.history, store.taken_part())
