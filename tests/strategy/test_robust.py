from collections.abc import Iterator, Sequence

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate
from fedloom.strategy import Aggregator, WeightedMean
from fedloom.strategy._robust import (
    Bulyan,
    Krum,
    Median,
    MultiKrum,
    TrimmedMean,
    _closest_mean,
    _pairwise_sq_distances,
)

ALL: list[Aggregator] = [Median(), TrimmedMean(0.1), Krum(1), MultiKrum(1), Bulyan(1)]


def _updates(
    rows: Sequence[Sequence[float]], weights: Sequence[float] | None = None
) -> list[ClientUpdate]:
    weights = weights or [1.0] * len(rows)
    return [
        ClientUpdate(f"c{i}", np.array(row, dtype=np.float32), w)
        for i, (row, w) in enumerate(zip(rows, weights, strict=True))
    ]


# Krum example, n = 5, f = 1: each score sums the n - f - 2 = 2 smallest squared distances.
#        u0=(0,0) u1=(1,1) u2=(0,2) u3=(3,0) u4=(10,10)   score
#   u0      -       2        4        9       200         2+4 = 6
#   u1      2       -        2        5       162         2+2 = 4   <- lowest
#   u2      4       2        -       13       164         2+4 = 6
#   u3      9       5       13        -       149         5+9 = 14
#   u4    200     162      164      149        -          149+162 = 311
KRUM_EXAMPLE = [[0, 0], [1, 1], [0, 2], [3, 0], [10, 10]]


def test_median_of_an_odd_number_is_the_middle_value_per_coordinate() -> None:
    # Prepare: column 0 sorted 1, 2, 100; column 1 sorted -5, 10, 20
    updates = _updates([[1, 10], [2, 20], [100, -5]], [1, 2, 3])

    # Execute
    agg, state = Median().aggregate(updates, 2, None)

    # Assert
    assert agg.vector.dtype == np.float32
    assert agg.vector.tolist() == [2.0, 10.0]
    assert (agg.count, agg.total_weight, state) == (3, 6.0, None)


def test_median_of_an_even_number_is_the_mean_of_the_two_middle_values() -> None:
    # Prepare: column 0 sorted 1, 2, 3, 100 -> (2+3)/2; column 1 sorted -1, 0, 4, 8 -> (0+4)/2
    updates = _updates([[1, 4], [3, -1], [2, 8], [100, 0]])

    # Execute
    agg, _ = Median().aggregate(updates, 2, None)

    # Assert
    assert agg.vector.tolist() == [2.5, 2.0]


def test_robust_rules_ignore_weights_but_report_their_sum() -> None:
    # Prepare: a weighted mean would be pulled to ~100 by the heavy update; the median is not
    updates = _updates([[1], [2], [100]], [1, 1, 1000])

    # Execute
    agg, _ = Median().aggregate(updates, 1, None)

    # Assert
    assert agg.vector.tolist() == [2.0]
    assert agg.total_weight == 1002.0


def test_trimmed_mean_drops_k_values_at_each_end() -> None:
    # Prepare: n = 5, trim = 0.25 -> k = floor(1.25) = 1.
    # column 0 sorted 1, 2, 3, 4, 100 -> mean(2, 3, 4) = 3
    # column 1 sorted -50, 0, 6, 7, 9 -> mean(0, 6, 7) = 13/3
    updates = _updates([[3, 9], [100, 0], [1, 6], [4, -50], [2, 7]])

    # Execute
    agg, _ = TrimmedMean(0.25).aggregate(updates, 2, None)

    # Assert
    np.testing.assert_allclose(agg.vector, [3.0, 13 / 3], rtol=1e-7)
    assert agg.count == 5


def test_trimmed_mean_counts_k_from_the_decimal_trim() -> None:
    # Prepare: 0.29 * 100 is 28.999999999999996 in floating point, but k = floor(29) = 29.
    # 29 zeros, 42 ones, 29 tens: k = 29 keeps only the ones (mean 1); k = 28 would keep a 0
    # and a 10 too (mean 52/44).
    values = [0.0] * 29 + [1.0] * 42 + [10.0] * 29

    # Execute
    agg, _ = TrimmedMean(0.29).aggregate(_updates([[v] for v in values]), 1, None)

    # Assert
    assert agg.vector.tolist() == [1.0]


def test_trimmed_mean_with_trim_zero_is_the_plain_mean() -> None:
    # Prepare: equal weights, so the weighted mean is the plain mean too
    rows = np.random.default_rng(0).normal(size=(7, 50)).astype(np.float32)
    updates = [ClientUpdate(str(i), row, 1.0) for i, row in enumerate(rows)]

    # Execute
    agg, _ = TrimmedMean(0.0).aggregate(updates, 50, None)
    mean, _ = WeightedMean().aggregate(updates, 50, None)

    # Assert
    np.testing.assert_allclose(agg.vector, rows.astype(np.float64).mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(agg.vector, mean.vector, rtol=1e-7)


def test_krum_picks_the_update_with_the_lowest_score() -> None:
    # Prepare: KRUM_EXAMPLE's table: u1 scores 4, the lowest
    updates = _updates(KRUM_EXAMPLE)

    # Execute
    agg, _ = Krum(byzantine=1).aggregate(updates, 2, None)

    # Assert
    assert agg.vector.tolist() == [1.0, 1.0]
    assert agg.count == 5


def test_krum_breaks_a_tie_by_arrival_order() -> None:
    # Prepare: f = 0, n = 3, one neighbour each: u0-u1 at 1, u1-u2 at 4, u0-u2 at 9;
    # scores u0 = 1, u1 = 1, u2 = 4 -> u0 and u1 tie, u0 came first
    updates = _updates([[0], [1], [3]])

    # Execute
    agg, _ = Krum(0).aggregate(updates, 1, None)

    # Assert
    assert agg.vector.tolist() == [0.0]


def test_krum_resists_one_huge_outlier() -> None:
    # Prepare: five honest updates near (1, 1) and one enormous one; f = 1, n = 6 > 2f + 2
    rows = [[1.0, 1.0], [1.1, 0.9], [0.9, 1.2], [1.2, 1.0], [0.8, 0.8], [1e30, -1e30]]

    # Execute
    agg, _ = Krum(1).aggregate(_updates(rows), 2, None)
    mean, _ = WeightedMean().aggregate(_updates(rows), 2, None)

    # Assert: the result is one of the honest updates, where the mean is ruined
    assert agg.vector.tolist() in np.array(rows[:5], dtype=np.float32).tolist()
    assert abs(mean.vector[0]) > 1e28


@pytest.mark.parametrize(
    ("m", "expected"),
    [
        # lowest scores (KRUM_EXAMPLE): u1 = 4, then u0 = u2 = 6 (tie: u0 arrived first), u3 = 14
        (1, [1.0, 1.0]),  # u1
        (2, [0.5, 0.5]),  # u1, u0
        (3, [1 / 3, 1.0]),  # u1, u0, u2: ((1+0+0)/3, (1+0+2)/3)
        (None, [1.0, 0.75]),  # m = n - f = 4: u1, u0, u2, u3: ((1+0+0+3)/4, (1+0+2+0)/4)
    ],
)
def test_multi_krum_averages_the_m_best_scored_updates(
    m: int | None, expected: list[float]
) -> None:
    # Prepare
    updates = _updates(KRUM_EXAMPLE, [1, 2, 3, 4, 5])

    # Execute
    agg, _ = MultiKrum(byzantine=1, m=m).aggregate(updates, 2, None)

    # Assert: unweighted, whatever the weights
    np.testing.assert_allclose(agg.vector, expected, rtol=1e-7)
    assert (agg.count, agg.total_weight) == (5, 15.0)


def test_bulyan_selects_by_repeated_krum_then_averages_around_the_median() -> None:
    # Prepare: n = 7, f = 1, so theta = n - 2f = 5 are selected and beta = theta - 2f = 3
    # values per coordinate are averaged. u6 is the attacker.
    #
    # squared distances   u0   u1   u2   u3   u4   u5   u6
    #   u0 = (4, 0)        -   13   17   10    5    5  4616
    #   u1 = (1, 2)       13    -    8    1    2   16  5105
    #   u2 = (3, 4)       17    8    -   13   10    8  5125
    #   u3 = (1, 1)       10    1   13    -    1   17  5002
    #   u4 = (2, 1)        5    2   10    1    -   10  4905
    #   u5 = (5, 2)        5   16    8   17   10    -  4729
    #   u6 = (50, -50)  4616 5105 5125 5002 4905 4729     -
    #
    # Krum over the remaining set R, scores = sum of the |R| - f - 2 smallest distances in R:
    #   |R| = 7, 4 each: u0 5+5+10+13 = 33, u1 1+2+8+13 = 24, u2 8+8+10+13 = 39,
    #       u3 1+1+10+13 = 25, u4 1+2+5+10 = 18, u5 5+8+10+16 = 39, u6 19252  -> u4
    #   |R| = 6, 3 each: u0 5+10+13 = 28, u1 1+8+13 = 22, u2 8+8+13 = 29, u3 1+10+13 = 24,
    #       u5 5+8+16 = 29                                                 -> u1
    #   |R| = 5, 2 each: u0 5+10 = 15, u2 8+13 = 21, u3 10+13 = 23, u5 5+8 = 13  -> u5
    #   |R| = 4, 1 each: u0 10, u2 13, u3 10 (tie with u0, which came first)     -> u0
    #   |R| = 3, 0 each: all 0, the first remaining                              -> u2
    # Selection S = {u4, u1, u5, u0, u2}: u3 and the attacker are left out.
    #
    # Coordinate 0 of S sorted: 1, 2, 3, 4, 5; median 3; the 3 closest: 3, 2, 4 -> 3
    # Coordinate 1 of S sorted: 0, 1, 2, 2, 4; median 2; the 3 closest: 2, 2, 1 -> 5/3
    rows = [[4, 0], [1, 2], [3, 4], [1, 1], [2, 1], [5, 2], [50, -50]]

    # Execute
    agg, _ = Bulyan(byzantine=1).aggregate(_updates(rows), 2, None)

    # Assert
    np.testing.assert_allclose(agg.vector, [3.0, 5 / 3], rtol=1e-7)
    assert agg.count == 7


def test_bulyan_takes_the_lowest_of_equally_close_runs() -> None:
    # Prepare: each row is one coordinate's chosen values, sorted; beta = 3.
    # 0, 1, 2, 4, 4: median 2; the runs holding it, {0,1,2}, {1,2,4} and {2,4,4}, all reach 2
    # from it, so the lowest wins: mean 1.
    # 0, 1, 2, 3, 9: median 2; {1,2,3} reaches 1, {0,1,2} 2 and {2,3,9} 7: mean 2.
    block = np.array([[0, 1, 2, 4, 4], [0, 1, 2, 3, 9]], dtype=np.float32)

    # Execute
    means = _closest_mean(block, 3)

    # Assert
    assert means.tolist() == [1.0, 2.0]


def test_min_updates_and_requirement() -> None:
    # Krum and Multi-Krum: n > 2f + 2; Multi-Krum with m also n >= f + m; Bulyan: n >= 4f + 3
    cases = [
        (Median(), 1),
        (TrimmedMean(0.2), 1),
        (Krum(2), 7),
        (MultiKrum(2), 7),
        (MultiKrum(2, m=6), 8),
        (MultiKrum(2, m=1), 7),
        (Bulyan(2), 11),
        (Krum(0), 3),
        (Bulyan(0), 3),
    ]
    for aggregator, least in cases:
        assert aggregator.min_updates == least, aggregator
        assert f"at least {least} update" in aggregator.requirement
    assert Krum(2).requirement == "krum with byzantine=2 needs n > 2f + 2, at least 7 updates"


@pytest.mark.parametrize("aggregator", [Krum(1), MultiKrum(1), MultiKrum(1, m=4), Bulyan(1)])
def test_too_few_updates_give_zeros_with_the_true_count(
    aggregator: Krum | MultiKrum | Bulyan,
) -> None:
    # Prepare: one update fewer than the guarantee covers (Krum 5, Multi-Krum 5 or 5, Bulyan 7)
    n = aggregator.min_updates - 1
    updates = _updates([[float(i), 1.0] for i in range(n)], [2.0] * n)

    # Execute
    agg, _ = aggregator.aggregate(updates, 2, None)

    # Assert: no error here; the round loop compares count with min_updates
    assert agg.vector.tolist() == [0.0, 0.0] and agg.vector.dtype == np.float32
    assert (agg.count, agg.total_weight) == (n, 2.0 * n)


@pytest.mark.parametrize("aggregator", ALL)
def test_no_updates_give_zeros_with_count_zero(aggregator: Aggregator) -> None:
    agg, _ = aggregator.aggregate([], 3, None)
    assert agg.vector.tolist() == [0.0, 0.0, 0.0]
    assert (agg.count, agg.total_weight) == (0, 0.0)


@pytest.mark.parametrize("trim", [-0.1, 0.5, 0.7])
def test_trim_outside_its_range_is_refused(trim: float) -> None:
    with pytest.raises(ConfigError, match=r"--trim .*\[0, 0\.5\)"):
        TrimmedMean(trim)


@pytest.mark.parametrize("make", [Krum, MultiKrum, Bulyan])
@pytest.mark.parametrize("byzantine", [-1, 1.5, "2"])
def test_bad_byzantine_is_refused(make: type, byzantine: object) -> None:
    with pytest.raises(ConfigError, match="--byzantine"):
        make(byzantine=byzantine)


@pytest.mark.parametrize("m", [0, -2, 2.5])
def test_bad_multi_krum_m_is_refused(m: object) -> None:
    with pytest.raises(ConfigError, match="--krum-m"):
        MultiKrum(1, m=m)  # type: ignore[arg-type]


def test_whole_floats_are_accepted_as_counts() -> None:
    assert MultiKrum(2.0, m=3.0) == MultiKrum(2, m=3)  # type: ignore[arg-type]


@pytest.mark.parametrize("aggregator", ALL)
def test_inputs_are_not_mutated(aggregator: Aggregator) -> None:
    # Prepare: rows of one array, as a fleet might hand them over
    matrix = np.random.default_rng(1).normal(size=(9, 40)).astype(np.float32)
    before = matrix.copy()
    updates = [ClientUpdate(str(i), row, 1.0) for i, row in enumerate(matrix)]

    # Execute
    agg, _ = aggregator.aggregate(updates, 40, None)

    # Assert
    np.testing.assert_array_equal(matrix, before)
    assert not np.shares_memory(agg.vector, matrix)


@pytest.mark.parametrize("aggregator", ALL)
def test_a_stream_is_consumed_once(aggregator: Aggregator) -> None:
    # Prepare: more updates than the stacking's first guess for a stream (8), so it grows
    rows = np.random.default_rng(2).normal(size=(19, 30)).astype(np.float32)

    def stream() -> Iterator[ClientUpdate]:
        for i, row in enumerate(rows):
            yield ClientUpdate(str(i), row, 1.0)

    # Execute
    from_stream, _ = aggregator.aggregate(stream(), 30, None)
    from_list, _ = aggregator.aggregate(list(stream()), 30, None)

    # Assert
    np.testing.assert_array_equal(from_stream.vector, from_list.vector)
    assert from_stream.count == 19


def test_pairwise_distances_match_brute_force_over_many_column_blocks() -> None:
    # Prepare: dim = 300,000 is several of the Gram matrix's column blocks; a common offset of
    # 100 makes a·b much larger than ‖a - b‖², the case where float32 sums would cancel badly
    rng = np.random.default_rng(3)
    matrix = (100 + rng.normal(size=(20, 300_000))).astype(np.float32)
    wide = matrix.astype(np.float64)
    expected = np.array([((wide - row) ** 2).sum(axis=1) for row in wide])

    # Execute
    dist = _pairwise_sq_distances(matrix)

    # Assert
    np.testing.assert_allclose(dist, expected, rtol=1e-9)
    assert (np.diag(dist) == 0).all() and (dist >= 0).all()
    np.testing.assert_array_equal(dist, dist.T)


def test_rules_match_direct_references_across_column_blocks() -> None:
    # Prepare: dim = 40,000 spans three of the coordinate-wise rules' column blocks; n = 11,
    # f = 2: Bulyan selects theta = 7 and averages beta = 3 per coordinate
    rng = np.random.default_rng(4)
    matrix = rng.normal(size=(11, 40_000)).astype(np.float32)
    updates = [ClientUpdate(str(i), row, 1.0) for i, row in enumerate(matrix)]
    wide = matrix.astype(np.float64)
    ordered = np.sort(wide, axis=0)
    scores = np.sort(_pairwise_sq_distances(matrix), axis=1)[:, 1:8].sum(axis=1)  # n - f - 2 = 7

    # Execute
    median, _ = Median().aggregate(updates, 40_000, None)
    trimmed, _ = TrimmedMean(0.2).aggregate(updates, 40_000, None)  # k = 2
    krum, _ = Krum(2).aggregate(updates, 40_000, None)
    multi, _ = MultiKrum(2).aggregate(updates, 40_000, None)

    # Assert
    np.testing.assert_allclose(median.vector, np.median(wide, axis=0), rtol=1e-6)
    np.testing.assert_allclose(trimmed.vector, ordered[2:9].mean(axis=0), rtol=1e-5, atol=1e-7)
    np.testing.assert_array_equal(krum.vector, matrix[np.argmin(scores)])
    best = np.argsort(scores, kind="stable")[:9]
    np.testing.assert_allclose(multi.vector, wide[best].mean(axis=0), rtol=1e-5, atol=1e-7)


def test_bulyan_matches_a_direct_reference_across_column_blocks() -> None:
    # Prepare: the reference sorts each coordinate's distances from the median in full
    rng = np.random.default_rng(5)
    matrix = rng.normal(size=(11, 40_000)).astype(np.float32)
    matrix[10] *= 1000  # an attacker
    updates = [ClientUpdate(str(i), row, 1.0) for i, row in enumerate(matrix)]
    dist = _pairwise_sq_distances(matrix)
    remaining, chosen = list(range(11)), list[int]()
    while len(chosen) < 7:  # theta = n - 2f
        sub = dist[np.ix_(remaining, remaining)]
        k = max(len(remaining) - 4, 0)  # |R| - f - 2
        scores = np.sort(sub, axis=1)[:, 1 : k + 1].sum(axis=1)
        chosen.append(remaining.pop(int(np.argmin(scores))))
    picked = matrix[chosen].astype(np.float64)
    closest = np.argsort(np.abs(picked - np.median(picked, axis=0)), axis=0, kind="stable")[:3]
    expected = np.take_along_axis(picked, closest, axis=0).mean(axis=0)

    # Execute
    agg, _ = Bulyan(2).aggregate(updates, 40_000, None)

    # Assert
    assert 10 not in chosen
    np.testing.assert_allclose(agg.vector, expected, rtol=1e-5, atol=1e-7)
