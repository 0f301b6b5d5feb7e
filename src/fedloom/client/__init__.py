"""Clients: the trainer protocol, PyTorch, NumPy and scikit-learn trainers, the runtime and its
mods."""

from fedloom.client._app import ClientApp
from fedloom.client._context import ClientContext, Handler, Mod, mod
from fedloom.client._linear import LinearTrainer
from fedloom.client._mods import (
    CLIENT_LINKS,
    DEFAULT_MODS,
    LOCAL_DP_STATE_KEY,
    SCAFFOLD_STATE_KEY,
    client_chain,
    is_correctable,
    local_dp_mod,
    scaffold_mod,
    secagg_mod,
)
from fedloom.client._sklearn import SklearnTrainer
from fedloom.client._torch import TorchTrainer
from fedloom.client._trainer import CorrectableTrainer, Trainer, client_seed, proximal_mu

__all__ = [
    "CLIENT_LINKS",
    "DEFAULT_MODS",
    "LOCAL_DP_STATE_KEY",
    "SCAFFOLD_STATE_KEY",
    "ClientApp",
    "ClientContext",
    "CorrectableTrainer",
    "Handler",
    "LinearTrainer",
    "Mod",
    "SklearnTrainer",
    "TorchTrainer",
    "Trainer",
    "client_chain",
    "client_seed",
    "is_correctable",
    "local_dp_mod",
    "mod",
    "proximal_mu",
    "scaffold_mod",
    "secagg_mod",
]
