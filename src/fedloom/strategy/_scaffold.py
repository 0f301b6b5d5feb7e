"""SCAFFOLD's server half (Karimireddy et al., 2020): the server control variate.

Each round the server sends the global model ``x`` and its control variate ``c``; every client
replies with its update ``y_i - x`` and the change ``Δc_i`` of its own control variate (see
:mod:`fedloom.client._scaffold`). The updates go through the strategy's aggregator as usual (the
server optimizer then applies ``x ← x + η_g Δx``), and the control variate moves by::

    c ← c + (|S| / N) · mean_i Δc_i  =  c + (1 / N) · Σ_i Δc_i

with ``S`` the clients whose replies were accepted and ``N`` the clients available to sample.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedloom.client._scaffold import CONTROL_DELTA_KEY, CONTROL_KEY, decode_vector
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy._mechanism import (
    RoundContext,
    RoundOutcome,
    RoundSteps,
    _FitTally,
    accepted_updates,
)

__all__ = ["ScaffoldRound"]

F64 = npt.NDArray[np.float64]


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
