"""The server's side of deployment: a fleet whose clients are remote processes.

:class:`GrpcFleet` is a :class:`~fedloom.server.Fleet` like the in-process one, so the round
loop does not change. The gRPC service (:mod:`fedloom.transport._service`) calls
:meth:`GrpcFleet.join`, :meth:`~GrpcFleet.pending`, :meth:`~GrpcFleet.push` and
:meth:`~GrpcFleet.heartbeat` from its event loop's thread (every call returns at once); the
round loop calls :meth:`~GrpcFleet.exchange` from its own. An instruction waits in its
client's slot until the client pulls it; a reply is accepted at most once, only from the client
it was addressed to, only for the instruction it names, and only while that instruction is
outstanding.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
import uuid
from collections import deque
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from fedloom.errors import ConfigError, WireError
from fedloom.messages import REFUSED, Instruction, Reply
from fedloom.transport._wire import Message

__all__ = ["OUTCOMES", "GrpcFleet", "Outstanding"]

OUTCOMES = ("done", "failed", "paused")
"""How a served run can end, as its clients are told."""

log = logging.getLogger("fedloom.transport")


@dataclass
class Outstanding:
    """An instruction sent to a client and not yet answered."""

    message_id: str
    instruction: Instruction


_UNKNOWN = "unknown client: join first"
_STALE = "answers no outstanding instruction (stale, replayed or misrouted)"

RETRY_SECONDS = 120.0
"""How long after answering a client may send its answer again (its acknowledgement lost)."""


@dataclass
class _Slot:
    last_seen: float
    pending: Outstanding | None = None
    answered: set[str] = field(default_factory=set)
    answered_at: float = -math.inf  # when it last answered (a lost acknowledgement is retried)
    listening: int = 0  # Pulls of this client open now: it is there, heartbeats or not
    told: bool = False  # a Pull has given it the run's outcome

    def alive(self, now: float, timeout: float) -> bool:
        return self.listening > 0 or now - self.last_seen < timeout


class GrpcFleet:
    """Remote clients that connected to this server and keep sending heartbeats.

    Parameters
    ----------
    run_id
        The run the clients join; a message for another run is refused.
    heartbeat_timeout
        A client silent for this long (no heartbeat, pull or push, and no Pull open) is taken
        for gone: it leaves :meth:`clients`, and a round stops waiting for it.
    """

    def __init__(self, run_id: str, *, heartbeat_timeout: float = 15.0) -> None:
        self.run_id = run_id
        self.heartbeat_timeout = heartbeat_timeout
        self._slots: dict[str, _Slot] = {}
        self._replies: deque[Reply] = deque()
        self._cond = threading.Condition()
        self._finished = False
        self.outcome = "done"
        self._dim = 0  # the model's size, from the last instruction that carried it
        self._listeners: list[Callable[[Collection[str] | None], None]] = []

    # ---------------------------------------------------------------- called by the service

    def join(self, client_id: str) -> None:
        """Register ``client_id`` (again, after a reconnect: its slot is kept)."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is None:
                self._slots[client_id] = _Slot(time.monotonic())
                log.info("client %s joined", client_id)
            else:
                slot.last_seen = time.monotonic()
            self._cond.notify_all()

    def heartbeat(self, client_id: str) -> bool:
        """Note that ``client_id`` is alive; False when it never joined."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is not None:
                slot.last_seen = time.monotonic()
            return slot is not None

    @property
    def finished(self) -> bool:
        return self._finished

    def pending(self, client_id: str) -> Outstanding | None:
        """The client's outstanding instruction, if it has one (it does not wait: the service
        waits for :meth:`on_post` to say there may be one)."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is None or self._finished:
                return None
            slot.last_seen = time.monotonic()
            return slot.pending

    @contextlib.contextmanager
    def listening(self, client_id: str) -> Iterator[None]:
        """While this is open, ``client_id`` waits in a Pull and counts as alive without
        heartbeats (a client that goes away ends its Pull, and so this)."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is not None:
                slot.listening += 1
        try:
            yield
        finally:
            with self._cond:
                if slot is not None:
                    slot.listening -= 1
                    slot.last_seen = time.monotonic()

    def on_post(self, listener: Callable[[Collection[str] | None], None]) -> None:
        """Call ``listener(client_ids)`` whenever instructions are posted for those clients,
        and ``listener(None)`` when the run ends; it is called from the round loop's thread."""
        self._listeners.append(listener)

    def _posted(self, client_ids: Collection[str] | None) -> None:
        for listener in self._listeners:
            listener(client_ids)

    def expects_reply(self, client_id: str) -> str | None:
        """Why a reply from ``client_id`` must be refused before any of its bytes is read, or
        None: the client must have joined and have an instruction outstanding, or have answered
        one in the last :data:`RETRY_SECONDS` (a retry after a lost acknowledgement). So only
        the clients a round waits for can hold a reply open."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is None:
                return _UNKNOWN
            if slot.pending is None and time.monotonic() - slot.answered_at > RETRY_SECONDS:
                return _STALE
            return None

    def admit(self, client_id: str, message_id: str, size: int) -> str | None:
        """Why a reply whose header names ``message_id`` and declares ``size`` bytes must be
        refused before its bytes are read, or None: the sender must have joined and be
        answering its outstanding instruction (or retrying its accepted answer), and a reply
        carries at most what its instruction can need (:meth:`reply_limit`)."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is None:
                return _UNKNOWN
            if message_id in slot.answered:
                return None  # a retry: acknowledged without its bytes mattering
            if self._finished:
                return f"the run is {'over' if self.outcome == 'done' else self.outcome}"
            pending = slot.pending
            if pending is None or pending.message_id != message_id:
                return _STALE
            limit = self.reply_limit(pending.instruction)
        if size > limit:
            return f"the reply declares {size} bytes; an answer to it needs at most {limit}"
        return None

    def reply_limit(self, ins: Instruction) -> int:
        """The most bytes a reply to ``ins`` can need: the model's values twice over in 64-bit
        words (an update and SCAFFOLD's control variate, or a masked input), plus 1 MiB and
        256 bytes per client for the protocols' payloads (secure aggregation's shares)."""
        dim = ins.parameters.shape[0] if ins.parameters is not None else self._dim
        return 16 * (dim + 1) + (1 << 20) + 256 * len(self._slots)

    def push(self, client_id: str, message: Message) -> tuple[bool, str]:
        """Accept a reply, or say why not: ``(accepted, reason)``."""
        header = message.header
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is None:
                return False, _UNKNOWN
            slot.last_seen = time.monotonic()
            if header.message_id in slot.answered:
                return True, "already accepted (a retry)"
            pending = slot.pending
            if self._finished:
                return False, f"the run is {'over' if self.outcome == 'done' else self.outcome}"
            if pending is None or pending.message_id != header.message_id:
                return False, _STALE
            ins = pending.instruction
            if header.round != ins.round or header.phase != ins.phase:
                return False, f"answers round {header.round} phase {header.phase!r}, " \
                              f"expected {ins.round} {ins.phase!r}"  # fmt: skip
            try:
                reply = message.reply(client_id)
            except WireError as exc:
                refusal = Reply(
                    client_id, ins.round, ins.phase, payload={REFUSED: str(exc).encode()}
                )
                self._settle(slot, header.message_id, refusal)  # the round hears why, at once
                return False, str(exc)
            problem = _vector_problem(reply, ins)
            if problem is not None:
                # answered, but unusable: the round records why, and the client is told
                self._settle(slot, header.message_id, reply)
                return False, problem
            self._settle(slot, header.message_id, reply)
            return True, ""

    def _settle(self, slot: _Slot, message_id: str, reply: Reply | None) -> None:
        """The outstanding instruction is answered (well or not): never ask again."""
        slot.pending = None
        slot.answered.add(message_id)
        slot.answered_at = time.monotonic()
        if reply is not None:
            self._replies.append(reply)
        self._cond.notify_all()

    # ---------------------------------------------------------------- the Fleet protocol

    def clients(self) -> Sequence[str]:
        now = time.monotonic()
        with self._cond:
            return sorted(
                cid for cid, s in self._slots.items() if s.alive(now, self.heartbeat_timeout)
            )

    def wait_for_clients(self, count: int, timeout: float | None) -> bool:
        """Block until ``count`` clients are connected; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while len(self.clients()) < count:
            if deadline is not None and time.monotonic() >= deadline:
                return False
            with self._cond:
                self._cond.wait(0.2)
        return True

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        """Post each instruction in its client's slot and yield replies as they are accepted,
        until every client answered, went silent, or ``timeout`` seconds passed."""
        waiting: dict[str, str] = {}
        with self._cond:
            for cid, ins in instructions.items():
                slot = self._slots.get(cid)
                if slot is None:
                    continue
                mid = uuid.uuid4().hex
                slot.pending = Outstanding(mid, ins)
                if ins.parameters is not None:  # later phases' replies are sized by the model
                    self._dim = max(self._dim, ins.parameters.shape[0])
                waiting[cid] = mid
            self._cond.notify_all()
        self._posted(list(waiting))
        deadline = None if timeout is None else time.monotonic() + timeout
        abandoned = False
        try:
            while waiting:
                reply = self._next_reply(waiting, deadline)
                if reply is None:
                    break
                yield reply
        except BaseException:  # the round stopped listening: an interrupted server, say
            abandoned = True
            raise
        finally:
            with self._cond:
                for cid, mid in waiting.items():
                    slot = self._slots.get(cid)
                    if slot is not None and slot.pending and slot.pending.message_id == mid:
                        slot.pending = None
                if waiting and not abandoned:
                    log.warning("no reply from %s in time", ", ".join(sorted(waiting)))

    def _next_reply(self, waiting: dict[str, str], deadline: float | None) -> Reply | None:
        with self._cond:
            while True:
                while self._replies:
                    reply = self._replies.popleft()
                    if waiting.pop(reply.client_id, None) is not None:
                        return reply
                now = time.monotonic()
                for cid in [
                    c for c in waiting if not self._slots[c].alive(now, self.heartbeat_timeout)
                ]:
                    log.warning("client %s timed out (no heartbeat)", cid)
                    del waiting[cid]
                if not waiting or (deadline is not None and now >= deadline):
                    return None
                self._cond.wait(0.5 if deadline is None else max(0.0, min(0.5, deadline - now)))

    def finish(self, outcome: str = "done") -> None:
        """Tell every client how the run ended: ``"done"`` (they exit), ``"failed"`` (they
        exit with an error), or ``"paused"`` (the server stops for now; they keep retrying, so
        that a resumed run finds them)."""
        if outcome not in OUTCOMES:
            raise ConfigError(f"outcome must be one of {', '.join(OUTCOMES)}, got {outcome!r}")
        with self._cond:
            self.outcome = outcome
            self._finished = True
            self._cond.notify_all()
        self._posted(None)

    def told(self, client_id: str) -> None:
        """A Pull has given ``client_id`` the run's outcome."""
        with self._cond:
            slot = self._slots.get(client_id)
            if slot is not None:
                slot.told = True
                self._cond.notify_all()

    def wait_told(self, timeout: float) -> bool:
        """After :meth:`finish`: wait up to ``timeout`` seconds until every client still alive
        has been given the outcome (so that none is left retrying a server that has gone);
        False if some were not."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                now = time.monotonic()
                untold = [c for c, s in self._slots.items()
                          if not s.told and s.alive(now, self.heartbeat_timeout)]  # fmt: skip
                if not untold or now >= deadline:
                    if untold:
                        log.info("%d client(s) did not hear that the run ended", len(untold))
                    return not untold
                self._cond.wait(min(0.5, deadline - now))

    def close(self) -> None:
        self.finish()


def _vector_problem(reply: Reply, ins: Instruction) -> str | None:
    """Why a reply's vector cannot answer ``ins``, checked before it reaches the round (which
    then records the same reason); a fit must carry an update and a positive example count."""
    vec = reply.vector
    if ins.phase == "fit" and vec is None:
        return "no update vector"
    if ins.phase == "fit" and reply.num_examples <= 0:
        return f"num_examples is {reply.num_examples}; it must be positive"
    if vec is None:
        return None
    if ins.parameters is not None and vec.shape != ins.parameters.shape:
        return f"the update has {vec.shape[0]} values, the model {ins.parameters.shape[0]}"
    if not np.isfinite(vec).all():
        return "the update contains NaN or Inf"
    return None
