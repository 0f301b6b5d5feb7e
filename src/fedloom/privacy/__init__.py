"""Differential privacy: the links of the update chain that clip and noise (central and
distributed DP), DP-SGD for local DP, the privacy accountants and run ledgers, and the
membership inference attack that measures what a trained model leaks."""

from fedloom.privacy._accountant import (
    ACCOUNTANTS,
    SAMPLINGS,
    Mechanism,
    PrivacyLedger,
    check_delta,
    epsilon,
    noise_for_epsilon,
    rounds_within,
)
from fedloom.privacy._central import AdaptiveClipping, CentralDP, ClipState
from fedloom.privacy._discrete import DistributedLedger, discrete_gaussian
from fedloom.privacy._distributed import (
    DistributedDP,
    DistributedNoise,
    distributed_noise,
    encode_noised,
)
from fedloom.privacy._ledger import CentralPrivacy, DistributedPrivacy, RunPrivacy
from fedloom.privacy._local import (
    BATCH_METRIC,
    DPSGD,
    EPSILON_METRIC,
    STEPS_METRIC,
    LocalDP,
    StepCount,
)
from fedloom.privacy._membership import (
    MembershipResult,
    advantage_ceiling,
    balanced_indices,
    membership_attack,
)

__all__ = [
    "ACCOUNTANTS",
    "BATCH_METRIC",
    "DPSGD",
    "EPSILON_METRIC",
    "SAMPLINGS",
    "STEPS_METRIC",
    "AdaptiveClipping",
    "CentralDP",
    "CentralPrivacy",
    "ClipState",
    "DistributedDP",
    "DistributedLedger",
    "DistributedNoise",
    "DistributedPrivacy",
    "LocalDP",
    "Mechanism",
    "MembershipResult",
    "PrivacyLedger",
    "RunPrivacy",
    "StepCount",
    "advantage_ceiling",
    "balanced_indices",
    "check_delta",
    "discrete_gaussian",
    "distributed_noise",
    "encode_noised",
    "epsilon",
    "membership_attack",
    "noise_for_epsilon",
    "rounds_within",
]
