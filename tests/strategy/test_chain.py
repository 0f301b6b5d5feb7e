"""The update chain: links' halves in order, the sum's weights, and every rule of what combines."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import pytest

import fedloom
from fedloom.compression import FixedPoint
from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate, Config, Metrics
from fedloom.privacy import CentralDP
from fedloom.secagg import SecAggRound
from fedloom.strategy import Chain, Total, compose, fedavg, krum, scaffold


# The example of docs/architecture.md, "Adding a link": a server link that clips each update to
# an L2 norm and reports how many it clipped. Its whole code is these lines.
@dataclass(frozen=True)
class ClipUpdates:
    norm: float
    name: ClassVar[str] = "update clipping"
    side: ClassVar[Literal["server"]] = "server"
    linear: ClassVar[bool] = False

    def init(self, dim: int) -> int:
        return 0  # updates clipped this round

    def one(self, update: ClientUpdate, clipped: int) -> tuple[ClientUpdate, int]:
        size = float(np.linalg.norm(update.vector))
        if size <= self.norm:
            return update, clipped
        vector = update.vector * np.float32(self.norm / size)
        return ClientUpdate(update.client_id, vector, update.weight), clipped + 1

    def total(self, total: Total, clipped: int) -> tuple[Total, int, Metrics]:
        return total, 0, {"clipped": float(clipped)}

    def to_config(self) -> Config:
        return {}


def _update(cid: str, values: list[float], weight: float) -> ClientUpdate:
    return ClientUpdate(cid, np.array(values, dtype=np.float32), weight)


def test_a_server_link_runs_on_each_update_before_the_weighted_mean() -> None:
    # Prepare: [3, 4] (norm 5) is clipped to norm 1, [0.3, 0] is not; weights 1 and 3:
    # (1 * [0.6, 0.8] + 3 * [0.3, 0]) / 4 = [0.375, 0.2]
    chain = Chain((ClipUpdates(1.0),))
    updates = [_update("a", [3, 4], 1.0), _update("b", [0.3, 0], 3.0)]

    # Execute
    result, state = chain.aggregate(updates, 2, chain.init(2))

    # Assert
    np.testing.assert_allclose(result.vector, [0.375, 0.2], rtol=1e-6)
    assert (result.count, result.total_weight) == (2, 4.0)
    assert result.metrics == {"clipped": 1.0}
    assert state == (0,)


def test_links_run_in_order_on_updates_and_in_reverse_on_the_sum() -> None:
    # Prepare: two links that record the order of their halves in a shared log
    log: list[str] = []

    @dataclass(frozen=True)
    class Tag:
        label: str
        name: ClassVar[str] = "tag"
        side: ClassVar[Literal["server"]] = "server"
        linear: ClassVar[bool] = True

        def init(self, dim: int) -> None:
            return None

        def one(self, update: ClientUpdate, state: None) -> tuple[ClientUpdate, None]:
            log.append(f"one {self.label}")
            return update, state

        def total(self, total: Total, state: None) -> tuple[Total, None, Metrics]:
            log.append(f"total {self.label}")
            return total, state, {self.label: 1.0}

        def to_config(self) -> Config:
            return {}

    chain = Chain((Tag("a"), Tag("b")))

    # Execute
    result, _ = chain.aggregate([_update("x", [1.0], 1.0)], 1, chain.init(1))

    # Assert
    assert log == ["one a", "one b", "total b", "total a"]
    assert result.metrics == {"b": 1.0, "a": 1.0}


def test_a_total_with_a_denominator_divides_by_it_and_an_empty_one_by_nothing() -> None:
    assert Total(np.array([2.0, 4.0]), 10.0, 2, denominator=4.0).mean().tolist() == [0.5, 1.0]
    assert Total(np.array([2.0, 4.0]), 4.0, 2).mean().tolist() == [0.5, 1.0]
    assert Total(np.zeros(2), 0.0, 0).mean().tolist() == [0.0, 0.0]


def test_the_fixed_point_link_decodes_the_weighted_sum_of_what_it_encoded() -> None:
    # Prepare: weights 2 and 6 under W = 4 are capped to 2 and 4; each client encodes
    # w/W * update and its w, and the server sums the integers mod 2^32
    link = FixedPoint(clip=1.0, bits=16, modulus_bits=32, weight_bound=4)
    chain = Chain((link,))
    sent = [_update("a", [0.5, -0.25], 2.0), _update("b", [0.1, 0.2], 6.0)]
    encoded = [chain.encode(u, [None])[0].vector for u in sent]
    total = (encoded[0] + encoded[1]) & np.uint64(2**32 - 1)

    # Execute
    result, _ = chain.finish(Total(total, 0.0, 2), chain.init(2))

    # Assert: (2 * [0.5, -0.25] + 4 * [0.1, 0.2]) / 6, to the encoding's bound
    expected = (2 * np.array([0.5, -0.25]) + 4 * np.array([0.1, 0.2])) / 6
    assert np.abs(result.vector - expected).max() <= link.error_bound_of_mean(2, 6.0) + 1e-7
    assert (result.count, result.total_weight) == (2, 6.0)
    assert [int(e[-1]) for e in encoded] == [2, 4]


def test_a_chain_client_config_is_its_client_links_settings() -> None:
    chain = Chain((FixedPoint(clip=0.5, bits=12, modulus_bits=40, weight_bound=7),))
    assert chain.client_config() == {
        "secagg.clip": 0.5, "secagg.bits": 12, "secagg.modulus_bits": 40,
        "secagg.weight_bound": 7,
    }  # fmt: skip
    assert Chain((ClipUpdates(1.0),)).client_config() == {}


def test_a_new_link_is_one_class_and_one_entry_in_the_chain() -> None:
    # Prepare: the docs' example link on a FedAvg run, through compose
    strategy = compose(fedavg(), [ClipUpdates(0.05)])

    # Execute
    result = fedloom.simulate(
        dataset="digits", model="logreg", clients=5, rounds=2, strategy=strategy
    )

    # Assert: every round reports how many of the 5 updates were clipped
    clipped = [r.metrics["clipped"] for r in result.history]
    assert len(clipped) == 2 and all(0 <= c <= 5 for c in clipped)
    assert clipped[0] > 0  # one epoch of logreg moves the model by more than 0.05


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: compose(krum(), [ClipUpdates(1.0)]), "Krum has no such bound"),
        (lambda: compose(scaffold(), [ClipUpdates(1.0)]), "cannot be combined with scaffold"),
        (
            lambda: compose(fedavg(), [CentralDP(1.0, 0.0, 5)], SecAggRound()),
            "which secure aggregation hides; use --dp distributed",
        ),
        (
            lambda: compose(krum(), [FixedPoint()], SecAggRound()),
            "but krum needs every update on its own",
        ),
        (
            lambda: compose(scaffold(), [FixedPoint()], SecAggRound()),
            "which scaffold already replaces with its own",
        ),
        (lambda: compose(fedavg(), [], SecAggRound()), "must end, on the clients, with an"),
        (lambda: compose(fedavg(), [FixedPoint()]), "only secure aggregation's rounds"),
    ],
)
def test_pieces_that_cannot_work_together_are_refused_with_the_reason(build, message) -> None:
    with pytest.raises(ConfigError, match=message):
        build()


def test_a_non_linear_client_link_cannot_run_under_secure_aggregation() -> None:
    @dataclass(frozen=True)
    class Signs(FixedPoint):
        name: ClassVar[str] = "sign compression"
        linear: ClassVar[bool] = False

    with pytest.raises(ConfigError, match="sign compression cannot be undone on a sum"):
        compose(fedavg(), [Signs()], SecAggRound())


def test_compose_keeps_a_chain_and_adds_links_after_it() -> None:
    once = compose(fedavg(), [ClipUpdates(1.0)])
    twice = compose(once, [ClipUpdates(0.5)], name="clipped twice")
    assert isinstance(twice.aggregator, Chain)
    assert twice.aggregator.links == (ClipUpdates(1.0), ClipUpdates(0.5))
    assert twice.name == "clipped twice"


def test_a_secure_strategy_can_be_renamed_but_not_given_a_server_link() -> None:
    secure = compose(fedavg(), [FixedPoint()], SecAggRound())
    assert compose(secure, [], name="renamed").name == "renamed"
    with pytest.raises(ConfigError, match=r"update clipping cannot be combined"):
        compose(secure, [ClipUpdates(1.0)])
