"""Server optimizers against hand-computed steps: FedAvgM and the FedOpt family."""

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.strategy import ServerAdaptive, ServerSGD


def _run(optimizer: ServerSGD | ServerAdaptive, start: list[float], deltas: list[list[float]]):
    params = np.array(start, np.float32)
    state = optimizer.init(params)
    trail = []
    for delta in deltas:
        params, state = optimizer.step(params, np.array(delta, np.float32), state)
        trail.append(params.copy())
    return trail, state


def test_server_momentum_accumulates_the_updates() -> None:
    # Prepare: β = 0.9, lr = 1.
    #   round 1: v = [0.5, -1];                     θ = [1, 2] + v = [1.5, 1]
    #   round 2: v = 0.9·[0.5, -1] + [1, 1] = [1.45, 0.1];  θ = [1.5, 1] + v = [2.95, 1.1]
    opt = ServerSGD(lr=1.0, momentum=0.9)

    # Execute
    trail, state = _run(opt, [1.0, 2.0], [[0.5, -1.0], [1.0, 1.0]])

    # Assert
    np.testing.assert_allclose(trail[0], [1.5, 1.0], rtol=1e-6)
    np.testing.assert_allclose(trail[1], [2.95, 1.1], rtol=1e-6)
    np.testing.assert_allclose(state, [1.45, 0.1])


def test_server_momentum_with_lr_scales_the_velocity() -> None:
    # β = 0.5, lr = 0.1: v1 = [2], θ1 = 0.2; v2 = 0.5·2 + 2 = 3, θ2 = 0.2 + 0.3 = 0.5
    trail, _ = _run(ServerSGD(lr=0.1, momentum=0.5), [0.0], [[2.0], [2.0]])
    np.testing.assert_allclose([t[0] for t in trail], [0.2, 0.5], rtol=1e-6)


def test_zero_momentum_keeps_no_state_and_is_plain_sgd() -> None:
    trail, state = _run(ServerSGD(lr=0.5), [1.0], [[2.0]])
    assert state is None
    np.testing.assert_allclose(trail[0], [2.0])


# Reddi et al. (2021), Algorithm 2, with τ = 0.1, lr = 0.1, β1 = 0.9, β2 = 0.99, x0 = 0,
# m_{-1} = 0, v_{-1} = τ² = 0.01, and updates Δ = 1 then Δ = 0.01. Worked by hand:
#   m1 = 0.1;  m2 = 0.9·0.1 + 0.1·0.01 = 0.091
#   adam:    v1 = 0.99·0.01 + 0.01·1 = 0.0199;  v2 = 0.99·0.0199 + 0.01·0.0001 = 0.019702
#   yogi:    v1 = 0.01 - 0.01·1·sign(0.01 - 1) = 0.02;  v2 = 0.02 - 0.01·0.0001·sign(+) = 0.019999
#   adagrad: v1 = 0.01 + 1 = 1.01;  v2 = 1.0101
#   x1 = 0.1·m1/(√v1 + 0.1);  x2 = x1 + 0.1·m2/(√v2 + 0.1)
@pytest.mark.parametrize(
    ("rule", "v2", "x1", "x2"),
    [
        ("adam", 0.019702, 0.01 / (0.0199**0.5 + 0.1), 0.0793414578757505),
        ("yogi", 0.019999, 0.01 / (0.02**0.5 + 0.1), 0.07911534243580887),
        ("adagrad", 1.0101, 0.01 / (1.01**0.5 + 0.1), 0.01728489166545208),
    ],
)
def test_fedopt_update_rules_match_the_paper(rule: str, v2: float, x1: float, x2: float) -> None:
    # Prepare
    opt = ServerAdaptive(rule, lr=0.1, beta1=0.9, beta2=0.99, tau=0.1)  # type: ignore[arg-type]

    # Execute
    trail, state = _run(opt, [0.0], [[1.0], [0.01]])

    # Assert
    np.testing.assert_allclose(trail[0], [x1], rtol=1e-5)
    np.testing.assert_allclose(trail[1], [x2], rtol=1e-5)
    np.testing.assert_allclose(state.m, [0.091], rtol=1e-6)
    np.testing.assert_allclose(state.v, [v2], rtol=1e-6)


def test_fedadam_starts_its_second_moment_at_tau_squared() -> None:
    state = ServerAdaptive("adam", tau=0.01).init(np.zeros(3, np.float32))
    np.testing.assert_allclose(state.v, [1e-4] * 3)
    np.testing.assert_allclose(state.m, [0.0] * 3)


def test_optimizers_do_not_modify_their_inputs() -> None:
    params = np.array([1.0, 2.0], np.float32)
    delta = np.array([0.5, 0.5], np.float32)
    for opt in (ServerSGD(momentum=0.9), ServerAdaptive("yogi")):
        state = opt.init(params)
        before = (state.m.copy(), state.v.copy()) if hasattr(state, "m") else state.copy()
        new, _ = opt.step(params, delta, state)
        assert params.tolist() == [1.0, 2.0] and delta.tolist() == [0.5, 0.5]
        assert new.dtype == np.float32
        after = (state.m, state.v) if hasattr(state, "m") else state
        np.testing.assert_array_equal(np.asarray(before), np.asarray(after))


@pytest.mark.parametrize(
    ("make", "flag"),
    [
        (lambda: ServerSGD(lr=0.0), "--server-lr"),
        (lambda: ServerSGD(momentum=1.0), "--server-momentum"),
        (lambda: ServerAdaptive("adam", beta1=1.0), "--beta1"),
        (lambda: ServerAdaptive("adam", beta2=-0.1), "--beta2"),
        (lambda: ServerAdaptive("adam", tau=0.0), "--tau"),
        (lambda: ServerAdaptive("rmsprop"), "adam, yogi or adagrad"),  # type: ignore[arg-type]
    ],
)
def test_bad_optimizer_settings_are_refused_naming_the_flag(make, flag: str) -> None:
    with pytest.raises(ConfigError, match=flag):
        make()
