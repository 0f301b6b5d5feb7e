"""The client runtime: turns instructions into replies, the same in simulation and deployment."""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence

from fedloom.client._context import ClientContext, Handler, Mod
from fedloom.client._mods import DEFAULT_MODS
from fedloom.client._trainer import client_seed
from fedloom.errors import ClientError
from fedloom.messages import Instruction, Reply

__all__ = ["ClientApp", "evaluate", "fit"]


def fit(ctx: ClientContext, ins: Instruction) -> Reply:
    """Train from the global model on local data; reply with the update (trained - global)."""
    if ins.parameters is None:
        raise ClientError(ctx.client_id, ins.round, ins.phase, "fit needs the global model")
    seed = client_seed(int(ins.config.get("seed", 0)), ins.round, ctx.client_id)
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
    """Dispatches each instruction to the handler of its phase, through the mods.

    Handlers answer ``"fit"`` and ``"evaluate"`` (and whatever you add); mods wrap them, the
    first outermost. The default mods are secure aggregation (which answers its four phases and
    trains through the next layer's ``"fit"``), local DP's accounting and SCAFFOLD's corrected
    training; each acts only when an instruction asks for it.

    Parameters
    ----------
    handlers
        Extra phases, or replacements for the built-in ones. A handler for a phase that a mod
        answers (``"secagg.keys"``, say) replaces the mod for that phase.
    mods
        The layers around the handlers, outermost first.
    """

    def __init__(
        self, handlers: Mapping[str, Handler] | None = None, *, mods: Sequence[Mod] = DEFAULT_MODS
    ) -> None:
        self._handlers: dict[str, Handler] = {"fit": fit, "evaluate": evaluate}
        self._handlers.update(handlers or {})
        self._mods = tuple(mods)
        call: Handler = self._dispatch
        for layer in reversed(self._mods):
            replaced = frozenset(layer.phases) & set(self._handlers)
            call = functools.partial(_through, layer, replaced, call)
        self._call = call
        extra = [p for m in self._mods for p in m.phases if p not in self._handlers]
        self._phases = tuple(dict.fromkeys([*self._handlers, *extra]))

    @property
    def phases(self) -> tuple[str, ...]:
        """The phases this client can handle."""
        return self._phases

    @property
    def mods(self) -> tuple[Mod, ...]:
        """The mods, outermost first."""
        return self._mods

    def handle(self, ctx: ClientContext, ins: Instruction) -> Reply:
        """Run ``ins`` through the mods to its phase's handler; failures come out as
        :class:`ClientError`."""
        if ins.phase not in self.phases:
            raise ClientError(ctx.client_id, ins.round, ins.phase, "no handler for this phase")
        try:
            return self._call(ctx, ins)
        except ClientError:
            raise
        except Exception as exc:  # any failure in user code is reported with where it happened
            reason = f"{type(exc).__name__}: {exc}"
            raise ClientError(ctx.client_id, ins.round, ins.phase, reason) from exc

    def _dispatch(self, ctx: ClientContext, ins: Instruction) -> Reply:
        handler = self._handlers.get(ins.phase)
        if handler is None:
            raise ClientError(ctx.client_id, ins.round, ins.phase, "no handler for this phase")
        return handler(ctx, ins)


def _through(
    layer: Mod, replaced: frozenset[str], call_next: Handler, ctx: ClientContext, ins: Instruction
) -> Reply:
    if ins.phase in replaced:  # the app has its own handler for a phase this mod answers
        return call_next(ctx, ins)
    return layer(ctx, ins, call_next)
