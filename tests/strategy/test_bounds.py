"""What one reply may weigh in a round that sees the updates: example counts are capped, and an
update far larger than the round's median (or than an absolute bound) is refused with a reason,
whatever order the replies arrive in."""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import pytest

from fedloom.messages import Instruction, Reply
from fedloom.privacy import CentralDP
from fedloom.strategy import (
    Chain,
    PlainRound,
    RoundContext,
    RoundOutcome,
    UpdateBounds,
    WeightedMean,
)

F32 = np.float32


def _fit(cid: str, values: list[float], n: int = 10, **metrics: float) -> Reply:
    return Reply(cid, 1, "fit", np.array(values, F32), n, dict(metrics))


def _round(replies: list[Reply], bounds: UpdateBounds, aggregator: Any = None) -> RoundOutcome:
    dim = replies[0].vector.shape[0]  # type: ignore[union-attr]
    aggregator = aggregator or WeightedMean()
    ctx = RoundContext(
        1, [r.client_id for r in replies], np.zeros(dim, F32), {}, aggregator,
        aggregator.init(dim), bounds=bounds,
    )  # fmt: skip
    steps = PlainRound().run(ctx)
    instructions: dict[str, Instruction] = next(steps)
    assert sorted(instructions) == sorted(r.client_id for r in replies)
    with pytest.raises(StopIteration) as stop:
        steps.send(iter(replies))
    outcome: RoundOutcome = stop.value.value
    return outcome


def test_a_claim_of_more_examples_than_the_cap_is_weighed_as_the_cap(caplog) -> None:
    # Prepare: a and b hold 10 examples; the liar claims 2^64 - 1 with an update of 2s
    replies = [
        _fit("a", [1.0], train_loss=1.0),
        _fit("b", [3.0], train_loss=1.0),
        _fit("liar", [2.0], n=2**64 - 1, train_loss=4.0),
    ]

    # Execute
    with caplog.at_level(logging.WARNING, logger="fedloom.round"):
        outcome = _round(replies, UpdateBounds(max_examples=10))

    # Assert: (10·1 + 10·3 + 10·2) / 30 = 2; the loss weighed alike: (1 + 1 + 4) / 3 = 2
    np.testing.assert_array_equal(outcome.aggregate.vector, [2.0])
    assert outcome.aggregate.total_weight == 30.0
    assert outcome.metrics["train_loss"] == pytest.approx(2.0)
    assert f"client liar claims {2**64 - 1} examples; weighed as 10" in caplog.text


def test_the_default_cap_keeps_weight_sums_exact_in_float64() -> None:
    # 2^21 replies at the default cap sum to 2^53, the last integer float64 holds exactly
    assert UpdateBounds().max_examples * 2**21 == 2**53


@pytest.mark.parametrize("first", [True, False], ids=["huge-first", "huge-last"])
def test_an_update_far_above_the_round_median_is_refused_in_any_order(first: bool) -> None:
    # Prepare: norms 1, 2 and 3, and one of norm 100 (more than 10 times the median 2)
    honest = [_fit("a", [1.0, 0.0]), _fit("b", [0.0, 2.0]), _fit("c", [3.0, 0.0])]
    huge = _fit("huge", [100.0, 0.0], n=2**40)
    replies = [huge, *honest] if first else [*honest, huge]

    # Execute
    outcome = _round(replies, UpdateBounds())

    # Assert: the mean of the three honest updates, in their arrival order
    np.testing.assert_allclose(outcome.aggregate.vector, [4 / 3, 2 / 3], rtol=1e-6)
    assert outcome.accepted == ("a", "b", "c")
    why = "update norm 100 is more than 10 times the round's median 2 (--update-norm-multiple)"
    assert outcome.rejected == {"huge": why}


def test_with_two_replies_the_lower_median_is_the_reference() -> None:
    # the mean of 1 and 3.4e38 would let the huge one pass; the lower median does not
    outcome = _round([_fit("a", [1.0]), _fit("b", [3.4e38])], UpdateBounds())

    np.testing.assert_array_equal(outcome.aggregate.vector, [1.0])
    assert outcome.rejected["b"].startswith("update norm 3.4e+38 is more than 10 times")


def test_an_absolute_norm_bound_refuses_alone_and_the_multiple_can_be_turned_off() -> None:
    replies = [_fit("a", [1.0]), _fit("b", [3.0]), _fit("c", [60.0])]

    bounded = _round(replies, UpdateBounds(norm_multiple=None, max_norm=2.5))
    free = _round(replies, UpdateBounds(norm_multiple=None))

    assert bounded.accepted == ("a",)
    assert bounded.rejected["b"] == "update norm 3 is above the bound 2.5 (--max-update-norm)"
    assert free.accepted == ("a", "b", "c")
    np.testing.assert_allclose(free.aggregate.vector, [64.0 / 3], rtol=1e-6)


def test_a_round_whose_median_update_is_zero_refuses_no_update_for_its_size() -> None:
    # most clients did not move: any movement is "infinitely" many medians; none is refused
    replies = [_fit("a", [0.0]), _fit("b", [0.0]), _fit("c", [0.5])]

    outcome = _round(replies, UpdateBounds())

    assert outcome.accepted == ("a", "b", "c") and not outcome.rejected


def test_under_central_dp_no_update_is_refused_for_what_the_others_are() -> None:
    # the noise's sensitivity counts each client alone: the clip bounds the huge update instead
    chain = Chain((CentralDP(clip_norm=1.0, noise_multiplier=0.0, expected_clients=3, seed=0),))
    replies = [_fit("a", [0.5]), _fit("b", [0.5]), _fit("huge", [100.0])]

    outcome = _round(replies, UpdateBounds(), chain)

    # (0.5 + 0.5 + 1.0, the huge one clipped to norm 1) / 3
    assert outcome.accepted == ("a", "b", "huge") and not outcome.rejected
    np.testing.assert_allclose(outcome.aggregate.vector, [2.0 / 3], rtol=1e-6)
