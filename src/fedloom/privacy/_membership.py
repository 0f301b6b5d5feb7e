"""A measured privacy audit: a membership inference attack on a trained global model.

The attack is the loss threshold of Yeom et al. (2018, "Privacy Risk in Machine Learning:
Analyzing the Connection to Overfitting"): a model fits the examples it was trained on better than
fresh ones, so a lower loss means "member". It needs nothing but the model and the examples, and
is the baseline every stronger attack must beat; its AUC over members and non-members says how
much membership leaks (0.5: nothing the attack can see).

Differential privacy caps what any attack can achieve. By the hypothesis-testing view of
(epsilon, delta)-DP (Kairouz, Oh and Viswanath 2015, "The Composition Theorem for Differential
Privacy", Theorem 2.1), every test for "member or not" has ``FPR + e^eps * FNR >= 1 - delta`` and
``e^eps * FPR + FNR >= 1 - delta``; adding the two bounds its advantage ``TPR - FPR`` by
``(e^eps - 1 + 2 delta) / (e^eps + 1)`` (Humphries et al. 2020, "Differentially Private Learning
Does Not Bound Membership Inference", arXiv:2010.12112). :func:`advantage_ceiling` computes it.

A measured advantage is a lower bound on the leakage (a better attack may do more); the ceiling is
an upper bound. fedloom's DP is user level (one client's data at once); the attack here is example
level, which the user-level guarantee covers: see :func:`fedloom.recipes.audit_run`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from fedloom.errors import ConfigError, DataError

__all__ = ["MembershipResult", "advantage_ceiling", "balanced_indices", "membership_attack"]


@dataclass(frozen=True)
class MembershipResult:
    """How well the loss threshold tells members from non-members, on balanced sets.

    Attributes
    ----------
    auc
        ROC AUC of "lower loss means member": the chance that a random member has a lower loss
        than a random non-member (ties count half). 0.5 is chance.
    advantage
        The best threshold's ``TPR - FPR`` (Yeom et al.'s membership advantage), in [0, 1].
    chance_advantage
        The advantage that a model leaking nothing exceeds by chance once in 20 on sets of these
        sizes: the best threshold's ``TPR - FPR`` is the one-sided two-sample
        Kolmogorov-Smirnov statistic, whose 95 % point is about
        ``sqrt(ln(20) / 2 * (m + n) / (m * n))`` (asymptotic; conservative with ties). A
        measured advantage below it is no evidence of leakage.
    tpr_at_1pct_fpr, tpr_at_10pct_fpr
        The highest true positive rate among thresholds with a false positive rate of at most
        1 % and 10 % (Carlini et al. 2022: leakage that matters is confident leakage).
    members, non_members
        The examples scored; equal, after balancing.
    """

    auc: float
    advantage: float
    chance_advantage: float
    tpr_at_1pct_fpr: float
    tpr_at_10pct_fpr: float
    members: int
    non_members: int


def balanced_indices(
    n_members: int, n_non_members: int, seed: int
) -> tuple[np.ndarray, np.ndarray]:
    """Indices of equally many members and non-members: the larger set is subsampled (sorted,
    without replacement, by ``numpy.random.default_rng(seed)``), the smaller kept whole."""
    size = min(n_members, n_non_members)
    rng = np.random.default_rng(seed)

    def pick(n: int) -> np.ndarray:
        if n == size:
            return np.arange(n)
        return np.sort(rng.choice(n, size=size, replace=False))

    return pick(n_members), pick(n_non_members)


def membership_attack(
    member_losses: np.ndarray | Sequence[float],
    non_member_losses: np.ndarray | Sequence[float],
    *,
    seed: int = 0,
) -> MembershipResult:
    """Score the loss-threshold attack (Yeom et al. 2018): lower loss, guess member.

    The larger of the two sets is first subsampled to the size of the smaller (seeded), so that
    AUC 0.5 and advantage 0 mean no leakage the attack can see. Scored with scikit-learn's
    ``roc_auc_score`` and ``roc_curve``.

    Parameters
    ----------
    member_losses, non_member_losses
        Per-example losses of training examples and of examples the model never saw.
    seed
        Seeds the subsampling.

    Raises
    ------
    DataError
        If either set is empty or holds NaN.

    Examples
    --------
    >>> r = membership_attack([0.1, 0.2, 0.5, 0.9], [0.3, 0.6, 0.7, 1.0])
    >>> r.auc, r.advantage, r.tpr_at_1pct_fpr
    (0.75, 0.5, 0.5)
    """
    from sklearn.metrics import roc_auc_score, roc_curve

    members = np.asarray(member_losses, dtype=np.float64).reshape(-1)
    others = np.asarray(non_member_losses, dtype=np.float64).reshape(-1)
    for what, losses in (("member", members), ("non-member", others)):
        if losses.size == 0:
            raise DataError(f"no {what} losses to attack; give at least one of each")
        if np.isnan(losses).any():
            raise DataError(f"the {what} losses hold NaN; the model's loss is undefined there")
    if seed < 0:
        raise ConfigError(f"seed must be 0 or more, got {seed}")
    keep_m, keep_o = balanced_indices(members.size, others.size, seed)
    members, others = members[keep_m], others[keep_o]
    labels = np.r_[np.ones(members.size), np.zeros(others.size)]
    big = np.finfo(np.float64).max  # only the order matters: an infinite loss ranks last
    scores = -np.clip(np.r_[members, others], -big, big)
    fpr, tpr, _ = roc_curve(labels, scores, drop_intermediate=False)
    return MembershipResult(
        auc=float(roc_auc_score(labels, scores)),
        advantage=float(max(0.0, np.max(tpr - fpr))),
        chance_advantage=math.sqrt(math.log(20) / 2 * (1 / members.size + 1 / others.size)),
        tpr_at_1pct_fpr=float(tpr[fpr <= 0.01].max()),
        tpr_at_10pct_fpr=float(tpr[fpr <= 0.1].max()),
        members=int(members.size),
        non_members=int(others.size),
    )


def advantage_ceiling(epsilon: float, delta: float) -> float:
    """The most membership advantage (``TPR - FPR``) any attack can have on an
    (epsilon, delta)-DP model: ``(e^eps - 1 + 2 delta) / (e^eps + 1)``.

    From the hypothesis-testing region of (epsilon, delta)-DP (Kairouz et al. 2015, Theorem
    2.1): ``FPR + e^eps FNR >= 1 - delta`` and ``e^eps FPR + FNR >= 1 - delta``; their sum gives
    ``TPR - FPR <= 1 - 2 (1 - delta) / (e^eps + 1)``, the bound of Humphries et al. (2020,
    arXiv:2010.12112). Computed as ``tanh(eps / 2) + 2 delta / (e^eps + 1)``, which stays finite
    for any epsilon (infinite epsilon: 1).

    Raises
    ------
    ConfigError
        If epsilon is negative or NaN, or delta is outside [0, 1].

    Examples
    --------
    >>> advantage_ceiling(0.0, 1e-5)
    1e-05
    >>> round(advantage_ceiling(1.0, 0.0), 4)  # tanh(1/2)
    0.4621
    """
    if not epsilon >= 0:
        raise ConfigError(f"epsilon must be 0 or more, got {epsilon}")
    if not 0.0 <= delta <= 1.0:
        raise ConfigError(f"delta must be in [0, 1], got {delta}")
    shrink = math.exp(-epsilon)  # 2 delta / (e^eps + 1) = 2 delta e^-eps / (1 + e^-eps)
    return min(1.0, math.tanh(epsilon / 2) + 2 * delta * shrink / (1 + shrink))
