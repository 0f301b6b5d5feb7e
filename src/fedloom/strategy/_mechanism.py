"""Round mechanisms: the request/reply phases that make up one round.

A mechanism's :meth:`~RoundMechanism.run` is a generator. Each ``yield`` hands the loop a mapping
of client id to :class:`~fedloom.messages.Instruction`; the loop sends them over the fleet and
resumes the generator with an iterator over the replies that arrived before the deadline. The
generator's return value is the round's :class:`RoundOutcome`. Plain FedAvg yields once; secure
aggregation yields four times. The loop never needs to know which.
"""

from __future__ import annotations

import bisect
import dataclasses
import functools
import logging
import math
import re
from collections.abc import Callable, Generator, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from fedloom.messages import REFUSED, Aggregate, ClientUpdate, Config, Instruction, Reply
from fedloom.params import Vector
from fedloom.strategy._aggregate import Aggregator

__all__ = [
    "PlainRound",
    "RoundContext",
    "RoundMechanism",
    "RoundOutcome",
    "RoundSteps",
    "UpdateBounds",
]

log = logging.getLogger("fedloom.round")


MAX_EXAMPLES = 1 << 32
"""The default cap on the examples one reply is weighted by: sums of up to 2^21 capped weights
are exact in float64 (whose integers are exact up to 2^53)."""


@dataclass(frozen=True)
class UpdateBounds:
    """What one client's fit reply can weigh in a round that sees the updates one by one.

    ``max_examples`` caps the example count a reply is weighted by (a larger claim is weighed as
    this many, and said once a round). An update whose L2 norm is above ``max_norm`` is
    refused, and so is one above ``norm_multiple`` times the round's median norm: the lower
    median of every norm the round has seen so far, once it has seen three (the first two wait
    for the third, or for the end of the round), so that one client cannot set the reference it
    is judged by. ``None`` turns a bound off. Under secure aggregation the server sees no single
    update: the encoding's clip and weight bound take their place. Under central DP the median
    screen is off: it would make one update's fate depend on the others, which the noise's
    sensitivity does not allow; the clip norm bounds every update instead.
    """

    max_examples: int = MAX_EXAMPLES
    norm_multiple: float | None = 10.0
    max_norm: float | None = None


@dataclass(frozen=True)
class RoundContext:
    """What a mechanism knows about the round it runs.

    ``num_clients`` is how many clients were available to sample from; ``state`` is the
    mechanism's own state from the previous round (from :meth:`RoundMechanism.init` at first);
    ``bounds`` is what one reply may weigh.
    """

    round: int
    selected: Sequence[str]
    parameters: Vector
    config: Config
    aggregator: Aggregator
    aggregator_state: Any
    num_clients: int = 0
    state: Any = None
    bounds: UpdateBounds = UpdateBounds()

    @functools.cached_property
    def selected_ids(self) -> frozenset[str]:
        """``selected`` as a set, made once per round: a reply is checked against it."""
        return frozenset(self.selected)


@dataclass(frozen=True)
class RoundOutcome:
    """What a round produced: the aggregate, the aggregator's next state, and fit metrics.

    ``metrics`` are example-weighted means of the metrics the accepted clients reported;
    ``rejected`` maps a client id to the reason its reply was refused; ``state`` is the
    mechanism's state for the next round; ``accepted`` names the clients whose updates went in.
    """

    aggregate: Aggregate
    aggregator_state: Any
    metrics: Mapping[str, float] = field(default_factory=dict)
    rejected: Mapping[str, str] = field(default_factory=dict)
    state: Any = None
    accepted: tuple[str, ...] = ()


RoundSteps = Generator[Mapping[str, Instruction], Iterator[Reply], RoundOutcome]


class RoundMechanism(Protocol):
    """The phases of a round, as a generator the loop drives."""

    def init(self, parameters: Vector) -> Any:
        """The mechanism's state before the first round (``None`` when it keeps none)."""
        ...

    def run(self, ctx: RoundContext) -> RoundSteps:
        """Yield each phase's instructions, receive its replies, return the outcome."""
        ...


class _FitTally:
    """Counts accepted and rejected fit replies and averages their metrics."""

    def __init__(self) -> None:
        self.rejected: dict[str, str] = {}
        self.accepted: list[str] = []
        self._sums: dict[str, float] = {}
        self._weights: dict[str, float] = {}

    def reject(self, client_id: str, reason: str, round: int) -> None:
        log.warning("round %d: rejected the update of client %s: %s", round, client_id, reason)
        self.rejected[client_id] = reason

    def accept(self, reply: Reply, weight: float) -> None:
        self.accepted.append(reply.client_id)
        for key, value in usable_metrics(reply).items():
            self._sums[key] = self._sums.get(key, 0.0) + value * weight
            self._weights[key] = self._weights.get(key, 0.0) + weight

    def metrics(self) -> dict[str, float]:
        return {k: self._sums[k] / self._weights[k] for k in self._sums if self._weights[k] > 0}


MAX_METRICS = 64
"""The most metrics one reply may report; the rest are dropped."""
_METRIC_NAME = re.compile(r"[A-Za-z0-9_.-]{1,64}")


def usable_metrics(reply: Reply) -> dict[str, float]:
    """A reply's metrics that are data a history can hold: at most :data:`MAX_METRICS` finite
    numbers with names of 1 to 64 characters of ``A-Z a-z 0-9 _ . -``. What is dropped is said
    once, for the client and round."""
    kept: dict[str, float] = {}
    dropped = 0
    for key, value in reply.metrics.items():
        number = value if isinstance(value, int | float) and not isinstance(value, bool) else None
        if (
            number is None
            or not math.isfinite(number)
            or not isinstance(key, str)
            or not _METRIC_NAME.fullmatch(key)
            or len(kept) >= MAX_METRICS
        ):
            dropped += 1
            continue
        kept[key] = float(number)
    if dropped:
        log.warning(
            "round %d: dropped %d of client %s's metrics (not finite numbers, badly named, or "
            "past %d)",
            reply.round, dropped, reply.client_id, MAX_METRICS,
        )  # fmt: skip
    return kept


def fit_problem(
    reply: Reply, ctx: RoundContext, seen: set[str], dim: int
) -> tuple[str | None, np.float32]:
    """Why a fit reply must be refused (None when it is acceptable), and the sum of squares of
    an acceptable update, in float32: what the norm screen takes the root of (infinite when a
    huge but finite update overflows it)."""
    unchecked = np.float32("nan")
    if REFUSED in reply.payload:
        return reply.payload[REFUSED].decode(errors="replace"), unchecked
    if reply.client_id not in ctx.selected_ids:
        return "client was not selected for this round", unchecked
    if reply.client_id in seen:
        return "a second update in the same round", unchecked
    if reply.round != ctx.round or reply.phase != "fit":
        wrong = f"answers round {reply.round} phase {reply.phase!r}, expected {ctx.round} 'fit'"
        return wrong, unchecked
    vec = reply.vector
    if vec is None:
        return "no update vector", unchecked
    if vec.dtype != np.float32 or vec.shape != (dim,):
        shape = f"update has dtype {vec.dtype} shape {vec.shape}; expected float32 ({dim},)"
        return shape, unchecked
    if reply.num_examples <= 0:
        return f"num_examples is {reply.num_examples}; it must be positive", unchecked
    # a NaN or an infinity makes the sum of squares one (one BLAS pass, no temporary); a huge
    # but finite update can too, so only then is every element looked at
    with np.errstate(over="ignore", invalid="ignore"):
        squares = np.float32(np.dot(vec, vec))
    if not math.isfinite(squares) and not np.isfinite(vec).all():
        return "update contains NaN or Inf", unchecked
    return None, squares


def accepted_updates(
    replies: Iterable[Reply],
    ctx: RoundContext,
    tally: _FitTally,
    check: Callable[[Reply], str | None] | None = None,
) -> Iterator[ClientUpdate]:
    """The well-formed fit replies within ``ctx.bounds``, as updates weighted by example count
    (capped); the rest are tallied with the reason.

    ``check``, when given, is a mechanism's own test of a reply (its payload, say): it returns
    why the reply must be refused, or None; it runs once the reply has passed every other test.
    """
    seen: set[str] = set()
    dim = ctx.parameters.shape[0]
    bounds = ctx.bounds
    if getattr(ctx.aggregator, "counts_each_update_alone", False):
        bounds = dataclasses.replace(bounds, norm_multiple=None)
    screen = _NormScreen(bounds, ctx.round, tally)

    def screened() -> Iterator[Reply]:
        for reply in replies:
            problem, squares = fit_problem(reply, ctx, seen, dim)
            if problem is not None or reply.vector is None:
                tally.reject(reply.client_id, problem or "no update vector", ctx.round)
                continue
            seen.add(reply.client_id)
            yield from screen.admit(reply, squares)
        yield from screen.rest()

    for passed in screened():
        update = _accepted(passed, ctx, tally, check)
        if update is not None:
            yield update


def _accepted(
    reply: Reply, ctx: RoundContext, tally: _FitTally, check: Callable[[Reply], str | None] | None
) -> ClientUpdate | None:
    problem = check(reply) if check is not None else None
    if problem is not None or reply.vector is None:
        tally.reject(reply.client_id, problem or "no update vector", ctx.round)
        return None
    cap = ctx.bounds.max_examples
    if reply.num_examples > cap:
        log.warning(
            "round %d: client %s claims %d examples; weighed as %d (--max-examples)",
            ctx.round, reply.client_id, reply.num_examples, cap,
        )  # fmt: skip
    weight = float(min(reply.num_examples, cap))
    tally.accept(reply, weight)
    return ClientUpdate(reply.client_id, reply.vector, weight, reply.metrics)


_SCREEN_WARMUP = 3
"""How many norms a round sees before it judges an update by their median."""


class _NormScreen:
    """Refuses the updates whose norm is out of :class:`UpdateBounds`, streaming: only the
    first :data:`_SCREEN_WARMUP` - 1 updates are held, until the reference exists."""

    def __init__(self, bounds: UpdateBounds, round: int, tally: _FitTally) -> None:
        self.bounds = bounds
        self.round = round
        self.tally = tally
        self.norms: list[float] = []  # sorted: every norm seen this round
        self.held: list[tuple[Reply, float]] = []

    def admit(self, reply: Reply, squares: np.float32) -> list[Reply]:
        """The replies that pass now (this one, or it and the held ones); refusals tallied.
        ``squares`` is the update's sum of squares (:func:`fit_problem`'s)."""
        assert reply.vector is not None
        limit, multiple = self.bounds.max_norm, self.bounds.norm_multiple
        if limit is None and multiple is None:
            return [reply]  # no bound to judge it by: its norm is not needed
        norm = float(np.sqrt(squares))  # numpy's norm of a float32 vector, computed once
        if not math.isfinite(norm):  # past float32's range: its size, for the reason
            norm = float(np.linalg.norm(reply.vector.astype(np.float64)))
        if limit is not None and not norm <= limit:
            self.tally.reject(
                reply.client_id,
                f"update norm {norm:.4g} is above the bound {limit:g} (--max-update-norm)",
                self.round,
            )
            return []
        if multiple is None:
            return [reply]
        bisect.insort(self.norms, norm)
        self.held.append((reply, norm))
        return self.rest() if len(self.norms) >= _SCREEN_WARMUP else []

    def rest(self) -> list[Reply]:
        """The held replies that pass against the median of every norm seen so far."""
        multiple = self.bounds.norm_multiple
        held, self.held = self.held, []
        if multiple is None or not held:
            return [reply for reply, _ in held]
        median = self.norms[(len(self.norms) - 1) // 2]
        passed = []
        for reply, norm in held:
            if median > 0 and not norm <= multiple * median:
                self.tally.reject(
                    reply.client_id,
                    f"update norm {norm:.4g} is more than {multiple:g} times the round's "
                    f"median {median:.4g} (--update-norm-multiple)",
                    self.round,
                )
            else:
                passed.append(reply)
        return passed


@dataclass(frozen=True)
class PlainRound:
    """One phase: send the model, receive updates, aggregate them as they stream in."""

    def init(self, parameters: Vector) -> None:
        return None

    def run(self, ctx: RoundContext) -> RoundSteps:
        instruction = Instruction(ctx.round, "fit", ctx.parameters, ctx.config)
        replies = yield dict.fromkeys(ctx.selected, instruction)
        tally = _FitTally()
        aggregate, state = ctx.aggregator.aggregate(
            accepted_updates(replies, ctx, tally), ctx.parameters.shape[0], ctx.aggregator_state
        )
        return RoundOutcome(
            aggregate, state, tally.metrics(), tally.rejected, accepted=tuple(tally.accepted)
        )
