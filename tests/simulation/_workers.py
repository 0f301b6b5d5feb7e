"""Setups for worker tests, in a module the workers (processes or Ray actors) can import."""

from __future__ import annotations

import functools
import os
import signal
from typing import Any

from fedloom.client import ClientApp, LinearTrainer
from fedloom.data import ArrayData, FederatedDataset, load_dataset
from fedloom.errors import ClientError
from fedloom.messages import Config, FitResult
from fedloom.params import Vector


class _Killer(LinearTrainer):
    """Kills its own process the first time it trains the client of ``victim_rows`` rows (the
    marker file says it happened)."""

    def fit(self, parameters: Vector, data: ArrayData, config: Config, seed: int) -> FitResult:
        marker = str(config["marker"])
        if len(data) == config["victim_rows"] and not os.path.exists(marker):
            open(marker, "w").close()
            os.kill(os.getpid(), signal.SIGKILL)
        return super().fit(parameters, data, config, seed)


def killer_setup() -> tuple[FederatedDataset, LinearTrainer, ClientApp]:
    ds = load_dataset("digits", num_clients=10, partition="quantity:1.0", seed=0)
    return ds, _Killer(64, 10, lr=0.1), ClientApp()


def fails_in_fit(message: str) -> tuple[FederatedDataset, LinearTrainer, ClientApp]:
    ds = load_dataset("digits", num_clients=4, seed=0)

    def fit(ctx: Any, ins: Any) -> Any:
        if ctx.client_id == "2":
            raise ClientError(ctx.client_id, ins.round, ins.phase, message)
        return ClientApp().handle(ctx, ins)

    return ds, LinearTrainer(64, 10), ClientApp({"fit": fit})


def broken_setup() -> tuple[FederatedDataset, LinearTrainer, ClientApp]:
    raise OSError("no such file: /data/clients")


def cycle(base: FederatedDataset, i: int) -> Any:
    return base.client(i % base.num_clients)


def given(ds: FederatedDataset, trainer: LinearTrainer) -> Any:
    return ds, trainer, ClientApp()


def _bad_client(base: FederatedDataset, i: int) -> Any:
    if i == 2:
        raise ValueError("corrupt shard 2")
    return base.client(i)


def crashes_setup() -> tuple[FederatedDataset, LinearTrainer, ClientApp]:
    """Making client 2's data raises: a bug outside the client runtime."""
    base = load_dataset("digits", num_clients=4, seed=0)
    ds = FederatedDataset.from_function(
        4, functools.partial(_bad_client, base), test=base.test, num_classes=10,
        input_shape=(64,),
    )  # fmt: skip
    return ds, LinearTrainer(64, 10), ClientApp()
