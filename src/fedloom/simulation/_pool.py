"""Simulated clients on worker processes: every core of the machine trains the round's cohort.

Each worker process builds its own population, trainer and client runtime once, from a
picklable *setup* (it never receives the driver's data), keeps one model, and trains the
clients it is handed one after another. The driver hands out the round's clients one at a time
to whichever worker is free (so a heavy client does not hold up a whole share), sends the global
model to each worker once per exchange, not once per client, and yields the replies in the
order of the instructions. Per-client state (SCAFFOLD's control variate, local DP's step count,
a secure aggregation key) stays with the driver and travels with each task, so any worker can
run any client and a worker's death loses only the clients it held.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import pickle
import signal
import socket
import subprocess
import sys
import traceback
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from multiprocessing.connection import Connection, wait
from typing import Any, Literal

from fedloom.client import ClientApp, ClientContext, Trainer
from fedloom.data import FederatedDataset
from fedloom.errors import ClientError, ConfigError, FedloomError
from fedloom.messages import Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy import NumberedClients

__all__ = [
    "ClientRunner",
    "Outcome",
    "RunnerSetup",
    "Task",
    "WorkerError",
    "WorkerLaunch",
    "WorkerPool",
]

log = logging.getLogger("fedloom.simulation")

RunnerSetup = Callable[[], tuple[FederatedDataset, Trainer, ClientApp]]
"""Builds, inside a worker, what its clients run on: the population, a trainer and the client
runtime. It must be picklable (a module-level function or a ``functools.partial`` of one)."""

_PREFETCH = 2  # batches outstanding per worker: one running, one waiting in its pipe
_MAX_BATCH = 64  # clients per message: fewer messages, but a dead worker loses a batch
_BATCHES_PER_WORKER = 4  # a round is cut into at least this many batches per worker
_STOP_WAIT_S = 5.0
_WORKER_ENTRY = (
    "import sys; from multiprocessing.connection import Connection; "
    "from fedloom.simulation._pool import _worker_main; "
    "_worker_main(Connection(int(sys.argv[1])), sys.argv[2])"
)


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


def _worker_main(conn: Connection, preload: str) -> None:
    """A worker process: import ``preload`` (comma-separated modules), build the runner from the
    setup it is sent, then run tasks until told to stop (or until the driver goes away)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the driver handles Ctrl-C and stops us
    for module in filter(None, preload.split(",")):
        with contextlib.suppress(ImportError):
            importlib.import_module(module)
    try:
        path, setup_blob = conn.recv()
    except (EOFError, OSError):
        return  # the driver went away before sending a setup
    sys.path[:] = [p for p in path if p not in sys.path] + sys.path
    try:
        runner = ClientRunner(pickle.loads(setup_blob))
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    torch: Any = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)  # one core per worker; the pool is the parallelism
    conn.send(("ready", None))
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):
            return
        kind = message[0]
        if kind == "stop":
            os._exit(0)  # nothing to save; an interpreter's teardown with torch takes 0.5 s
        if kind == "load":
            runner.load(message[1], message[2])
        else:
            token = message[1]
            conn.send(("done", (token, [runner.run(task, token) for task in message[2]])))


@dataclass
class _Worker:
    process: subprocess.Popen[bytes]
    conn: Connection
    outstanding: list[list[str]]  # batches sent and not yet answered, oldest first
    loaded: int = -1  # the exchange whose global model it holds
    ready: bool = False


class WorkerPool:
    """A fleet whose clients run on ``workers`` processes of this machine.

    Every strategy, round mechanism and client mod works as with
    :class:`~fedloom.simulation.InProcessFleet`, and a run gives the same model: each client's
    training depends only on its instruction, data and seed, and replies reach the round in the
    order of the instructions, whichever worker finished first, so the aggregate is summed in
    the same order. The ``timeout`` of :meth:`exchange` is not enforced.

    A worker that dies mid-round costs the round the clients it held (they count as dropped,
    with a warning) and is replaced; if workers keep dying (``max_restarts`` in all), the run
    stops with a :class:`WorkerError`.

    Parameters
    ----------
    setup
        Builds a worker's population, trainer and client runtime (see :data:`RunnerSetup`).
    num_clients
        The size of the population; clients are named ``"0"`` to ``str(num_clients - 1)``.
    workers
        How many processes, at least 1; or a :class:`WorkerLaunch` whose processes were
        started earlier (so that their imports overlap the driver's own set-up).
    on_error
        As for :class:`~fedloom.simulation.InProcessFleet`.
    max_restarts
        Replacements for dead workers over the pool's life; ``None``: twice ``workers``.

    Each worker is a fresh interpreter (``python -c``, running ``_worker_main``) given the
    driver's ``sys.path`` and the setup, pickled with ``cloudpickle`` so that functions of the
    user's own script travel by value.

    Raises
    ------
    ConfigError
        If ``workers`` < 1, a setting is unknown, or ``setup`` cannot be pickled.
    """

    def __init__(
        self,
        setup: RunnerSetup,
        num_clients: int,
        workers: int | WorkerLaunch,
        *,
        on_error: Literal["raise", "drop"] = "raise",
        max_restarts: int | None = None,
    ) -> None:
        launch = workers if isinstance(workers, WorkerLaunch) else WorkerLaunch(workers)
        if on_error not in ("raise", "drop"):
            raise ConfigError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        import cloudpickle  # only runs with workers pay for its import

        try:
            self._blob = cloudpickle.dumps(setup)
        except (pickle.PicklingError, TypeError, AttributeError) as exc:
            launch.close()
            raise ConfigError(
                f"worker processes rebuild the clients from a picklable setup, and this one is "
                f"not ({exc}); build datasets and models from module-level functions, not "
                "lambdas or local functions, or run with workers=1"
            ) from None
        self._ids = NumberedClients(num_clients)
        self._on_error = on_error
        self._preload = launch.preload
        self._restarts_left = 2 * launch.count if max_restarts is None else max_restarts
        self._state: dict[str, dict[str, Any]] = {}
        self._token = 0
        self._workers = [self._setup(w) for w in launch.take()]

    def clients(self) -> Sequence[str]:
        return self._ids

    @property
    def workers(self) -> int:
        """How many worker processes the pool keeps."""
        return len(self._workers)

    def pids(self) -> list[int]:
        """The process ids of the workers now (for tests and monitoring)."""
        return [w.process.pid for w in self._workers]

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
        if not self._workers:
            raise WorkerError("this worker pool is closed")
        self._drain()
        self._token += 1
        shared = next((i.parameters for i in instructions.values() if i.parameters is not None),
                      None)  # fmt: skip
        size = max(1, min(_MAX_BATCH, len(order) // (_BATCHES_PER_WORKER * len(self._workers))))
        pending = iter([order[i : i + size] for i in range(0, len(order), size)])
        done: dict[str, Reply | None] = {}
        for client_id in order:
            while client_id not in done:
                self._feed(pending, instructions, shared, done)
                self._collect(done, instructions)
            reply = done.pop(client_id)
            if reply is not None:
                yield reply

    def _drain(self) -> None:
        """Wait out tasks of an exchange whose caller stopped early, so that no worker is
        still sending while it is sent the next global model."""
        while any(w.outstanding for w in self._workers):
            self._collect({}, {})

    def _feed(
        self,
        pending: Iterator[list[str]],
        instructions: Mapping[str, Instruction],
        shared: Vector | None,
        done: dict[str, Reply | None],
    ) -> None:
        """Give every worker with room its next batches of clients, the global model first."""
        for index in range(len(self._workers)):
            worker = self._workers[index]
            while len(worker.outstanding) < _PREFETCH:
                batch = next(pending, None)
                if batch is None:
                    return
                worker.outstanding.append(batch)
                try:
                    self._send(worker, batch, instructions, shared)
                except OSError:  # it died since its last message
                    self._replace(worker, done, instructions)
                    break

    def _send(
        self,
        worker: _Worker,
        batch: list[str],
        instructions: Mapping[str, Instruction],
        shared: Vector | None,
    ) -> None:
        tasks = []
        for client_id in batch:
            ins = instructions[client_id]
            is_shared = shared is not None and ins.parameters is shared
            if is_shared and worker.loaded != self._token:
                worker.conn.send(("load", self._token, shared))
                worker.loaded = self._token
            stripped = replace(ins, parameters=None) if is_shared else ins
            tasks.append(Task(client_id, stripped, is_shared, self._state.get(client_id, {})))
        worker.conn.send(("tasks", self._token, tasks))

    def _collect(
        self, done: dict[str, Reply | None], instructions: Mapping[str, Instruction]
    ) -> None:
        """Wait for the next message from any worker; a closed connection is a dead worker."""
        by_conn: dict[object, _Worker] = {w.conn: w for w in self._workers}
        for conn in wait([w.conn for w in self._workers]):
            worker = by_conn[conn]
            try:
                kind, body = worker.conn.recv()
            except (EOFError, OSError):
                self._replace(worker, done, instructions)
                continue
            self._receive(worker, kind, body, done, instructions)

    def _receive(
        self,
        worker: _Worker,
        kind: str,
        body: Any,
        done: dict[str, Reply | None],
        instructions: Mapping[str, Instruction],
    ) -> None:
        if kind == "failed":
            self.close()
            raise WorkerError(f"a worker could not set up its clients: {body}")
        if kind == "ready":
            worker.ready = True
            return
        token, outcomes = body
        worker.outstanding.pop(0)
        if token != self._token:
            return  # left over from an exchange whose caller stopped listening
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
            error = ClientError(outcome.client_id, ins.round, ins.phase, outcome.error)
            if self._on_error == "raise":
                self.close()
                raise error
            log.warning("%s; treating the client as dropped", error)
            done[outcome.client_id] = None

    def _replace(
        self,
        worker: _Worker,
        done: dict[str, Reply | None],
        instructions: Mapping[str, Instruction],
    ) -> None:
        """A worker died: its clients count as dropped, and a new one takes its place."""
        lost = [client_id for batch in worker.outstanding for client_id in batch]
        if lost:
            ins = instructions.get(lost[0])
            log.warning(
                "a worker process (pid %s) died in round %s; its client(s) %s count as dropped",
                worker.process.pid, ins.round if ins else "?", ", ".join(lost),
            )  # fmt: skip
        for client_id in lost:
            done[client_id] = None
        worker.conn.close()
        _reap(worker.process)
        index = self._workers.index(worker)
        if self._restarts_left <= 0:
            self.close()
            raise WorkerError(
                "worker processes keep dying (out of memory, or killed); the run stops here. "
                "Run with fewer --workers, or with 1 to see the error in this process"
            )
        self._restarts_left -= 1
        self._workers[index] = self._start()

    def _setup(self, worker: _Worker) -> _Worker:
        worker.conn.send((list(sys.path), self._blob))
        return worker

    def _start(self) -> _Worker:
        return self._setup(_launch(self._preload))

    def close(self) -> None:
        workers, self._workers = self._workers, []
        for worker in workers:
            with contextlib.suppress(OSError, ValueError):
                worker.conn.send(("stop",))
        for worker in workers:
            _reap(worker.process)
            worker.conn.close()
        self._state.clear()


class WorkerLaunch:
    """Worker interpreters started ahead of the pool that will use them: each imports
    ``preload`` (``"torch"``, say) and then waits for its setup, so that its start-up overlaps
    whatever the driver does before the first round.

    Raises
    ------
    ConfigError
        If ``count`` < 1.
    """

    def __init__(self, count: int, preload: Sequence[str] = ()) -> None:
        if count < 1:
            raise ConfigError(f"--workers must be at least 1 (or auto), got {count}")
        self.count = count
        self.preload = tuple(preload)
        self._workers: list[_Worker] | None = [_launch(self.preload) for _ in range(count)]

    def take(self) -> list[_Worker]:
        """The started workers, handed over once to a pool."""
        if self._workers is None:
            raise WorkerError("these worker processes were already handed to a pool")
        workers, self._workers = self._workers, None
        return workers

    def close(self) -> None:
        """Stop the workers if no pool took them."""
        workers, self._workers = self._workers or [], None
        for worker in workers:
            worker.conn.close()  # the worker sees the end of its input and exits
            _reap(worker.process)


def _launch(preload: tuple[str, ...]) -> _Worker:
    """A fresh interpreter running ``_worker_main`` on one end of a socket pair. Not
    ``multiprocessing``'s spawn: that re-runs the user's main script in every worker."""
    mine, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER_ENTRY, str(theirs.fileno()), ",".join(preload)],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    return _Worker(process, Connection(mine.detach()), [])


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_WAIT_S)
