"""Distributed DP: discrete Gaussian noise that clients add before secure aggregation.

In distributed DP no one, the server included, sees an individual update. Each of n clients
L2-clips its update to ``C``, scales it by ``s`` and rounds it to integers (fixed-point encoding),
adds integer noise drawn from the discrete Gaussian ``N_Z(0, sigma²)`` (P[x] ∝ exp(-x²/2sigma²)
over the integers, Canonne, Kamath & Steinke 2020) to every coordinate, and sends the result
into secure aggregation, which sums integers mod 2^k. The server learns only the noisy sum. The
sum of n discrete Gaussians is not itself a discrete Gaussian, but Kairouz, Liu & Steinke (2021)
bound how far it is from one; ``ddg_rho`` turns their bound into the zero-concentrated DP (zCDP)
parameter rho of one release, and ``ddg_epsilon`` composes the rounds with dp-accounting. The
mod-2^k wrap-around is a post-processing of the integer sum, so it costs no privacy (it costs
accuracy when the sum overflows; choose k and ``s`` so that it rarely does).

Assumptions, which the guarantee needs and does not check:

- The clients that count in ``contributors`` are honest: each adds its own fresh noise. A client
  that colludes with the server knows its noise and can subtract it, so count only the honest
  clients that survive dropout, never the cohort. The analysis (like the paper's) fixes the noise
  and lets one client's *data* change; under add-or-remove-one, where the protected client's own
  share may be absent, leave it out of the count too.
- No amplification by sampling is claimed: the untrusted server chooses who takes part, so it can
  pick the client it targets every round. Each round's rho is composed at full strength.
- The sampler accepts with floating-point exponentials, not CKS's exact rational arithmetic; see
  ``discrete_gaussian``.

References
----------
- C. Canonne, G. Kamath, T. Steinke. "The Discrete Gaussian for Differential Privacy".
  NeurIPS 2020, arXiv:2004.00010. (The sampler: Algorithm 3; one discrete Gaussian of scale sigma
  on sensitivity Delta is (Delta²/2sigma²)-zCDP.)
- P. Kairouz, Z. Liu, T. Steinke. "The Distributed Discrete Gaussian Mechanism for Federated
  Learning with Secure Aggregation". ICML 2021, arXiv:2102.06387. (The sum of n discrete
  Gaussians: Proposition 14 and Theorem 1.)
- M. Bun, T. Steinke. "Concentrated Differential Privacy: Simplifications, Extensions, and Lower
  Bounds". TCC 2016, arXiv:1605.02065. (rho-zCDP: Rényi divergence at most rho·alpha.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError

__all__ = [
    "DDG_ACCOUNTANTS",
    "DistributedLedger",
    "ddg_epsilon",
    "ddg_rho",
    "discrete_gaussian",
    "integer_l2_sensitivity",
]

DDG_ACCOUNTANTS = ("rdp",)  # dp-accounting's PLD accountant has no ZCDpEvent

I64 = npt.NDArray[np.int64]
_TAU_CHUNK = 1 << 20


def discrete_gaussian(sigma: float, size: int, rng: np.random.Generator) -> I64:
    """``size`` independent draws from the discrete Gaussian N_Z(0, sigma²).

    P[X = x] = exp(-x²/2sigma²) / sum_y exp(-y²/2sigma²) for every integer x. Canonne, Kamath &
    Steinke's rejection sampler (their Algorithm 3), vectorised: with t = floor(sigma) + 1,
    propose Y from the discrete Laplace P[Y = y] ∝ exp(-|y|/t), drawn as the difference of two
    independent geometric variables on {0, 1, ...} with ratio exp(-1/t) (so that P[Y = y] =
    (1 - e^(-1/t)) / (1 + e^(-1/t)) · e^(-|y|/t), zero counted once), and accept it with
    probability exp(-(|Y| - sigma²/t)² / 2sigma²). The accepted values are kept and only the
    missing count is proposed again, until all ``size`` are filled; the expected number of
    proposals per sample is a small constant (below 2 for sigma >= 1).

    The acceptance test compares a float64 uniform with a float64 exponential, where CKS use
    exact rational arithmetic: the pmf is right to within float64 rounding (relative errors of
    about 1e-16 per probability), not exactly, and values more than about 39·sigma from 0, where
    the acceptance probability underflows, are never drawn (their true mass is below 1e-300).
    That is the usual trade for a vectorised sampler; the output is an integer, so there are no
    low-order float bits to leak as in Mironov's (2012) attack on floating-point Laplace noise.

    Parameters
    ----------
    sigma
        The scale sigma (about the standard deviation once sigma >= 1); 0 gives zeros.
    size
        How many draws; 0 gives an empty array.
    rng
        The generator to draw from; the caller owns its seed.

    Returns
    -------
    numpy.ndarray
        int64 array of shape ``(size,)``.

    Raises
    ------
    ConfigError
        If ``sigma`` is negative or not finite, or ``size`` is negative.

    Examples
    --------
    >>> discrete_gaussian(0.0, 3, np.random.default_rng(0))
    array([0, 0, 0])
    >>> discrete_gaussian(2.5, 5, np.random.default_rng(0)).dtype
    dtype('int64')
    """
    if not (math.isfinite(sigma) and sigma >= 0):
        raise ConfigError(f"the discrete Gaussian's sigma must be finite and >= 0, got {sigma}")
    if size < 0:
        raise ConfigError(f"size must be >= 0, got {size}")
    out = np.zeros(size, dtype=np.int64)
    if sigma == 0 or size == 0:
        return out
    t = math.floor(sigma) + 1
    success = -math.expm1(-1.0 / t)  # numpy's geometric counts trials: G + 1 with G on {0, 1, ...}
    shift = sigma * sigma / t
    filled = 0
    while filled < size:
        missing = size - filled
        y = rng.geometric(success, missing) - rng.geometric(success, missing)
        # exp(-(|y| - sigma²/t)² / 2sigma²), as exp(-z²/2) with z scaled by sigma so that a tiny
        # sigma overflows z² to inf (probability 0) rather than dividing 0 by 0.
        with np.errstate(over="ignore"):
            z = (np.abs(y) - shift) / sigma
            accept_probability = np.exp(-0.5 * z * z)
        accepted = y[rng.random(missing) < accept_probability]
        out[filled : filled + accepted.size] = accepted
        filled += accepted.size
    return out


def _positive(name: str, value: float) -> None:
    if not (math.isfinite(value) and value > 0):
        raise ConfigError(f"{name} must be positive and finite, got {value}")


def _count(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")


def ddg_rho(
    l2_sensitivity: float,
    l1_sensitivity: float | None,
    sigma: float,
    contributors: int,
    dim: int,
) -> float:
    """The zCDP rho of one release of an integer sum plus ``contributors`` discrete Gaussians.

    The release is ``A(x) + Z``, where ``A(x)`` is an integer vector of ``dim`` coordinates that
    one client moves by at most ``l2_sensitivity`` in L2 norm (and ``l1_sensitivity`` in L1
    norm), and every coordinate of ``Z`` is the sum of ``contributors`` independent N_Z(0,
    sigma²). With n = ``contributors``, d = ``dim``, Delta2, Delta1 the sensitivities,
    ``tau = 10 · sum_{k=1}^{n-1} exp(-2 pi² sigma² · k/(k+1))`` and the scaled sensitivities
    ``a = Delta2 / (sqrt(n) sigma)``, ``b = Delta1 / (sqrt(n) sigma)``, Kairouz, Liu & Steinke's
    Proposition 14 bounds the Rényi divergence of every order alpha >= 1 by

    - ``alpha·a²/2 + tau·d``,
    - ``alpha/2 · (a² + 2·b·tau + tau²·d)``, and
    - ``alpha/2 · (a + tau·sqrt(d))²``,

    (the google-research ``distributed_dp`` accounting code uses the same three terms). Each
    bound is at most ``rho·alpha`` for all alpha >= 1 with, respectively, ``rho = a²/2 + tau·d``
    (as tau·d <= alpha·tau·d), ``rho = (a² + 2·b·tau + tau²·d)/2`` and ``rho = (a +
    tau·sqrt(d))²/2``; the first and last are Theorem 1's ``eps²/2`` with ``eps = min{sqrt(a² +
    2·tau·d), a + tau·sqrt(d)}``. This returns the smallest of the three. The third is never the
    smallest once Delta1 <= sqrt(d)·Delta2, which always holds, so it is implied by the second.

    For n = 1, tau = 0 and rho = Delta2²/(2 sigma²): CKS's bound for one discrete Gaussian. For
    sigma >= 2, tau <= 10 (n - 1) e^(-pi² sigma²) < (n - 1) · 1e-16, so rho is Delta2²/(2 n
    sigma²) up to rounding: the continuous Gaussian's rho at the total variance n·sigma².

    Parameters
    ----------
    l2_sensitivity
        Delta2: the most one client moves the integer sum in L2 norm, e.g.
        ``integer_l2_sensitivity(...)`` (doubled for a replace-one guarantee); positive.
    l1_sensitivity
        Delta1, if known; at least Delta2. ``None`` uses ``min(sqrt(d)·Delta2, Delta2²)``: any
        vector satisfies ||v||_1 <= sqrt(d)·||v||_2, and an integer vector also satisfies
        ||v||_1 = sum |v_i| <= sum v_i² = ||v||_2². A given value is capped by the same bound.
    sigma
        The scale of each client's discrete Gaussian (in the integer units of the sum); positive,
        and at least 1/2 when there are two or more contributors (Proposition 14's condition).
    contributors
        n: the honest clients whose noise is guaranteed to be in the sum (see the module
        docstring); at least 1.
    dim
        d: the number of coordinates; at least 1.

    Returns
    -------
    float
        rho: the release is rho-zCDP (Rényi divergence at most rho·alpha for every alpha > 1).

    Raises
    ------
    ConfigError
        If an argument is out of range; the message names it.

    Examples
    --------
    >>> round(ddg_rho(5.0, None, 1.0, contributors=3, dim=1000), 4)
    4.1746
    """
    _positive("l2_sensitivity", l2_sensitivity)
    _positive("sigma", sigma)
    _count("contributors", contributors)
    _count("dim", dim)
    if contributors > 1 and sigma < 0.5:
        raise ConfigError(
            f"the bound for a sum of discrete Gaussians needs sigma >= 0.5, got {sigma}; raise "
            f"the noise or the fixed-point scale"
        )
    l1_cap = min(math.sqrt(dim) * l2_sensitivity, l2_sensitivity**2)
    if l1_sensitivity is None:
        l1 = l1_cap
    else:
        _positive("l1_sensitivity", l1_sensitivity)
        if l1_sensitivity < l2_sensitivity:
            raise ConfigError(
                f"l1_sensitivity {l1_sensitivity} is below l2_sensitivity {l2_sensitivity}, "
                f"which no vector allows (||v||_1 >= ||v||_2); pass None to derive it"
            )
        l1 = min(l1_sensitivity, l1_cap)
    n = contributors
    tau = 0.0
    for start in range(1, n, _TAU_CHUNK):  # chunks keep memory flat for a huge n
        k = np.arange(start, min(start + _TAU_CHUNK, n), dtype=np.float64)
        tau += 10.0 * float(np.sum(np.exp(-2.0 * math.pi**2 * sigma**2 * k / (k + 1.0))))
    scale = math.sqrt(n) * sigma
    a, b = l2_sensitivity / scale, l1 / scale
    rho_shifted = a * a / 2 + tau * dim
    rho_l1 = (a * a + 2 * b * tau + tau * tau * dim) / 2
    rho_l2 = (a + tau * math.sqrt(dim)) ** 2 / 2
    return min(rho_shifted, rho_l1, rho_l2)


def ddg_epsilon(rho_per_round: Sequence[float], delta: float, accountant: str = "rdp") -> float:
    """Epsilon at ``delta`` after rounds that are each rho_i-zCDP.

    Each round is dp-accounting's ``ZCDpEvent(rho_i)``; the rounds are composed in an
    ``RdpAccountant`` (default orders), which adds their Rényi curves rho_i·alpha and converts
    the total to (epsilon, delta). No sampling amplification (see the module docstring). The
    neighbouring relation is the one the sensitivities in ``ddg_rho`` were computed for.

    Parameters
    ----------
    rho_per_round
        One rho >= 0 per round, e.g. from ``ddg_rho``; empty spends nothing.
    delta
        Target delta, in (0, 1).
    accountant
        ``"rdp"``, the only one: dp-accounting's PLD accountant cannot compose ``ZCDpEvent``.

    Raises
    ------
    ConfigError
        If ``accountant`` is not ``"rdp"``, ``delta`` is outside (0, 1) or a rho is negative or
        not finite.

    Examples
    --------
    >>> round(ddg_epsilon([0.01] * 100, delta=1e-5), 2)
    7.08
    """
    if accountant not in DDG_ACCOUNTANTS:
        raise ConfigError(
            f"accountant {accountant!r} cannot account for distributed DP; use 'rdp' "
            f"(dp-accounting's PLD accountant has no zCDP event)"
        )
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"delta must be in (0, 1), got {delta}")
    rhos = [float(r) for r in rho_per_round]
    for i, r in enumerate(rhos):
        if not (math.isfinite(r) and r >= 0):
            raise ConfigError(f"rho of round {i + 1} must be finite and >= 0, got {r}")
    if not rhos:
        return 0.0
    import dp_accounting  # here, not at import: it loads SciPy (about a second)
    from dp_accounting import rdp

    events = [dp_accounting.ZCDpEvent(r) for r in rhos]
    acc = rdp.RdpAccountant()
    return float(acc.compose(dp_accounting.ComposedDpEvent(events)).get_epsilon(delta))


def integer_l2_sensitivity(clip_norm: float, scale: float, dim: int) -> float:
    """The L2 sensitivity of one client's encoded update: ``scale·clip_norm + sqrt(dim)/2``.

    The client clips its update x to ||x||_2 <= ``clip_norm``, multiplies by ``scale`` and
    rounds every coordinate to the nearest integer, so the encoded vector is ``scale·x + e``
    with every |e_i| <= 1/2 (ties included) and ||e||_2 <= sqrt(dim)/2. By the triangle
    inequality its norm is at most ``scale·clip_norm + sqrt(dim)/2``, which bounds how far adding
    or removing the client moves the integer sum. The bound is for deterministic nearest
    rounding; randomised rounding moves a coordinate by up to 1, so use ``sqrt(dim)`` there (or
    Kairouz et al.'s conditional rounding bound). For a replace-one guarantee, double it.

    Parameters
    ----------
    clip_norm
        C: the L2 clip norm, in the update's own units; positive.
    scale
        s: the fixed-point scale (integer units per unit); positive.
    dim
        d: the number of coordinates; at least 1.

    Raises
    ------
    ConfigError
        If an argument is out of range.

    Examples
    --------
    >>> integer_l2_sensitivity(clip_norm=1.0, scale=100.0, dim=16)
    102.0
    """
    _positive("clip_norm", clip_norm)
    _positive("scale", scale)
    _count("dim", dim)
    return scale * clip_norm + math.sqrt(dim) / 2


class DistributedLedger:
    """Epsilon after every round of a run under distributed DP, from who really contributed.

    Each client adds N_Z(0, sigma²) per coordinate, calibrated so that ``least`` contributors
    together add the noise the run asked for; a round in which fewer contribute fails before
    anything is unmasked. Each completed round is recorded with the number of clients whose
    noise reached the sum, less the one being protected (see the module docstring), so a round
    with dropouts spends more than one without, and the ledger says by how much.

    Parameters
    ----------
    l2_sensitivity, sigma, dim
        As for :func:`ddg_rho`.
    delta
        The delta that epsilon is reported at.
    least
        The fewest clients a round can complete with: the worst case, used to decide whether
        one more round fits a budget.
    """

    def __init__(
        self, l2_sensitivity: float, sigma: float, dim: int, delta: float, least: int
    ) -> None:
        _count("least", least)
        self.l2_sensitivity = l2_sensitivity
        self.sigma = sigma
        self.dim = dim
        self.delta = delta
        self.least = least
        self.rhos: list[float] = []
        self.rho(least)  # checks the arguments once

    def rho(self, contributors: int) -> float:
        """One round's rho when ``contributors`` clients' noise reached the sum (infinite
        without noise: clipping alone protects nothing)."""
        if self.sigma == 0:
            return math.inf
        honest = max(1, contributors - 1)
        return ddg_rho(self.l2_sensitivity, None, self.sigma, honest, self.dim)

    def record(self, contributors: int) -> float:
        """Add a completed round; the epsilon spent so far."""
        self.rhos.append(self.rho(contributors))
        return self.spent()

    def spent(self) -> float:
        """Epsilon at ``delta`` after the rounds recorded."""
        if self.sigma == 0 and self.rhos:
            return math.inf
        return ddg_epsilon(self.rhos, self.delta)

    def would_exceed(self, target_epsilon: float) -> bool:
        """Would one more round, in the worst case (``least`` contributors), pass the target?"""
        return self.next_epsilon() > target_epsilon

    def next_epsilon(self) -> float:
        """Epsilon after one more round, in the worst case (``least`` contributors)."""
        if self.sigma == 0:
            return math.inf
        return ddg_epsilon([*self.rhos, self.rho(self.least)], self.delta)
