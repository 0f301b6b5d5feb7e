"""Byzantine-robust aggregators: coordinate-wise median and trimmed mean, Krum, Multi-Krum, Bulyan.

Each stacks the round's updates into one ``(n, dim)`` float32 matrix (its own copy: the inputs
are never changed) and applies its rule. The rules are unweighted, as in their papers: the
updates' weights only add up to ``Aggregate.total_weight``. ``min_updates`` is the fewest
updates an aggregator's guarantee covers and ``requirement`` says so in words; given fewer, it
returns zeros with the true ``count``, and the round loop fails the round with that sentence.

Examples
--------
>>> import numpy as np
>>> from fedloom.messages import ClientUpdate
>>> ups = [ClientUpdate(c, np.array([v], np.float32), 1.0) for c, v in zip("abc", [1, 2, 90])]
>>> Median().aggregate(ups, 1, None)[0].vector.tolist()
[2.0]
"""

from __future__ import annotations

import operator
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from threadpoolctl import threadpool_limits

from fedloom.errors import ConfigError, DataError
from fedloom.messages import Aggregate, ClientUpdate
from fedloom.params import Vector

__all__ = ["Bulyan", "Krum", "Median", "MultiKrum", "TrimmedMean"]

Matrix = npt.NDArray[np.float32]
Floats = npt.NDArray[np.float64]

_GRAM_BYTES = 1 << 23  # float64 bytes per column block of the Gram matrix (8 MiB)
_COLUMNS = 1 << 14  # columns per transposed, sorted block of the coordinate-wise rules


# ----------------------------------------------------------------------------- shared maths


def _stack(updates: Iterable[ClientUpdate], dim: int) -> tuple[Matrix, float]:
    """The updates as the rows of a new ``(n, dim)`` float32 matrix, and their summed weight.

    Each vector is copied in as it arrives, so a stream's vectors can be freed one by one. The
    matrix starts with room for ``len(updates)`` rows (8 for a stream) and doubles when full;
    rows never written take no memory on Linux (``np.empty`` pages are mapped on first write).
    """
    matrix = np.empty((max(operator.length_hint(updates), 8), dim), dtype=np.float32)
    n = 0
    weight = 0.0
    for update in updates:
        if update.vector.shape != (dim,):
            raise DataError(f"update of {update.client_id} has shape {update.vector.shape}")
        if n == matrix.shape[0]:
            grown = np.empty((2 * n, dim), dtype=np.float32)
            grown[:n] = matrix
            matrix = grown
        matrix[n] = update.vector
        n += 1
        weight += update.weight
    return matrix[:n], weight


def _pairwise_sq_distances(matrix: Matrix) -> Floats:
    """Squared L2 distances between the rows, as ``‖a‖² + ‖b‖² - 2a·b`` in float64.

    The Gram matrix is accumulated over column blocks converted to float64 one at a time (no
    float64 copy of the whole matrix). Rounding residues below 0 are clamped to 0; the diagonal
    is exactly 0. BLAS runs on one thread, like the rest of a round: on a shared 2-core machine
    a second thread gained at most 1.7x and, while other work held a core, lost up to 40x.
    """
    n, dim = matrix.shape
    block = max(256, _GRAM_BYTES // (8 * max(n, 1)))
    gram = np.zeros((n, n))
    buffer = np.empty((n, min(block, dim)))
    with threadpool_limits(limits=1, user_api="blas"):
        for start in range(0, dim, block):
            part = buffer[:, : min(block, dim - start)]
            np.copyto(part, matrix[:, start : start + block])
            gram += part @ part.T
    gram = 0.5 * (gram + gram.T)
    norms = np.diag(gram).copy()
    dist: Floats = norms[:, None] + norms[None, :] - 2.0 * gram
    np.maximum(dist, 0.0, out=dist)
    np.fill_diagonal(dist, 0.0)
    return dist


def _krum_scores(dist: Floats, byzantine: int) -> Floats:
    """Each row's sum of squared distances to its ``n - f - 2`` nearest other rows (all 0 when
    that count is not positive), from the matrix of :func:`_pairwise_sq_distances`."""
    n = dist.shape[0]
    neighbours = n - byzantine - 2
    if neighbours <= 0:
        return np.zeros(n)
    # The neighbours + 1 smallest of a row hold its own distance, 0, or a duplicate's equal 0.
    scores: Floats = np.partition(dist, neighbours, axis=1)[:, : neighbours + 1].sum(axis=1)
    return scores


def _bulyan_selection(dist: Floats, byzantine: int) -> list[int]:
    """The ``n - 2f`` rows that Krum, applied again and again to the rows left, picks in turn."""
    remaining = list(range(dist.shape[0]))
    chosen: list[int] = []
    for _ in range(dist.shape[0] - 2 * byzantine):
        scores = _krum_scores(dist[np.ix_(remaining, remaining)], byzantine)
        chosen.append(remaining.pop(int(np.argmin(scores))))
    return chosen


def _columnwise(matrix: Matrix, rows: Sequence[int], rule: Callable[[Matrix], Floats]) -> Vector:
    """``rule`` applied to blocks of coordinates: a block holds the chosen ``rows``' values of
    some consecutive coordinates, one coordinate per row, sorted along each row."""
    dim = matrix.shape[1]
    out = np.empty(dim, dtype=np.float32)
    buffer = np.empty((min(_COLUMNS, dim), len(rows)), dtype=np.float32)
    for start in range(0, dim, _COLUMNS):
        block = buffer[: min(_COLUMNS, dim - start)]
        for j, row in enumerate(rows):  # a strided copy per row: faster than fancy indexing
            block[:, j] = matrix[row, start : start + _COLUMNS]
        block.sort(axis=1)
        out[start : start + block.shape[0]] = rule(block)
    return out


def _sorted_median(block: Matrix) -> Floats:
    k = block.shape[1]
    upper = block[:, k // 2].astype(np.float64)
    return upper if k % 2 else 0.5 * (block[:, k // 2 - 1] + upper)


def _closest_mean(block: Matrix, beta: int) -> Floats:
    """Per row of a row-sorted block, the mean of the ``beta`` values closest to its median.

    They are ``beta`` consecutive values, and some closest run holds the middle value(s), so
    only those runs are compared, by their farther end's distance from the median.
    """
    theta = block.shape[1]
    median = _sorted_median(block)[:, None]
    first = max(0, theta // 2 - beta + 1)
    last = min(theta - beta, (theta - 1) // 2)
    reach = np.maximum(
        median - block[:, first : last + 1], block[:, first + beta - 1 : last + beta] - median
    )
    start = first + reach.argmin(axis=1)  # the lowest of equally close runs
    start += np.arange(block.shape[0]) * theta  # as an index into the flattened block
    window = block.ravel()[start[:, None] + np.arange(beta)]
    total: Floats = window.sum(axis=1, dtype=np.float64)
    total /= beta
    return total


def _mean_rows(matrix: Matrix, rows: Sequence[int]) -> Vector:
    """The unweighted mean of the chosen rows, summed in float64, a block of columns at a time."""
    out = np.empty(matrix.shape[1], dtype=np.float32)
    index = np.asarray(rows)
    for start in range(0, matrix.shape[1], _COLUMNS):
        part = matrix[index, start : start + _COLUMNS]
        out[start : start + part.shape[1]] = part.sum(axis=0, dtype=np.float64) / len(index)
    return out


def _whole(value: object, flag: str, least: int, meaning: str) -> int:
    number = int(value) if isinstance(value, float) and value.is_integer() else value
    if isinstance(number, bool) or not isinstance(number, int):
        raise ConfigError(f"{flag} ({meaning}) must be a whole number, got {value!r}")
    if number < least:
        raise ConfigError(f"{flag} ({meaning}) must be at least {least}, got {value!r}")
    return number


# ----------------------------------------------------------------------------- aggregators


class _Robust:
    """The Aggregator protocol for a stateless rule over the stacked updates."""

    @property
    def min_updates(self) -> int:
        """The fewest updates the rule's guarantee covers; fewer aggregate to zeros."""
        return 1

    @property
    def requirement(self) -> str:
        """Why :attr:`min_updates`, in words, for the round loop's error message."""
        return f"{type(self).__name__} needs at least 1 update"

    def init(self, dim: int) -> None:
        return None

    def aggregate(
        self, updates: Iterable[ClientUpdate], dim: int, state: None
    ) -> tuple[Aggregate, None]:
        """Combine ``updates``; zeros with ``count = n`` when ``n < min_updates``."""
        matrix, weight = _stack(updates, dim)
        n = matrix.shape[0]
        if n < max(self.min_updates, 1):
            return Aggregate(np.zeros(dim, dtype=np.float32), n, weight), state
        return Aggregate(self._rule(matrix), n, weight), state

    def _rule(self, matrix: Matrix) -> Vector:
        raise NotImplementedError


@dataclass(frozen=True)
class _Tolerant(_Robust):
    """A rule that tolerates ``byzantine`` (f) Byzantine updates: the Krum family."""

    byzantine: int = 0

    def __post_init__(self) -> None:
        f = _whole(self.byzantine, "--byzantine", 0, "the number of Byzantine clients tolerated")
        object.__setattr__(self, "byzantine", f)

    def _needs(self, name: str, condition: str) -> str:
        least = self.min_updates
        return f"{name} with byzantine={self.byzantine} needs {condition}, at least {least} updates"


@dataclass(frozen=True)
class Median(_Robust):
    """The coordinate-wise median (Yin et al., 2018, "Byzantine-robust distributed learning:
    towards optimal statistical rates"), unweighted.

    For an even number of updates, the mean of the two middle values (numpy's convention).
    """

    def _rule(self, matrix: Matrix) -> Vector:
        return _columnwise(matrix, range(matrix.shape[0]), _sorted_median)


@dataclass(frozen=True)
class TrimmedMean(_Robust):
    """The coordinate-wise trimmed mean (Yin et al., 2018), unweighted: at each coordinate, drop
    the ``k = floor(trim * n)`` largest and ``k`` smallest values and average the rest.

    Parameters
    ----------
    trim
        The fraction cut at each end, in [0, 0.5); 0 gives the plain mean.
    """

    trim: float = 0.1

    def __post_init__(self) -> None:
        if not 0.0 <= self.trim < 0.5:
            raise ConfigError(
                f"--trim (the fraction cut at each end) must be in [0, 0.5), got {self.trim}"
            )

    def _rule(self, matrix: Matrix) -> Vector:
        n = matrix.shape[0]
        k = min(int(self.trim * n + 1e-9), (n - 1) // 2)  # as 0.29 * 100 is 28.999...

        def middle_mean(block: Matrix) -> Floats:
            total: Floats = block[:, k : n - k].sum(axis=1, dtype=np.float64)
            total /= n - 2 * k
            return total

        return _columnwise(matrix, range(n), middle_mean)


@dataclass(frozen=True)
class Krum(_Tolerant):
    """Krum (Blanchard et al., 2017, "Machine learning with adversaries: Byzantine tolerant
    gradient descent"), unweighted.

    score(i) is the sum of the squared L2 distances from update i to its ``n - f - 2`` closest
    other updates; the result is the update with the lowest score (on a tie, the earliest to
    arrive). The guarantee needs ``n > 2f + 2``.

    Parameters
    ----------
    byzantine
        f, the number of Byzantine updates tolerated, at least 0.
    """

    @property
    def min_updates(self) -> int:
        return 2 * self.byzantine + 3

    @property
    def requirement(self) -> str:
        return self._needs("krum", "n > 2f + 2")

    def _rule(self, matrix: Matrix) -> Vector:
        scores = _krum_scores(_pairwise_sq_distances(matrix), self.byzantine)
        best: Vector = matrix[int(np.argmin(scores))].copy()  # a copy lets the matrix go
        return best


@dataclass(frozen=True)
class MultiKrum(_Tolerant):
    """Multi-Krum (Blanchard et al., 2017): the unweighted mean of the ``m`` updates with the
    lowest Krum scores, computed once over all ``n`` updates (on a tie, the earliest first).

    Parameters
    ----------
    byzantine
        f, the number of Byzantine updates tolerated, at least 0.
    m
        How many updates to average, at least 1; ``None`` means ``n - f``. The guarantee needs
        ``n > 2f + 2`` and ``m <= n - f``.
    """

    m: int | None = None

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m is not None:
            m = _whole(self.m, "--krum-m", 1, "the number of updates Multi-Krum averages")
            object.__setattr__(self, "m", m)

    @property
    def min_updates(self) -> int:
        least = 2 * self.byzantine + 3
        return least if self.m is None else max(least, self.byzantine + self.m)

    @property
    def requirement(self) -> str:
        if self.m is None:
            return self._needs("multi-krum", "n > 2f + 2")
        return self._needs(f"multi-krum (m={self.m})", "n > 2f + 2 and n >= f + m")

    def _rule(self, matrix: Matrix) -> Vector:
        m = matrix.shape[0] - self.byzantine if self.m is None else self.m
        scores = _krum_scores(_pairwise_sq_distances(matrix), self.byzantine)
        best = np.argsort(scores, kind="stable")[:m]
        return _mean_rows(matrix, np.sort(best).tolist())


@dataclass(frozen=True)
class Bulyan(_Tolerant):
    """Bulyan over Krum (El Mhamdi et al., 2018, "The hidden vulnerability of distributed learning
    in Byzantium"), unweighted.

    Selection: Krum (same f, ``|R| - f - 2`` neighbours within the remaining set R, at least 0)
    picks one update of R at a time until ``θ = n - 2f`` are chosen. Then, at each coordinate,
    the mean of the ``β = θ - 2f`` chosen values closest to their median: a run of β consecutive
    sorted values around the median (between equally close runs, the lowest). The guarantee
    needs ``n >= 4f + 3``.

    Parameters
    ----------
    byzantine
        f, the number of Byzantine updates tolerated, at least 0.
    """

    @property
    def min_updates(self) -> int:
        return 4 * self.byzantine + 3

    @property
    def requirement(self) -> str:
        return self._needs("bulyan", "n > 4f + 2")

    def _rule(self, matrix: Matrix) -> Vector:
        chosen = _bulyan_selection(_pairwise_sq_distances(matrix), self.byzantine)
        beta = len(chosen) - 2 * self.byzantine
        return _columnwise(matrix, sorted(chosen), lambda block: _closest_mean(block, beta))
