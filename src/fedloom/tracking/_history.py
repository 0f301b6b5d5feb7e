"""A run's history: one record per round, written as ``history.json``."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from fedloom._io import atomic_write
from fedloom.messages import RoundRecord

__all__ = ["History"]


@dataclass(frozen=True)
class History:
    """The rounds of a run, in order. Immutable: :meth:`append` returns a new history.

    ``info`` holds facts about the whole run, such as the ids of a simulated attack's
    malicious clients (``"malicious_clients"``).
    """

    rounds: tuple[RoundRecord, ...] = field(default_factory=tuple)
    info: Mapping[str, Any] = field(default_factory=dict)

    def append(self, record: RoundRecord) -> History:
        """A history with ``record`` added at the end."""
        return History((*self.rounds, record), self.info)

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
        """``{"run": {...}, "rounds": [...]}``, JSON-ready (``run`` only when ``info`` is set)."""
        out: dict[str, Any] = {"run": dict(self.info)} if self.info else {}
        out["rounds"] = [r.to_dict() for r in self.rounds]
        return out

    def write(self, path: str | os.PathLike[str]) -> None:
        """Write ``history.json`` atomically."""
        text = json.dumps(self.to_dict(), indent=1, allow_nan=True)
        atomic_write(path, text.encode())

    @classmethod
    def from_records(
        cls, records: Sequence[dict[str, Any]], info: Mapping[str, Any] | None = None
    ) -> History:
        """Rebuild a history from the ``rounds`` list (and ``run``) of a ``history.json``."""
        return cls(tuple(RoundRecord(**r) for r in records), dict(info or {}))
