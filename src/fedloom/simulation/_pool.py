"""Simulated clients on worker processes: every core of the machine trains the round's cohort.

Each worker is a fresh interpreter that builds its own population, trainer and client runtime
once, from a picklable *setup* (it never receives the driver's data), keeps one model, and
trains the batches of clients it is handed one after another; the dispatch loop is
:class:`~fedloom.simulation._runner.Dispatcher`'s.

A batch's update vectors do not travel in its pickled message: the worker writes them, with one
``writev``, to a file in ``/dev/shm`` (memory, not disk) and the driver reads them with one
``readv`` straight into their arrays, then deletes the file. Through the socket and pickle the
same megabytes were copied four times and cost the driver more than its own aggregation. Where
there is no ``/dev/shm``, or it is full, they travel in the message.
"""

from __future__ import annotations

import contextlib
import importlib
import itertools
import os
import pickle
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator, Sequence
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any, Literal

import numpy as np

from fedloom.errors import ConfigError
from fedloom.messages import Reply
from fedloom.params import Vector
from fedloom.simulation._runner import (
    ClientRunner,
    Dispatcher,
    Event,
    Outcome,
    RunnerSetup,
    Slot,
    Task,
    WorkerError,
    WorkerLost,
)

__all__ = ["WorkerLaunch", "WorkerPool"]

_STOP_WAIT_S = 5.0
_SHM = Path("/dev/shm")
_OUT_OF_BAND_BYTES = 1 << 16  # a batch with fewer vector bytes sends them in its message
_IOV_MAX = 1024  # the most buffers one writev or readv takes (POSIX's minimum)
_WORKER_ENTRY = (
    "import sys; from multiprocessing.connection import Connection; "
    "from fedloom.simulation._pool import _worker_main; "
    "_worker_main(Connection(int(sys.argv[1])), sys.argv[2])"
)


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
    try:
        runner = ClientRunner.in_worker(path, setup_blob)
    except Exception as exc:
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    batches = itertools.count()
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
            conn.send(_done(*runner.run_batch(message[2], message[1]), batches))


def _vectors_file(driver: int, worker: int, batch: int | str) -> Path:
    return _SHM / f"fedloom-{driver}-{worker}-{batch}"


def _done(token: int, outcomes: list[Outcome], batches: Iterator[int]) -> tuple[str, Any]:
    """In a worker: the ``"done"`` message for a batch, its update vectors written to a file
    in ``/dev/shm`` (``"done-oob"``: the file and each vector's place) when they are many."""
    lifted = [(i, o.reply.vector) for i, o in enumerate(outcomes)
              if o.reply is not None and o.reply.vector is not None]  # fmt: skip
    size = sum(v.nbytes for _, v in lifted)
    if size < _OUT_OF_BAND_BYTES or len(lifted) > _IOV_MAX or not _SHM.is_dir():
        return "done", (token, outcomes)
    path = _vectors_file(os.getppid(), os.getpid(), next(batches))
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            written = os.writev(fd, [np.ascontiguousarray(v).data for _, v in lifted])
        finally:
            os.close(fd)
        if written != size:
            raise OSError(f"wrote {written} of {size} bytes")
    except OSError:  # full, or not writable: the message carries them
        path.unlink(missing_ok=True)
        return "done", (token, outcomes)
    slim = list(outcomes)
    shapes = []
    for i, vector in lifted:
        slim[i] = _with_vector(outcomes[i], None)
        shapes.append((i, vector.dtype.str, vector.shape))
    return "done-oob", (token, slim, str(path), shapes)


def _landed(body: tuple[int, list[Outcome], str, list[Any]]) -> tuple[int, list[Outcome]]:
    """In the driver: a ``"done-oob"`` batch with its vectors read back from their file (and
    the file deleted)."""
    token, outcomes, path, shapes = body
    arrays = [np.empty(shape, dtype=np.dtype(dtype)) for _, dtype, shape in shapes]
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            read = os.readv(fd, [a.data for a in arrays])
        finally:
            os.close(fd)
    finally:
        with contextlib.suppress(OSError):
            os.unlink(path)
    if read != sum(a.nbytes for a in arrays):
        raise WorkerError(f"a worker's update vectors in {path} were cut short")
    landed = list(outcomes)
    for (i, _, _), array in zip(shapes, arrays, strict=True):
        landed[i] = _with_vector(outcomes[i], array)
    return token, landed


def _with_vector(outcome: Outcome, vector: Vector | None) -> Outcome:
    """``outcome`` with its reply's vector replaced (built directly: ``dataclasses.replace``
    costs as much as the copy it saves)."""
    r = outcome.reply
    assert r is not None
    reply = Reply(r.client_id, r.round, r.phase, vector, r.num_examples, r.metrics, r.payload)
    return Outcome(outcome.client_id, reply, outcome.state, outcome.error, outcome.crashed)


class _Process:
    """A worker process and the driver's end of its socket."""

    def __init__(self, process: subprocess.Popen[bytes], conn: Connection) -> None:
        self.process = process
        self.conn = conn


class WorkerPool(Dispatcher):
    """A fleet whose clients run on ``workers`` processes of this machine.

    Every strategy, round mechanism and client mod works as with
    :class:`~fedloom.simulation.InProcessFleet`, and a run gives the same model: each client's
    training depends only on its instruction, data and seed, and replies reach the round in the
    order of the instructions, whichever worker finished first, so the aggregate is summed in
    the same order. The ``timeout`` of :meth:`exchange` is not enforced.

    A worker that dies mid-round costs the round the clients it held (they count as dropped,
    with a warning) and is replaced; if workers keep dying (``max_restarts`` in all), the run
    stops with a :class:`~fedloom.simulation.WorkerError`.

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

    _what = "worker process"

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
        try:
            super().__init__(
                num_clients, on_error, 2 * launch.count if max_restarts is None else max_restarts
            )
            self._blob = pickled(setup)
        except BaseException:
            launch.close()
            raise
        self._preload = launch.preload
        self._slots = [self._setup(p) for p in launch.take()]

    def pids(self) -> list[int]:
        """The process ids of the workers now (for tests and monitoring)."""
        return [s.handle.process.pid for s in self._slots]

    def _setup(self, process: _Process) -> Slot:
        process.conn.send((list(sys.path), self._blob))
        return Slot(process)

    def _submit(self, slot: Slot, token: int, tasks: list[Task], model: Vector | None) -> None:
        conn = slot.handle.conn
        try:
            if model is not None:
                conn.send(("load", token, model))
            conn.send(("tasks", token, tasks))
        except OSError:
            raise WorkerLost from None

    def _events(self) -> list[Event]:
        by_conn: dict[object, Slot] = {s.handle.conn: s for s in self._slots}
        events: list[Event] = []
        for conn in wait([s.handle.conn for s in self._slots]):
            slot = by_conn[conn]
            try:
                kind, body = slot.handle.conn.recv()
                if kind == "done-oob":
                    kind, body = "done", _landed(body)
            except (EOFError, OSError):
                events.append((slot, "lost", None))
                continue
            events.append((slot, kind, body))
        return events

    def _respawn(self) -> Slot:
        return self._setup(_launch(self._preload))

    def _discard(self, slot: Slot) -> None:
        slot.handle.conn.close()
        _reap(slot.handle.process)
        _remove_vectors_of(slot.handle.process.pid)

    def _describe(self, slot: Slot) -> str:
        return f"pid {slot.handle.process.pid}"

    def _stop(self, slots: list[Slot]) -> None:
        for slot in slots:
            with contextlib.suppress(OSError, ValueError):
                slot.handle.conn.send(("stop",))
        for slot in slots:
            _reap(slot.handle.process)
            slot.handle.conn.close()
            _remove_vectors_of(slot.handle.process.pid)


def pickled(setup: RunnerSetup) -> bytes:
    """``setup`` pickled with ``cloudpickle`` (functions of a user's script by value).

    Raises
    ------
    ConfigError
        If it cannot be pickled.
    """
    import cloudpickle  # only runs with workers pay for its import

    try:
        return bytes(cloudpickle.dumps(setup))
    except (pickle.PicklingError, TypeError, AttributeError) as exc:
        raise ConfigError(
            f"workers rebuild the clients from a picklable setup, and this one is not ({exc}); "
            "build datasets and models from module-level functions, not lambdas or local "
            "functions, or run with workers=1"
        ) from None


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
        self._processes: list[_Process] | None = [_launch(self.preload) for _ in range(count)]

    def take(self) -> list[_Process]:
        """The started workers, handed over once to a pool."""
        if self._processes is None:
            raise WorkerError("these worker processes were already handed to a pool")
        processes, self._processes = self._processes, None
        return processes

    def close(self) -> None:
        """Stop the workers if no pool took them."""
        processes, self._processes = self._processes or [], None
        for process in processes:
            process.conn.close()  # the worker sees the end of its input and exits
            _reap(process.process)


def _launch(preload: tuple[str, ...]) -> _Process:
    """A fresh interpreter running ``_worker_main`` on one end of a socket pair. Not
    ``multiprocessing``'s spawn: that re-runs the user's main script in every worker."""
    mine, theirs = socket.socketpair()
    process = subprocess.Popen(
        [sys.executable, "-c", _WORKER_ENTRY, str(theirs.fileno()), ",".join(preload)],
        pass_fds=(theirs.fileno(),),
        stdin=subprocess.DEVNULL,
    )
    theirs.close()
    return _Process(process, Connection(mine.detach()))


def _remove_vectors_of(worker: int) -> None:
    """Delete the vector files a dead or stopped worker left that the driver did not read."""
    for path in _SHM.glob(_vectors_file(os.getpid(), worker, "*").name):
        path.unlink(missing_ok=True)


def _reap(process: subprocess.Popen[bytes]) -> None:
    try:
        process.wait(timeout=_STOP_WAIT_S)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait(timeout=_STOP_WAIT_S)
