"""Every error fedloom raises on purpose.

The tree::

    FedloomError                 base: catch this to catch them all
    ├── ConfigError              a setting is unknown, out of range, or conflicts with another
    ├── DataError                a dataset, file or path is missing or malformed
    ├── ClientError              a client failed handling an instruction (client id, round, phase)
    ├── RoundFailedError         too few clients answered to complete a round (round, phase)
    ├── DivergedError            a round's new global model is not finite (round)
    ├── TamperedError            an authenticated message failed to verify (secure aggregation)
    └── WireError                a message on the wire is malformed, truncated or too large

Messages name the problem and what to do about it; the command line prints the message alone
(no traceback) and exits with status 2 for ``ConfigError`` and ``DataError``, which are also
``ValueError`` subclasses. A plain ``ValueError`` is left only for a broken precondition of a
low-level primitive (Shamir sharing, the key agreement, the fixed-point arithmetic), which the
layers above check before they call it.
"""

from __future__ import annotations

__all__ = [
    "ClientError",
    "ConfigError",
    "DataError",
    "DivergedError",
    "FedloomError",
    "RoundFailedError",
    "TamperedError",
    "WireError",
]


class FedloomError(Exception):
    """Base class of every error fedloom raises on purpose."""


class ConfigError(FedloomError, ValueError):
    """A setting is unknown, out of range, or conflicts with another setting."""


class DataError(FedloomError, ValueError):
    """A dataset, file or path is missing or malformed."""


class ClientError(FedloomError):
    """A client failed while handling an instruction.

    Parameters
    ----------
    client_id, round, phase
        Where it failed: the client, the round (1-based) and the phase (``"fit"``, ...).
    reason
        What went wrong.
    """

    def __init__(self, client_id: str, round: int, phase: str, reason: str) -> None:
        super().__init__(f"client {client_id} failed in round {round}, phase {phase!r}: {reason}")
        self.client_id = client_id
        self.round = round
        self.phase = phase
        self.reason = reason


class RoundFailedError(FedloomError):
    """Fewer clients answered than the round needs."""

    def __init__(
        self, round: int, phase: str, answered: int, needed: int, why: str | None = None
    ) -> None:
        because = f" ({why})" if why else ""
        super().__init__(
            f"round {round}, phase {phase!r}: only {answered} client(s) answered acceptably, "
            f"{needed} needed{because}; lower the minimum or lengthen the round timeout"
        )
        self.round = round
        self.phase = phase
        self.answered = answered
        self.needed = needed


class DivergedError(FedloomError):
    """A round's new global model has NaN or infinite values; it is never saved."""

    def __init__(self, round: int) -> None:
        super().__init__(
            f"round {round}: the new global model is not finite (an update too large for the "
            "weights, or a learning rate too high); it was not saved, and the last model on "
            "disk is the one before it"
        )
        self.round = round


class TamperedError(FedloomError):
    """An authenticated ciphertext failed to verify.

    The key is wrong, or the bytes or their associated data were modified or truncated.
    """


class WireError(FedloomError):
    """A message on the wire is malformed, truncated or too large (deployment)."""
