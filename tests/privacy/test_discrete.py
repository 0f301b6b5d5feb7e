"""Distributed DP: the discrete Gaussian sampler, its zCDP bound, accounting, integer encoding."""

import itertools
import math

import dp_accounting
import numpy as np
import numpy.typing as npt
import pytest
from dp_accounting import rdp

from fedloom.errors import ConfigError
from fedloom.privacy._discrete import (
    DDG_ACCOUNTANTS,
    ddg_epsilon,
    ddg_rho,
    discrete_gaussian,
    integer_l2_sensitivity,
)

N = 200_000
DELTA = 1e-5


def _pmf(sigma: float) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """N_Z(0, sigma²) on [-12 sigma - 3, 12 sigma + 3]: the mass left out is below 1e-30."""
    reach = int(12 * sigma) + 3
    x = np.arange(-reach, reach + 1)
    weights = np.exp(-(x.astype(np.float64) ** 2) / (2 * sigma**2))
    return x, weights / weights.sum()


# Prepare for the next test: for each sigma, the cells are the integers whose expected count in N
# draws is at least 5, the two outermost absorbing their tails; the threshold is the chi-square
# value a correct sampler exceeds with probability 1e-6 at that many degrees of freedom
# (scipy.stats.chi2.isf(1e-6, df)).
_CHI_SQUARE = {0.5: (4, 33.4), 1.0: (8, 42.7), 3.0: (24, 72.2), 20.0: (146, 242.1)}


@pytest.mark.parametrize("sigma", sorted(_CHI_SQUARE))
def test_the_samples_follow_the_discrete_gaussian_pmf(sigma: float) -> None:
    # Prepare
    x, p = _pmf(sigma)
    kept = x[N * p >= 5]
    lo, hi = int(kept.min()), int(kept.max())
    expected = N * p[(x >= lo) & (x <= hi)]
    expected[0] += N * p[x < lo].sum()
    expected[-1] += N * p[x > hi].sum()
    df, threshold = _CHI_SQUARE[sigma]

    # Execute
    samples = discrete_gaussian(sigma, N, np.random.default_rng(2024))

    # Assert: the pmf (chi-square), the variance against the exact one, the mean and symmetry
    counts = np.bincount(np.clip(samples, lo, hi) - lo, minlength=hi - lo + 1)
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    variance = float((x.astype(np.float64) ** 2 * p).sum())
    positive, negative = int((samples > 0).sum()), int((samples < 0).sum())
    assert samples.dtype == np.int64 and samples.shape == (N,)
    assert counts.size - 1 == df
    assert chi_square < threshold
    assert float(samples.var()) == pytest.approx(variance, rel=0.02)
    assert abs(float(samples.mean())) < 5 * math.sqrt(variance / N)
    assert abs(positive - negative) < 5 * math.sqrt(positive + negative)


def test_the_variance_at_half_is_the_hand_summed_one() -> None:
    # Prepare: sigma = 1/2 puts weight exp(-2 x²) on x, so the variance is
    # (2 e^-2 + 8 e^-8 + 18 e^-18) / (1 + 2 e^-2 + 2 e^-8 + 2 e^-18) = 0.215013 (to 6 digits).
    x, p = _pmf(0.5)

    # Execute
    variance = float((x.astype(np.float64) ** 2 * p).sum())

    # Assert
    assert variance == pytest.approx(0.215013, abs=1e-6)


def test_large_sigma_and_the_edges() -> None:
    rng = np.random.default_rng(5)

    big = discrete_gaussian(1000.0, 100_000, rng)
    tiny = discrete_gaussian(1e-3, 1000, rng)

    # sigma = 1000: the variance is sigma² (to ~1e-300) and the sample's relative sd is 0.45 %
    assert float(big.var()) == pytest.approx(1e6, rel=0.03)
    assert abs(float(big.mean())) < 5 * 1000 / math.sqrt(100_000)
    # sigma = 1e-3: P[x = ±1] is exp(-5e5), zero in float64
    assert not tiny.any()
    np.testing.assert_array_equal(discrete_gaussian(0.0, 4, rng), np.zeros(4, np.int64))
    assert discrete_gaussian(3.0, 0, rng).shape == (0,)


def test_the_same_seed_gives_the_same_samples() -> None:
    first = discrete_gaussian(7.5, 1000, np.random.default_rng(11))
    second = discrete_gaussian(7.5, 1000, np.random.default_rng(11))

    np.testing.assert_array_equal(first, second)


@pytest.mark.parametrize(
    ("sigma", "size", "match"),
    [
        (-1.0, 10, "sigma must be finite and >= 0"),
        (math.nan, 10, "sigma must be finite and >= 0"),
        (math.inf, 10, "sigma must be finite and >= 0"),
        (1.0, -1, "size must be >= 0"),
    ],
)
def test_the_sampler_refuses_bad_arguments(sigma: float, size: int, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        discrete_gaussian(sigma, size, np.random.default_rng(0))


def test_rho_by_hand_where_the_shifted_bound_wins() -> None:
    # Prepare: n = 2, sigma = 1/2, d = 4, Delta2 = 2, Delta1 = min(sqrt(4)·2, 2²) = 4.
    #   tau = 10·exp(-2 pi² · 1/4 · 1/2) = 10·e^(-pi²/4) = 10 · 0.0848050 = 0.848050
    #   a² = Delta2² / (n sigma²) = 4 / 0.5 = 8,   b = Delta1 / (sqrt(2) · 0.5) = 5.656854
    #   a²/2 + tau·d                = 4 + 3.392199                          = 7.392199
    #   (a² + 2 b tau + tau² d) / 2 = (8 + 9.594587 + 2.876753) / 2         = 10.235670
    #   (a + tau sqrt(d))² / 2      = (2.828427 + 1.696099)² / 2            = 10.235670
    # (the last two agree because here Delta1 = sqrt(d)·Delta2)
    expected = 7.392199

    # Execute
    rho = ddg_rho(2.0, None, 0.5, contributors=2, dim=4)

    # Assert
    assert rho == pytest.approx(expected, abs=1e-6)


def test_rho_by_hand_where_the_l1_bound_wins() -> None:
    # Prepare: n = 3, sigma = 1, d = 1000, Delta2 = 5, Delta1 = min(sqrt(1000)·5, 5²) = 25.
    #   tau = 10·(e^(-2 pi² · 1/2) + e^(-2 pi² · 2/3)) = 10·(5.17232e-5 + 1.92714e-6) = 5.36503e-4
    #   a² = 25/3 = 8.333333,   b = 25/sqrt(3) = 14.433757
    #   a²/2 + tau·d                = 4.166667 + 0.536503                      = 4.703170
    #   (a² + 2 b tau + tau² d) / 2 = (8.333333 + 0.015488 + 0.000288) / 2    = 4.174554
    expected = 4.174554

    # Execute
    rho = ddg_rho(5.0, None, 1.0, contributors=3, dim=1000)
    same_with_l1 = ddg_rho(5.0, 25.0, 1.0, contributors=3, dim=1000)
    capped_l1 = ddg_rho(5.0, 1e9, 1.0, contributors=3, dim=1000)

    # Assert: an L1 above the integer bound Delta2² is capped to it
    assert rho == pytest.approx(expected, abs=1e-6)
    assert same_with_l1 == rho == capped_l1


def test_rho_of_one_client_is_the_discrete_gaussians() -> None:
    # n = 1: tau = 0 and rho = Delta²/(2 sigma²) = 9 / 8 (CKS), for any sigma > 0
    assert ddg_rho(3.0, None, 2.0, contributors=1, dim=50) == 9 / 8
    assert ddg_rho(1.0, None, 0.1, contributors=1, dim=50) == pytest.approx(50.0)


@pytest.mark.parametrize(("sigma", "n", "d"), [(2.0, 10, 1000), (5.0, 1000, 10**6), (40.0, 7, 3)])
def test_tau_is_negligible_from_sigma_two(sigma: float, n: int, d: int) -> None:
    # tau <= 10 (n - 1) e^(-pi² sigma²) <= 1e4 · e^(-39.5) < 1e-13, so rho = Delta2² / (2 n sigma²)
    rho = ddg_rho(3.0, None, sigma, contributors=n, dim=d)

    assert rho == pytest.approx(9.0 / (2 * n * sigma**2), rel=1e-9)


def test_rho_shrinks_with_more_noise_and_more_contributors() -> None:
    rhos_by_sigma = [ddg_rho(10.0, None, s, 20, 100) for s in (0.5, 1.0, 2.0, 4.0)]
    rhos_by_n = [ddg_rho(10.0, None, 1.0, n, 100) for n in (1, 2, 10, 100)]

    assert rhos_by_sigma == sorted(rhos_by_sigma, reverse=True)
    assert rhos_by_n == sorted(rhos_by_n, reverse=True)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, None, 1.0, 2, 10), "l2_sensitivity must be positive"),
        ((math.inf, None, 1.0, 2, 10), "l2_sensitivity must be positive"),
        ((1.0, None, 0.0, 2, 10), "sigma must be positive"),
        ((1.0, None, -1.0, 2, 10), "sigma must be positive"),
        ((1.0, None, math.nan, 2, 10), "sigma must be positive"),
        ((1.0, None, 0.4, 2, 10), "needs sigma >= 0.5"),
        ((1.0, None, 1.0, 0, 10), "contributors must be an integer >= 1"),
        ((1.0, None, 1.0, 2.0, 10), "contributors must be an integer >= 1"),
        ((1.0, None, 1.0, 2, 0), "dim must be an integer >= 1"),
        ((1.0, 0.0, 1.0, 2, 10), "l1_sensitivity must be positive"),
        ((2.0, 1.0, 1.0, 2, 10), "l1_sensitivity 1.0 is below l2_sensitivity"),
    ],
)
def test_rho_refuses_bad_arguments(
    args: tuple[float, float | None, float, int, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        ddg_rho(*args)


def test_epsilon_is_what_dp_accounting_computes() -> None:
    # Prepare: five rounds of different rho, composed by hand
    rhos = [0.02, 0.05, 0.01, 0.03, 0.04]
    events = [dp_accounting.ZCDpEvent(r) for r in rhos]
    expected = rdp.RdpAccountant().compose(dp_accounting.ComposedDpEvent(events))

    # Execute
    spent = ddg_epsilon(rhos, DELTA)

    # Assert
    assert DDG_ACCOUNTANTS == ("rdp",)
    assert spent == expected.get_epsilon(DELTA)


def test_epsilon_matches_the_gaussian_mechanism_of_the_same_rho() -> None:
    # The Gaussian mechanism with noise multiplier z is exactly (1 / 2z²)-zCDP: same RDP curve
    z, rounds = 2.0, 40
    gaussian = rdp.RdpAccountant().compose(
        dp_accounting.SelfComposedDpEvent(dp_accounting.GaussianDpEvent(z), rounds)
    )

    spent = ddg_epsilon([1 / (2 * z**2)] * rounds, DELTA)

    assert spent == pytest.approx(gaussian.get_epsilon(DELTA), rel=1e-9)


def test_epsilon_grows_with_every_round() -> None:
    rho = ddg_rho(integer_l2_sensitivity(1.0, 1000.0, 10_000), None, 300.0, 50, 10_000)

    spent = [ddg_epsilon([rho] * k, DELTA) for k in range(6)]

    assert spent[0] == 0.0
    assert all(a < b for a, b in itertools.pairwise(spent))


@pytest.mark.parametrize(
    ("rhos", "delta", "accountant", "match"),
    [
        ([0.1], DELTA, "pld", "accountant 'pld' cannot account"),
        ([0.1], 0.0, "rdp", r"delta must be in \(0, 1\)"),
        ([0.1], 1.0, "rdp", r"delta must be in \(0, 1\)"),
        ([0.1, -0.1], DELTA, "rdp", "rho of round 2 must be finite and >= 0"),
        ([math.nan], DELTA, "rdp", "rho of round 1 must be finite and >= 0"),
    ],
)
def test_epsilon_refuses_bad_arguments(
    rhos: list[float], delta: float, accountant: str, match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        ddg_epsilon(rhos, delta, accountant)


def test_the_integer_sensitivity_is_the_scaled_clip_plus_the_rounding() -> None:
    # C = 0.5, s = 2^10, d = 10,000: 512 + sqrt(10000)/2 = 512 + 50 = 562
    assert integer_l2_sensitivity(0.5, 1024.0, 10_000) == 562.0


def test_the_integer_sensitivity_bounds_every_rounded_clipped_update() -> None:
    # Prepare: updates already clipped to norm C, some on the boundary
    rng = np.random.default_rng(3)
    clip, scale, dim = 1.0, 37.0, 64
    raw = rng.normal(size=(500, dim))
    clipped = raw / np.maximum(1.0, np.linalg.norm(raw, axis=1, keepdims=True) / clip)

    # Execute
    encoded = np.rint(clipped * scale)

    # Assert
    assert np.linalg.norm(encoded, axis=1).max() <= integer_l2_sensitivity(clip, scale, dim)


@pytest.mark.parametrize(
    ("args", "match"),
    [
        ((0.0, 1.0, 4), "clip_norm must be positive"),
        ((1.0, -2.0, 4), "scale must be positive"),
        ((1.0, 2.0, 0), "dim must be an integer >= 1"),
    ],
)
def test_the_integer_sensitivity_refuses_bad_arguments(
    args: tuple[float, float, int], match: str
) -> None:
    with pytest.raises(ConfigError, match=match):
        integer_l2_sensitivity(*args)
