"""SCAFFOLD's client half (Karimireddy et al., 2020): control variates and corrected local steps.

The server sends its control variate ``c`` in the fit instruction's payload. The client keeps its
own ``c_i`` in its state across rounds (zeros before its first round), trains with every step's
gradient corrected by ``c - c_i``, and replies with the model update and the change of its control
variate. The new control variate follows the paper's option II::

    c_i+ = c_i - c + (x - y_i) / (K * lr)

with ``x`` the global model, ``y_i`` the trained one and ``K`` the number of local steps.
"""

from __future__ import annotations

import inspect
from typing import TYPE_CHECKING, cast

import numpy as np

from fedloom.client._trainer import CorrectableTrainer, Trainer
from fedloom.errors import ClientError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector

if TYPE_CHECKING:
    from fedloom.client._app import ClientContext

__all__ = [
    "CONTROL_DELTA_KEY",
    "CONTROL_KEY",
    "STATE_KEY",
    "control_update",
    "decode_vector",
    "scaffold_fit",
]

CONTROL_KEY = "scaffold.control"
"""Payload key of the server's control variate ``c`` (float32 bytes) in a fit instruction."""
CONTROL_DELTA_KEY = "scaffold.control_delta"
"""Payload key of the client's ``c_i+ - c_i`` (float32 bytes) in its fit reply."""
STATE_KEY = "scaffold.c_i"
"""Client-state key of the client's own control variate ``c_i``."""


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


def _correctable(trainer: Trainer) -> CorrectableTrainer | None:
    try:
        params = inspect.signature(trainer.fit).parameters
    except (TypeError, ValueError):
        return None
    return cast(CorrectableTrainer, trainer) if "correction" in params else None


def scaffold_fit(ctx: ClientContext, ins: Instruction, seed: int) -> Reply:
    """Train with SCAFFOLD's corrected steps; reply with the update and the control change."""

    def fail(reason: str) -> ClientError:
        return ClientError(ctx.client_id, ins.round, ins.phase, reason)

    x = ins.parameters
    if x is None:
        raise fail("fit needs the global model")
    dim = x.shape[0]
    c = decode_vector(ins.payload[CONTROL_KEY], dim)
    if c is None:
        raise fail(f"the server's control variate is not {dim} finite float32 values")
    trainer = _correctable(ctx.trainer)
    if trainer is None:
        raise fail(
            "SCAFFOLD needs a trainer whose fit() takes a correction= argument "
            "(TorchTrainer and LinearTrainer do)"
        )
    c_i = ctx.state.get(STATE_KEY)
    if c_i is None:
        c_i = np.zeros(dim, np.float32)
    result = trainer.fit(x, ctx.data.train, ins.config, seed, correction=c - c_i)
    if not result.steps or not result.lr:
        raise fail("SCAFFOLD needs the trainer to report the local steps and lr it used")
    delta = result.parameters - x
    new_c_i, change = control_update(c_i, c, delta, result.steps, result.lr)
    if np.isfinite(new_c_i).all():
        ctx.state[STATE_KEY] = new_c_i
    # else: training diverged; the server refuses this reply, and the client keeps its old c_i
    # rather than carrying NaN into every later round
    return Reply(
        ctx.client_id,
        ins.round,
        ins.phase,
        delta,
        result.num_examples,
        dict(result.metrics),
        {CONTROL_DELTA_KEY: change.tobytes()},
    )
