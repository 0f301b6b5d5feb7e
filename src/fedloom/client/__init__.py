"""Clients: the trainer protocol, PyTorch and NumPy trainers, built-in models, the runtime."""

from fedloom.client._app import ClientApp, ClientContext, Handler
from fedloom.client._linear import LinearTrainer
from fedloom.client._models import MODELS, cnn, make_trainer, mlp
from fedloom.client._torch import TorchTrainer
from fedloom.client._trainer import EvalResult, FitResult, Trainer, client_seed

__all__ = [
    "MODELS",
    "ClientApp",
    "ClientContext",
    "EvalResult",
    "FitResult",
    "Handler",
    "LinearTrainer",
    "TorchTrainer",
    "Trainer",
    "client_seed",
    "cnn",
    "make_trainer",
    "mlp",
]
