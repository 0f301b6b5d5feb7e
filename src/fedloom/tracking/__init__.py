"""What a run leaves behind: its history, the console's progress bar and summary."""

from fedloom.tracking._history import History
from fedloom.tracking._progress import ProgressBar, summary

__all__ = ["History", "ProgressBar", "summary"]
