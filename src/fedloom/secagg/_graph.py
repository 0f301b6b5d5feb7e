"""Who masks with whom: the client graph of SecAgg (complete) and SecAgg+ (Harary, degree k).

Bonawitz et al. (CCS 2017) have every pair of clients agree a mask, so each client does O(n) work.
Bell et al. (CCS 2020) mask only along the edges of a sparse random graph of degree Θ(log n):
a Harary graph H(k, n) whose nodes are the clients in a random order.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from fedloom.errors import ConfigError

__all__ = ["neighbours", "secagg_plus_degree"]


def neighbours(ids: Sequence[str], degree: int | None, seed: int) -> dict[str, frozenset[str]]:
    """Each client's masking neighbours.

    With ``degree=None`` (SecAgg) every client neighbours every other. Otherwise (SecAgg+) the
    sorted ids are shuffled with ``np.random.default_rng(seed)`` and placed on a ring in that order,
    forming the Harary graph H(k, n), k = ``degree``, n = ``len(ids)``:

    - each client connects to its ``k // 2`` nearest on each side of the ring;
    - for odd k and even n, also to the diametrically opposite client, ``n / 2`` places on;
      every client then has degree exactly k;
    - for odd k and odd n, ring positions i = 0 .. (n - 1) / 2 also connect to i + (n + 1) / 2
      (mod n), Harary's construction: every client has degree k except the one at ring position
      0, which has k + 1 (it is reached from both position (n - 1) / 2 and (n + 1) / 2).

    The graph is symmetric, has no self-loops, and is k-connected, hence connected for k >= 2.
    A degree of n - 1 or more gives the complete graph. The result depends on the set of ids, the
    degree and the seed only, not on the order of ``ids``.

    Parameters
    ----------
    ids
        Distinct client ids.
    degree
        The SecAgg+ degree k >= 1 (``--secagg-degree``), or None for SecAgg.
    seed
        Seeds the random order on the ring; ignored for the complete graph.

    Returns
    -------
    dict[str, frozenset[str]]
        For each id, in the order of ``ids``, the set of its neighbours.

    Examples
    --------
    >>> graph = neighbours(["a", "b", "c", "d", "e", "f"], degree=2, seed=0)
    >>> sorted(len(graph[c]) for c in graph)
    [2, 2, 2, 2, 2, 2]
    >>> neighbours(["a", "b", "c"], degree=None, seed=0)["a"] == {"b", "c"}
    True
    """
    if degree is not None and degree < 1:
        raise ConfigError(
            f"--secagg-degree must be at least 1, got {degree}; leave it unset for the default"
        )
    if len(set(ids)) != len(ids):
        raise ValueError("client ids must be distinct")
    n = len(ids)
    if degree is None or degree >= n - 1:
        everyone = frozenset(ids)
        return {c: everyone - {c} for c in ids}

    order = np.random.default_rng(seed).permutation(n)
    ordered = sorted(ids)
    ring = [ordered[i] for i in order]
    links: dict[str, set[str]] = {c: set() for c in ring}

    def link(i: int, j: int) -> None:
        u, v = ring[i % n], ring[j % n]
        links[u].add(v)
        links[v].add(u)

    for i in range(n):
        for step in range(1, degree // 2 + 1):
            link(i, i + step)
    if degree % 2 == 1:
        if n % 2 == 0:
            for i in range(n // 2):
                link(i, i + n // 2)
        else:
            for i in range((n + 1) // 2):
                link(i, i + (n + 1) // 2)
    return {c: frozenset(links[c]) for c in ids}


def secagg_plus_degree(n: int) -> int:
    """The default SecAgg+ degree for ``n`` clients: ``min(n - 1, 2 * ceil(log2 n) + 2)``.

    Bell et al. (CCS 2020) show that a random graph of degree Θ(log n) keeps the sum private and
    recoverable while a constant fraction of clients is corrupt or drops out; the constant depends
    on those fractions and on the security parameter. This rule is an even O(log n) default, not
    derived from their bounds: 2 per doubling of n, plus 2 so that small federations still have a
    margin of neighbours if some drop out. It gives the complete graph (SecAgg) for n <= 11 and
    then grows slowly: 10 for n = 12 or 16, 16 for 100, 22 for 1,000, 30 for 10,000. Set
    ``--secagg-degree`` from their analysis when the threat model demands it.

    Parameters
    ----------
    n
        Number of clients, >= 1.

    Examples
    --------
    >>> [secagg_plus_degree(n) for n in (2, 11, 12, 100, 1000)]
    [1, 10, 10, 16, 22]
    """
    if n < 1:
        raise ValueError(f"need at least one client, got n = {n}")
    log2_ceil = (n - 1).bit_length()  # exact ceil(log2 n) for n >= 1
    return max(1, min(n - 1, 2 * log2_ceil + 2))
