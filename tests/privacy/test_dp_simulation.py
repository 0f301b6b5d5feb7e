"""Central DP through simulate and the CLI: epsilon per round, the budget, refusals."""

from __future__ import annotations

import pytest

import fedloom
from fedloom.cli import main
from fedloom.errors import ConfigError
from fedloom.privacy import Mechanism, epsilon, rounds_within

RUN = {"dataset": "digits", "model": "logreg", "clients": 50, "fraction": 0.2, "rounds": 4,
       "dp": "central", "noise_multiplier": 1.0, "delta": 1e-3}  # fmt: skip


def test_the_history_records_the_epsilon_the_accountant_computes() -> None:
    # 10 of 50 clients per round without replacement, z = 1, delta = 1e-3
    result = fedloom.simulate(**RUN)
    mech = Mechanism(1.0, "fixed-size-without-replacement", 50, 10)
    spent = [r.metrics["epsilon"] for r in result.history]
    assert spent == pytest.approx([epsilon(mech, t, 1e-3) for t in range(1, 5)], rel=1e-9)
    assert all(r.metrics["clip_norm"] == 1.0 for r in result.history)


def test_a_run_stops_before_the_round_that_would_pass_its_target_epsilon() -> None:
    mech = Mechanism(1.0, "fixed-size-without-replacement", 50, 10)
    target = epsilon(mech, 3, 1e-3) + 0.01  # 3 rounds fit, the 4th does not
    result = fedloom.simulate(**{**RUN, "rounds": 10}, target_epsilon=target)
    assert len(result.history) == rounds_within(mech, target, 1e-3) == 3
    assert result.history.rounds[-1].metrics["epsilon"] <= target


def test_adaptive_clipping_moves_the_clip_norm() -> None:
    result = fedloom.simulate(
        **{**RUN, "noise_multiplier": 0.5}, adaptive_clipping=True, clip_norm=10.0
    )
    clips = [r.metrics["clip_norm"] for r in result.history]
    assert clips[0] < 10.0 and clips[-1] < clips[0]  # all updates fit under 10: C shrinks


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"strategy": "median"}, "has no such bound"),
        ({"strategy": "scaffold"}, "cannot be combined"),
        ({"secure_aggregation": "secagg"}, "use --dp distributed"),
        ({"delta": 0.05}, "1/N"),
        ({"accountant": "pld"}, "rdp"),
        ({"target_epsilon": 0.01}, "one round already spends"),
        ({"adaptive_clipping": True}, "below 2 \\* sigma_b"),
        (
            {"dp": None, "noise_multiplier": None, "delta": None, "clip_norm": 1.0},
            "--clip-norm needs --dp central or --dp distributed",
        ),
        ({"noise_multiplier": None}, "needs --noise-multiplier"),
    ],
)
def test_configurations_without_a_bounded_guarantee_are_refused(
    settings: dict, message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        fedloom.simulate(**{**RUN, **settings})


def test_fedloom_privacy_reports_epsilon_and_the_noise_for_a_target(
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    status = main(
        [
            "privacy",
            "--clients",
            "1000",
            "--clients-per-round",
            "10",
            "--rounds",
            "100",
            "--delta",
            "1e-5",
            "--noise-multiplier",
            "1.1",
            "--sampling",
            "poisson",
        ]
    )
    out = capsys.readouterr().out
    back = main(
        [
            "privacy",
            "--clients",
            "1000",
            "--clients-per-round",
            "10",
            "--rounds",
            "100",
            "--delta",
            "1e-5",
            "--target-epsilon",
            "2",
            "--sampling",
            "poisson",
        ]
    )
    noise = capsys.readouterr().out

    # Assert
    expected = epsilon(Mechanism(1.1, "poisson", 1000, 10), 100, 1e-5)
    assert status == back == 0
    assert f"epsilon = {expected:.4g}" in out
    assert noise.startswith("noise multiplier = ")


def test_fedloom_privacy_refuses_a_delta_of_one_over_n(capsys: pytest.CaptureFixture[str]) -> None:
    status = main(
        [
            "privacy",
            "--clients",
            "100",
            "--clients-per-round",
            "10",
            "--rounds",
            "5",
            "--delta",
            "0.01",
            "--noise-multiplier",
            "1",
        ]
    )
    assert status == 2 and "1/N" in capsys.readouterr().err


def test_clipping_alone_records_an_unbounded_epsilon_and_refuses_a_budget() -> None:
    result = fedloom.simulate(**{**RUN, "noise_multiplier": 0.0, "rounds": 2})
    assert [r.metrics["epsilon"] for r in result.history] == [float("inf")] * 2
    with pytest.raises(ConfigError, match="spends an unbounded epsilon"):
        fedloom.simulate(**{**RUN, "noise_multiplier": 0.0}, target_epsilon=100.0)


def test_dp_over_a_handful_of_clients_warns_that_the_noise_drowns_the_mean(caplog) -> None:
    # logreg on digits has 650 parameters: z = 1 over 3 clients is noise of about
    # sqrt(650) / 3 = 8.5 times the largest mean; over 100 clients at z = 0.01 it is 0.25x
    from fedloom.config import SimulationConfig
    from fedloom.recipes import plan

    few = SimulationConfig(model="logreg", clients=3, dp="central", noise_multiplier=1.0)
    with caplog.at_level("WARNING", logger="fedloom.recipes"):
        plan(few, population=3, dim=650)
    assert "about 8.5x the largest update" in caplog.text
    assert "it takes 26 or more clients per round" in caplog.text
    caplog.clear()
    many = SimulationConfig(model="logreg", clients=100, dp="central", noise_multiplier=0.01)
    with caplog.at_level("WARNING", logger="fedloom.recipes"):
        plan(many, population=100, dim=650)
    assert "noise" not in caplog.text
