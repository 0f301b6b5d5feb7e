"""The round loop against a scripted fleet: no training, hand-computed numbers."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest

from fedloom.errors import RoundFailedError
from fedloom.messages import EvalResult, Instruction, Reply
from fedloom.params import ParamSpec
from fedloom.server import load_checkpoint, run_rounds
from fedloom.simulation import ScriptedFleet
from fedloom.strategy import (
    AllClients,
    RoundContext,
    RoundOutcome,
    RoundSteps,
    Strategy,
    UpdateBounds,
    WeightedMean,
    fedavg,
)
from fedloom.strategy._mechanism import _FitTally, accepted_updates


# client "k" moves the model by k * [1, 2] and reports k * 10 examples
def _linear_client(cid: str, ins: Instruction) -> Reply | None:
    k = int(cid)
    if ins.phase == "evaluate":
        return Reply(cid, ins.round, "evaluate", None, k, {"loss": float(k), "accuracy": 0.1 * k})
    delta = np.array([k, 2 * k], dtype=np.float32)
    return Reply(cid, ins.round, "fit", delta, 10 * k, {"train_loss": float(k)})


def test_one_round_applies_the_example_weighted_mean_update() -> None:
    # Prepare: clients 1, 2, 3 with weights 10, 20, 30:
    # mean delta = (10*1 + 20*2 + 30*3)/60 * [1, 2] = (140/60) * [1, 2]
    fleet = ScriptedFleet(["1", "2", "3"], _linear_client)
    start = np.zeros(2, np.float32)

    # Execute
    result = run_rounds(fleet, fedavg(), start, rounds=1, federated_evaluation=True)

    # Assert
    np.testing.assert_allclose(result.parameters, [140 / 60, 280 / 60], rtol=1e-6)
    record = result.history.rounds[0]
    assert record.clients == 3
    assert record.train_loss == pytest.approx(140 / 60)
    # federated evaluation weighted by examples 1, 2, 3: loss (1+4+9)/6, accuracy 0.1*(14/6)
    assert record.fed_loss == pytest.approx(14 / 6)
    assert record.fed_accuracy == pytest.approx(0.1 * 14 / 6)
    assert start.tolist() == [0.0, 0.0]


def test_clients_get_the_global_model_and_merged_config() -> None:
    # Prepare
    fleet = ScriptedFleet(["1"], _linear_client)
    strategy = Strategy("custom", client_config={"mu": 0.5})

    # Execute
    run_rounds(fleet, strategy, np.ones(2, np.float32), rounds=2, client_config={"lr": 0.1})

    # Assert: round 2 starts from round 1's result (1 + [1, 2])
    (_, first), (_, second) = fleet.instructions
    assert first.phase == "fit" and dict(first.config) == {"lr": 0.1, "mu": 0.5}
    assert first.parameters is not None and first.parameters.tolist() == [1.0, 1.0]
    assert second.round == 2
    assert second.parameters is not None and second.parameters.tolist() == [2.0, 3.0]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [
        (lambda r: Reply(r.client_id, r.round, "fit", np.array([np.nan, 1], np.float32), 5), "NaN"),
        (lambda r: Reply(r.client_id, r.round, "fit", np.zeros(3, np.float32), 5), "shape"),
        (lambda r: Reply(r.client_id, r.round, "fit", np.zeros(2, np.float64), 5), "dtype"),
        (lambda r: Reply(r.client_id, r.round, "fit", np.zeros(2, np.float32), 0), "num_examples"),
        (lambda r: Reply(r.client_id, r.round + 1, "fit", np.zeros(2, np.float32), 5), "round"),
        (lambda r: Reply(r.client_id, r.round, "fit", None, 5), "no update"),
        (lambda r: Reply("99", r.round, "fit", np.zeros(2, np.float32), 5), "not selected"),
    ],
)
def test_a_malformed_update_is_rejected_and_the_round_completes(
    bad: Callable[[Reply], Reply], reason: str
) -> None:
    # Prepare: client 2 misbehaves, clients 1 and 3 are fine
    def respond(cid: str, ins: Instruction) -> Reply | None:
        good = _linear_client(cid, ins)
        return bad(good) if cid == "2" and good is not None else good

    fleet = ScriptedFleet(["1", "2", "3"], respond)

    # Execute
    result = run_rounds(fleet, fedavg(), np.zeros(2, np.float32), rounds=1)

    # Assert: mean of clients 1 and 3 only: (10*1 + 30*3)/40 = 2.5
    np.testing.assert_allclose(result.parameters, [2.5, 5.0])
    assert result.history.rounds[0].clients == 2


def test_rejection_reasons_are_specific() -> None:
    # Prepare
    ctx = RoundContext(1, ["1", "2"], np.zeros(2, np.float32), {}, WeightedMean(), None)
    ok = Reply("1", 1, "fit", np.ones(2, np.float32), 3)
    replies = [ok, ok, Reply("2", 1, "fit", np.array([np.inf, 0], np.float32), 3)]
    tally = _FitTally()

    # Execute
    accepted = list(accepted_updates(replies, ctx, tally))

    # Assert
    assert [u.client_id for u in accepted] == ["1"]
    assert tally.rejected["1"] == "a second update in the same round"
    assert tally.rejected["2"] == "update contains NaN or Inf"


@pytest.mark.parametrize(
    ("values", "refused"),
    [
        ([1.0, np.nan, 0.0], True),
        ([-np.inf, 0.0, 0.0], True),
        ([np.inf, -np.inf, 0.0], True),  # their squares' sum is NaN, not inf
        ([3e38, 3e38, 1.0], False),  # finite, though its sum of squares overflows float32
    ],
    ids=["nan", "inf", "inf-and-minus-inf", "huge-but-finite"],
)
def test_only_an_update_holding_a_nan_or_an_infinity_is_refused_as_one(
    values: list[float], refused: bool
) -> None:
    ctx = RoundContext(1, ["1"], np.zeros(3, np.float32), {}, WeightedMean(), None,
                       bounds=UpdateBounds(norm_multiple=None))  # fmt: skip
    tally = _FitTally()

    list(accepted_updates([Reply("1", 1, "fit", np.array(values, np.float32), 3)], ctx, tally))

    assert (tally.rejected.get("1") == "update contains NaN or Inf") is refused
    assert (tally.accepted == ["1"]) is not refused


def test_a_round_with_fewer_updates_than_the_minimum_fails_clearly() -> None:
    # Prepare: only client 1 answers
    fleet = ScriptedFleet(["1", "2", "3"], lambda c, i: _linear_client(c, i) if c == "1" else None)

    # Execute / Assert
    with pytest.raises(RoundFailedError, match=r"round 1, phase 'fit': only 1 client\(s\)"):
        run_rounds(fleet, fedavg(), np.zeros(2, np.float32), rounds=1, min_clients=2)


def test_too_few_available_clients_fails_before_sampling() -> None:
    fleet = ScriptedFleet(["1"], _linear_client)
    with pytest.raises(RoundFailedError, match="phase 'sample'"):
        run_rounds(fleet, fedavg(), np.zeros(2, np.float32), rounds=1, min_clients=2)


def test_dropped_clients_do_not_stop_the_round() -> None:
    # Prepare: client 3 never answers
    fleet = ScriptedFleet(["1", "2", "3"], lambda c, i: None if c == "3" else _linear_client(c, i))

    # Execute
    result = run_rounds(fleet, fedavg(), np.zeros(2, np.float32), rounds=1, min_clients=2)

    # Assert: (10*1 + 20*2)/30 = 5/3
    np.testing.assert_allclose(result.parameters, [5 / 3, 10 / 3], rtol=1e-6)


@dataclass(frozen=True)
class TwoPhaseSum:
    """A mechanism with a key phase before fit, as secure aggregation has: it asks every client
    for a number, then sends each client the sum of all numbers with the model."""

    def init(self, parameters: np.ndarray) -> None:
        return None

    def run(self, ctx: RoundContext) -> RoundSteps:
        hello = Instruction(ctx.round, "hello")
        replies = yield dict.fromkeys(ctx.selected, hello)
        total = sum(int(r.payload["n"]) for r in replies)
        fit = Instruction(ctx.round, "fit", ctx.parameters, {"total": total})
        replies = yield dict.fromkeys(ctx.selected, fit)
        agg, state = ctx.aggregator.aggregate(
            accepted_updates(replies, ctx, _FitTally()), 2, ctx.aggregator_state
        )
        return RoundOutcome(agg, state)


def test_a_mechanism_adds_phases_without_changing_the_loop() -> None:
    # Prepare
    def respond(cid: str, ins: Instruction) -> Reply:
        if ins.phase == "hello":
            return Reply(cid, ins.round, "hello", payload={"n": cid.encode()})
        total = float(ins.config["total"])
        return Reply(cid, ins.round, "fit", np.full(2, total, np.float32), 1)

    fleet = ScriptedFleet(["1", "2", "3"], respond)
    strategy = Strategy("two-phase", sampler=AllClients(), mechanism=TwoPhaseSum())

    # Execute
    result = run_rounds(fleet, strategy, np.zeros(2, np.float32), rounds=1)

    # Assert: every client saw total 6, so the mean update is 6
    assert [ins.phase for _, ins in fleet.instructions] == ["hello"] * 3 + ["fit"] * 3
    assert result.parameters.tolist() == [6.0, 6.0]


def test_out_dir_gets_checkpoint_and_history_after_every_round(tmp_path: Path) -> None:
    # Prepare
    fleet = ScriptedFleet(["1", "2"], _linear_client)
    spec = ParamSpec(("w",), ((2,),), ("float32",))
    seen: list[int] = []

    def on_round(record: object) -> None:
        seen.append(load_checkpoint(tmp_path / "model.npz").round)

    # Execute
    result = run_rounds(
        fleet,
        fedavg(),
        np.zeros(2, np.float32),
        rounds=3,
        evaluate=lambda p: EvalResult(float(p[0]), 0.5, 10),
        out_dir=tmp_path,
        spec=spec,
        on_round=on_round,
    )

    # Assert
    assert seen == [1, 2, 3]
    saved = load_checkpoint(tmp_path / "model.npz")
    assert saved.spec == spec
    np.testing.assert_array_equal(saved.parameters, result.parameters)
    rounds = json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert [r["round"] for r in rounds] == [1, 2, 3]
    assert {"round", "accuracy", "loss", "train_loss", "clients", "seconds"} <= set(rounds[0])
    assert rounds[0]["accuracy"] == 0.5
    assert rounds[2]["loss"] == pytest.approx(result.parameters[0])
    assert not list(tmp_path.glob("*.tmp"))


def test_a_run_resumed_from_a_committed_state_ends_as_an_uninterrupted_one() -> None:
    # Prepare: FedAdam keeps optimizer state, and a sampler draws 3 of 5 clients per round.
    import fedloom
    from fedloom.client import LinearTrainer
    from fedloom.server import LoopState
    from fedloom.simulation import InProcessFleet
    from fedloom.strategy import CountSampler, make_strategy

    ds = fedloom.load_dataset("digits", num_clients=5, seed=0)
    trainer = LinearTrainer(64, 10)
    strategy = make_strategy("fedadam", CountSampler(3, seed=1), server_lr=0.05)
    start = trainer.init_parameters(0)
    config = {"seed": 3}
    committed: list[LoopState] = []

    # Execute: 4 rounds straight; then 2 rounds, and a fresh fleet resuming from round 2
    straight = fedloom.run_rounds(
        InProcessFleet(ds, trainer), strategy, start, rounds=4, client_config=config
    )
    fedloom.run_rounds(
        InProcessFleet(ds, trainer),
        strategy,
        start,
        rounds=2,
        client_config=config,
        on_commit=lambda s, o, sel: committed.append(s),
    )
    resumed = fedloom.run_rounds(
        InProcessFleet(ds, trainer),
        strategy,
        start,
        rounds=4,
        client_config=config,
        resume=committed[-1],
    )

    # Assert
    assert [s.round for s in committed] == [1, 2]
    np.testing.assert_array_equal(resumed.parameters, straight.parameters)
    assert resumed.history.column("clients") == straight.history.column("clients")
    assert resumed.history.column("train_loss") == straight.history.column("train_loss")
    assert len(resumed.history) == 4
