"""Distributed DP: clients clip, encode and noise their own updates under secure aggregation; the
server decodes the noised mean, and the history records epsilon from who contributed."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

import fedloom
from fedloom.cli import main
from fedloom.client import ClientApp, ClientContext, LinearTrainer
from fedloom.errors import ConfigError, RoundFailedError
from fedloom.messages import Instruction
from fedloom.privacy import DistributedDP, DistributedNoise, distributed_noise, encode_noised
from fedloom.privacy._discrete import ddg_epsilon, ddg_rho
from fedloom.secagg import MASKED, SecAggRound
from fedloom.server._loop import drive
from fedloom.simulation import InProcessFleet, ScriptedFleet
from fedloom.strategy import Chain, RoundContext

N = 10
RUN = {"dataset": "digits", "model": "logreg", "clients": N, "rounds": 3, "dp": "distributed",
       "secure_aggregation": "secagg", "noise_multiplier": 1.0, "delta": 1e-3}  # fmt: skip
DIM = 64 * 10 + 10  # logreg on digits


def _signed(encoded: np.ndarray, k: int) -> np.ndarray:
    shift = 64 - k
    return (encoded.astype(np.uint64) << np.uint64(shift)).view(np.int64) >> shift


def test_a_client_sends_its_clipped_scaled_rounded_update_and_a_weight_of_one() -> None:
    # norm 2 clipped to 1 halves every value; times scale 1000, rounded
    delta = np.array([1.2, -1.6, 0.0004], dtype=np.float32)  # norm 2.0000...
    encoded = encode_noised(delta, DistributedNoise(1.0, 1000.0, 0.0), 32)
    assert _signed(encoded[:-1], 32).tolist() == [600, -800, 0]
    assert encoded[-1] == 1
    # an update inside the ball is not scaled up
    small = encode_noised(np.array([0.3, 0.4]), DistributedNoise(1.0, 10.0, 0.0), 32)
    assert _signed(small[:-1], 32).tolist() == [3, 4]


def test_a_clients_noise_has_the_standard_deviation_it_was_given() -> None:
    rng = np.random.default_rng(0)
    encoded = encode_noised(np.zeros(40_000), DistributedNoise(1.0, 1000.0, 50.0), 32, rng)
    noise = _signed(encoded[:-1], 32)
    # the std estimate of 40,000 draws is within 5 standard errors (0.35 %) times 50
    assert abs(noise.std() - 50.0) < 5 * 50.0 / math.sqrt(2 * 40_000)
    assert abs(noise.mean()) < 5 * 50.0 / math.sqrt(40_000)


def test_non_finite_updates_are_refused() -> None:
    with pytest.raises(ValueError, match="non-finite"):
        encode_noised(np.array([1.0, np.nan]), DistributedNoise(1.0, 10.0, 0.0), 32)


def _secure_round(noise: DistributedNoise, drops: frozenset[str] = frozenset(), least: int = 0):
    ds = fedloom.load_dataset("digits", num_clients=N, seed=0)
    trainer = LinearTrainer(64, 10)
    mech = SecAggRound()
    chain = Chain((DistributedDP(noise, denominator=N, min_contributors=least),))
    params = trainer.init_parameters(0) + np.float32(0.01)
    fleet = ScriptedFleet(inner=InProcessFleet(ds, trainer), drops={MASKED: drops})

    selected = [str(i) for i in range(N)]
    ctx = RoundContext(1, selected, params, {"seed": 0}, chain, chain.init(DIM), N)
    outcome = drive(mech.run(ctx), fleet, None)
    # the clipped updates the survivors sent (trained as the round trained them), over N
    expected = np.zeros(DIM)
    app = ClientApp()
    for cid in map(str, range(N)):
        if cid not in drops:
            ctx = ClientContext(cid, ds.client(int(cid)), trainer)
            reply = app.handle(ctx, Instruction(1, "fit", params, {"seed": 0}))
            delta = reply.vector.astype(np.float64)
            expected += delta * min(1.0, noise.clip_norm / np.linalg.norm(delta))
    return outcome, expected / N


def test_without_noise_the_server_decodes_the_mean_of_the_clipped_updates() -> None:
    noise = DistributedNoise(clip_norm=0.05, scale=1e6, sigma=0.0)
    outcome, expected = _secure_round(noise)
    # each client's rounding moves a value by at most 0.5 steps
    assert np.abs(outcome.aggregate.vector - expected).max() <= N * 0.5 / 1e6 / N + 1e-7
    assert outcome.aggregate.count == N
    assert np.linalg.norm(expected) > 0.01  # the updates were really clipped and summed


def test_the_decoded_noise_has_the_summed_standard_deviation() -> None:
    # 10 clients each add sigma = 2000 steps: the sum's noise is sqrt(10) * 2000 steps, and
    # the mean's is that over scale * N
    noise = DistributedNoise(clip_norm=0.05, scale=1e6, sigma=2000.0)
    outcome, expected = _secure_round(noise)
    residual = outcome.aggregate.vector.astype(np.float64) - expected
    want = math.sqrt(N) * 2000.0 / (1e6 * N)
    assert abs(residual.std() - want) < 0.15 * want  # 650 values: the std is good to ~3 %
    assert abs(residual.mean()) < 5 * want / math.sqrt(DIM)


def test_a_round_with_too_little_noise_fails_before_anything_is_unmasked() -> None:
    noise = DistributedNoise(clip_norm=0.05, scale=1e6, sigma=10.0)
    with pytest.raises(RoundFailedError, match="noise of this many clients"):
        _secure_round(noise, drops=frozenset({"3", "7"}), least=9)


def _expected_rho(contributors: int, cohort: int = N, least: int = 6) -> float:
    noise, sensitivity = distributed_noise(1.0, 1.0, cohort, least, DIM, 32)
    return ddg_rho(sensitivity, None, noise.sigma, contributors - 1, DIM)


def test_the_history_records_the_epsilon_of_the_noise_that_arrived() -> None:
    # SecAgg of 10 at threshold 2/3: a round needs 6, so each client adds noise for 5 others;
    # with all 10 present, 9 clients' noise protects each one
    result = fedloom.simulate(**RUN)
    spent = [r.metrics["epsilon"] for r in result.history]
    rho = _expected_rho(N)
    assert spent == pytest.approx([ddg_epsilon([rho] * t, 1e-3) for t in (1, 2, 3)], rel=1e-9)
    assert result.history.column("clients") == [N] * 3


def test_dropouts_spend_more_and_the_history_says_how_much() -> None:
    result = fedloom.simulate(**RUN, dropout=0.3)
    counts = result.history.column("clients")
    assert min(counts) < N  # some clients dropped
    rhos = [_expected_rho(c) for c in counts]
    spent = [r.metrics["epsilon"] for r in result.history]
    assert spent == pytest.approx([ddg_epsilon(rhos[:t], 1e-3) for t in (1, 2, 3)], rel=1e-9)
    full = ddg_epsilon([_expected_rho(N)] * 3, 1e-3)
    assert spent[-1] > full


def test_a_run_stops_before_a_round_that_could_pass_its_target() -> None:
    # the stop rule takes the worst case: a round with only the 6 clients it needs
    worst = _expected_rho(6)
    full = _expected_rho(N)
    target = ddg_epsilon([full] * 2 + [worst], 1e-3) + 1e-6  # the third round just fits
    result = fedloom.simulate(**{**RUN, "rounds": 10}, target_epsilon=target)
    assert len(result.history) == 3
    assert result.history.rounds[-1].metrics["epsilon"] <= target


def test_distributed_dp_learns_on_digits() -> None:
    result = fedloom.simulate(**{**RUN, "clients": 20, "rounds": 10, "noise_multiplier": 0.5})
    assert (result.history.final_accuracy or 0) > 0.8


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"secure_aggregation": None}, "add --secure-aggregation"),
        ({"secagg_bits": 16}, "--secagg-bits does not apply"),
        ({"adaptive_clipping": True}, "--dp central only"),
        ({"accountant": "pld"}, "use --accountant rdp"),
        ({"delta": 0.2}, "1/N"),
        ({"target_epsilon": 0.01}, "already spends more than --target-epsilon"),
        ({"strategy": "median"}, "only the sum"),
    ],
)
def test_configurations_without_a_guarantee_are_refused(settings: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        fedloom.simulate(**{**RUN, **settings})


def test_a_modulus_too_small_for_the_model_is_refused() -> None:
    # 2^20 steps of headroom over 10 clients leave about 24,600 steps per unit of C, under
    # 20 * sqrt(d) for two million parameters: rounding would swamp the signal
    with pytest.raises(ConfigError, match="rounding would dominate"):
        distributed_noise(1.0, 1.0, cohort=10, least=6, dim=2_000_000, modulus_bits=21)
    noise, _ = distributed_noise(1.0, 1.0, cohort=10, least=6, dim=650, modulus_bits=21)
    assert noise.scale == pytest.approx((2**20 - 1) / (2 * (10 + 8 * math.sqrt(2))))


def test_the_cli_runs_distributed_dp_and_refuses_it_without_secure_aggregation(
    tmp_path, capsys: pytest.CaptureFixture[str]
) -> None:
    common = ["simulate", "--dataset", "digits", "--model", "logreg", "--clients", "10",
              "--rounds", "2", "--dp", "distributed", "--noise-multiplier", "1"]  # fmt: skip
    assert main([*common, "--secure-aggregation", "secagg+", "--out", str(tmp_path)]) == 0
    rounds = json.loads((tmp_path / "history.json").read_text())["rounds"]
    assert (
        len(rounds) == 2 and 0 < rounds[0]["metrics"]["epsilon"] < rounds[1]["metrics"]["epsilon"]
    )
    capsys.readouterr()
    assert main(common) == 2
    err = capsys.readouterr().err
    assert "add --secure-aggregation" in err and "Traceback" not in err
