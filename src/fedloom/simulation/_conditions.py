"""Simulated conditions: clients that drop out and stragglers, as a wrapper around any fleet.

Each round, the first time a training exchange of that round comes through (``"fit"``, or
``"secagg.keys"``, where clients train under secure aggregation), the wrapper draws over the
sorted ids of the instructed clients (``n`` of them):

- exactly ``round_half_up(dropout * n)`` clients **drop out**: they receive nothing and answer
  nothing for the rest of that round, in any phase;
- of the others, exactly ``round_half_up(stragglers * n)`` (at most as many as remain) are
  **stragglers**, each able to run only ``e`` local epochs, ``e`` drawn uniformly from
  ``{1, ..., E}`` as in FedProx's systems-heterogeneity experiments (Li et al. 2020, §5.2).
  With ``straggler_policy="keep"`` (FedProx: use their partial work) a straggler trains ``e``
  epochs; with ``"drop"`` (FedAvg's baseline there: work that misses the deadline is
  discarded) it sends no update, though it is still evaluated later in the round.

The draws come from generators seeded by ``(seed, round, tag)`` alone, so a resumed run draws
exactly as an uninterrupted one, and the order in which clients are instructed does not matter.
"""

from __future__ import annotations

import dataclasses
import logging
from collections import OrderedDict
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Literal

import numpy as np

from fedloom.errors import ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.server import Fleet
from fedloom.strategy import round_half_up

__all__ = ["RoundConditions", "SimulatedConditions"]

log = logging.getLogger("fedloom.simulation")

_DROPOUT_TAG = 0x64726F70  # b"drop": the two draws use independent streams
_STRAGGLER_TAG = 0x736C6F77  # b"slow"
TRAINING_PHASES = ("fit", "secagg.keys")
"""The phases in which clients train: plain rounds fit, secure aggregation advertises keys."""
_KEEP_ROUNDS = 8  # records of the last rounds kept for round_conditions


@dataclass(frozen=True)
class RoundConditions:
    """What the simulated conditions did to one round.

    Attributes
    ----------
    dropped
        The ids of the clients that dropped out, sorted.
    stragglers
        Straggler id -> the local epochs it was given (with the ``"drop"`` policy, the epochs
        it would have run before its work was discarded).
    """

    dropped: tuple[str, ...]
    stragglers: Mapping[str, int]


class SimulatedConditions:
    """A fleet in which some clients drop out and some are stragglers, each round.

    Implements the :class:`~fedloom.server.Fleet` protocol around another fleet; replies still
    stream from the wrapped fleet one at a time, and ``timeout`` is passed on unchanged.

    Parameters
    ----------
    fleet
        The fleet whose clients are affected.
    dropout
        In [0, 1): the share of a round's instructed clients that drop out.
    stragglers
        In [0, 1): the share of a round's instructed clients that are stragglers.
    straggler_policy
        ``"drop"`` discards stragglers' updates; ``"keep"`` sends them their reduced epochs.
    local_epochs
        E, used when a fit instruction's config has no ``"local_epochs"``.
    seed
        Seeds the draws.

    Raises
    ------
    ConfigError
        If a setting is out of range (at construction), or if stragglers are asked for and a
        fit instruction has no ``"local_epochs"`` and none was given here (at exchange).

    Examples
    --------
    >>> import fedloom
    >>> from fedloom.client import LinearTrainer
    >>> from fedloom.messages import Instruction
    >>> from fedloom.simulation import InProcessFleet
    >>> ds = fedloom.from_arrays([([[0.0], [1.0]], [0, 1])] * 10)
    >>> fleet = SimulatedConditions(InProcessFleet(ds, LinearTrainer(1, 2)), dropout=0.2)
    >>> ins = Instruction(1, "fit", LinearTrainer(1, 2).init_parameters(0))
    >>> len(list(fleet.exchange(dict.fromkeys(fleet.clients(), ins), None)))
    8
    >>> len(fleet.round_conditions(1).dropped)
    2
    """

    def __init__(
        self,
        fleet: Fleet,
        *,
        dropout: float = 0.0,
        stragglers: float = 0.0,
        straggler_policy: Literal["drop", "keep"] = "drop",
        local_epochs: int | None = None,
        seed: int = 0,
    ) -> None:
        for flag, share in (("--dropout", dropout), ("--stragglers", stragglers)):
            if not 0.0 <= share < 1.0:
                raise ConfigError(f"{flag} must be a share in [0, 1), got {share}")
        if straggler_policy not in ("drop", "keep"):
            raise ConfigError(
                f"--straggler-policy must be 'drop' or 'keep', got {straggler_policy!r}"
            )
        if local_epochs is not None and local_epochs < 1:
            raise ConfigError(f"--local-epochs must be at least 1, got {local_epochs}")
        if seed < 0:
            raise ConfigError(f"--seed must be 0 or more, got {seed}")
        self._fleet = fleet
        self._dropout = dropout
        self._stragglers = stragglers
        self._policy = straggler_policy
        self._local_epochs = local_epochs
        self._seed = seed
        self._rounds: OrderedDict[int, RoundConditions] = OrderedDict()

    def clients(self) -> Sequence[str]:
        return self._fleet.clients()

    def exchange(
        self, instructions: Mapping[str, Instruction], timeout: float | None
    ) -> Iterator[Reply]:
        passed: dict[str, Instruction] = {}
        drawn: dict[tuple[int, str], tuple[frozenset[str], RoundConditions] | None] = {}
        for client_id, ins in instructions.items():
            key = (ins.round, ins.phase)
            if key not in drawn:
                got = self._conditions(ins.round, ins.phase, instructions)
                drawn[key] = None if got is None else (frozenset(got.dropped), got)
            found = drawn[key]
            if found is None:
                passed[client_id] = ins
                continue
            dropped, conditions = found
            if client_id in dropped:
                continue
            training = ins.phase in TRAINING_PHASES
            epochs = conditions.stragglers.get(client_id) if training else None
            if epochs is None:
                passed[client_id] = ins
            elif self._policy == "keep":
                config = {**ins.config, "local_epochs": epochs}
                passed[client_id] = dataclasses.replace(ins, config=config)
        yield from self._fleet.exchange(passed, timeout)

    def close(self) -> None:
        self._fleet.close()

    def round_conditions(self, round: int) -> RoundConditions:
        """Who dropped out and who straggled in ``round`` (one of the last few rounds seen).

        Raises
        ------
        KeyError
            If no training exchange of ``round`` was seen, or the round is too old to be kept.
        """
        if round not in self._rounds:
            raise KeyError(
                f"no conditions recorded for round {round}; they are drawn at the round's first "
                f"training exchange and kept for the last {_KEEP_ROUNDS} rounds"
            )
        return self._rounds[round]

    def _conditions(
        self, round: int, phase: str, instructions: Mapping[str, Instruction]
    ) -> RoundConditions | None:
        """The round's conditions; drawn now at its first training exchange, ``None`` before
        then."""
        if round in self._rounds:
            return self._rounds[round]
        if phase not in TRAINING_PHASES:
            return None
        fits = {
            c: i for c, i in instructions.items() if i.round == round and i.phase in TRAINING_PHASES
        }
        conditions = self._draw(round, fits)
        self._rounds[round] = conditions
        while len(self._rounds) > _KEEP_ROUNDS:
            self._rounds.popitem(last=False)
        epochs = list(conditions.stragglers.values())
        detail = ""
        if epochs:
            fate = "kept" if self._policy == "keep" else "dropped"
            detail = f" ({sum(epochs) / len(epochs):.1f} local epochs on average, updates {fate})"
        log.info(
            "round %d: %d of %d clients dropped out, %d stragglers%s",
            round, len(conditions.dropped), len(fits), len(epochs), detail,
        )  # fmt: skip
        return conditions

    def _draw(self, round: int, fits: Mapping[str, Instruction]) -> RoundConditions:
        ids = sorted(fits)
        n = len(ids)
        rng = np.random.default_rng([self._seed, round, _DROPOUT_TAG])
        gone = rng.choice(n, size=min(round_half_up(self._dropout * n), n), replace=False)
        dropped = [ids[i] for i in sorted(gone.tolist())]
        gone_ids = set(dropped)
        alive = [c for c in ids if c not in gone_ids]
        count = min(round_half_up(self._stragglers * n), len(alive))
        rng = np.random.default_rng([self._seed, round, _STRAGGLER_TAG])
        slow = sorted(rng.choice(len(alive), size=count, replace=False).tolist())
        stragglers = {}
        for i in slow:
            most = self._epochs(fits[alive[i]])
            stragglers[alive[i]] = int(rng.integers(1, most + 1))
        return RoundConditions(tuple(dropped), MappingProxyType(stragglers))

    def _epochs(self, ins: Instruction) -> int:
        """E: the instruction's ``local_epochs``, else the one given at construction."""
        value = ins.config.get("local_epochs", self._local_epochs)
        if value is None:
            raise ConfigError(
                "stragglers need the number of local epochs E to draw theirs from 1..E; "
                "set --local-epochs (or give SimulatedConditions local_epochs=E)"
            )
        if (
            isinstance(value, bool)
            or not isinstance(value, int | float)
            or not float(value).is_integer()
        ):
            raise ConfigError(f"local_epochs must be a whole number, got {value!r}")
        if value < 1:
            raise ConfigError(f"--local-epochs must be at least 1, got {value}")
        return int(value)
