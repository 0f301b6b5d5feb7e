"""SCAFFOLD: option II control variates on the client, the server control variate update."""

from collections.abc import Iterator, Mapping

import numpy as np
import pytest

from fedloom.client import SCAFFOLD_STATE_KEY as STATE_KEY
from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.data import ArrayData, ClientData
from fedloom.errors import ClientError
from fedloom.messages import FitResult, Instruction, Reply
from fedloom.strategy import (
    CONTROL_DELTA_KEY,
    CONTROL_KEY,
    RoundContext,
    ScaffoldRound,
    WeightedMean,
    control_update,
)


def test_control_update_is_option_two() -> None:
    # c_i+ = c_i - c + (x - y_i)/(K·lr), with delta = y_i - x.
    # c_i = [1, 2], c = [0.5, 0.5], delta = [-0.2, 0.4], K·lr = 4·0.1 = 0.4:
    # c_i+ = [1 - 0.5 + 0.5, 2 - 0.5 - 1] = [1, 0.5]; change = [0, -1.5]
    c_i = np.array([1.0, 2.0], np.float32)
    c = np.array([0.5, 0.5], np.float32)
    delta = np.array([-0.2, 0.4], np.float32)

    new, change = control_update(c_i, c, delta, steps=4, lr=0.1)

    np.testing.assert_allclose(new, [1.0, 0.5], atol=1e-6)
    np.testing.assert_allclose(change, [0.0, -1.5], atol=1e-6)


def _client(trainer: LinearTrainer) -> ClientContext:
    rng = np.random.default_rng(0)
    train = ArrayData(rng.normal(size=(20, 4)), rng.integers(0, 3, 20))
    return ClientContext("7", ClientData(train, train.subset(np.arange(0))), trainer)


def test_client_trains_with_the_correction_and_keeps_its_control_variate() -> None:
    # Prepare
    trainer = LinearTrainer(4, 3, lr=0.1, local_epochs=2, batch_size=5)
    ctx = _client(trainer)
    x = np.zeros(15, np.float32)
    c = np.full(15, 0.05, np.float32)
    ins = Instruction(1, "fit", x, {"seed": 0}, {CONTROL_KEY: c.tobytes()})
    app = ClientApp()

    # Execute: two rounds, the second must use the c_i the first stored
    first = app.handle(ctx, ins)
    c_i1 = ctx.state[STATE_KEY].copy()
    second = app.handle(ctx, Instruction(2, "fit", x, {"seed": 0}, {CONTROL_KEY: c.tobytes()}))

    # Assert: round 1 corrects by c - 0 and K = 2 epochs · 4 batches = 8 steps
    from fedloom.client import client_seed

    direct = trainer.fit(x, ctx.data.train, {"seed": 0}, client_seed(0, 1, "7"), correction=c)
    np.testing.assert_allclose(first.vector, direct.parameters - x, atol=1e-7)
    expected_c_i = 0 - c - (direct.parameters - x) / (8 * 0.1)
    np.testing.assert_allclose(c_i1, expected_c_i, rtol=1e-5, atol=1e-6)
    change1 = np.frombuffer(first.payload[CONTROL_DELTA_KEY], np.float32)
    np.testing.assert_allclose(change1, expected_c_i, rtol=1e-5, atol=1e-6)
    direct2 = trainer.fit(
        x, ctx.data.train, {"seed": 0}, client_seed(0, 2, "7"), correction=c - c_i1
    )
    np.testing.assert_allclose(second.vector, direct2.parameters - x, atol=1e-7)


class _PlainTrainer:
    """A trainer that knows nothing of SCAFFOLD."""

    def __init__(self) -> None:
        self.inner = LinearTrainer(4, 3)
        self.spec = self.inner.spec

    def init_parameters(self, seed: int) -> np.ndarray:
        return self.inner.init_parameters(seed)

    def fit(self, parameters, data, config, seed) -> FitResult:
        return self.inner.fit(parameters, data, config, seed)

    def evaluate(self, parameters, data):
        return self.inner.evaluate(parameters, data)


def test_a_trainer_without_correction_fails_with_a_clear_error() -> None:
    ctx = _client(_PlainTrainer())  # type: ignore[arg-type]
    c = np.zeros(15, np.float32)
    ins = Instruction(1, "fit", np.zeros(15, np.float32), {}, {CONTROL_KEY: c.tobytes()})
    with pytest.raises(ClientError, match="correction= argument"):
        ClientApp().handle(ctx, ins)


def test_a_malformed_server_control_variate_is_refused_by_the_client() -> None:
    ctx = _client(LinearTrainer(4, 3))
    ins = Instruction(1, "fit", np.zeros(15, np.float32), {}, {CONTROL_KEY: b"\x00" * 7})
    with pytest.raises(ClientError, match="control variate is not 15 finite float32"):
        ClientApp().handle(ctx, ins)


def _drive(mech: ScaffoldRound, ctx: RoundContext, answer) -> tuple:
    steps = mech.run(ctx)
    instructions: Mapping[str, Instruction] = next(steps)
    replies: Iterator[Reply] = iter([answer(cid, ins) for cid, ins in instructions.items()])
    try:
        steps.send(replies)
    except StopIteration as stop:
        return instructions, stop.value
    raise AssertionError("the mechanism asked for a second phase")


def _reply(cid: str, delta: list[float], change: list[float] | None, raw: bytes | None = None):
    payload = {} if change is None else {CONTROL_DELTA_KEY: np.float32(change).tobytes()}
    if raw is not None:
        payload = {CONTROL_DELTA_KEY: raw}
    return Reply(cid, 1, "fit", np.array(delta, np.float32), 10, {}, payload)


def test_server_moves_its_control_variate_by_the_sum_of_changes_over_n() -> None:
    # Prepare: N = 4 clients, 3 selected; c = [1, 1].
    # Accepted changes: a [2, 0], b [0, 4]; c's reply has no change and is rejected.
    # c+ = c + (|S|/N)·mean(Δc) = [1, 1] + ([2, 0] + [0, 4]) / 4 = [1.5, 2]
    mech = ScaffoldRound()
    params = np.zeros(2, np.float32)
    state = np.array([1.0, 1.0])
    ctx = RoundContext(1, ["a", "b", "c"], params, {}, WeightedMean(), None, 4, state)
    answers = {
        "a": _reply("a", [1.0, 1.0], [2.0, 0.0]),
        "b": _reply("b", [3.0, 3.0], [0.0, 4.0]),
        "c": _reply("c", [9.0, 9.0], None),
    }

    # Execute
    instructions, outcome = _drive(mech, ctx, lambda cid, ins: answers[cid])

    # Assert
    sent = np.frombuffer(instructions["a"].payload[CONTROL_KEY], np.float32)
    np.testing.assert_allclose(sent, [1.0, 1.0])
    np.testing.assert_allclose(outcome.state, [1.5, 2.0])
    np.testing.assert_allclose(outcome.aggregate.vector, [2.0, 2.0])
    assert outcome.aggregate.count == 2
    assert "control variate change" in outcome.rejected["c"]
    np.testing.assert_allclose(state, [1.0, 1.0])  # the old state is not modified


@pytest.mark.parametrize(
    "raw", [b"\x00" * 4, np.float32([np.nan, 0.0]).tobytes(), np.float64([0, 0]).tobytes()]
)
def test_server_rejects_a_malformed_control_change(raw: bytes) -> None:
    ctx = RoundContext(1, ["a"], np.zeros(2, np.float32), {}, WeightedMean(), None, 1, np.zeros(2))
    _, outcome = _drive(ScaffoldRound(), ctx, lambda cid, ins: _reply(cid, [1, 1], None, raw))
    assert outcome.aggregate.count == 0 and "a" in outcome.rejected
    np.testing.assert_allclose(outcome.state, [0.0, 0.0])


def test_a_diverged_client_keeps_its_previous_control_variate() -> None:
    # Prepare: a learning rate so large that training overflows to Inf/NaN
    trainer = LinearTrainer(4, 3, lr=1e300, local_epochs=3, batch_size=5)
    ctx = _client(trainer)
    ctx.state[STATE_KEY] = np.full(15, 0.5, np.float32)
    x = np.ones(15, np.float32)
    ins = Instruction(1, "fit", x, {"seed": 0}, {CONTROL_KEY: np.zeros(15, np.float32).tobytes()})

    # Execute
    with np.errstate(all="ignore"):
        reply = ClientApp().handle(ctx, ins)

    # Assert: the reply is not finite (the server will refuse it); the state is untouched
    assert not np.isfinite(reply.vector).all()
    np.testing.assert_array_equal(ctx.state[STATE_KEY], np.full(15, 0.5, np.float32))
