"""The built-in client mods: secure aggregation, local DP's accounting, SCAFFOLD.

Each is a :class:`~fedloom.client.Mod` (``(ctx, instruction, call_next) -> reply``) that acts
only when the instruction asks for it and otherwise passes the instruction on. In
:data:`DEFAULT_MODS` order (secure aggregation outermost, SCAFFOLD innermost), secure
aggregation's key phase trains through the layers below it, so whatever sits between (a
simulated attack, local DP) applies to the update it masks.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable
from typing import cast

import numpy as np

from fedloom.client._context import ClientContext, Handler, Mod, mod
from fedloom.client._trainer import CorrectableTrainer, Trainer, client_seed
from fedloom.compression import FixedPoint
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import ClientUpdate, Config, Instruction, Reply
from fedloom.privacy import (
    BATCH_METRIC,
    EPSILON_METRIC,
    STEPS_METRIC,
    DistributedDP,
    LocalDP,
    StepCount,
)
from fedloom.secagg import KEYS, PHASES, advertise, respond, settings_of
from fedloom.strategy import (
    CONTROL_DELTA_KEY,
    CONTROL_KEY,
    Chain,
    Link,
    control_update,
    decode_vector,
)

__all__ = [
    "CLIENT_LINKS",
    "DEFAULT_MODS",
    "LOCAL_DP_STATE_KEY",
    "SCAFFOLD_STATE_KEY",
    "client_chain",
    "is_correctable",
    "local_dp_mod",
    "scaffold_mod",
    "secagg_mod",
]

CLIENT_LINKS: tuple[Callable[[Config], Link | None], ...] = (
    DistributedDP.from_config,
    FixedPoint.from_config,
)
"""How a client reads the update chain's client links from its instruction, in chain order:
each returns its link when the config names it, else ``None``. A new client link adds its
``from_config`` here."""

SCAFFOLD_STATE_KEY = "scaffold.c_i"
"""Client-state key of the client's own SCAFFOLD control variate ``c_i``."""
LOCAL_DP_STATE_KEY = "local_dp.steps"
"""Client-state key of the client's local DP :class:`~fedloom.privacy.StepCount`."""
_CHAIN_STATE_KEY = "chain"


def client_chain(config: Config) -> Chain:
    """The client links an instruction's config names, in order."""
    links = [link for parse in CLIENT_LINKS if (link := parse(config)) is not None]
    return Chain(tuple(links))


def _secagg(ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply:
    """Secure aggregation's four phases; the key phase trains through ``call_next``'s fit, runs
    the update chain's client links (the last one encodes as integers), and advertises keys."""
    if ins.phase not in PHASES:
        return call_next(ctx, ins)
    if ins.phase != KEYS:
        return respond(ctx.client_id, ctx.state, ins)

    def fail(reason: str) -> ClientError:
        return ClientError(ctx.client_id, ins.round, ins.phase, reason)

    settings = settings_of(ctx.client_id, ins)
    try:
        chain = client_chain(ins.config)
    except ConfigError as exc:
        raise fail(str(exc)) from None
    encoding = chain.encoding
    if encoding is None:
        raise fail("the instruction names no integer encoding for the update; cannot mask it")
    trained = call_next(ctx, dataclasses.replace(ins, phase="fit", payload={}))
    if trained.vector is None:
        raise fail("training produced no update")
    update = ClientUpdate(ctx.client_id, trained.vector, float(trained.num_examples))
    before = ctx.state.get(_CHAIN_STATE_KEY)
    states = before if isinstance(before, list) and len(before) == len(chain.links) else None
    if states is None:
        states = list(chain.init(trained.vector.shape[0]))
    encoded, states = chain.encode(update, states)
    if any(s is not None for s in states):
        ctx.state[_CHAIN_STATE_KEY] = states
    else:  # no link keeps state: nothing for the client (or a kept run) to hold
        ctx.state.pop(_CHAIN_STATE_KEY, None)
    return advertise(ctx.client_id, ctx.state, ins, settings, encoded.vector, encoding.modulus_bits)


secagg_mod: Mod = mod(*PHASES)(_secagg)
"""Answers secure aggregation's phases (see :mod:`fedloom.secagg`)."""


def _local_dp(ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply:
    """Keep each client's record-level privacy ledger when a fit asks for local DP.

    The mod checks delta against the client's examples, runs the fit (whose trainer runs DP-SGD
    and reports its steps and batch), adds the steps to the client's
    :class:`~fedloom.privacy.StepCount` and puts its epsilon so far in the reply's
    ``local_epsilon``.
    """
    if ins.phase != "fit":
        return call_next(ctx, ins)
    settings = LocalDP.from_config(ins.config)
    if settings is None:
        return call_next(ctx, ins)
    n = len(ctx.data.train)
    settings.check_delta(n)
    reply = call_next(ctx, ins)

    def fail(reason: str) -> ClientError:
        return ClientError(ctx.client_id, ins.round, ins.phase, reason)

    steps, batch = reply.metrics.get(STEPS_METRIC), reply.metrics.get(BATCH_METRIC)
    if steps is None or batch is None:
        raise fail("local DP needs a trainer that runs DP-SGD (TorchTrainer); this one does not")
    mechanism = StepCount(settings.noise_multiplier, n, int(batch))
    before: StepCount = ctx.state.get(LOCAL_DP_STATE_KEY, mechanism)
    if dataclasses.replace(before, steps=0) != mechanism:
        raise fail(
            f"local DP's noise or sampling rate changed between rounds ({before} before, "
            f"{mechanism} now); the accounting assumes one mechanism for all of a client's "
            "steps: keep --local-dp-noise and --batch-size fixed for a run"
        )
    spent = dataclasses.replace(before, steps=before.steps + int(steps))
    ctx.state[LOCAL_DP_STATE_KEY] = spent  # counted whether or not the server accepts the update
    metrics = {**reply.metrics, EPSILON_METRIC: spent.epsilon(settings.delta)}
    return dataclasses.replace(reply, metrics=metrics)


local_dp_mod: Mod = mod()(_local_dp)
"""Local DP's accounting (see :mod:`fedloom.privacy._local`)."""


def is_correctable(trainer: Trainer) -> bool:
    """Whether ``trainer.fit`` takes SCAFFOLD's ``correction=`` (a :class:`CorrectableTrainer`)."""
    return _correctable(trainer) is not None


def _correctable(trainer: Trainer) -> CorrectableTrainer | None:
    try:
        params = inspect.signature(trainer.fit).parameters
    except (TypeError, ValueError):
        return None
    return cast(CorrectableTrainer, trainer) if "correction" in params else None


def _scaffold(ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply:
    """SCAFFOLD's client half, when a fit instruction carries the server's control variate:
    train with corrected steps; reply with the update and the change of ``c_i``."""
    if ins.phase != "fit" or CONTROL_KEY not in ins.payload:
        return call_next(ctx, ins)

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
    c_i = ctx.state.get(SCAFFOLD_STATE_KEY)
    if c_i is None:
        c_i = np.zeros(dim, np.float32)
    seed = client_seed(int(ins.config.get("seed", 0)), ins.round, ctx.client_id)
    result = trainer.fit(x, ctx.data.train, ins.config, seed, correction=c - c_i)
    if not result.steps or not result.lr:
        raise fail("SCAFFOLD needs the trainer to report the local steps and lr it used")
    delta = result.parameters - x
    new_c_i, change = control_update(c_i, c, delta, result.steps, result.lr)
    if np.isfinite(new_c_i).all():
        ctx.state[SCAFFOLD_STATE_KEY] = new_c_i
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


scaffold_mod: Mod = mod()(_scaffold)
"""SCAFFOLD's corrected local training (see :mod:`fedloom.strategy._scaffold`)."""

DEFAULT_MODS: tuple[Mod, ...] = (secagg_mod, local_dp_mod, scaffold_mod)
"""Every :class:`~fedloom.client.ClientApp`'s mods unless given others, outermost first."""
