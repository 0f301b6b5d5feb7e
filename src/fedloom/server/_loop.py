"""The round loop: one server-side loop for every fleet and every strategy."""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from fedloom.errors import DivergedError, RoundFailedError
from fedloom.messages import Config, EvalResult, Instruction, Reply, RoundRecord
from fedloom.params import ParamSpec, Vector
from fedloom.server._checkpoint import Checkpoint, save_checkpoint
from fedloom.server._fleet import Fleet
from fedloom.strategy import (
    RoundContext,
    RoundOutcome,
    RoundSteps,
    Strategy,
    UpdateBounds,
    required_updates,
    requirement,
)
from fedloom.tracking import History

__all__ = ["Commit", "LoopState", "RunResult", "run_rounds"]

log = logging.getLogger("fedloom.server")

Evaluator = Callable[[Vector], EvalResult]
"""Centralized evaluation: the global model's loss and accuracy on the server's test set."""


@dataclass(frozen=True)
class LoopState:
    """Where a run stands after a completed round: enough to continue it exactly.

    ``round`` is the last completed round (0 before the first); the three states are the
    strategy's (``None`` means "not started": they are initialised as for a fresh run).
    """

    round: int
    parameters: Vector
    history: History
    aggregator_state: Any = None
    optimizer_state: Any = None
    mechanism_state: Any = None


Commit = Callable[[LoopState, RoundOutcome, Sequence[str]], None]
"""Called after every round with the new state, the round's outcome and its selected clients."""


@dataclass(frozen=True)
class RunResult:
    """The final global model and the history of the run.

    ``stopped`` says why the run ended before its last round (the target accuracy reached, the
    privacy budget, an interruption); ``None`` when it ran them all.
    """

    parameters: Vector
    history: History
    stopped: str | None = None


def drive(steps: RoundSteps, fleet: Fleet, timeout: float | None) -> RoundOutcome:
    """Run a mechanism's phases over the fleet and return the round's outcome."""
    try:
        instructions = next(steps)
        while True:
            instructions = steps.send(fleet.exchange(instructions, timeout))
    except StopIteration as stop:
        outcome: RoundOutcome = stop.value
        return outcome


def _federated_evaluation(
    fleet: Fleet, selected: Iterable[str], parameters: Vector, round: int, timeout: float | None
) -> tuple[float | None, float | None]:
    """Example-weighted loss and accuracy of the global model on clients' local test splits."""
    ins = Instruction(round, "evaluate", parameters)
    wanted = set(selected)
    loss = acc = 0.0
    total = 0
    replies: Iterator[Reply] = fleet.exchange(dict.fromkeys(wanted, ins), timeout)
    for reply in replies:
        if reply.client_id not in wanted or reply.phase != "evaluate" or reply.round != round:
            continue
        n = reply.num_examples
        if n > 0 and "loss" in reply.metrics and "accuracy" in reply.metrics:
            loss += reply.metrics["loss"] * n
            acc += reply.metrics["accuracy"] * n
            total += n
    if total == 0:
        return None, None
    return loss / total, acc / total


def run_rounds(
    fleet: Fleet,
    strategy: Strategy,
    parameters: Vector,
    *,
    rounds: int,
    client_config: Config | None = None,
    evaluate: Evaluator | None = None,
    federated_evaluation: bool = False,
    min_clients: int = 1,
    round_timeout: float | None = None,
    out_dir: str | os.PathLike[str] | None = None,
    spec: ParamSpec | None = None,
    on_round: Callable[[RoundRecord], None] | None = None,
    run_info: Mapping[str, Any] | None = None,
    stop: Callable[[History], str | bool | None] | None = None,
    resume: LoopState | None = None,
    on_commit: Commit | None = None,
    round_metrics: Callable[[int, RoundOutcome], Mapping[str, float]] | None = None,
    bounds: UpdateBounds | None = None,
) -> RunResult:
    """Train for ``rounds`` rounds and return the final model and the history.

    Each round samples clients, runs the strategy's mechanism over the fleet (sending the global
    model and ``client_config`` merged with the strategy's client settings), checks that at least
    ``min_clients`` updates were accepted, applies the server optimizer, evaluates (centrally with
    ``evaluate``; on the selected clients' local test splits when ``federated_evaluation``), and,
    when ``out_dir`` is given, saves ``model.npz`` (needs ``spec``) and ``history.json`` there.
    ``run_info`` (the malicious clients of a simulated attack, say) is kept in the history.
    ``stop``, when given, is asked after every round and ends the run early when it answers
    true: with a sentence, that is why (:attr:`RunResult.stopped`).
    ``resume`` continues a run after its last completed round, with its history and the
    strategy's states; ``on_commit`` is given each new state (to persist it) before the next
    round starts. ``round_metrics(round, outcome)`` adds metrics to each round's record (the
    privacy spent, say), and so does the aggregate (its ``metrics``: the next clip norm, say).
    ``bounds`` is what one client's reply may weigh (:class:`~fedloom.strategy.UpdateBounds`;
    its defaults when ``None``).

    Raises
    ------
    RoundFailedError
        When fewer than ``min_clients`` clients are available or send acceptable updates.
    """
    config: dict[str, Any] = {**(client_config or {}), **strategy.client_config}
    first = 1
    history = History(info=dict(run_info or {}))
    if resume is not None:
        parameters, history, first = resume.parameters, resume.history, resume.round + 1
    agg_state = strategy.aggregator.init(parameters.shape[0])
    opt_state = strategy.optimizer.init(parameters)
    mech_state = strategy.mechanism.init(parameters)
    if resume is not None and resume.round > 0:
        agg_state, opt_state = resume.aggregator_state, resume.optimizer_state
        mech_state = resume.mechanism_state
    needed = max(min_clients, required_updates(strategy.aggregator))
    out = Path(out_dir) if out_dir is not None else None
    stopped: str | None = None
    if resume is not None and resume.round > 0 and first <= rounds and stop is not None:
        why = stop(history)  # a run that stopped early stays stopped when resumed
        if why:
            return RunResult(parameters, history, why if isinstance(why, str) else "asked to stop")
    for round in range(first, rounds + 1):
        started = time.perf_counter()
        available = fleet.clients()
        if len(available) < min_clients:
            raise RoundFailedError(round, "sample", len(available), min_clients)
        selected = strategy.sampler.select(available, round)
        ctx = RoundContext(
            round, selected, parameters, config, strategy.aggregator, agg_state,
            num_clients=len(available), state=mech_state, bounds=bounds or UpdateBounds(),
        )  # fmt: skip
        outcome = drive(strategy.mechanism.run(ctx), fleet, round_timeout)
        if outcome.aggregate.count < needed:
            raise RoundFailedError(
                round, "fit", outcome.aggregate.count, needed, requirement(strategy.aggregator)
            )
        agg_state, mech_state = outcome.aggregator_state, outcome.state
        with np.errstate(over="ignore", invalid="ignore"):  # checked just below, as a whole
            parameters, opt_state = strategy.optimizer.step(
                parameters, outcome.aggregate.vector, opt_state
            )
        if not np.isfinite(parameters).all():
            raise DivergedError(round)
        central = evaluate(parameters) if evaluate is not None else None
        fed_loss, fed_acc = (
            _federated_evaluation(fleet, selected, parameters, round, round_timeout)
            if federated_evaluation
            else (None, None)
        )
        metrics: Mapping[str, float] = outcome.metrics
        record = RoundRecord(
            round=round,
            clients=outcome.aggregate.count,
            train_loss=metrics.get("train_loss"),
            accuracy=central.accuracy if central else None,
            loss=central.loss if central else None,
            fed_accuracy=fed_acc,
            fed_loss=fed_loss,
            seconds=time.perf_counter() - started,
            metrics={
                **{k: v for k, v in metrics.items() if k != "train_loss"},
                **(round_metrics(round, outcome) if round_metrics is not None else {}),
                **outcome.aggregate.metrics,
            },
        )
        history = history.append(record)
        log.info(
            "round %d: %d clients, accuracy %s, rejected %d",
            round, record.clients, record.accuracy, len(outcome.rejected),
        )  # fmt: skip
        if out is not None:
            if spec is not None:
                save_checkpoint(out / "model.npz", Checkpoint(round, parameters, spec))
            history.write(out / "history.json")
        if on_commit is not None:
            state = LoopState(round, parameters, history, agg_state, opt_state, mech_state)
            on_commit(state, outcome, selected)
        if on_round is not None:
            on_round(record)
        why = stop(history) if stop is not None else None
        if why:
            stopped = why if isinstance(why, str) else "asked to stop"
            if round < rounds:
                log.info("round %d: stopping early: %s", round, stopped)
                break
            stopped = None  # the last round: the run ended as planned
    return RunResult(parameters, history, stopped)
