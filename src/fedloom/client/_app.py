"""The client runtime: turns instructions into replies, the same in simulation and deployment."""

from __future__ import annotations

from collections.abc import Callable, Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

from fedloom.client._scaffold import CONTROL_KEY, scaffold_fit
from fedloom.client._trainer import Trainer, client_seed
from fedloom.data import ClientData
from fedloom.errors import ClientError
from fedloom.messages import Instruction, Reply

__all__ = ["ClientApp", "ClientContext", "Handler"]


@dataclass
class ClientContext:
    """One client as a handler sees it: its id, its data, the trainer, and state it keeps.

    ``state`` persists across rounds for this client (SCAFFOLD's control variate, a secure
    aggregation key for the current round); the fleet that runs the client owns it.
    """

    client_id: str
    data: ClientData
    trainer: Trainer
    state: MutableMapping[str, Any] = field(default_factory=dict)


Handler = Callable[[ClientContext, Instruction], Reply]
"""Handles one phase's instruction for one client."""


def fit(ctx: ClientContext, ins: Instruction) -> Reply:
    """Train from the global model on local data; reply with the update (trained - global).

    A SCAFFOLD server's instruction carries its control variate; then the client trains with
    SCAFFOLD's corrected steps (see :mod:`fedloom.client._scaffold`).
    """
    if ins.parameters is None:
        raise ClientError(ctx.client_id, ins.round, ins.phase, "fit needs the global model")
    seed = client_seed(int(ins.config.get("seed", 0)), ins.round, ctx.client_id)
    if CONTROL_KEY in ins.payload:
        return scaffold_fit(ctx, ins, seed)
    result = ctx.trainer.fit(ins.parameters, ctx.data.train, ins.config, seed)
    delta = result.parameters - ins.parameters
    return Reply(
        ctx.client_id, ins.round, ins.phase, delta, result.num_examples, dict(result.metrics)
    )


def evaluate(ctx: ClientContext, ins: Instruction) -> Reply:
    """Evaluate the global model on the client's local test split."""
    if ins.parameters is None:
        raise ClientError(ctx.client_id, ins.round, ins.phase, "evaluate needs the global model")
    test = ctx.data.test
    if len(test) == 0:
        return Reply(ctx.client_id, ins.round, ins.phase, num_examples=0)
    result = ctx.trainer.evaluate(ins.parameters, test)
    metrics = {"loss": result.loss, "accuracy": result.accuracy}
    return Reply(ctx.client_id, ins.round, ins.phase, None, result.num_examples, metrics)


class ClientApp:
    """Dispatches each instruction to the handler of its phase.

    Built in: ``"fit"``, ``"evaluate"`` and the four phases of secure aggregation (which train
    with this app's ``"fit"`` handler, so a replacement fit composes with it).

    Parameters
    ----------
    handlers
        Extra phases, or replacements for the built-in ones.
    """

    def __init__(self, handlers: Mapping[str, Handler] | None = None) -> None:
        # imported here: fedloom.secagg's server half imports fedloom.strategy, which imports
        # this package
        from fedloom.secagg._client import secagg_handlers

        self._handlers: dict[str, Handler] = {"fit": fit, "evaluate": evaluate}
        self._handlers.update(secagg_handlers(self._train))
        self._handlers.update(handlers or {})

    def _train(self, ctx: ClientContext, ins: Instruction) -> Reply:
        """This app's own fit handler, for protocols that train inside another phase."""
        return self._handlers["fit"](ctx, ins)

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases this client can handle."""
        return tuple(self._handlers)

    def handle(self, ctx: ClientContext, ins: Instruction) -> Reply:
        """Run the handler of ``ins.phase``; failures come out as :class:`ClientError`."""
        handler = self._handlers.get(ins.phase)
        if handler is None:
            raise ClientError(ctx.client_id, ins.round, ins.phase, "no handler for this phase")
        try:
            return handler(ctx, ins)
        except ClientError:
            raise
        except Exception as exc:  # any failure in user code is reported with where it happened
            reason = f"{type(exc).__name__}: {exc}"
            raise ClientError(ctx.client_id, ins.round, ins.phase, reason) from exc
