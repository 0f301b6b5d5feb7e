"""What a client's handlers and mods see: its context, and the shapes of a handler and a mod."""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from dataclasses import dataclass, field
from typing import Any, Protocol

from fedloom.client._trainer import Trainer
from fedloom.data import ClientData
from fedloom.messages import Instruction, Reply

__all__ = ["ClientContext", "Handler", "Mod", "mod"]


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


class Mod(Protocol):
    """A layer around a client's handlers: ``mod(ctx, ins, call_next) -> reply``.

    A mod may answer an instruction itself, change it before ``call_next``, or change the reply
    after; ``phases`` names the phases it answers that no handler does (secure aggregation's),
    which the client announces when it joins.
    """

    @property
    def phases(self) -> tuple[str, ...]: ...

    def __call__(self, ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply: ...


@dataclass(frozen=True)
class _FunctionMod:
    run: Callable[[ClientContext, Instruction, Handler], Reply]
    phases: tuple[str, ...] = ()

    def __call__(self, ctx: ClientContext, ins: Instruction, call_next: Handler) -> Reply:
        return self.run(ctx, ins, call_next)

    def __repr__(self) -> str:
        return f"mod({getattr(self.run, '__name__', self.run)!r})"


def mod(
    *phases: str,
) -> Callable[[Callable[[ClientContext, Instruction, Handler], Reply]], Mod]:
    """Make a function ``(ctx, ins, call_next) -> reply`` a :class:`Mod` that also answers
    ``phases``."""

    def wrap(run: Callable[[ClientContext, Instruction, Handler], Reply]) -> Mod:
        return _FunctionMod(run, tuple(phases))

    return wrap
