"""DP-FedAvg's aggregation: clipping, the noise it adds, adaptive clipping."""

import numpy as np
import pytest

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate
from fedloom.privacy import AdaptiveClipping, CentralDP, ClipState
from fedloom.strategy import Chain


class DPMean:
    """Central DP's link alone in an update chain, with the link's own state."""

    def __init__(self, *args, **kwargs) -> None:
        self.link = CentralDP(*args, **kwargs)
        self.chain = Chain((self.link,))

    @property
    def update_noise_multiplier(self) -> float:
        return self.link.update_noise_multiplier

    def init(self, dim: int) -> ClipState:
        return self.link.init(dim)

    def aggregate(self, updates, dim: int, state: ClipState):
        result, (after,) = self.chain.aggregate(updates, dim, (state,))
        return result, after


def _updates(vectors: list[list[float]]) -> list[ClientUpdate]:
    return [ClientUpdate(str(i), np.array(v, np.float32), 10.0) for i, v in enumerate(vectors)]


def test_updates_are_clipped_and_divided_by_the_expected_count() -> None:
    # Prepare: C = 1, m = 4, no noise. [3, 4] has norm 5 and is scaled to [0.6, 0.8];
    # [0.3, 0] fits. Sum [0.9, 0.8] / 4 = [0.225, 0.2].
    agg = DPMean(clip_norm=1.0, noise_multiplier=0.0, expected_clients=4)

    # Execute
    result, state = agg.aggregate(_updates([[3, 4], [0.3, 0]]), 2, agg.init(2))

    # Assert
    np.testing.assert_allclose(result.vector, [0.225, 0.2], rtol=1e-6)
    assert (result.count, result.total_weight) == (2, 20.0)
    assert state.rounds == 1
    assert np.isnan(state.unclipped_fraction)  # a fixed clip norm releases no count


def test_adaptive_clipping_releases_only_the_noised_count() -> None:
    # Without noise the released fraction is the exact one (1 of 2 fits under C = 1); with
    # noise it is the count plus N(0, (0.05 m)^2), m = 4, over m: never exactly 0.25
    exact = DPMean(1.0, 0.0, expected_clients=4, adaptive=AdaptiveClipping())
    _, state = exact.aggregate(_updates([[3, 4], [0.3, 0]]), 2, exact.init(2))
    assert state.unclipped_fraction == 0.25
    noised = DPMean(1.0, 0.5, expected_clients=40, adaptive=AdaptiveClipping())
    fractions = [
        noised.aggregate(_updates([[3, 4], [0.3, 0]]), 2, noised.init(2))[1].unclipped_fraction
        for _ in range(200)
    ]
    # count noise sigma_b = 0.05 * 40 = 2 clients: the released fraction 1/40 + N(0, (2/40)^2)
    assert np.std(fractions) == pytest.approx(2 / 40, rel=0.15)
    assert np.mean(fractions) == pytest.approx(1 / 40, abs=5 * (2 / 40) / np.sqrt(200))


def test_unseeded_noise_differs_every_time() -> None:
    # the default draws from the OS: two aggregations of the same input never match
    agg = DPMean(clip_norm=1.0, noise_multiplier=1.0, expected_clients=2)
    a, _ = agg.aggregate(_updates([[0.0] * 50]), 50, agg.init(50))
    b, _ = agg.aggregate(_updates([[0.0] * 50]), 50, agg.init(50))
    assert not np.array_equal(a.vector, b.vector)


def test_one_client_moves_the_sum_by_at_most_the_clip_norm() -> None:
    agg = DPMean(clip_norm=0.5, noise_multiplier=0.0, expected_clients=1)
    for vec in ([1e6, -1e6, 3.0], [0.1, 0.2, 0.3], [0.0, 0.0, 0.0]):
        result, _ = agg.aggregate(_updates([vec]), 3, agg.init(3))
        assert np.linalg.norm(result.vector) <= 0.5 * (1 + 1e-6)


def test_the_noise_has_standard_deviation_z_times_c_over_m() -> None:
    # 200,000 coordinates of zero updates: the sample std of N(0, (zC/m)^2) is within 1 %
    # of zC/m with overwhelming probability (its relative std is 1/sqrt(2 * 200000) = 0.16 %).
    agg = DPMean(clip_norm=0.5, noise_multiplier=1.3, expected_clients=10, seed=7)
    dim = 200_000
    result, _ = agg.aggregate(_updates([[0.0] * dim] * 3), dim, agg.init(dim))
    assert result.vector.std() == pytest.approx(1.3 * 0.5 / 10, rel=0.01)
    assert abs(result.vector.mean()) < 5 * 0.065 / np.sqrt(dim)
    again, _ = agg.aggregate(_updates([[0.0] * dim] * 3), dim, agg.init(dim))
    np.testing.assert_array_equal(result.vector, again.vector)  # seeded per (seed, round)


@pytest.mark.parametrize("noise", [0.0, 0.5])
def test_adaptive_clipping_converges_to_the_target_quantile(noise: float) -> None:
    # Update norms uniform on [0, 10] (directions random): the median norm is 5. Starting at
    # C = 0.1, the clip norm should settle near 5 (Andrew et al.'s geometric update).
    rng = np.random.default_rng(0)
    agg = DPMean(0.1, noise, expected_clients=100, adaptive=AdaptiveClipping(0.5, 0.2), seed=1)
    state = agg.init(8)
    trail = []
    for _ in range(150):
        dirs = rng.normal(size=(100, 8))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        vecs = dirs * rng.uniform(0, 10, size=(100, 1))
        _, state = agg.aggregate(_updates(vecs.tolist()), 8, state)
        trail.append(state.clip_norm)
    assert np.mean(trail[-50:]) == pytest.approx(5.0, rel=0.15)


def test_adaptive_clipping_gives_the_update_more_noise() -> None:
    # z = 1, sigma_b = 0.05 * 100 = 5: z_update = (1 - 1/100) ** -0.5
    agg = DPMean(1.0, 1.0, 100, adaptive=AdaptiveClipping())
    assert agg.update_noise_multiplier == pytest.approx((1 - 1 / 100) ** -0.5)
    assert DPMean(1.0, 1.0, 100).update_noise_multiplier == 1.0


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda: DPMean(0.0, 1.0, 10), "--clip-norm must be positive"),
        (lambda: DPMean(1.0, -1.0, 10), "--noise-multiplier"),
        (lambda: DPMean(1.0, 1.0, 0), "at least 1 client"),
        (lambda: DPMean(1.0, 2.0, 10, adaptive=AdaptiveClipping()), "below 2"),
        (lambda: AdaptiveClipping(target_quantile=1.0), "--target-quantile"),
    ],
)
def test_bad_settings_are_refused(make, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        make()
