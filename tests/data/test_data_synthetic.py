"""Synthetic(alpha, beta) from the FedProx paper: shapes and the generator's statistics."""

from __future__ import annotations

import numpy as np
import pytest

from fedloom.data import synthetic
from fedloom.data._builtin import generate_synthetic
from fedloom.errors import ConfigError

FEATURE_VARIANCE = np.arange(1, 61, dtype=np.float64) ** -1.2


def test_defaults_give_30_devices_of_60_features_and_10_classes() -> None:
    # Execute
    devices = synthetic(1.0, 1.0)

    # Assert
    assert len(devices) == 30
    for device in devices:
        assert device.x.shape[1] == 60 and device.x.dtype == np.float32
        assert device.y.dtype == np.int64
        assert len(device) >= 50
        assert device.y.min() >= 0 and device.y.max() <= 9


def test_device_sizes_follow_the_lognormal_rule() -> None:
    # Prepare: the generator's first draw is the device sizes
    expected = np.random.default_rng(5).lognormal(4, 2, 12).astype(np.int64) + 50

    # Execute
    sizes = [len(d) for d in synthetic(0.5, 0.5, num_devices=12, seed=5)]

    # Assert
    assert sizes == expected.tolist()


def test_feature_noise_has_diagonal_covariance_j_plus_1_to_minus_1_2() -> None:
    # Prepare
    devices = generate_synthetic(1.0, 1.0, 30, 0, False)

    # Execute: pool x - v_k over devices
    noise = np.concatenate([d.data.x - d.feature_mean for d in devices]).astype(np.float64)
    cov = np.cov(noise, rowvar=False)
    corr = cov / np.sqrt(np.outer(np.diag(cov), np.diag(cov)))

    # Assert
    assert len(noise) > 3000
    np.testing.assert_allclose(np.diag(cov), FEATURE_VARIANCE, rtol=0.1)
    assert np.abs(corr - np.eye(60)).max() < 0.1


def test_device_model_weights_centre_on_u_k() -> None:
    # Execute
    devices = generate_synthetic(1.0, 1.0, 30, 0, False)

    # Assert: 600 draws of N(u_k, 1): standard error 0.041
    for device in devices:
        assert device.weights.shape == (60, 10) and device.bias.shape == (10,)
        assert abs(device.weights.mean() - device.model_mean) < 0.2
    assert np.std([d.model_mean for d in devices]) > 0.3


def test_labels_are_the_argmax_of_the_device_model() -> None:
    # Execute
    devices = generate_synthetic(0.5, 0.5, 5, 2, False)

    # Assert: x is stored as float32, so allow a rare near-tie to flip
    for device in devices:
        logits = device.data.x.astype(np.float64) @ device.weights + device.bias
        assert np.mean(np.argmax(logits, axis=1) == device.data.y) > 0.999


def test_alpha_zero_puts_every_model_mean_at_zero() -> None:
    # Execute
    devices = generate_synthetic(0.0, 0.0, 10, 0, False)

    # Assert
    assert [d.model_mean for d in devices] == [0.0] * 10


def test_larger_beta_spreads_device_feature_means() -> None:
    # Execute
    def spread(beta: float) -> float:
        return float(np.std([d.x.mean() for d in synthetic(beta, beta, seed=4)]))

    # Assert: beta 0 -> mean of 60 N(0, 1) ~ 0.13; beta 1 -> ~ N(0, 1)
    assert spread(1.0) > 3 * spread(0.0)


def test_iid_variant_shares_one_model_and_centres_features() -> None:
    # Execute
    devices = generate_synthetic(0.0, 0.0, 4, 0, True)

    # Assert
    for device in devices:
        np.testing.assert_array_equal(device.weights, devices[0].weights)
        np.testing.assert_array_equal(device.feature_mean, np.zeros(60))


def test_same_seed_same_data_other_seed_differs() -> None:
    # Execute
    first = synthetic(1.0, 1.0, num_devices=3, seed=9)
    again = synthetic(1.0, 1.0, num_devices=3, seed=9)
    other = synthetic(1.0, 1.0, num_devices=3, seed=10)

    # Assert
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a.x, b.x)
        np.testing.assert_array_equal(a.y, b.y)
    assert len(first[0]) != len(other[0]) or not np.array_equal(first[0].x, other[0].x)


@pytest.mark.parametrize(
    ("alpha", "beta", "devices", "fragment"),
    [
        (-1.0, 0.0, 30, "alpha must be a number >= 0"),
        (0.0, float("nan"), 30, "beta must be a number >= 0"),
        (0.0, 0.0, 0, "at least 1 device"),
    ],
)
def test_bad_settings_raise_config_error(
    alpha: float, beta: float, devices: int, fragment: str
) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=fragment):
        synthetic(alpha, beta, num_devices=devices)
