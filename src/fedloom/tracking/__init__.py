"""What a run leaves behind: its history, the console's progress bar and summary, and the
experiment trackers it reports to (TensorBoard, MLflow, or a logger of your own)."""

from fedloom.tracking._history import History
from fedloom.tracking._loggers import (
    LOGGERS,
    Loggers,
    MlflowLogger,
    RunLogger,
    TensorBoardLogger,
    make_logger,
    round_scalars,
)
from fedloom.tracking._progress import ProgressBar, summary

__all__ = [
    "LOGGERS",
    "History",
    "Loggers",
    "MlflowLogger",
    "ProgressBar",
    "RunLogger",
    "TensorBoardLogger",
    "make_logger",
    "round_scalars",
    "summary",
]
