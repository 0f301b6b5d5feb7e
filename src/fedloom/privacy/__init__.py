"""Differential privacy: the privacy accountant of user-level DP-FedAvg, on dp-accounting."""

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
