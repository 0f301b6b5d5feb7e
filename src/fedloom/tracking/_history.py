"""A run's history: one record per round, written as ``history.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom._io import atomic_write
from fedloom.messages import RoundRecord

__all__ = ["History"]


@dataclass(frozen=True)
class History:
    """The rounds of a run, in order. Immutable: :meth:`append` returns a new history."""

    rounds: tuple[RoundRecord, ...] = field(default_factory=tuple)

    def append(self, record: RoundRecord) -> History:
        """A history with ``record`` added at the end."""
        return History((*self.rounds, record))

    def __len__(self) -> int:
        return len(self.rounds)

    def __iter__(self) -> Iterator[RoundRecord]:
        return iter(self.rounds)

    def column(self, name: str) -> list[Any]:
        """One field of every round, e.g. ``history.column("accuracy")``."""
        return [getattr(r, name) for r in self.rounds]

    @property
    def final_accuracy(self) -> float | None:
        """The centralized accuracy after the last round."""
        return self.rounds[-1].accuracy if self.rounds else None

    def best(self) -> RoundRecord | None:
        """The round with the highest centralized accuracy (the earliest, on a tie)."""
        scored = [r for r in self.rounds if r.accuracy is not None]
        return max(scored, key=lambda r: (r.accuracy, -r.round)) if scored else None

    def to_dict(self) -> dict[str, Any]:
        """``{"rounds": [...]}``, JSON-ready."""
        return {"rounds": [r.to_dict() for r in self.rounds]}

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write ``history.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        atomic_write(path, text.encode())

    @classmethod
    def from_records(cls, records: Sequence[dict[str, Any]]) -> History:
        """Rebuild a history from the ``rounds`` list of a ``history.json``."""
        return cls(tuple(RoundRecord(**r) for r in records))
