"""Differential privacy: the privacy accountant of user-level DP-FedAvg, on dp-accounting, and a
membership inference audit that measures what a trained model leaks."""

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
from fedloom.privacy._audit import (
    MembershipResult,
    RunAudit,
    advantage_ceiling,
    audit_run,
    membership_attack,
)

__all__ = [
    "ACCOUNTANTS",
    "SAMPLINGS",
    "Mechanism",
    "MembershipResult",
    "PrivacyLedger",
    "RunAudit",
    "advantage_ceiling",
    "audit_run",
    "check_delta",
    "epsilon",
    "membership_attack",
    "noise_for_epsilon",
    "rounds_within",
]
