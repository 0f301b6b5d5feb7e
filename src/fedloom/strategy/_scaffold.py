"""SCAFFOLD (Karimireddy et al., 2020): control variates, their wire keys and their maths.

Each round the server sends the global model ``x`` and its control variate ``c`` in the fit
instruction's payload. The client keeps its own ``c_i`` across rounds (zeros before its first
round), trains with every step's gradient corrected by ``c - c_i`` (``fedloom.client``'s
``scaffold_mod``), and replies with its update ``y_i - x`` and the change ``Δc_i`` of its control
variate, by the paper's option II::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

with ``y_i`` the trained model and ``K`` the number of local steps. The updates go through the
strategy's aggregator as usual (the server optimizer then applies ``x ← x + η_g Δx``), and the
server's control variate moves by::

    c ← c + (|S| / N) · mean_i Δc_i  =  c + (1 / N) · Σ_i Δc_i

with ``S`` the clients whose replies were accepted and ``N`` the clients available to sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy._mechanism import (
    RoundContext,
    RoundOutcome,
    RoundSteps,
    _FitTally,
    accepted_updates,
)

__all__ = ["CONTROL_DELTA_KEY", "CONTROL_KEY", "ScaffoldRound", "control_update", "decode_vector"]

F64 = npt.NDArray[np.float64]

CONTROL_KEY = "scaffold.control"
"""Payload key of the server's control variate ``c`` (float32 bytes) in a fit instruction."""
CONTROL_DELTA_KEY = "scaffold.control_delta"
"""Payload key of the client's ``c_i+ - c_i`` (float32 bytes) in its fit reply."""


def control_update(
    c_i: Vector, c: Vector, delta: Vector, steps: int, lr: float
) -> tuple[Vector, Vector]:
    """Option II of the paper: the new ``c_i`` and its change, from ``delta = y_i - x``.

    ``c_i+ = c_i - c - delta / (steps * lr)``; returns ``(c_i+, c_i+ - c_i)`` as float32.
    """
    new = c_i.astype(np.float64) - c - delta.astype(np.float64) / (steps * lr)
    return new.astype(np.float32), (new - c_i).astype(np.float32)


def decode_vector(raw: bytes, dim: int) -> Vector | None:
    """A float32 vector of length ``dim`` from bytes, or None when the bytes do not fit."""
    if len(raw) != 4 * dim:
        return None
    vec = np.frombuffer(raw, dtype=np.float32)
    return vec if np.isfinite(vec).all() else None


@dataclass(frozen=True)
class ScaffoldRound:
    """One fit phase that also carries and updates the server control variate ``c``.

    The mechanism's state is ``c`` (float64, zeros before the first round).
    """

    def init(self, parameters: Vector) -> F64:
        return np.zeros(parameters.shape, np.float64)

    def run(self, ctx: RoundContext) -> RoundSteps:
        c: F64 = ctx.state
        dim = ctx.parameters.shape[0]
        payload = {CONTROL_KEY: c.astype(np.float32).tobytes()}
        instruction = Instruction(ctx.round, "fit", ctx.parameters, ctx.config, payload)
        replies = yield dict.fromkeys(ctx.selected, instruction)
        tally = _FitTally()
        change_sum = np.zeros(dim, np.float64)

        def check(reply: Reply) -> str | None:
            raw = reply.payload.get(CONTROL_DELTA_KEY)
            change = decode_vector(raw, dim) if raw is not None else None
            if change is None:
                return f"no control variate change of {dim} finite float32 values"
            np.add(change_sum, change, out=change_sum)
            return None

        aggregate, agg_state = ctx.aggregator.aggregate(
            accepted_updates(replies, ctx, tally, check), dim, ctx.aggregator_state
        )
        population = max(ctx.num_clients, len(ctx.selected), 1)
        new_c = c + change_sum / population
        return RoundOutcome(
            aggregate, agg_state, tally.metrics(), tally.rejected, new_c, tuple(tally.accepted)
        )
