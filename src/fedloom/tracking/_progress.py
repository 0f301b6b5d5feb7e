"""The console's view of a run: a progress bar over rounds and a closing summary."""

from __future__ import annotations

from typing import Any, TextIO

from tqdm import tqdm

from fedloom.messages import RoundRecord
from fedloom.tracking._history import History

__all__ = ["ProgressBar", "summary"]


class ProgressBar:
    """A bar over the run's rounds showing the latest metrics; call it with each round's record."""

    def __init__(
        self, rounds: int, *, file: TextIO | None = None, disable: bool = False, done: int = 0
    ) -> None:
        """``done`` rounds are already behind (a resumed run's)."""
        self._bar: Any = tqdm(
            total=rounds, initial=done, desc="rounds", unit="round", file=file, disable=disable,
            leave=True,
        )  # fmt: skip

    def __call__(self, record: RoundRecord) -> None:
        shown: dict[str, str] = {}
        for key in ("accuracy", "loss", "train_loss", "fed_accuracy"):
            value = getattr(record, key)
            if value is not None:
                shown[key] = f"{value:.4f}"
        self._bar.set_postfix(shown, refresh=False)
        self._bar.update(1)

    def close(self) -> None:
        self._bar.close()


def summary(history: History, wall_seconds: float) -> str:
    """Final and best accuracy and wall time, in one paragraph for the console."""
    lines = [f"{len(history)} rounds in {wall_seconds:.1f} s"]
    final = history.final_accuracy
    best = history.best()
    if final is not None and best is not None and best.accuracy is not None:
        lines.append(f"final accuracy {final:.4f}")
        lines.append(f"best accuracy {best.accuracy:.4f} (round {best.round})")
    elif history.rounds and history.rounds[-1].train_loss is not None:
        lines.append(f"final train loss {history.rounds[-1].train_loss:.4f}")
    last = history.rounds[-1].metrics if history.rounds else {}
    if "epsilon" in last:
        lines.append(f"epsilon spent {last['epsilon']:.3g}")
    if "local_epsilon" in last:
        lines.append(
            f"local (record-level) epsilon {last['local_epsilon']:.3g}, mean of the clients"
        )
    return ", ".join(lines)
