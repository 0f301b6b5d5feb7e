"""``simulate``: a whole federated run on one machine, from settings or from the user's objects."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any, TextIO

from fedloom._io import atomic_write
from fedloom.client import EvalResult, Trainer, make_trainer
from fedloom.config import BUILTIN_MODEL_SGD, SimulationConfig
from fedloom.data import FederatedDataset, load_dataset
from fedloom.errors import ConfigError
from fedloom.params import Vector
from fedloom.server import RunResult, run_rounds
from fedloom.simulation._fleet import InProcessFleet
from fedloom.strategy import (
    AllClients,
    CountSampler,
    FractionSampler,
    Sampler,
    Strategy,
    make_strategy,
)
from fedloom.tracking import ProgressBar

__all__ = ["simulate"]


def sampler_for(config: SimulationConfig, num_clients: int) -> Sampler:
    """The sampler the settings ask for: a fraction, a count per round, or every client."""
    if config.clients_per_round is not None:
        if config.clients_per_round > num_clients:
            raise ConfigError(
                f"--clients-per-round {config.clients_per_round} is more than the "
                f"{num_clients} clients; use at most {num_clients}"
            )
        return CountSampler(config.clients_per_round, seed=config.seed)
    if config.fraction is not None:
        return FractionSampler(config.fraction, seed=config.seed)
    return AllClients()


@contextlib.contextmanager
def _torch_threads(n: int) -> Iterator[None]:
    """One intra-op thread while simulating: small per-client models run fastest that way and
    results do not depend on the machine's core count. Restored afterwards."""
    torch: Any = sys.modules.get("torch")
    if torch is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def simulate(
    config: SimulationConfig | None = None,
    *,
    dataset: FederatedDataset | str | None = None,
    trainer: Trainer | None = None,
    strategy: Strategy | str | None = None,
    progress: bool | TextIO = False,
    **settings: Any,
) -> RunResult:
    """Run a federated simulation and return the final model and its history.

    Parameters
    ----------
    config
        The settings; defaults to :class:`~fedloom.config.SimulationConfig`'s.
    dataset, trainer, strategy
        Your own objects, used instead of what the settings name; ``dataset`` and ``strategy``
        may also be names, like the settings of the same name.
    progress
        Show a progress bar over rounds (on stderr, or on the given stream).
    **settings
        Any :class:`~fedloom.config.SimulationConfig` field, overriding ``config``.

    Examples
    --------
    >>> import fedloom
    >>> result = fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=2)
    >>> len(result.history)
    2
    """
    if isinstance(dataset, str):
        settings["dataset"], dataset = dataset, None
    if isinstance(strategy, str):
        settings["strategy"], strategy = strategy, None
    cfg = (config or SimulationConfig()).replace(**settings)
    ds = dataset or load_dataset(
        cfg.dataset,
        num_clients=cfg.clients,
        partition=cfg.partition,
        seed=cfg.seed,
        local_test_fraction=cfg.local_test_fraction,
        test_fraction=cfg.test_fraction,
    )
    if dataset is not None:
        cfg = cfg.replace(dataset=ds.name, clients=ds.num_clients, partition=None)
    if trainer is not None:
        if cfg.momentum:
            raise ConfigError(
                "momentum configures the built-in models only; give your own trainer its "
                "optimizer settings (TorchTrainer(..., momentum=...)) and leave momentum unset"
            )
        cfg = cfg.replace(model="custom")
    tr = trainer or make_trainer(
        cfg.model,
        input_shape=ds.input_shape,
        num_classes=ds.num_classes,
        lr=cfg.lr if cfg.lr is not None else BUILTIN_MODEL_SGD.lr,
        local_epochs=cfg.local_epochs or BUILTIN_MODEL_SGD.local_epochs,
        batch_size=cfg.batch_size or BUILTIN_MODEL_SGD.batch_size,
        momentum=cfg.momentum,
    )
    st = strategy or make_strategy(
        cfg.strategy, sampler_for(cfg, ds.num_clients), server_lr=cfg.server_lr
    )
    test = ds.test

    def evaluate(parameters: Vector) -> EvalResult:
        return tr.evaluate(parameters, test)

    if cfg.out is not None:
        atomic_write(Path(cfg.out) / "config.toml", cfg.to_toml().encode())
    bar = None
    if progress is not False:
        bar = ProgressBar(cfg.rounds, file=None if progress is True else progress)
    try:
        # after the trainer is made, so that torch (if it uses it) is imported by now
        with _torch_threads(1):
            return run_rounds(
                InProcessFleet(ds, tr),
                st,
                tr.init_parameters(cfg.seed),
                rounds=cfg.rounds,
                client_config=cfg.client_config(),
                evaluate=evaluate if len(test) > 0 else None,
                federated_evaluation=len(ds.client(0).test) > 0,
                min_clients=cfg.min_clients,
                out_dir=cfg.out,
                spec=tr.spec,
                on_round=bar,
            )
    finally:
        if bar is not None:
            bar.close()
