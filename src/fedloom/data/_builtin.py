"""Datasets that need no files: scikit-learn's bundled sets and the FedProx synthetic data."""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from fedloom.data._types import ArrayData
from fedloom.errors import ConfigError

__all__ = ["SKLEARN_DATASETS", "SyntheticPopulation", "load_sklearn", "synthetic"]

# name -> (num_classes, input_shape)
SKLEARN_DATASETS: dict[str, tuple[int, tuple[int, ...]]] = {
    "digits": (10, (1, 8, 8)),
    "breast_cancer": (2, (30,)),
    "wine": (3, (13,)),
}

SYNTHETIC_DIM = 60
SYNTHETIC_CLASSES = 10
_FEATURE_STD = np.sqrt(np.arange(1, SYNTHETIC_DIM + 1, dtype=np.float64) ** -1.2)


def _bundled_digits() -> ArrayData | None:
    """Digits straight from the CSV inside scikit-learn's package, without importing
    scikit-learn (its import costs about a second of start-up, mostly SciPy). ``None`` when the
    file is not where scikit-learn keeps it; the caller then uses ``load_digits``."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or not spec.submodule_search_locations:
        return None
    for root in spec.submodule_search_locations:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            table = np.loadtxt(path, delimiter=",")
            if table.ndim == 2 and table.shape == (1797, 65):
                return ArrayData(table[:, :-1], table[:, -1].astype(np.int64))
    return None


def load_sklearn(name: str) -> ArrayData:
    """Return a scikit-learn bundled dataset, unscaled (``digits`` pixels are 0..16)."""
    if name == "digits" and (digits := _bundled_digits()) is not None:
        return digits
    from sklearn import datasets

    loader = {
        "digits": datasets.load_digits,
        "breast_cancer": datasets.load_breast_cancer,
        "wine": datasets.load_wine,
    }[name]
    bunch = loader()
    return ArrayData(np.asarray(bunch.data), np.asarray(bunch.target))


@dataclass(frozen=True, eq=False)
class SyntheticDevice:
    """One generated device with the parameters that produced it (kept for tests)."""

    data: ArrayData
    weights: np.ndarray  # W_k, shape (60, 10)
    bias: np.ndarray  # b_k, shape (10,)
    feature_mean: np.ndarray  # v_k, shape (60,)
    model_mean: float  # u_k (0 for the IID variant)


def synthetic(
    alpha: float, beta: float, *, num_devices: int = 30, seed: int = 0, iid: bool = False
) -> list[ArrayData]:
    """Generate Synthetic(alpha, beta) from Li et al. 2020 (FedProx), one array set per device.

    Follows the paper's generator (``data/synthetic_*/generate_synthetic.py`` in
    litian96/FedProx) with ``numpy.random.default_rng(seed)`` in place of the global RNG:

    - Device ``k``'s own draws come from the ``k``-th child of ``SeedSequence(seed)``
      (:class:`SyntheticPopulation`), so one device can be made without the others.
    - 60 features, 10 classes; device ``k`` has ``int(lognormal(4, 2)) + 50`` samples. The
      lognormal tail is heavy: a device can hold tens of thousands of samples; nothing is capped.
    - ``u_k ~ N(0, alpha**2)`` and ``B_k ~ N(0, beta**2)`` (alpha and beta are standard
      deviations); ``W_k ~ N(u_k, 1)`` of shape (60, 10), ``b_k ~ N(u_k, 1)`` of shape (10,).
    - ``v_k ~ N(B_k, 1)`` per feature; ``x ~ N(v_k, Sigma)`` with ``Sigma`` diagonal,
      ``Sigma_jj = (j + 1) ** -1.2``.
    - ``y = argmax(softmax(x @ W_k + b_k))``.

    With ``iid=True`` (the paper's Synthetic-IID) every device shares one ``W, b ~ N(0, 1)`` and
    ``v_k = 0``; ``alpha`` and ``beta`` are then unused.

    The generator does not split train from test; ``load_dataset("synthetic:...")`` keeps 90%
    of each device's rows for training and 10% as its local test split (as the FedProx code does).

    Parameters
    ----------
    alpha, beta
        How much device models (alpha) and device feature distributions (beta) differ; >= 0.
    num_devices
        Number of devices (30 in the paper).
    seed
        Seed for ``numpy.random.default_rng``.
    iid
        Generate the IID variant instead.

    Returns
    -------
    list of ArrayData
        One per device: ``x`` float32 of shape ``(n_k, 60)``, ``y`` int64 in 0..9.

    Raises
    ------
    ConfigError
        If alpha or beta is negative (or not finite), or ``num_devices`` < 1.

    Examples
    --------
    >>> devices = synthetic(0.5, 0.5, num_devices=3, seed=1)
    >>> [d.x.shape[1] for d in devices]
    [60, 60, 60]
    """
    return [d.data for d in generate_synthetic(alpha, beta, num_devices, seed, iid)]


def generate_synthetic(
    alpha: float, beta: float, num_devices: int, seed: int, iid: bool
) -> list[SyntheticDevice]:
    """Like :func:`synthetic`, returning each device's generating parameters too."""
    population = SyntheticPopulation.draw(alpha, beta, num_devices, seed, iid)
    return [population.device(k) for k in range(num_devices)]


@dataclass(frozen=True, eq=False)
class SyntheticPopulation:
    """The population-wide draws of Synthetic(alpha, beta); each device is made on demand.

    ``default_rng(seed)`` draws, in this order, every device's size, then ``u_k`` and ``B_k``
    for every device (or, for the IID variant, the shared ``W`` and ``b``): a few numbers per
    device, so a million devices cost about 24 MB. Device ``k``'s own draws (``W_k``, ``b_k``,
    ``v_k`` and its rows) come from the ``k``-th child of ``SeedSequence(seed)``, so any device
    can be made alone, in any order, always the same.
    """

    seed: int
    iid: bool
    sizes: np.ndarray
    model_means: np.ndarray
    device_shift: np.ndarray
    shared_w: np.ndarray | None
    shared_b: np.ndarray | None

    @classmethod
    def draw(
        cls, alpha: float, beta: float, num_devices: int, seed: int, iid: bool
    ) -> SyntheticPopulation:
        for what, value in (("alpha", alpha), ("beta", beta)):
            if not (np.isfinite(value) and value >= 0):
                raise ConfigError(f"synthetic {what} must be a number >= 0, got {value}")
        if num_devices < 1:
            raise ConfigError(f"synthetic needs at least 1 device, got {num_devices}")
        rng = np.random.default_rng(seed)
        sizes = rng.lognormal(4, 2, num_devices).astype(np.int64) + 50
        if iid:
            zeros = np.zeros(num_devices)
            shape = (SYNTHETIC_DIM, SYNTHETIC_CLASSES)
            shared_w = rng.normal(0.0, 1.0, shape)
            shared_b = rng.normal(0.0, 1.0, SYNTHETIC_CLASSES)
            return cls(seed, True, sizes, zeros, zeros, shared_w, shared_b)
        model_means = rng.normal(0.0, alpha, num_devices)
        device_shift = rng.normal(0.0, beta, num_devices)
        return cls(seed, False, sizes, model_means, device_shift, None, None)

    def device(self, k: int) -> SyntheticDevice:
        """Device ``k``, made from its own seed."""
        rng = np.random.default_rng(np.random.SeedSequence(self.seed, spawn_key=(k,)))
        shape = (SYNTHETIC_DIM, SYNTHETIC_CLASSES)
        if self.shared_w is not None and self.shared_b is not None:
            w, b = self.shared_w, self.shared_b
            feature_mean = np.zeros(SYNTHETIC_DIM)
        else:
            u = self.model_means[k]
            w = rng.normal(u, 1.0, shape)
            b = rng.normal(u, 1.0, SYNTHETIC_CLASSES)
            feature_mean = rng.normal(self.device_shift[k], 1.0, SYNTHETIC_DIM)
        n = int(self.sizes[k])
        x = feature_mean + rng.standard_normal((n, SYNTHETIC_DIM)) * _FEATURE_STD
        y = np.argmax(x @ w + b, axis=1)  # softmax is monotonic: same argmax
        return SyntheticDevice(
            data=ArrayData(x, y),
            weights=w,
            bias=b,
            feature_mean=feature_mean,
            model_mean=float(self.model_means[k]),
        )
