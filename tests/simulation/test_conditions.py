"""Simulated dropout and stragglers: exact counts, pinned draws, epochs reaching the trainer."""

from __future__ import annotations

import logging

import numpy as np
import pytest

import fedloom
from fedloom.client import LinearTrainer, client_seed
from fedloom.errors import ConfigError
from fedloom.messages import Config, Instruction
from fedloom.simulation import InProcessFleet, ScriptedFleet
from fedloom.simulation._conditions import RoundConditions, SimulatedConditions

IDS = tuple(str(i) for i in range(10))


def recording_fleet() -> ScriptedFleet:
    """Answers every instruction with an empty reply, lazily, and records it all."""
    return ScriptedFleet(IDS)


def _answers(
    fleet: SimulatedConditions, round: int, phase: str, config: Config | None = None
) -> list[str]:
    ins = Instruction(round, phase, None, config or {})
    return sorted(r.client_id for r in fleet.exchange(dict.fromkeys(IDS, ins), None))


def test_dropout_drops_the_rounded_share_and_they_receive_nothing_for_the_round() -> None:
    # Prepare: round_half_up(0.25 * 10) = 3 dropouts per round
    stub = recording_fleet()
    fleet = SimulatedConditions(stub, dropout=0.25)

    for round in (1, 2, 3):
        # Execute
        fit = _answers(fleet, round, "fit")
        evaluate = _answers(fleet, round, "evaluate")

        # Assert
        dropped = fleet.round_conditions(round).dropped
        alive = sorted(set(IDS) - set(dropped))
        assert len(dropped) == 3
        assert fit == evaluate == alive
        assert sorted(stub.sent[-2]) == sorted(stub.sent[-1]) == alive


def test_draws_are_pinned_by_seed_round_and_sorted_ids_alone() -> None:
    # Prepare: a reversed instruction order must not change the draw (resumed runs draw alike)
    a = SimulatedConditions(recording_fleet(), dropout=0.25, stragglers=0.2, local_epochs=5)
    b = SimulatedConditions(recording_fleet(), dropout=0.25, stragglers=0.2, local_epochs=5)
    ins = Instruction(1, "fit")

    # Execute
    list(a.exchange(dict.fromkeys(IDS, ins), None))
    list(b.exchange(dict.fromkeys(reversed(IDS), ins), None))

    # Assert: the values pin the draw so that a change to it shows here
    expected = RoundConditions(("2", "5", "6"), {"0": 1, "1": 1})
    assert a.round_conditions(1) == b.round_conditions(1) == expected


def test_same_seed_draws_alike_another_round_or_seed_draws_differently() -> None:
    # Prepare
    def draws(seed: int, round: int) -> RoundConditions:
        fleet = SimulatedConditions(recording_fleet(), dropout=0.25, stragglers=0.2, seed=seed)
        _answers(fleet, round, "fit", {"local_epochs": 5})
        return fleet.round_conditions(round)

    # Execute
    first, again, later, other = draws(0, 1), draws(0, 1), draws(0, 2), draws(1, 1)

    # Assert
    assert first == again
    assert later == RoundConditions(("1", "3", "5"), {"0": 1, "7": 2})
    assert other == RoundConditions(("0", "3", "5"), {"2": 3, "8": 2})
    assert first != later and first != other


def test_phases_before_the_rounds_first_fit_pass_through() -> None:
    # Prepare
    fleet = SimulatedConditions(recording_fleet(), dropout=0.5)

    # Execute
    setup = _answers(fleet, 1, "setup")
    fit = _answers(fleet, 1, "fit")

    # Assert
    assert setup == sorted(IDS)
    assert len(fit) == 5


def test_keep_policy_sends_stragglers_their_drawn_epochs_and_others_their_instruction() -> None:
    # Prepare: round_half_up(0.5 * 10) = 5 stragglers, E = 4 from the instruction
    stub = recording_fleet()
    fleet = SimulatedConditions(stub, stragglers=0.5, straggler_policy="keep", local_epochs=9)
    config = {"local_epochs": 4, "lr": 0.1}
    ins = Instruction(1, "fit", None, config)

    # Execute
    replies = list(fleet.exchange(dict.fromkeys(IDS, ins), None))

    # Assert
    slow = fleet.round_conditions(1).stragglers
    assert len(replies) == 10 and len(slow) == 5
    for client_id, sent in stub.sent[0].items():
        if client_id in slow:
            assert 1 <= slow[client_id] <= 4
            assert sent.config == {"local_epochs": slow[client_id], "lr": 0.1}
        else:
            assert sent is ins
    assert config == {"local_epochs": 4, "lr": 0.1}


def test_stragglers_come_from_the_clients_that_did_not_drop_out_capped_at_those() -> None:
    # Prepare: 10 clients, 6 drop out, round_half_up(0.6 * 10) = 6 stragglers capped at 4
    fleet = SimulatedConditions(recording_fleet(), dropout=0.6, stragglers=0.6, local_epochs=3)

    # Execute
    fit = _answers(fleet, 1, "fit")

    # Assert
    conditions = fleet.round_conditions(1)
    assert len(conditions.dropped) == 6
    assert sorted(conditions.stragglers) == sorted(set(IDS) - set(conditions.dropped))
    assert fit == []


def test_a_kept_straggler_trains_its_drawn_epochs_on_the_real_fleet() -> None:
    # Prepare: E = 3 comes from the constructor; the trainer's own default is 3 as well
    rng = np.random.default_rng(0)
    arrays = [(rng.normal(size=(20, 3)), rng.integers(0, 2, 20)) for _ in range(4)]
    ds = fedloom.from_arrays(arrays, num_classes=2)
    trainer = LinearTrainer(3, 2, lr=0.3, batch_size=4, local_epochs=3)
    fleet = SimulatedConditions(
        InProcessFleet(ds, trainer),
        stragglers=0.5,
        straggler_policy="keep",
        local_epochs=3,
        seed=4,
    )
    start = trainer.init_parameters(0)
    config = {"seed": 7}

    # Execute
    ins = Instruction(1, "fit", start, config)
    replies = {r.client_id: r for r in fleet.exchange(dict.fromkeys(fleet.clients(), ins), None)}

    # Assert: each update is what the trainer gives for the epochs the client was allowed
    slow = fleet.round_conditions(1).stragglers
    assert dict(slow) == {"0": 2, "1": 1}
    for client_id, reply in replies.items():
        epochs = slow.get(client_id, 3)
        seed = client_seed(7, 1, client_id)
        data = ds.client(int(client_id)).train
        trained = trainer.fit(start, data, {"seed": 7, "local_epochs": epochs}, seed)
        assert reply.vector is not None
        np.testing.assert_array_equal(reply.vector, trained.parameters - start)


def test_drop_policy_removes_exactly_the_stragglers_from_fit_but_evaluates_them() -> None:
    # Prepare
    stub = recording_fleet()
    fleet = SimulatedConditions(stub, dropout=0.2, stragglers=0.3, local_epochs=2, seed=3)

    # Execute
    fit = _answers(fleet, 1, "fit")
    evaluate = _answers(fleet, 1, "evaluate")

    # Assert
    conditions = fleet.round_conditions(1)
    alive = set(IDS) - set(conditions.dropped)
    assert len(conditions.dropped) == 2 and len(conditions.stragglers) == 3
    assert all(1 <= e <= 2 for e in conditions.stragglers.values())
    assert fit == sorted(alive - set(conditions.stragglers))
    assert evaluate == sorted(alive)


def test_stragglers_without_a_number_of_local_epochs_are_refused() -> None:
    fleet = SimulatedConditions(recording_fleet(), stragglers=0.2)
    with pytest.raises(ConfigError, match="stragglers need the number of local epochs"):
        _answers(fleet, 1, "fit")


def test_exchange_is_lazy_and_passes_the_timeout_and_close_on() -> None:
    # Prepare
    stub = recording_fleet()
    fleet = SimulatedConditions(stub, dropout=0.2)

    # Execute
    replies = fleet.exchange(dict.fromkeys(IDS, Instruction(1, "fit")), 2.5)
    before = stub.produced
    next(replies)
    after_one = stub.produced
    fleet.close()

    # Assert
    assert (before, after_one) == (0, 1)
    assert stub.timeouts == [2.5]
    assert stub.closed


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"dropout": 1.0}, r"--dropout must be a share in \[0, 1\), got 1.0"),
        ({"dropout": -0.1}, r"--dropout must be a share in \[0, 1\)"),
        ({"stragglers": 1.5}, r"--stragglers must be a share in \[0, 1\)"),
        ({"straggler_policy": "wait"}, "--straggler-policy must be 'drop' or 'keep'"),
        ({"local_epochs": 0}, "--local-epochs must be at least 1"),
    ],
)
def test_settings_out_of_range_are_refused(settings: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        SimulatedConditions(recording_fleet(), **settings)  # type: ignore[arg-type]


def test_each_round_is_logged_once_and_only_the_last_rounds_are_kept(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # Prepare
    fleet = SimulatedConditions(recording_fleet(), dropout=0.1)
    slow = SimulatedConditions(recording_fleet(), stragglers=0.2, straggler_policy="keep")

    # Execute
    with caplog.at_level(logging.INFO, logger="fedloom.simulation"):
        for round in range(1, 21):
            _answers(fleet, round, "fit")
            _answers(fleet, round, "evaluate")
        _answers(slow, 1, "fit", {"local_epochs": 5})

    # Assert
    lines = [r.getMessage() for r in caplog.records if r.name == "fedloom.simulation"]
    assert len(lines) == 21
    assert lines[0] == "round 1: 1 of 10 clients dropped out, 0 stragglers"
    assert lines[20] == (
        "round 1: 0 of 10 clients dropped out, 2 stragglers "
        "(1.0 local epochs on average, updates kept)"
    )
    assert len(fleet.round_conditions(20).dropped) == 1
    with pytest.raises(KeyError, match="round 1"):
        fleet.round_conditions(1)
