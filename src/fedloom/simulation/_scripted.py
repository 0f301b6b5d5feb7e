"""A scripted fleet: the in-memory double for tests of anything that talks to a fleet."""

from __future__ import annotations

from collections.abc import Callable, Collection, Iterator, Mapping, Sequence

from fedloom.errors import ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.server import Fleet

__all__ = ["Responder", "ScriptedFleet", "empty_reply"]

Responder = Callable[[str, Instruction], "Reply | None"]
"""A scripted client: ``(client id, instruction) -> reply``, or ``None`` for no reply."""


def empty_reply(client_id: str, ins: Instruction) -> Reply:
    """A reply of one example and nothing else, to the instruction's round and phase."""
    return Reply(client_id, ins.round, ins.phase, None, 1)


class ScriptedFleet:
    """A fleet whose clients answer with a function, or that stands in front of another fleet,
    and that can drop and rewrite instructions and records everything.

    Replies are produced lazily, in the order of the instructions, as the in-process fleet does.

    Parameters
    ----------
    clients
        The client ids (with ``respond``); with ``inner``, that fleet's.
    respond
        How each client answers (default: :func:`empty_reply`).
    inner
        A fleet to pass the instructions on to instead of ``respond``.
    drops
        Phase -> clients that get no instruction in that phase (they do not answer).
    rewrite
        ``(client id, instruction) -> instruction``: what the client is sent instead (a lying
        or tampering server, say).

    Attributes
    ----------
    sent
        Each exchange's delivered instructions, in order.
    timeouts
        Each exchange's timeout.
    received
        Phase -> the replies that came back.
    produced
        How many replies were produced so far.
    closed
        Whether :meth:`close` was called.
    """

    def __init__(
        self,
        clients: Sequence[str] = (),
        respond: Responder = empty_reply,
        *,
        inner: Fleet | None = None,
        drops: Mapping[str, Collection[str]] | None = None,
        rewrite: Callable[[str, Instruction], Instruction] | None = None,
    ) -> None:
        if inner is not None and clients:
            raise ConfigError("give a ScriptedFleet its clients or an inner fleet, not both")
        self._ids = tuple(clients)
        self._respond = respond
        self._inner = inner
        self._drops = {phase: frozenset(ids) for phase, ids in (drops or {}).items()}
        self._rewrite = rewrite
        self.sent: list[dict[str, Instruction]] = []
        self.timeouts: list[float | None] = []
        self.received: dict[str, list[Reply]] = {}
        self.produced = 0
        self.closed = False

    @property
    def instructions(self) -> list[tuple[str, Instruction]]:
        """Every delivered instruction with its client, in order."""
        return [(c, ins) for batch in self.sent for c, ins in batch.items()]

    def clients(self) -> Sequence[str]:
        return self._inner.clients() if self._inner is not None else self._ids

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        kept = {
            c: ins for c, ins in instructions.items() if c not in self._drops.get(ins.phase, ())
        }
        if self._rewrite is not None:
            kept = {c: self._rewrite(c, ins) for c, ins in kept.items()}
        self.sent.append(kept)
        self.timeouts.append(timeout)
        return self._replies(kept, timeout)

    def _replies(self, kept: dict[str, Instruction], timeout: float | None) -> Iterator[Reply]:
        if self._inner is not None:
            replies: Iterator[Reply | None] = iter(self._inner.exchange(kept, timeout))
        else:
            replies = (self._respond(c, ins) for c, ins in kept.items())
        for reply in replies:
            if reply is None:
                continue
            self.produced += 1
            self.received.setdefault(reply.phase, []).append(reply)
            yield reply

    def close(self) -> None:
        self.closed = True
        if self._inner is not None:
            self._inner.close()
