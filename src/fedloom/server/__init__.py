"""The server: the round loop, the fleet interface it talks through, and checkpoints."""

from fedloom.server._checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedloom.server._fleet import Fleet
from fedloom.server._loop import Evaluator, RunResult, run_rounds

__all__ = [
    "Checkpoint",
    "Evaluator",
    "Fleet",
    "RunResult",
    "load_checkpoint",
    "run_rounds",
    "save_checkpoint",
]
