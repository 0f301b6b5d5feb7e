"""Adversarial clients: each attack's update against honest training done by hand."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

import fedloom
from fedloom.client import DEFAULT_MODS, ClientApp, ClientContext, LinearTrainer
from fedloom.data import ArrayData, ClientData, FederatedDataset
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.secagg import PHASES
from fedloom.simulation import ATTACKS, SIGN_FLIP_SCALE, Attack, attack_mod

TRAINER = LinearTrainer(3, 3, lr=0.3, batch_size=4, local_epochs=2)
START = np.random.default_rng(1).normal(size=TRAINER.spec.size).astype(np.float32)
FIT = Instruction(2, "fit", START, {"seed": 5})


def _dataset() -> FederatedDataset:
    rng = np.random.default_rng(0)
    arrays = [(rng.normal(size=(15, 3)), rng.integers(0, 3, 15)) for _ in range(4)]
    return fedloom.from_arrays(arrays, num_classes=3, local_test_fraction=0.2)


def _ctx(client_id: str, data: ClientData | None = None) -> ClientContext:
    return ClientContext(client_id, data or _dataset().client(int(client_id)), TRAINER, {})


def _vector(reply: Reply) -> np.ndarray:
    assert reply.vector is not None
    return reply.vector


def attacked_app(
    attack: Attack,
    malicious: Any,
    *,
    num_classes: int,
    cohort_size: int,
    handlers: Any = None,
) -> ClientApp:
    """A client runtime with the attack inside secure aggregation, as the recipes build it."""
    mod = attack_mod(attack, malicious, num_classes=num_classes, cohort_size=cohort_size)
    secagg, *rest = DEFAULT_MODS
    return ClientApp(handlers, mods=(secagg, mod, *rest))


def _app(kind: str, scale: float | None = None) -> ClientApp:
    return attacked_app(Attack(kind, 0.25, scale), ["1"], num_classes=3, cohort_size=4)


def _flipped_update(client_id: str) -> Reply:
    """Honest training on the client's data with labels flipped by hand: 0 <-> 2, 1 stays."""
    data = _dataset().client(int(client_id))
    flipped = ClientData(ArrayData(data.train.x, 2 - data.train.y), data.test)
    return ClientApp().handle(_ctx(client_id, flipped), FIT)


def test_sign_flip_sends_minus_four_times_the_honest_update() -> None:
    # Prepare
    honest = ClientApp().handle(_ctx("1"), FIT)

    # Execute
    reply = _app("sign-flip").handle(_ctx("1"), FIT)

    # Assert
    assert SIGN_FLIP_SCALE == 4.0
    assert _vector(reply).dtype == np.float32
    np.testing.assert_array_equal(_vector(reply), -4 * _vector(honest))
    assert (reply.num_examples, reply.metrics) == (honest.num_examples, honest.metrics)


@pytest.mark.parametrize("kind", ATTACKS)
def test_honest_clients_and_everyones_evaluation_are_untouched(kind: str) -> None:
    # Prepare
    plain = ClientApp()
    evaluate = Instruction(2, "evaluate", START)

    # Execute
    fit_honest = _app(kind).handle(_ctx("0"), FIT)
    eval_malicious = _app(kind).handle(_ctx("1"), evaluate)

    # Assert
    np.testing.assert_array_equal(_vector(fit_honest), _vector(plain.handle(_ctx("0"), FIT)))
    assert eval_malicious == plain.handle(_ctx("1"), evaluate)


def test_gaussian_noise_has_the_honest_norm_and_is_reproducible() -> None:
    # Prepare
    honest_norm = float(np.linalg.norm(_vector(ClientApp().handle(_ctx("1"), FIT))))

    # Execute
    a = _vector(_app("gaussian").handle(_ctx("1"), FIT))
    b = _vector(_app("gaussian").handle(_ctx("1"), FIT))
    other_round = _vector(_app("gaussian").handle(_ctx("1"), Instruction(3, "fit", START)))
    doubled = _vector(_app("gaussian", scale=2.0).handle(_ctx("1"), FIT))

    # Assert
    assert a.dtype == np.float32 and a.shape == START.shape
    np.testing.assert_allclose(np.linalg.norm(a), honest_norm, rtol=1e-5)
    np.testing.assert_allclose(np.linalg.norm(doubled), 2 * honest_norm, rtol=1e-5)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, other_round)


def test_label_flip_sends_the_update_of_training_on_flipped_labels() -> None:
    # Prepare
    ctx = _ctx("1")
    labels = ctx.data.train.y.copy()

    # Execute
    reply = _app("label-flip").handle(ctx, FIT)

    # Assert
    expected = _flipped_update("1")
    np.testing.assert_array_equal(_vector(reply), _vector(expected))
    assert (reply.num_examples, reply.metrics) == (expected.num_examples, expected.metrics)
    np.testing.assert_array_equal(ctx.data.train.y, labels)


def test_scale_boosts_the_label_flip_update_by_the_cohort_size_or_the_given_k() -> None:
    # Execute
    default = _vector(_app("scale").handle(_ctx("1"), FIT))
    given = _vector(_app("scale", scale=10.0).handle(_ctx("1"), FIT))

    # Assert
    flipped = _vector(_flipped_update("1"))
    np.testing.assert_array_equal(default, np.float32(4) * flipped)
    np.testing.assert_array_equal(given, np.float32(10) * flipped)
    assert default.dtype == given.dtype == np.float32


def test_the_base_app_trains_on_flipped_labels_with_the_same_state_and_keeps_its_phases() -> None:
    # Prepare: a base app that records what it trained on in the client's state
    def fit(ctx: ClientContext, ins: Instruction) -> Reply:
        ctx.state["labels"] = ctx.data.train.y.copy()
        return ClientApp().handle(ctx, ins)

    def ping(ctx: ClientContext, ins: Instruction) -> Reply:
        return Reply(ctx.client_id, ins.round, ins.phase, num_examples=7)

    handlers = {"fit": fit, "ping": ping}
    app = attacked_app(
        Attack("label-flip", 0.5), {"1"}, num_classes=3, cohort_size=4, handlers=handlers
    )
    ctx = _ctx("1")

    # Execute
    app.handle(ctx, FIT)
    pong = app.handle(ctx, Instruction(2, "ping"))

    # Assert
    np.testing.assert_array_equal(ctx.state["labels"], 2 - ctx.data.train.y)
    assert set(app.phases) == {"fit", "evaluate", "ping", *PHASES}
    assert pong == Reply("1", 2, "ping", num_examples=7)


def test_labels_outside_the_classes_cannot_be_flipped() -> None:
    app = attacked_app(Attack("label-flip", 0.5), {"1"}, num_classes=2, cohort_size=4)
    with pytest.raises(ClientError, match=r"client 1 failed in round 2.*labels must be in 0..1"):
        app.handle(_ctx("1"), FIT)


def test_choose_draws_the_rounded_share_fixed_by_seed_and_sorted_by_value() -> None:
    # Prepare: round_half_up(0.25 * 12) = 3
    ids = [str(i) for i in range(12)]
    attack = Attack("scale", 0.25)

    # Execute
    chosen = attack.choose(ids, seed=0)
    shuffled = attack.choose([*reversed(ids), "3"], seed=0)
    other = attack.choose(ids, seed=2)

    # Assert: the values pin the draw so that a change to it shows here
    assert chosen == shuffled == ("4", "6", "10")
    assert other == ("3", "8", "11")
    assert Attack("scale", 0.25).choose(ids[:10], seed=0) != chosen
    assert Attack("gaussian", 0.0).choose(ids, seed=0) == ()


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ("sign-flip:0.2", Attack("sign-flip", 0.2)),
        ("label-flip:0", Attack("label-flip", 0.0)),
        ("scale:0.5", Attack("scale", 0.5)),
    ],
)
def test_parse_reads_kind_and_fraction(spec: str, expected: Attack) -> None:
    assert Attack.parse(spec) == expected


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("sign-flip", "cannot read --attack 'sign-flip'"),
        ("sign-flip:0.1:2", "cannot read --attack 'sign-flip:0.1:2'"),
        ("sign-flip:1.5", r"attack fraction must be in \[0, 1\), got 1.5"),
        ("nope:0.1", "unknown attack 'nope'"),
        ("sign-flip:x", "FRACTION 'x' is not a number"),
    ],
)
def test_parse_refuses_anything_else_and_says_what_it_expects(spec: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message) as info:
        Attack.parse(spec)
    assert "--attack KIND:FRACTION" in str(info.value)
    assert "sign-flip, gaussian, label-flip, scale" in str(info.value)


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: Attack("gaussian", 0.1, scale=0.0), "--attack-scale .* must be positive"),
        (lambda: Attack("gaussian", -0.1), r"fraction must be in \[0, 1\)"),
        (
            lambda: attacked_app(Attack("scale", 0.1), [], num_classes=1, cohort_size=4),
            "at least 2 classes",
        ),
        (
            lambda: attacked_app(Attack("scale", 0.1), [], num_classes=3, cohort_size=0),
            "cohort_size must be at least 1",
        ),
    ],
)
def test_settings_out_of_range_are_refused(build: Any, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


@pytest.mark.parametrize("secure", [None, "secagg", "secagg+"])
def test_sign_flipping_collapses_fedavg_with_or_without_secure_aggregation(secure: Any) -> None:
    # Prepare: 30 % of 10 clients send -4x their update; with plain FedAvg that drives accuracy
    # towards chance (1/10 on digits). Secure aggregation trains inside its key phase, and the
    # attack must poison that training too: the server sees only the sum, and the sum is
    # poisoned just the same.
    run = {"dataset": "digits", "model": "logreg", "clients": 10, "rounds": 5,
           "local_epochs": 1, "secure_aggregation": secure}  # fmt: skip

    # Execute
    honest = fedloom.simulate(**run)
    attacked = fedloom.simulate(**run, attack="sign-flip:0.3")

    # Assert
    assert honest.history.final_accuracy > 0.8
    assert attacked.history.final_accuracy < 0.3
    assert len(attacked.history.info["malicious_clients"]) == 3
    assert not np.array_equal(attacked.parameters, honest.parameters)
