"""The update chain: privacy and compression as links between a client's update and the mean.

A :class:`Link` is one step (clip and noise, encode as integers, quantize, ...) with two halves:
``one`` runs on every update, in order, and ``total`` runs once on the round's sum, in reverse
order (where an encoding is decoded and noise is added). A link runs on the ``"server"`` (it
sees each update: central DP's clipping) or on the ``"client"`` (its ``one`` runs before the
update leaves the client, its ``total`` on the server). A client link that is ``linear`` can be
undone on a sum nobody saw the parts of, so it composes with secure aggregation.

A :class:`Chain` of links has the aggregator's shape: in a plain round it runs the server links'
``one`` on each update, sums the updates with their weights in one streaming pass, and runs every
``total``; under secure aggregation the client links encode, the mechanism masks and sums, and
:meth:`Chain.finish` decodes. :func:`compose` puts a chain (and a mechanism) into a strategy and
holds every rule of what combines with what.

A new transform is its own module with a class that has the :class:`Link` methods, plus one
entry where the run's chain is built (``fedloom.recipes``).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Literal, Protocol, runtime_checkable

from fedloom.errors import ConfigError
from fedloom.messages import Aggregate, ClientUpdate, Config, Metrics
from fedloom.strategy._aggregate import Total, WeightedMean, weighted_sum
from fedloom.strategy._mechanism import PlainRound, RoundMechanism
from fedloom.strategy._strategy import Strategy

__all__ = ["Chain", "Encoding", "Link", "check_sum_only", "compose", "hides_updates"]

_AVERAGING = "fedavg, fedavgm, fedprox, fedadam, fedyogi, fedadagrad"


class Link(Protocol):
    """One step of privacy or compression in the update chain."""

    @property
    def name(self) -> str:
        """What the link is called in messages."""
        ...

    @property
    def side(self) -> Literal["client", "server"]:
        """Where ``one`` runs: on each client before its update is sent, or on the server."""
        ...

    @property
    def linear(self) -> bool:
        """Can ``total`` undo ``one`` on a sum whose parts nobody saw (secure aggregation)?"""
        ...

    def init(self, dim: int) -> Any:
        """The link's state before the first round, for updates of length ``dim``."""
        ...

    def one(self, update: ClientUpdate, state: Any) -> tuple[ClientUpdate, Any]:
        """Transform one update; the state goes on to the next update and to ``total``."""
        ...

    def total(self, total: Total, state: Any) -> tuple[Total, Any, Metrics]:
        """Work on the round's sum; the next round's state, and metrics for the round."""
        ...

    def to_config(self) -> Config:
        """A client link's settings, sent with the instruction (empty for a server link)."""
        ...


@runtime_checkable
class Encoding(Link, Protocol):
    """A client link whose output is integers mod ``2**modulus_bits``: what secure aggregation
    masks and sums. It is the last client link of a chain under secure aggregation."""

    @property
    def modulus_bits(self) -> int:
        """k: the encoded values are integers mod 2^k."""
        ...

    def encoded_size(self, dim: int) -> int:
        """The length of an encoded update of ``dim`` values."""
        ...


@dataclass(frozen=True)
class Chain:
    """The links between the clients' updates and the round's mean, in order.

    Its state is one state per link. ``min_contributors`` is the most any link asks for (under
    secure aggregation, nothing is unmasked with fewer inputs) and ``requirement`` says why.
    """

    links: tuple[Link, ...] = ()

    @property
    def client_links(self) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.side == "client")

    @property
    def server_links(self) -> tuple[Link, ...]:
        return tuple(link for link in self.links if link.side == "server")

    @property
    def encoding(self) -> Encoding | None:
        """The last client link, when it encodes as integers (for secure aggregation)."""
        client = self.client_links
        last = client[-1] if client else None
        return last if isinstance(last, Encoding) else None

    @property
    def min_contributors(self) -> int:
        return max((int(getattr(link, "min_contributors", 0)) for link in self.links), default=0)

    @property
    def counts_each_update_alone(self) -> bool:
        """Does a link's guarantee hold only if no update is kept or refused for what the
        other updates are (central DP's sensitivity)? Then the round's median screen is off."""
        return any(getattr(link, "counts_each_update_alone", False) for link in self.links)

    @property
    def requirement(self) -> str | None:
        need = self.min_contributors
        for link in self.links:
            if need and int(getattr(link, "min_contributors", 0)) == need:
                return str(getattr(link, "requirement", "") or "") or None
        return None

    def init(self, dim: int) -> tuple[Any, ...]:
        return tuple(link.init(dim) for link in self.links)

    def aggregate(
        self, updates: Iterable[ClientUpdate], dim: int, state: tuple[Any, ...]
    ) -> tuple[Aggregate, tuple[Any, ...]]:
        """A plain round: each server link's ``one`` on every update, the streaming weighted
        sum, every link's ``total`` in reverse. ``total_weight`` is the weight the updates
        arrived with."""
        states = list(state)
        arrived = 0.0

        def through() -> Iterator[ClientUpdate]:
            nonlocal arrived
            for update in updates:
                arrived += update.weight
                for i, link in enumerate(self.links):
                    if link.side == "server":
                        update, states[i] = link.one(update, states[i])
                yield update

        total, metrics = self._totals(weighted_sum(through(), dim), states)
        return Aggregate(total.mean(), total.count, arrived, metrics), tuple(states)

    def encode(self, update: ClientUpdate, state: Sequence[Any]) -> tuple[ClientUpdate, list[Any]]:
        """A client's half: the client links' ``one``, in order (``state``: theirs)."""
        states = list(state)
        for i, link in enumerate(self.client_links):
            update, states[i] = link.one(update, states[i])
        return update, states

    def finish(self, total: Total, state: tuple[Any, ...]) -> tuple[Aggregate, tuple[Any, ...]]:
        """Secure aggregation's unmasked sum: every link's ``total`` in reverse (the encoding's
        first, which decodes it)."""
        states = list(state)
        total, metrics = self._totals(total, states)
        return Aggregate(total.mean(), total.count, total.weight, metrics), tuple(states)

    def client_config(self) -> Config:
        """The client links' settings, merged, for the instructions."""
        out: dict[str, Any] = {}
        for link in self.client_links:
            out.update(link.to_config())
        return out

    def _totals(self, total: Total, states: list[Any]) -> tuple[Total, dict[str, float]]:
        metrics: dict[str, float] = {}
        for i in reversed(range(len(self.links))):
            total, states[i], more = self.links[i].total(total, states[i])
            metrics.update(more)
        return total, metrics


def hides_updates(mechanism: RoundMechanism) -> bool:
    """Does ``mechanism`` keep individual updates from the server (secure aggregation)? A
    mechanism says so with a true ``hides_updates`` attribute."""
    return bool(getattr(mechanism, "hides_updates", False))


def compose(
    strategy: Strategy,
    links: Sequence[Link] = (),
    mechanism: RoundMechanism | None = None,
    *,
    name: str | None = None,
) -> Strategy:
    """``strategy`` with the update chain ``links`` (in order) and, when given, ``mechanism``
    in place of its round (secure aggregation, say); ``name`` renames it.

    Every rule of what combines is here:

    - a link wraps a weighted mean, never a rule that must see every update (Krum, the
      median), and not a round that sends more than the update (SCAFFOLD's control variates);
    - a mechanism that hides the updates (secure aggregation) sees only a sum: the strategy
      must average and run the plain fit round it replaces; its chain's links must all run on
      the clients and be linear, and end in an integer encoding;
    - client links run only under such a mechanism (plain rounds send float32 updates).

    Raises
    ------
    ConfigError
        When the pieces cannot work together; the message says why and what to use.
    """
    chain_links = tuple(links)
    aggregator = strategy.aggregator
    if isinstance(aggregator, Chain):
        chain_links = aggregator.links + chain_links
    averaging = isinstance(aggregator, WeightedMean | Chain)
    own_round = not isinstance(strategy.mechanism, PlainRound)
    hides = hides_updates(mechanism if mechanism is not None else strategy.mechanism)
    for link in chain_links:
        if link.side != "server":
            continue
        if not averaging:
            raise ConfigError(
                f"{link.name} bounds each client's influence on a mean; {strategy.name}'s "
                f"{type(aggregator).__name__} has no such bound; use a strategy that averages "
                f"({_AVERAGING})"
            )
        if own_round:
            raise ConfigError(f"{link.name} cannot be combined with {strategy.name}'s own rounds")
        if hides:
            hint = getattr(link, "alternative", None)
            raise ConfigError(
                f"{link.name} works on each update on the server, which secure aggregation "
                f"hides" + (f"; {hint}" if hint else "")
            )
    if hides:
        if not averaging:
            raise ConfigError(
                f"secure aggregation lets the server see only the sum of the updates, but "
                f"{strategy.name} needs every update on its own; use a strategy that averages "
                f"({_AVERAGING})"
            )
        if own_round and mechanism is not None:
            raise ConfigError(
                f"secure aggregation replaces the round's single fit phase, which "
                f"{strategy.name} already replaces with its own; they cannot be combined"
            )
        for link in chain_links:
            if not link.linear:
                raise ConfigError(
                    f"{link.name} cannot be undone on a sum whose parts nobody saw (it is not "
                    "linear), so it cannot run under secure aggregation"
                )
        if Chain(chain_links).encoding is None:
            raise ConfigError(
                "secure aggregation masks integers mod 2^k: its chain must end, on the clients, "
                "with an integer encoding (fixed point, or distributed DP)"
            )
    else:
        for link in chain_links:
            if link.side == "client":
                raise ConfigError(
                    f"{link.name} runs on the clients, which only secure aggregation's rounds "
                    "support so far; plain rounds send float32 updates"
                )
    changes: dict[str, Any] = {"aggregator": Chain(chain_links) if chain_links else aggregator}
    if mechanism is not None:
        changes["mechanism"] = mechanism
    if name is not None:
        changes["name"] = name
    return dataclasses.replace(strategy, **changes)


def check_sum_only(aggregator: Any) -> tuple[Chain, Encoding]:
    """The chain a mechanism that sees only the sum works with, and its integer encoding;
    refused for any other aggregator (it would need each update on its own)."""
    encoding = aggregator.encoding if isinstance(aggregator, Chain) else None
    if encoding is None:
        raise ConfigError(
            "secure aggregation reveals only the sum of the updates, so it composes only "
            "with the weighted mean behind an integer encoding (a Chain ending in one), not "
            f"with {type(aggregator).__name__}; build the strategy with compose()"
        )
    return aggregator, encoding
