"""A run's privacy ledgers: the epsilon each round adds to the record, and the budget.

Central DP's epsilon depends on the number of rounds alone; distributed DP's on how many clients'
noise reached each round's sum, so its ledger is fed every completed round (and replayed from
the history when a run resumes).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedloom.privacy._accountant import PrivacyLedger
from fedloom.privacy._discrete import DistributedLedger
from fedloom.strategy import RoundOutcome
from fedloom.tracking import History

__all__ = ["CentralPrivacy", "DistributedPrivacy", "RunPrivacy"]


@dataclass(frozen=True)
class CentralPrivacy:
    """A run's privacy accounting under central DP: epsilon per round, and the budget."""

    ledger: PrivacyLedger | None  # None: clipping alone, without noise: epsilon is unbounded
    target_epsilon: float | None

    def metrics(self, round: int, outcome: RoundOutcome) -> dict[str, float]:
        return {"epsilon": self.ledger.spent(round) if self.ledger is not None else math.inf}

    def exhausted(self, completed: int) -> bool:
        """Would one more round take epsilon past the target?"""
        target = self.target_epsilon
        if target is None:
            return False
        return self.ledger is None or self.ledger.would_exceed(completed + 1, target)

    def next_epsilon(self, completed: int) -> float:
        """The epsilon after one more round."""
        return self.ledger.spent(completed + 1) if self.ledger is not None else math.inf

    def replay(self, history: History) -> None:
        """Nothing to do on resume: central DP's epsilon depends on the round count alone."""


@dataclass(frozen=True)
class DistributedPrivacy:
    """Distributed DP's accounting: epsilon from the clients whose noise reached each round's
    sum, and the budget."""

    ledger: DistributedLedger
    target_epsilon: float | None

    def metrics(self, round: int, outcome: RoundOutcome) -> dict[str, float]:
        return {"epsilon": self.ledger.record(outcome.aggregate.count)}

    def replay(self, history: History) -> None:
        """Record the rounds of a resumed run, from how many clients each one summed."""
        for record in history:
            self.ledger.record(record.clients)

    def exhausted(self, completed: int) -> bool:
        """Would one more round, with the fewest clients it may complete with, pass the target?"""
        target = self.target_epsilon
        return target is not None and self.ledger.would_exceed(target)

    def next_epsilon(self, completed: int) -> float:
        """The epsilon after one more round with the fewest clients it may complete with."""
        return self.ledger.next_epsilon()


RunPrivacy = CentralPrivacy | DistributedPrivacy
"""Either ledger."""
