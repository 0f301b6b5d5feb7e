"""The masking graph: complete for SecAgg, a randomly labelled Harary graph H(k, n) for SecAgg+."""

from collections import deque

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.secagg._graph import neighbours, secagg_plus_degree


def _ids(n: int) -> list[str]:
    return [f"client-{i:03d}" for i in range(n)]


def _is_connected(graph: dict[str, frozenset[str]]) -> bool:
    start = next(iter(graph))
    seen = {start}
    queue = deque([start])
    while queue:
        for v in graph[queue.popleft()] - seen:
            seen.add(v)
            queue.append(v)
    return len(seen) == len(graph)


def _assert_simple_and_symmetric(graph: dict[str, frozenset[str]]) -> None:
    for u, near in graph.items():
        assert u not in near
        for v in near:
            assert u in graph[v]


def test_secagg_is_the_complete_graph() -> None:
    ids = ["c", "a", "b", "d"]

    graph = neighbours(ids, degree=None, seed=7)

    assert list(graph) == ids
    assert graph == {
        "a": {"b", "c", "d"},
        "b": {"a", "c", "d"},
        "c": {"a", "b", "d"},
        "d": {"a", "b", "c"},
    }


@pytest.mark.parametrize(("n", "degree"), [(5, 4), (5, 9), (2, 1), (1, 1), (1, None), (0, 3)])
def test_degree_of_n_minus_1_or_more_is_complete(n: int, degree: int | None) -> None:
    ids = _ids(n)

    graph = neighbours(ids, degree=degree, seed=0)

    assert graph == {c: frozenset(ids) - {c} for c in ids}


@pytest.mark.parametrize(
    ("n", "degree", "by_position"),
    [
        # H(2, 5): the 5-cycle.
        (5, 2, {0: {4, 1}, 1: {0, 2}, 2: {1, 3}, 3: {2, 4}, 4: {3, 0}}),
        # H(3, 6): the 6-cycle plus the diameters i -- i + 3.
        (
            6,
            3,
            {0: {5, 1, 3}, 1: {0, 2, 4}, 2: {1, 3, 5}, 3: {2, 4, 0}, 4: {3, 5, 1}, 5: {4, 0, 2}},
        ),
        # H(3, 7): the 7-cycle plus i -- i + 4 for i = 0..3, so 3 -- 0 and position 0 has degree 4.
        (
            7,
            3,
            {
                0: {6, 1, 4, 3},
                1: {0, 2, 5},
                2: {1, 3, 6},
                3: {2, 4, 0},
                4: {3, 5, 0},
                5: {4, 6, 1},
                6: {5, 0, 2},
            },
        ),
        # H(4, 7): each to two on either side.
        (7, 4, {i: {(i - 2) % 7, (i - 1) % 7, (i + 1) % 7, (i + 2) % 7} for i in range(7)}),
    ],
)
def test_harary_graph_by_hand(n: int, degree: int, by_position: dict[int, set[int]]) -> None:
    # Prepare: the documented ring is the sorted ids in the order of default_rng(seed).permutation.
    ids = _ids(n)
    ring = [sorted(ids)[i] for i in np.random.default_rng(5).permutation(n)]

    graph = neighbours(ids, degree=degree, seed=5)

    assert graph == {ring[i]: {ring[j] for j in near} for i, near in by_position.items()}


@pytest.mark.parametrize("n", [10, 13, 24, 31, 50])
@pytest.mark.parametrize("degree", [2, 4, 6, 8])
def test_even_degree_is_regular(n: int, degree: int) -> None:
    graph = neighbours(_ids(n), degree=degree, seed=n)

    assert {len(near) for near in graph.values()} == {degree}


@pytest.mark.parametrize("n", [10, 24, 50])
@pytest.mark.parametrize("degree", [1, 3, 5, 7])
def test_odd_degree_with_even_n_is_regular(n: int, degree: int) -> None:
    graph = neighbours(_ids(n), degree=degree, seed=n)

    assert {len(near) for near in graph.values()} == {degree}


@pytest.mark.parametrize("n", [11, 13, 49])
@pytest.mark.parametrize("degree", [1, 3, 5, 7])
def test_odd_degree_with_odd_n_has_one_node_of_degree_k_plus_1(n: int, degree: int) -> None:
    graph = neighbours(_ids(n), degree=degree, seed=n)

    degrees = sorted(len(near) for near in graph.values())

    assert degrees == [degree] * (n - 1) + [degree + 1]


@pytest.mark.parametrize("degree", range(1, 9))
def test_symmetric_without_self_loops_and_connected_from_degree_2(degree: int) -> None:
    for n in range(10, 51):
        graph = neighbours(_ids(n), degree=degree, seed=1000 + n)
        _assert_simple_and_symmetric(graph)
        assert set(graph) == set(_ids(n))
        if degree >= 2:
            assert _is_connected(graph), (n, degree)


def test_deterministic_and_independent_of_id_order() -> None:
    ids = _ids(30)

    graph = neighbours(ids, degree=6, seed=42)

    assert graph == neighbours(list(reversed(ids)), degree=6, seed=42)
    assert graph == neighbours(tuple(ids[7:] + ids[:7]), degree=6, seed=42)
    assert graph != neighbours(ids, degree=6, seed=43)
    assert graph != neighbours(ids, degree=4, seed=42)


def test_different_seeds_give_different_graphs() -> None:
    ids = _ids(40)

    graphs = {frozenset(neighbours(ids, degree=4, seed=s).items()) for s in range(20)}

    assert len(graphs) == 20


def test_validation() -> None:
    with pytest.raises(ConfigError, match="--secagg-degree must be at least 1"):
        neighbours(_ids(5), degree=0, seed=0)
    with pytest.raises(ValueError, match="--secagg-degree"):
        neighbours(_ids(5), degree=-2, seed=0)
    with pytest.raises(ValueError, match="distinct"):
        neighbours(["a", "b", "a"], degree=None, seed=0)
    with pytest.raises(ValueError, match="at least one client"):
        secagg_plus_degree(0)


def test_default_degree_is_logarithmic_and_complete_for_small_n() -> None:
    # min(n - 1, 2 * ceil(log2 n) + 2), at least 1: by hand for a few n.
    expected = {1: 1, 2: 1, 3: 2, 8: 7, 11: 10, 12: 10, 16: 10, 17: 12, 100: 16, 1000: 22}

    got = {n: secagg_plus_degree(n) for n in expected}

    assert got == expected
    for n in range(12, 2000):
        degree = secagg_plus_degree(n)
        assert degree % 2 == 0 and degree < n - 1
    for n in range(1, 12):
        assert secagg_plus_degree(n) == n - 1 or n == 1
