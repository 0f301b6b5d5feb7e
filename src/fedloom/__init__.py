"""fedloom: federated learning that simulates on one machine and deploys across many.

Examples
--------
>>> import fedloom
>>> result = fedloom.simulate(dataset="digits", model="logreg", clients=10, rounds=2)
>>> result.history.final_accuracy is not None
True
"""

from fedloom.client import ClientApp, LinearTrainer, SklearnTrainer, TorchTrainer, Trainer
from fedloom.config import SimulationConfig
from fedloom.data import ArrayData, FederatedDataset, from_arrays, load_dataset
from fedloom.errors import (
    ClientError,
    ConfigError,
    DataError,
    FedloomError,
    RoundFailedError,
    TamperedError,
)
from fedloom.messages import ClientUpdate, Instruction, Reply, RoundRecord
from fedloom.params import ParamSpec
from fedloom.recipes import simulate
from fedloom.server import Fleet, RunResult, load_checkpoint, run_rounds
from fedloom.simulation import InProcessFleet
from fedloom.strategy import Strategy, fedavg, make_strategy
from fedloom.tracking import History

__version__ = "0.1.0"

__all__ = [
    "ArrayData",
    "ClientApp",
    "ClientError",
    "ClientUpdate",
    "ConfigError",
    "DataError",
    "FederatedDataset",
    "FedloomError",
    "Fleet",
    "History",
    "InProcessFleet",
    "Instruction",
    "LinearTrainer",
    "ParamSpec",
    "Reply",
    "RoundFailedError",
    "RoundRecord",
    "RunResult",
    "SimulationConfig",
    "SklearnTrainer",
    "Strategy",
    "TamperedError",
    "TorchTrainer",
    "Trainer",
    "__version__",
    "fedavg",
    "from_arrays",
    "load_checkpoint",
    "load_dataset",
    "make_strategy",
    "run_rounds",
    "simulate",
]
