"""NumberedClients: a population's ids in sorted order, without building them."""

from __future__ import annotations

import pytest

from fedloom.errors import ConfigError
from fedloom.strategy import AllClients, CountSampler, FractionSampler, NumberedClients


@pytest.mark.parametrize("n", [0, 1, 2, 9, 10, 11, 19, 99, 100, 101, 1000, 1234, 5001])
def test_it_is_the_sorted_list_of_the_decimal_ids(n: int) -> None:
    # Prepare
    expected = sorted(str(i) for i in range(n))

    # Execute
    ids = NumberedClients(n)

    # Assert
    assert len(ids) == n
    assert list(ids) == expected
    if n:
        assert ids[-1] == expected[-1] and ids[1:4] == expected[1:4]


def test_membership_accepts_only_canonical_ids_below_n() -> None:
    # Execute
    ids = NumberedClients(1000)

    # Assert
    assert "0" in ids and "999" in ids
    for outsider in ("1000", "-1", "01", "", "1.5", "٣", 7):
        assert outsider not in ids


def test_out_of_range_ranks_raise_index_error_and_negative_sizes_config_error() -> None:
    # Execute / Assert
    with pytest.raises(IndexError):
        NumberedClients(5)[5]
    with pytest.raises(ConfigError, match="cannot have -1 clients"):
        NumberedClients(-1)


@pytest.mark.parametrize(
    "sampler", [CountSampler(7, seed=3), FractionSampler(0.01, seed=5), AllClients()]
)
def test_samplers_pick_the_same_clients_as_from_the_list_of_ids(sampler: object) -> None:
    # Prepare
    n = 1234
    listed = [str(i) for i in range(n)]

    # Execute / Assert: same draw, so a population of any size samples as before
    for round in (1, 2, 9):
        assert sampler.select(NumberedClients(n), round) == sampler.select(listed, round)  # type: ignore[attr-defined]


def test_a_million_ids_index_fast_enough_to_sample_from() -> None:
    # Execute
    ids = NumberedClients(10**6)
    chosen = CountSampler(100, seed=0).select(ids, 1)

    # Assert: the ranks map to distinct valid ids, sorted as strings
    assert len(set(chosen)) == 100 and chosen == sorted(chosen)
    assert all(c in ids for c in chosen)
    assert ids[0] == "0" and ids[1] == "1" and ids[2] == "10" and ids[-1] == "999999"
