"""What every kind of worker shares: the client runner a worker holds, the tasks and outcomes
it exchanges with the driver, and the driver's dispatch loop over workers of any kind.

The driver hands out a round's clients in batches to whichever worker has room (so a heavy
client does not hold up a whole share), sends the global model to each worker once per
exchange, not once per client, and yields the replies in the order of the instructions. Per-
client state (SCAFFOLD's control variate, local DP's step count, a secure aggregation key) stays
with the driver and travels with each task, so any worker can run any client and a worker's
death loses only the clients it held.
"""

from __future__ import annotations

import logging
import pickle
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

from fedloom.client import ClientApp, ClientContext, Trainer
from fedloom.data import FederatedDataset
from fedloom.errors import ClientError, ConfigError, FedloomError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy import NumberedClients

__all__ = [
    "ClientRunner",
    "ClientStates",
    "Dispatcher",
    "Event",
    "Outcome",
    "RunnerSetup",
    "Slot",
    "Task",
    "WorkerError",
    "WorkerLost",
]

log = logging.getLogger("fedloom.simulation")

RunnerSetup = Callable[[], tuple[FederatedDataset, Trainer, ClientApp]]
"""Builds, inside a worker, what its clients run on: the population, a trainer and the client
runtime. It must be picklable (a module-level function or a ``functools.partial`` of one)."""

_PREFETCH = 2  # batches outstanding per worker: one running, one waiting to start
_MAX_BATCH = 64  # clients per message: fewer messages, but a dead worker loses a batch
_BATCHES_PER_WORKER = 4  # a round is cut into at least this many batches per worker


class WorkerError(FedloomError):
    """The worker processes could not be kept running."""


@dataclass(frozen=True)
class Task:
    """One client's instruction for a worker. With ``shared`` the instruction's parameters
    were left out and are the exchange's global model, which the worker already holds."""

    client_id: str
    instruction: Instruction
    shared: bool
    state: dict[str, Any]


@dataclass(frozen=True)
class Outcome:
    """What a worker sends back for one task: the reply (``None`` when the client failed),
    the client's state after it, and the failure in words (``crashed`` when it was not a
    :class:`~fedloom.errors.ClientError`, i.e. a bug in a handler or trainer)."""

    client_id: str
    reply: Reply | None
    state: dict[str, Any]
    error: str | None = None
    crashed: bool = False


class ClientRunner:
    """Runs one population's clients on one trainer: what each worker (process or Ray actor)
    holds. It keeps the global model of the current exchange and nothing about any client."""

    def __init__(self, setup: RunnerSetup) -> None:
        self._dataset, self._trainer, self._app = setup()
        self._shared: tuple[int, Vector] | None = None

    @classmethod
    def in_worker(cls, path: list[str], setup_blob: bytes) -> ClientRunner:
        """Build the runner inside a worker: the driver's ``sys.path`` first (so the user's
        modules import), the pickled setup run, and one torch thread (the workers are the
        parallelism). Whatever the setup raises, this raises."""
        sys.path[:] = [p for p in path if p not in sys.path] + sys.path
        runner = cls(pickle.loads(setup_blob))
        torch: Any = sys.modules.get("torch")
        if torch is not None:
            torch.set_num_threads(1)
        return runner

    def load(self, token: int, parameters: Vector) -> None:
        """Hold ``parameters`` as the global model of exchange ``token``."""
        self._shared = (token, parameters)

    def run(self, task: Task, token: int) -> Outcome:
        """Run one client's instruction; failures come back in the outcome, never raised."""
        ins = task.instruction
        if task.shared:
            if self._shared is None or self._shared[0] != token:
                raise RuntimeError(f"exchange {token}'s global model was never loaded")
            ins = replace(ins, parameters=self._shared[1])
        state = dict(task.state)
        try:
            data = self._dataset.client(int(task.client_id))
            ctx = ClientContext(task.client_id, data, self._trainer, state)
            reply = self._app.handle(ctx, ins)
        except ClientError as exc:
            return Outcome(task.client_id, None, state, exc.reason)
        except Exception as exc:  # a bug in user code: reported to the driver with its trace
            trace = "".join(traceback.format_exception(exc)).rstrip()
            return Outcome(task.client_id, None, state, trace, crashed=True)
        return Outcome(task.client_id, reply, state)

    def run_batch(self, tasks: list[Task], token: int) -> tuple[int, list[Outcome]]:
        """Run a batch in order: the body of a ``"done"`` event."""
        return token, [self.run(task, token) for task in tasks]


class WorkerLost(Exception):
    """Raised by a dispatcher's transport when a worker is found dead while being sent work."""


@dataclass
class Slot:
    """The driver's record of one worker: its handle (a process, an actor), the batches it
    holds, oldest first, and the exchange whose global model it has."""

    handle: Any
    outstanding: list[list[str]] = field(default_factory=list)
    loaded: int = -1
    refs: list[Any] = field(default_factory=list)


Event = tuple[Slot, Literal["done", "lost", "failed"], Any]
"""What a worker did: answered its oldest batch (``(token, outcomes)``), died, or could not
set up (the reason)."""


class ClientStates:
    """The simulated clients' own state (``ClientContext.state``, by client id), which a fleet
    keeps in the driver between rounds; a kept run commits it and a resumed one restores it."""

    _state: dict[str, dict[str, Any]]

    def client_states(self) -> dict[str, dict[str, Any]]:
        """Each client's own state (``ClientContext.state``) as it stands, by client id; what a
        kept run commits after every round."""
        return self._state

    def restore_client_states(self, states: Mapping[str, Mapping[str, Any]]) -> None:
        """Start from ``states`` (those a resumed run committed) before the first round."""
        self._state = {client_id: dict(state) for client_id, state in states.items()}


class Dispatcher(ClientStates):
    """The driver's side of a fleet of workers; a transport subclass moves the messages.

    Subclasses set up their workers' :class:`Slot` list in ``self._slots`` and implement
    :meth:`_submit`, :meth:`_events`, :meth:`_respawn`, :meth:`_discard`, :meth:`_describe`
    and :meth:`_stop`.
    """

    _what = "worker"

    def __init__(self, num_clients: int, on_error: Literal["raise", "drop"], restarts: int) -> None:
        if on_error not in ("raise", "drop"):
            raise ConfigError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        self._ids = NumberedClients(num_clients)
        self._on_error = on_error
        self._restarts_left = restarts
        self._state: dict[str, dict[str, Any]] = {}
        self._token = 0
        self._slots: list[Slot] = []

    # -- the transport's part
    def _submit(self, slot: Slot, token: int, tasks: list[Task], model: Vector | None) -> None:
        """Send ``tasks`` (after ``model``, the global model, when given); raise
        :class:`WorkerLost` if the worker is gone."""
        raise NotImplementedError

    def _events(self) -> list[Event]:
        """Block until at least one worker has something to say."""
        raise NotImplementedError

    def _respawn(self) -> Slot:
        """A new worker in place of a dead one."""
        raise NotImplementedError

    def _discard(self, slot: Slot) -> None:
        """Release what is left of a dead worker."""
        raise NotImplementedError

    def _describe(self, slot: Slot) -> str:
        raise NotImplementedError

    def _stop(self, slots: list[Slot]) -> None:
        raise NotImplementedError

    # -- the fleet
    def clients(self) -> Sequence[str]:
        return self._ids

    @property
    def workers(self) -> int:
        """How many workers the fleet keeps."""
        return len(self._slots)

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        order = list(instructions)
        for client_id in order:
            if client_id not in self._ids:
                ins = instructions[client_id]
                raise ClientError(
                    client_id, ins.round, ins.phase, "no such client in this simulation"
                )
        if not self._slots:
            raise WorkerError(f"this fleet's {self._what}s are closed")
        self._drain()
        self._token += 1
        shared = next((i.parameters for i in instructions.values() if i.parameters is not None),
                      None)  # fmt: skip
        size = max(1, min(_MAX_BATCH, len(order) // (_BATCHES_PER_WORKER * len(self._slots))))
        pending = iter([order[i : i + size] for i in range(0, len(order), size)])
        done: dict[str, Reply | None] = {}
        for client_id in order:
            while client_id not in done:
                self._feed(pending, instructions, shared, done)
                self._collect(done, instructions)
            reply = done.pop(client_id)
            if reply is not None:
                yield reply

    def close(self) -> None:
        slots, self._slots = self._slots, []
        self._stop(slots)
        self._state.clear()

    def _drain(self) -> None:
        """Wait out the batches of an exchange whose caller stopped early, so that no worker
        is still answering while it is sent the next global model."""
        while any(s.outstanding for s in self._slots):
            self._collect({}, {})

    def _feed(
        self,
        pending: Iterator[list[str]],
        instructions: Mapping[str, Instruction],
        shared: Vector | None,
        done: dict[str, Reply | None],
    ) -> None:
        """Give every worker with room its next batches of clients, the global model first."""
        for index in range(len(self._slots)):
            slot = self._slots[index]
            while len(slot.outstanding) < _PREFETCH:
                batch = next(pending, None)
                if batch is None:
                    return
                slot.outstanding.append(batch)
                tasks = []
                for client_id in batch:
                    ins = instructions[client_id]
                    is_shared = shared is not None and ins.parameters is shared
                    stripped = replace(ins, parameters=None) if is_shared else ins
                    state = self._state.get(client_id, {})
                    tasks.append(Task(client_id, stripped, is_shared, state))
                model = shared if slot.loaded != self._token else None
                try:
                    self._submit(slot, self._token, tasks, model)
                except WorkerLost:
                    self._replace(slot, done, instructions)
                    break
                slot.loaded = self._token

    def _collect(
        self, done: dict[str, Reply | None], instructions: Mapping[str, Instruction]
    ) -> None:
        for slot, kind, body in self._events():
            if slot not in self._slots:
                continue  # replaced while handling an earlier event of this batch
            if kind == "lost":
                self._replace(slot, done, instructions)
            elif kind == "failed":
                self.close()
                raise WorkerError(f"a {self._what} could not set up its clients: {body}")
            elif kind == "done":
                token, outcomes = body
                slot.outstanding.pop(0)
                if token == self._token:  # else left over from an abandoned exchange
                    self._settle(outcomes, instructions, done)

    def _settle(
        self,
        outcomes: list[Outcome],
        instructions: Mapping[str, Instruction],
        done: dict[str, Reply | None],
    ) -> None:
        for outcome in outcomes:
            self._state[outcome.client_id] = outcome.state
            if outcome.error is None:
                done[outcome.client_id] = outcome.reply
                continue
            ins = instructions[outcome.client_id]
            reason = outcome.error
            if outcome.crashed:
                reason = f"making the client or running it raised, in the worker:\n{reason}"
            error = ClientError(outcome.client_id, ins.round, ins.phase, reason)
            if self._on_error == "raise" or outcome.crashed:  # a bug stops the run, as in-process
                self.close()
                raise error
            log.warning("%s; treating the client as dropped", error)
            done[outcome.client_id] = None

    def _replace(
        self, slot: Slot, done: dict[str, Reply | None], instructions: Mapping[str, Instruction]
    ) -> None:
        """A worker died: its clients count as dropped, and a new one takes its place."""
        lost = [client_id for batch in slot.outstanding for client_id in batch]
        if lost:
            ins = instructions.get(lost[0])
            log.warning(
                "a %s (%s) died in round %s; its client(s) %s count as dropped",
                self._what, self._describe(slot), ins.round if ins else "?", ", ".join(lost),
            )  # fmt: skip
        for client_id in lost:
            done[client_id] = None
        self._discard(slot)
        index = self._slots.index(slot)
        if self._restarts_left <= 0:
            self.close()
            raise WorkerError(
                f"{self._what}s keep dying (out of memory, or killed); the run stops here. "
                "Run with fewer --workers, or with 1 to see the error in this process"
            )
        self._restarts_left -= 1
        self._slots[index] = self._respawn()
