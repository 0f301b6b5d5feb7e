"""How much privacy a DP-FedAvg run spends, computed with Google's dp-accounting.

User-level DP-FedAvg (McMahan et al., ICLR 2018) clips each sampled client's update to L2 norm C,
sums them and adds Gaussian noise of standard deviation z·C each round (z: the noise multiplier).
The guarantee covers one *user*, all of one client's data at once. In plain words: whoever sees
everything the server releases, every round, can become at most e^epsilon times surer (either way)
about one client's data, except with probability delta. Smaller is more private; delta must stay
well below 1/N (``check_delta``).

Sampling decides the analysis:

- ``"fixed-size-without-replacement"``: exactly m of N clients, uniformly. fedloom's
  ``FractionSampler`` and ``CountSampler`` sample this way, so account for them with it. Its
  analysis (``SampledWithoutReplacementDpEvent``, RDP only) is *replace-one*: N is public and the
  guarantee hides one client's data being replaced by anyone else's. That moves the clipped sum
  by up to 2C, so the event gets noise multiplier z/2 (dp-accounting 0.6 reads the multiplier as
  noise / sensitivity there; google/differential-privacy#378).
- ``"poisson"``: each client joins independently with probability m/N; for samplers that really
  do that (fedloom's do not). *Add-or-remove-one*: hides one client's whole data being added or
  removed.
- ``"all"``: every client every round (``AllClients``); add-or-remove-one, no amplification.

Add-or-remove (epsilon, delta) implies replace-one (2·epsilon, ...): epsilons under the two
relations are not directly comparable. Amplification by sampling assumes the adversary cannot
predict who is sampled: keep the sampler's seed secret.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from numpy.typing import NDArray

if TYPE_CHECKING:
    import dp_accounting

# dp-accounting (and the SciPy it loads, about a second) is imported where an epsilon is
# computed, so that `import fedloom` stays quick for runs without DP

from fedloom.errors import ConfigError

__all__ = [
    "ACCOUNTANTS",
    "SAMPLINGS",
    "Mechanism",
    "PrivacyLedger",
    "check_delta",
    "epsilon",
    "noise_for_epsilon",
    "rounds_within",
]

SAMPLINGS = ("poisson", "fixed-size-without-replacement", "all")
ACCOUNTANTS = ("rdp", "pld")

_RELATION = {  # dp_accounting.NeighboringRelation members
    "poisson": "ADD_OR_REMOVE_ONE",
    "fixed-size-without-replacement": "REPLACE_ONE",
    "all": "ADD_OR_REMOVE_ONE",
}
_PLD_INTERVAL = 1e-3  # PLD discretisation; rounding is pessimistic, so epsilon stays an upper bound
_Z_MIN, _Z_MAX = 0.01, 1000.0


@dataclass(frozen=True)
class Mechanism:
    """The noisy, sampled sum that each round of DP-FedAvg releases.

    Parameters
    ----------
    noise_multiplier
        z: noise standard deviation divided by the clip norm; positive.
    sampling
        How each round's participants are drawn, one of ``SAMPLINGS`` (see the module docstring).
    population
        N: the clients that could be sampled.
    cohort
        Clients per round: the expected count for ``"poisson"``, exact otherwise; N for ``"all"``.
    """

    noise_multiplier: float
    sampling: str
    population: int
    cohort: int

    def __post_init__(self) -> None:
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0):
            raise ConfigError(f"--noise-multiplier must be positive, got {self.noise_multiplier}")
        if self.sampling not in SAMPLINGS:
            raise ConfigError(
                f"unknown --dp-sampling {self.sampling!r}; choose one of: {', '.join(SAMPLINGS)}"
            )
        if self.population < 1:
            raise ConfigError(f"--clients must be at least 1, got {self.population}")
        if not 1 <= self.cohort <= self.population:
            raise ConfigError(
                f"--clients-per-round must be between 1 and the {self.population} clients, "
                f"got {self.cohort}"
            )
        if self.sampling == "all" and self.cohort != self.population:
            raise ConfigError(
                f"sampling 'all' takes every client every round, so clients per round must be "
                f"{self.population}, got {self.cohort}; use 'fixed-size-without-replacement'"
            )

    def event(self, rounds: int) -> dp_accounting.DpEvent:
        """The dp-accounting event of ``rounds`` rounds: one round's event, self-composed.

        ``"poisson"`` is ``PoissonSampledDpEvent(m/N, GaussianDpEvent(z))``;
        ``"fixed-size-without-replacement"`` is ``SampledWithoutReplacementDpEvent(N, m,
        GaussianDpEvent(z/2))``, z/2 because the replace-one sensitivity of the clipped sum is 2C;
        ``"all"`` is ``GaussianDpEvent(z)``.
        """
        import dp_accounting

        z = self.noise_multiplier
        one: dp_accounting.DpEvent
        if self.sampling == "poisson":
            q = self.cohort / self.population
            one = dp_accounting.PoissonSampledDpEvent(q, dp_accounting.GaussianDpEvent(z))
        elif self.sampling == "fixed-size-without-replacement":
            one = dp_accounting.SampledWithoutReplacementDpEvent(
                self.population, self.cohort, dp_accounting.GaussianDpEvent(z / 2)
            )
        else:
            one = dp_accounting.GaussianDpEvent(z)
        return dp_accounting.SelfComposedDpEvent(one, rounds)


def _accountant(sampling: str, accountant: str) -> dp_accounting.PrivacyAccountant:
    """A fresh dp-accounting accountant with the neighbouring relation that ``sampling`` needs."""
    if accountant not in ACCOUNTANTS:
        raise ConfigError(
            f"unknown --accountant {accountant!r}; choose one of: {', '.join(ACCOUNTANTS)}"
        )
    if sampling == "fixed-size-without-replacement" and accountant == "pld":
        raise ConfigError(
            "--accountant pld cannot account for fixed-size sampling: dp-accounting's PLD "
            "accountant has no analysis of sampling without replacement; use --accountant rdp"
        )
    import dp_accounting
    from dp_accounting import pld, rdp

    relation = getattr(dp_accounting.NeighboringRelation, _RELATION[sampling])
    if accountant == "rdp":
        return rdp.RdpAccountant(neighboring_relation=relation)
    return pld.PLDAccountant(relation, value_discretization_interval=_PLD_INTERVAL)


def _check_delta_range(delta: float) -> None:
    if not 0.0 < delta < 1.0:
        raise ConfigError(f"--delta must be in (0, 1), got {delta}")


def epsilon(mechanism: Mechanism, rounds: int, delta: float, accountant: str = "rdp") -> float:
    """Epsilon spent after ``rounds`` rounds of ``mechanism``, at ``delta``.

    Parameters
    ----------
    mechanism
        The per-round mechanism.
    rounds
        Rounds run so far; 0 spends nothing.
    delta
        Target delta, in (0, 1); see ``check_delta`` for the bound a run should respect.
    accountant
        ``"rdp"`` (``RdpAccountant``, default orders) or ``"pld"`` (``PLDAccountant``, tighter,
        slower; not for fixed-size sampling).

    Examples
    --------
    >>> m = Mechanism(1.1, "poisson", population=1000, cohort=10)
    >>> round(epsilon(m, rounds=1000, delta=1e-5), 2)
    1.71
    """
    acc = _accountant(mechanism.sampling, accountant)
    _check_delta_range(delta)
    if rounds < 0:
        raise ConfigError(f"rounds must be at least 0, got {rounds}")
    if rounds == 0:
        return 0.0
    return float(acc.compose(mechanism.event(rounds)).get_epsilon(delta))


def noise_for_epsilon(
    target_epsilon: float,
    delta: float,
    rounds: int,
    sampling: str,
    population: int,
    cohort: int,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier z whose epsilon after ``rounds`` rounds is at most the target.

    Brackets z by doubling or halving from 1 within [0.01, 1000], then narrows the bracket with
    dp-accounting's ``calibrate_dp_mechanism`` (bisection-safeguarded root finding) to a relative
    precision of 1e-3. The result always meets the target; a target so loose that z = 0.01 meets
    it returns 0.01.

    Raises
    ------
    ConfigError
        If the settings are invalid or even z = 1000 spends more than ``target_epsilon``.
    """
    if not target_epsilon > 0:
        raise ConfigError(f"--target-epsilon must be positive, got {target_epsilon}")
    if rounds < 1:
        raise ConfigError(f"rounds must be at least 1, got {rounds}")

    @functools.cache
    def meets(z: float) -> bool:
        mechanism = Mechanism(z, sampling, population, cohort)
        return epsilon(mechanism, rounds, delta, accountant) <= target_epsilon

    lo = hi = 1.0  # bracket: meets(hi) and not meets(lo), found by doubling or halving
    while not meets(hi):
        if hi >= _Z_MAX:
            raise ConfigError(
                f"epsilon {target_epsilon} is out of reach in {rounds} rounds even with noise "
                f"multiplier {_Z_MAX:g}; raise the target, run fewer rounds or sample fewer "
                f"clients per round"
            )
        lo, hi = hi, min(2 * hi, _Z_MAX)
    while meets(lo):
        if lo <= _Z_MIN:
            return _Z_MIN
        lo, hi = max(lo / 2, _Z_MIN), lo
    import dp_accounting

    z = dp_accounting.calibrate_dp_mechanism(
        lambda: _accountant(sampling, accountant),
        lambda z: Mechanism(z, sampling, population, cohort).event(rounds),
        target_epsilon,
        delta,
        dp_accounting.ExplicitBracketInterval(lo, hi),
        tol=1e-3 * lo,
    )
    return float(z)


def rounds_within(
    mechanism: Mechanism,
    target_epsilon: float,
    delta: float,
    accountant: str = "rdp",
    max_rounds: int = 100_000,
) -> int:
    """How many rounds fit in the budget: the largest k <= ``max_rounds`` with epsilon(k) <= target.

    0 if even one round spends more than ``target_epsilon``.
    """
    if max_rounds < 1:
        raise ConfigError(f"max_rounds must be at least 1, got {max_rounds}")
    ledger = PrivacyLedger(mechanism, delta, accountant)
    if ledger.would_exceed(1, target_epsilon):
        return 0
    if not ledger.would_exceed(max_rounds, target_epsilon):
        return max_rounds
    fits, exceeds = 1, max_rounds  # invariant: spent(fits) <= target < spent(exceeds)
    while exceeds - fits > 1:
        middle = (fits + exceeds) // 2
        if ledger.would_exceed(middle, target_epsilon):
            exceeds = middle
        else:
            fits = middle
    return fits


def check_delta(delta: float, population: int) -> None:
    """Refuse a delta that does not protect every one of ``population`` users.

    Raises
    ------
    ConfigError
        Unless 0 < delta < 1/population.
    """
    if not 0.0 < delta < 1.0 / population:
        raise ConfigError(
            f"--delta {delta} must be above 0 and below 1/{population} (the number of users): a "
            f"delta at or above 1/number-of-users allows releasing one user's data outright; use "
            f"a delta below 1/N, e.g. 1/N^1.1 = {population**-1.1:.3g}"
        )


class PrivacyLedger:
    """Epsilon after every round of one run, for the run's history; results are cached.

    With RDP, one round's RDP curve is computed once and scaled by the round count, exactly as
    ``RdpAccountant`` composes, so a spent() per round stays cheap; PLD recomposes per call.

    Parameters
    ----------
    mechanism, delta, accountant
        As for ``epsilon``; checked here, once.
    """

    def __init__(self, mechanism: Mechanism, delta: float, accountant: str = "rdp") -> None:
        from dp_accounting import rdp

        one_round = _accountant(mechanism.sampling, accountant)
        _check_delta_range(delta)
        self.mechanism = mechanism
        self.delta = delta
        self.accountant = accountant
        self._spent: dict[int, float] = {0: 0.0}
        self._rdp_curve: tuple[NDArray[np.float64], NDArray[np.float64]] | None = None
        if isinstance(one_round, rdp.RdpAccountant):
            one_round.compose(mechanism.event(1))
            self._rdp_curve = (one_round.orders, one_round.rdp)

    def spent(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds."""
        if rounds < 0:
            raise ConfigError(f"rounds must be at least 0, got {rounds}")
        if rounds not in self._spent:
            if self._rdp_curve is None:
                eps = epsilon(self.mechanism, rounds, self.delta, self.accountant)
            else:
                from dp_accounting import rdp

                orders, per_round = self._rdp_curve
                eps = rdp.compute_epsilon(orders, rounds * per_round, self.delta)[0]
            self._spent[rounds] = float(eps)
        return self._spent[rounds]

    def would_exceed(self, rounds: int, target_epsilon: float) -> bool:
        """Whether ``rounds`` rounds would spend more than ``target_epsilon``."""
        return self.spent(rounds) > target_epsilon
