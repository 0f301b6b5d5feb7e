"""The server: the round loop, the fleet interface it talks through, and checkpoints."""

from fedloom.server._checkpoint import Checkpoint, load_checkpoint, save_checkpoint
from fedloom.server._fleet import Fleet
from fedloom.server._loop import Commit, Evaluator, LoopState, RunResult, run_rounds
from fedloom.server._store import ClientRecord, Participation, RoundState, RunStore

__all__ = [
    "Checkpoint",
    "ClientRecord",
    "Commit",
    "Evaluator",
    "Fleet",
    "LoopState",
    "Participation",
    "RoundState",
    "RunResult",
    "RunStore",
    "load_checkpoint",
    "run_rounds",
    "save_checkpoint",
]
