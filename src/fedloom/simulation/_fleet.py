"""The in-process fleet: virtual clients run one after another in this process, on one trainer."""

from __future__ import annotations

import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any, Literal

from fedloom.client import ClientApp, ClientContext, Trainer
from fedloom.data import FederatedDataset
from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.simulation._runner import ClientStates
from fedloom.strategy import NumberedClients

__all__ = ["InProcessFleet"]

log = logging.getLogger("fedloom.simulation")


class InProcessFleet(ClientStates):
    """Runs each of a federated dataset's clients in this process when it is sent an instruction.

    Clients are named ``"0"``, ``"1"``, ... after their index in the dataset. A client's data
    is made (sliced or generated) when it is instructed and dropped after its turn, and the
    client list is a :class:`~fedloom.strategy.NumberedClients`, so a population of a million
    costs nothing until sampled. The per-client state a handler keeps (``ClientContext.state``)
    lives here for the fleet's lifetime, for the clients that took part. Replies are produced
    lazily, in the order of the instructions, so a streaming aggregator holds one update at a
    time. The ``timeout`` of :meth:`exchange` is not enforced: every simulated client runs to
    completion.

    Parameters
    ----------
    dataset
        Where each client's data comes from.
    trainer
        One trainer serves every client.
    app
        The client runtime; the built-in fit and evaluate handlers by default.
    on_error
        ``"raise"`` (default) stops the run with a :class:`~fedloom.errors.ClientError` naming
        the client, round and phase; ``"drop"`` logs it and treats the client as dropped out.
    """

    def __init__(
        self,
        dataset: FederatedDataset,
        trainer: Trainer,
        *,
        app: ClientApp | None = None,
        on_error: Literal["raise", "drop"] = "raise",
    ) -> None:
        if on_error not in ("raise", "drop"):
            raise ConfigError(f"on_error must be 'raise' or 'drop', got {on_error!r}")
        self._dataset = dataset
        self._trainer = trainer
        self._app = app if app is not None else ClientApp()
        self._on_error = on_error
        self._ids = NumberedClients(dataset.num_clients)
        self._state: dict[str, dict[str, Any]] = {}

    def clients(self) -> Sequence[str]:
        return self._ids

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        for client_id, ins in instructions.items():
            reply = self._run(client_id, ins)
            if reply is not None:
                yield reply

    def _run(self, client_id: str, ins: Instruction) -> Reply | None:
        if client_id not in self._ids:
            raise ClientError(client_id, ins.round, ins.phase, "no such client in this simulation")
        index = int(client_id)
        state = self._state.setdefault(client_id, {})
        ctx = ClientContext(client_id, self._dataset.client(index), self._trainer, state)
        try:
            return self._app.handle(ctx, ins)
        except ClientError as exc:
            if self._on_error == "raise":
                raise
            log.warning("%s; treating the client as dropped", exc)
            return None

    def close(self) -> None:
        self._state.clear()
