"""The privacy accountant against dp-accounting itself and against hand-computed RDP bounds."""

import math
from collections.abc import Callable

import dp_accounting
import numpy as np
import pytest
from dp_accounting import pld, rdp

from fedloom.errors import ConfigError
from fedloom.privacy import (
    ACCOUNTANTS,
    SAMPLINGS,
    Mechanism,
    PrivacyLedger,
    check_delta,
    epsilon,
    noise_for_epsilon,
    rounds_within,
)

ADD_OR_REMOVE = dp_accounting.NeighboringRelation.ADD_OR_REMOVE_ONE
REPLACE_ONE = dp_accounting.NeighboringRelation.REPLACE_ONE
WOR = "fixed-size-without-replacement"
DELTA = 1e-5


def test_the_choices() -> None:
    assert SAMPLINGS == ("poisson", WOR, "all")
    assert ACCOUNTANTS == ("rdp", "pld")


# Prepare for the next test: each supported combination, with the event and accountant built by
# hand. Fixed-size sampling is accounted under replace-one, where the clipped sum moves by up to 2C,
# so its Gaussian gets noise multiplier z/2 = 0.6.
_GAUSS, _HALF = dp_accounting.GaussianDpEvent(1.2), dp_accounting.GaussianDpEvent(0.6)


def _rdp(relation: dp_accounting.NeighboringRelation) -> dp_accounting.PrivacyAccountant:
    return rdp.RdpAccountant(neighboring_relation=relation)


def _pld(relation: dp_accounting.NeighboringRelation) -> dp_accounting.PrivacyAccountant:
    return pld.PLDAccountant(relation, value_discretization_interval=1e-3)


_BY_HAND = [
    ("poisson", 1000, 20, "rdp", _rdp, ADD_OR_REMOVE,
     dp_accounting.PoissonSampledDpEvent(0.02, _GAUSS)),
    ("poisson", 1000, 20, "pld", _pld, ADD_OR_REMOVE,
     dp_accounting.PoissonSampledDpEvent(0.02, _GAUSS)),
    (WOR, 1000, 20, "rdp", _rdp, REPLACE_ONE,
     dp_accounting.SampledWithoutReplacementDpEvent(1000, 20, _HALF)),
    ("all", 8, 8, "rdp", _rdp, ADD_OR_REMOVE, _GAUSS),
    ("all", 8, 8, "pld", _pld, ADD_OR_REMOVE, _GAUSS),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sampling", "n", "m", "name", "make_accountant", "relation", "one_round"), _BY_HAND
)
def test_epsilon_is_what_dp_accounting_computes(
    sampling: str,
    n: int,
    m: int,
    name: str,
    make_accountant: Callable[[dp_accounting.NeighboringRelation], dp_accounting.PrivacyAccountant],
    relation: dp_accounting.NeighboringRelation,
    one_round: dp_accounting.DpEvent,
) -> None:
    # Prepare
    mechanism = Mechanism(1.2, sampling, population=n, cohort=m)
    accountant = make_accountant(relation)
    expected = accountant.compose(dp_accounting.SelfComposedDpEvent(one_round, 50))

    # Execute
    spent = epsilon(mechanism, 50, DELTA, name)

    # Assert: exactly, and the ledger agrees (it scales one round's RDP curve instead)
    assert spent == expected.get_epsilon(DELTA)
    assert PrivacyLedger(mechanism, DELTA, name).spent(50) == spent


def test_rdp_of_all_clients_is_within_the_classic_conversion() -> None:
    # The Gaussian mechanism composed T times has RDP T·a/(2z²) at order a; the classic conversion
    # gives eps = min over a of (c·a + L/(a - 1)), c = T/(2z²), L = log(1/δ), reached at
    # a = 1 + sqrt(L/c): eps = c + 2·sqrt(c·L). z = 1, T = 10, δ = 1e-5: c = 5, L = 11.513,
    # eps = 5 + 2·sqrt(57.56) = 20.174. dp-accounting's tighter conversion gives 19.05.
    c, big_l = 10 / 2, math.log(1e5)
    classic = c + 2 * math.sqrt(c * big_l)
    assert classic == pytest.approx(20.174, abs=1e-3)

    spent = epsilon(Mechanism(1.0, "all", 10, 10), rounds=10, delta=1e-5)

    assert spent <= classic
    assert spent * 1.2 >= classic
    assert spent == pytest.approx(19.054, abs=1e-3)


def test_fixed_size_of_everyone_is_the_gaussian_with_twice_the_sensitivity() -> None:
    # With m = N nothing is sampled away, and replacing one client moves the sum by 2C: the RDP is
    # a·(2C)²/(2(zC)²) = 2a/z², i.e. the Gaussian mechanism with noise multiplier z/2.
    replaced = epsilon(Mechanism(2.0, WOR, 10, 10), rounds=5, delta=DELTA)
    doubled = epsilon(Mechanism(1.0, "all", 10, 10), rounds=5, delta=DELTA)
    assert replaced == pytest.approx(doubled, rel=1e-12)


def test_installed_dp_accounting_still_normalises_by_the_sensitivity() -> None:
    # Pins the reason for the z/2 above (google/differential-privacy#378): dp-accounting 0.6 gives
    # SampledWithoutReplacementDpEvent(N, N, GaussianDpEvent(s)) the RDP a/(2s²) under replace-one,
    # treating s as noise / sensitivity. If this fails, dp-accounting now doubles the sensitivity
    # itself and Mechanism.event must pass z, not z/2.
    accountant = rdp.RdpAccountant(neighboring_relation=REPLACE_ONE)
    everyone = dp_accounting.SampledWithoutReplacementDpEvent(
        10, 10, dp_accounting.GaussianDpEvent(2.0)
    )
    accountant.compose(everyone)
    np.testing.assert_allclose(accountant.rdp, accountant.orders / 8)


@pytest.mark.parametrize("sampling", ["poisson", WOR])
def test_epsilon_grows_with_rounds_and_shrinks_with_noise_and_sampling_rate(sampling: str) -> None:
    def spent(z: float, cohort: int, rounds: int) -> float:
        return PrivacyLedger(Mechanism(z, sampling, 1000, cohort), DELTA).spent(rounds)

    base = PrivacyLedger(Mechanism(1.0, sampling, 1000, 10), DELTA)
    assert base.spent(10) < base.spent(100) < base.spent(1000)
    assert spent(0.8, 10, 100) > base.spent(100) > spent(1.5, 10, 100)
    assert spent(1.0, 100, 100) > base.spent(100) > spent(1.0, 2, 100)


def test_zero_rounds_spend_nothing() -> None:
    assert epsilon(Mechanism(1.0, "poisson", 100, 10), 0, DELTA) == 0.0
    assert PrivacyLedger(Mechanism(1.0, "poisson", 100, 10), DELTA).spent(0) == 0.0


@pytest.mark.parametrize(
    ("sampling", "n", "m", "name"),
    [("poisson", 1000, 10, "rdp"), ("poisson", 1000, 10, "pld"), (WOR, 50, 50, "rdp"),
     ("all", 10, 10, "rdp")],
)  # fmt: skip
def test_noise_for_epsilon_meets_the_target_within_one_percent(
    sampling: str, n: int, m: int, name: str
) -> None:
    z = noise_for_epsilon(2.0, DELTA, 100, sampling, n, m, name)

    spent = epsilon(Mechanism(z, sampling, n, m), 100, DELTA, name)

    assert 0.99 * 2.0 <= spent <= 2.0
    assert epsilon(Mechanism(z * 0.99, sampling, n, m), 100, DELTA, name) > 2.0  # smallest z


def test_noise_for_epsilon_refuses_an_unreachable_target() -> None:
    # Every client every round for 1000 rounds: even z = 1000 spends about 0.15 at δ = 1e-5.
    with pytest.raises(ConfigError, match="out of reach"):
        noise_for_epsilon(0.01, DELTA, 1000, "all", 10, 10)


def test_rounds_within_is_the_last_round_inside_the_budget() -> None:
    mechanism = Mechanism(1.0, "poisson", 1000, 10)
    ledger = PrivacyLedger(mechanism, DELTA)

    k = rounds_within(mechanism, 1.0, DELTA)

    assert k > 0
    assert ledger.spent(k) <= 1.0 < ledger.spent(k + 1)
    assert not ledger.would_exceed(k, 1.0)
    assert ledger.would_exceed(k + 1, 1.0)


def test_rounds_within_at_the_edges() -> None:
    assert rounds_within(Mechanism(0.5, "all", 10, 10), 0.1, DELTA) == 0
    assert rounds_within(Mechanism(50.0, "poisson", 1000, 1), 1.0, DELTA, max_rounds=100) == 100


def test_ledger_spends_more_each_round() -> None:
    ledger = PrivacyLedger(Mechanism(1.0, WOR, 1000, 10), DELTA)
    history = [ledger.spent(t) for t in range(1, 6)]
    assert history == sorted(history)
    assert ledger.spent(3) == history[2]


def test_pld_is_tighter_than_rdp_and_close_to_it() -> None:
    # z = 1.1, q = 0.01, T = 1000, δ = 1e-5: RDP 1.71, PLD 1.52.
    mechanism = Mechanism(1.1, "poisson", 1000, 10)

    by_rdp = epsilon(mechanism, 1000, DELTA, "rdp")
    by_pld = epsilon(mechanism, 1000, DELTA, "pld")

    assert by_pld <= by_rdp
    assert by_pld == pytest.approx(by_rdp, rel=0.2)
    assert by_rdp == pytest.approx(1.712, abs=1e-3)


def test_check_delta() -> None:
    check_delta(1e-5, 1000)
    for bad in (0.0, -1e-6, 1e-3, 0.5):
        with pytest.raises(ConfigError, match="below 1/N"):
            check_delta(bad, 1000)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ((0.0, "poisson", 100, 10), "--noise-multiplier"),
        ((math.nan, "poisson", 100, 10), "--noise-multiplier"),
        ((1.0, "shuffled", 100, 10), "poisson, fixed-size-without-replacement, all"),
        ((1.0, "poisson", 0, 0), "--clients must"),
        ((1.0, "poisson", 100, 0), "--clients-per-round"),
        ((1.0, WOR, 100, 101), "--clients-per-round"),
        ((1.0, "all", 100, 10), "every client every round"),
    ],
)
def test_mechanism_refuses_bad_settings(
    settings: tuple[float, str, int, int], message: str
) -> None:
    with pytest.raises(ConfigError, match=message):
        Mechanism(*settings)


def test_accounting_refuses_bad_settings() -> None:
    poisson = Mechanism(1.0, "poisson", 100, 10)
    with pytest.raises(ConfigError, match="choose one of: rdp, pld"):
        epsilon(poisson, 10, DELTA, "moments")
    with pytest.raises(ConfigError, match="no analysis of sampling without replacement"):
        epsilon(Mechanism(1.0, WOR, 100, 10), 10, DELTA, "pld")
    with pytest.raises(ConfigError, match="no analysis of sampling without replacement"):
        noise_for_epsilon(1.0, DELTA, 10, WOR, 100, 10, "pld")
    with pytest.raises(ConfigError, match="--delta"):
        epsilon(poisson, 10, 0.0)
    with pytest.raises(ConfigError, match="--delta"):
        PrivacyLedger(poisson, 1.0)
    with pytest.raises(ConfigError, match="rounds"):
        epsilon(poisson, -1, DELTA)
    with pytest.raises(ConfigError, match="--target-epsilon"):
        noise_for_epsilon(0.0, DELTA, 10, "poisson", 100, 10)
