"""Simulated clients on Ray actors: the worker pool's design across the machines of a cluster.

Each actor builds its own population, trainer and client runtime from the setup (data is
loaded where the actor runs, from its spec or path, never shipped from the driver), keeps one
model, and trains the batches it is handed; the dispatch loop is the worker pool's
(:class:`~fedloom.simulation._runner.Dispatcher`). The global model goes into Ray's object
store once per exchange, and each actor is handed a reference to it, so it crosses the network
once per node and round, not once per client. Ray is imported only when this fleet is made.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
from typing import Any, Literal

from fedloom.errors import ConfigError
from fedloom.params import Vector
from fedloom.simulation._pool import pickled
from fedloom.simulation._runner import (
    ClientRunner,
    Dispatcher,
    Event,
    RunnerSetup,
    Slot,
    Task,
    WorkerLost,
)

__all__ = ["RayFleet"]


class _RayWorker:
    """The actor: a :class:`ClientRunner`, or the reason it could not be built."""

    def __init__(self, path: list[str], setup_blob: bytes) -> None:
        self._runner: ClientRunner | None = None
        self._error: str | None = None
        try:
            self._runner = ClientRunner.in_worker(path, setup_blob)
        except Exception as exc:
            self._error = f"{type(exc).__name__}: {exc}"

    def load(self, token: int, model: Vector) -> None:
        if self._runner is not None:
            self._runner.load(token, model)

    def node(self) -> str:
        import ray

        return str(ray.get_runtime_context().get_node_id())

    def run(self, token: int, tasks: list[Task]) -> tuple[str, Any]:
        if self._runner is None:
            return "failed", self._error
        return "done", self._runner.run_batch(tasks, token)


class RayFleet(Dispatcher):
    """A fleet whose clients run on ``workers`` Ray actors, on this machine or a cluster.

    It behaves as :class:`~fedloom.simulation.WorkerPool` does (the same model as one process;
    a dead actor costs the round its clients and is replaced), with Ray placing the actors by
    the resources each asks for.

    Parameters
    ----------
    setup
        Builds an actor's population, trainer and client runtime (picklable).
    num_clients
        The size of the population.
    workers
        How many actors, at least 1.
    address
        A running cluster's address (``"127.0.0.1:6379"``, ``"auto"``); ``None`` starts a local
        Ray instance for the fleet's lifetime. If this process is already connected to Ray,
        that connection is used.
    worker_cpus, worker_gpus
        The resources each actor reserves.
    on_error, max_restarts
        As for :class:`~fedloom.simulation.WorkerPool`.

    Raises
    ------
    ConfigError
        If Ray is not installed, a setting is out of range, the cluster cannot place one actor,
        or ``setup`` cannot be pickled.
    """

    _what = "Ray actor"

    def __init__(
        self,
        setup: RunnerSetup,
        num_clients: int,
        workers: int,
        *,
        address: str | None = None,
        worker_cpus: float = 1.0,
        worker_gpus: float = 0.0,
        on_error: Literal["raise", "drop"] = "raise",
        max_restarts: int | None = None,
    ) -> None:
        if workers < 1:
            raise ConfigError(f"--workers must be at least 1 (or auto), got {workers}")
        if worker_cpus <= 0 or worker_gpus < 0:
            raise ConfigError(
                f"--worker-cpus must be above 0 and --worker-gpus at least 0, got "
                f"{worker_cpus} and {worker_gpus}"
            )
        try:
            import ray
        except ImportError:
            raise ConfigError(
                "--engine ray needs Ray; install it with pip install 'fedloom[ray]'"
            ) from None
        super().__init__(
            num_clients, on_error, 2 * workers if max_restarts is None else max_restarts
        )
        blob = pickled(setup)
        self._ray: Any = ray
        self._started = not ray.is_initialized()
        if self._started:
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no reports leave the machine
            try:
                ray.init(
                    address=address, include_dashboard=False, logging_level=logging.ERROR,
                    configure_logging=False,
                )  # fmt: skip
            except (ConnectionError, ValueError, RuntimeError) as exc:
                raise ConfigError(f"cannot join the Ray cluster at {address}: {exc}") from None
        try:
            self._check_resources(worker_cpus, worker_gpus)
        except BaseException:
            self._shutdown()
            raise
        self._actor = ray.remote(num_cpus=worker_cpus, num_gpus=worker_gpus, max_restarts=0)(
            _RayWorker
        )
        self._blob = ray.put(blob)
        self._model: tuple[int, Any] | None = None
        self._slots = [self._respawn() for _ in range(workers)]

    def _check_resources(self, cpus: float, gpus: float) -> None:
        """Refuse an actor that no node can hold (Ray would wait for one forever)."""
        nodes = [n.get("Resources", {}) for n in self._ray.nodes() if n.get("Alive")]
        if any(n.get("CPU", 0.0) >= cpus and n.get("GPU", 0.0) >= gpus for n in nodes):
            return
        most_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
        most_gpu = max((n.get("GPU", 0.0) for n in nodes), default=0.0)
        raise ConfigError(
            f"each Ray actor asks for {cpus:g} CPU and {gpus:g} GPU, but no node of the cluster "
            f"has that much (the most on one node: {most_cpu:g} CPU, {most_gpu:g} GPU); lower "
            "--worker-cpus / --worker-gpus or add a bigger node"
        )

    def nodes(self) -> list[str]:
        """The Ray node id each actor runs on (for tests and monitoring)."""
        refs = [s.handle.node.remote() for s in self._slots]
        return list(self._ray.get(refs))

    def _submit(self, slot: Slot, token: int, tasks: list[Task], model: Vector | None) -> None:
        if model is not None:
            if self._model is None or self._model[0] != token:
                self._model = (token, self._ray.put(model))  # once per exchange, for everyone
            slot.handle.load.remote(token, self._model[1])
        slot.refs.append(slot.handle.run.remote(token, tasks))

    def _events(self) -> list[Event]:
        # an actor runs its calls in order, so only each one's oldest batch can be done first
        oldest = {s.refs[0]: s for s in self._slots if s.refs}
        if not oldest:
            raise WorkerLost("no batch is outstanding")  # not reached: the loop waits on work
        ready, _ = self._ray.wait(list(oldest), num_returns=1)
        events: list[Event] = []
        for ref in ready:
            slot = oldest[ref]
            try:
                kind, body = self._ray.get(ref)
            except self._ray.exceptions.RayError:
                events.append((slot, "lost", None))
                continue
            slot.refs.pop(0)
            events.append((slot, kind, body))
        return events

    def _respawn(self) -> Slot:
        return Slot(self._actor.remote(list(sys.path), self._blob))

    def _discard(self, slot: Slot) -> None:
        slot.refs.clear()
        with contextlib.suppress(Exception):
            self._ray.kill(slot.handle, no_restart=True)

    def _describe(self, slot: Slot) -> str:
        return f"actor {slot.handle._actor_id.hex()[:12]}"

    def _stop(self, slots: list[Slot]) -> None:
        for slot in slots:
            self._discard(slot)
        self._shutdown()

    def _shutdown(self) -> None:
        if self._started and self._ray.is_initialized():
            self._ray.shutdown()
        self._started = False
