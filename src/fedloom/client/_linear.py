"""Multinomial logistic regression in NumPy: a linear trainer with no deep-learning library."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedloom.client._trainer import proximal_mu
from fedloom.data import ArrayData
from fedloom.errors import ConfigError
from fedloom.messages import Config, EvalResult, FitResult, setting
from fedloom.params import ParamSpec, Vector

__all__ = ["LinearTrainer"]

F64 = npt.NDArray[np.float64]


def _log_softmax(logits: F64) -> F64:
    shifted = logits - logits.max(axis=1, keepdims=True)
    out: F64 = shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))
    return out


class LinearTrainer:
    """Softmax (multinomial logistic) regression trained with minibatch SGD, like scikit-learn's
    ``SGDClassifier(loss="log_loss")`` but one model for all classes.

    Parameters are ``weight`` (classes x features) and ``bias`` (classes), initialised to zero.
    The loss is the mean cross-entropy plus ``l2 / 2 * ||weight||^2`` (plus FedProx's proximal
    term when the client config sets ``mu``).

    Parameters
    ----------
    num_features, num_classes
        The input width and the number of classes.
    lr, local_epochs, batch_size
        SGD defaults; an instruction's ``lr``, ``local_epochs`` and ``batch_size`` override them.
    l2
        L2 regularisation strength.
    """

    def __init__(
        self,
        num_features: int,
        num_classes: int,
        *,
        lr: float = 0.1,
        local_epochs: int = 1,
        batch_size: int = 32,
        l2: float = 0.0,
    ) -> None:
        if num_features < 1 or num_classes < 2:
            raise ConfigError(
                f"a linear model needs at least 1 feature and 2 classes, "
                f"got {num_features} and {num_classes}"
            )
        self._spec = ParamSpec(
            ("weight", "bias"), ((num_classes, num_features), (num_classes,)), ("float32",) * 2
        )
        self._defaults = {"lr": lr, "local_epochs": local_epochs, "batch_size": batch_size}
        self.l2 = l2

    @property
    def spec(self) -> ParamSpec:
        return self._spec

    def init_parameters(self, seed: int) -> Vector:
        return np.zeros(self._spec.size, dtype=np.float32)

    def _split(self, parameters: Vector) -> tuple[F64, F64]:
        vec = self._spec.check(parameters).astype(np.float64)
        n_w = self._spec.sizes[0]
        return vec[:n_w].reshape(self._spec.shapes[0]), vec[n_w:]

    def fit(
        self,
        parameters: Vector,
        data: ArrayData,
        config: Config,
        seed: int,
        correction: Vector | None = None,
    ) -> FitResult:
        """Minibatch SGD from ``parameters``.

        Each step's gradient gets ``mu * (w - parameters)`` (FedProx, ``config["mu"]``) and
        ``correction`` (SCAFFOLD's ``c - c_i``) added when they are given.
        """
        lr = setting(config, "lr", self._defaults["lr"], float)
        epochs = int(setting(config, "local_epochs", self._defaults["local_epochs"], int))
        batch = int(setting(config, "batch_size", self._defaults["batch_size"], int))
        mu = proximal_mu(config)
        weight, bias = self._split(parameters)
        anchor_w, anchor_b = weight.copy(), bias.copy()
        corr_w, corr_b = self._split(correction) if correction is not None else (None, None)
        x = data.x.astype(np.float64, copy=False)
        n = len(data)
        rng = np.random.default_rng(seed)
        loss_sum = 0.0
        steps = 0
        for _ in range(epochs):
            order = rng.permutation(n)
            for start in range(0, n, batch):
                idx = order[start : start + batch]
                xb, yb = x[idx], data.y[idx]
                logp = _log_softmax(xb @ weight.T + bias)
                loss_sum += -float(logp[np.arange(len(idx)), yb].sum())
                grad = np.exp(logp)
                grad[np.arange(len(idx)), yb] -= 1.0
                grad /= len(idx)
                grad_w = grad.T @ xb + self.l2 * weight
                grad_b = grad.sum(axis=0)
                if mu:
                    grad_w += mu * (weight - anchor_w)
                    grad_b += mu * (bias - anchor_b)
                if corr_w is not None and corr_b is not None:
                    grad_w += corr_w
                    grad_b += corr_b
                weight -= lr * grad_w
                bias -= lr * grad_b
                steps += 1
        out = np.concatenate([weight.ravel(), bias]).astype(np.float32)
        metrics = {"train_loss": loss_sum / max(n * epochs, 1)}
        return FitResult(out, n, metrics, steps=steps, lr=lr)

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        n = len(data)
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        weight, bias = self._split(parameters)
        logp = _log_softmax(data.x.astype(np.float64) @ weight.T + bias)
        loss = -float(logp[np.arange(n), data.y].mean())
        accuracy = float((logp.argmax(axis=1) == data.y).mean())
        return EvalResult(loss, accuracy, n)

    def predict(self, parameters: Vector, x: np.ndarray) -> npt.NDArray[np.int64]:
        """The class each example of ``x`` is given (the largest logit), shape ``(n,)``."""
        weight, bias = self._split(parameters)
        logits = np.asarray(x, dtype=np.float64).reshape(len(x), -1) @ weight.T + bias
        out: npt.NDArray[np.int64] = logits.argmax(axis=1).astype(np.int64)
        return out

    def example_losses(self, parameters: Vector, data: ArrayData) -> F64:
        """Each example's cross-entropy under ``parameters`` (no L2 term), shape ``(n,)``; their
        mean is :meth:`evaluate`'s loss. What a membership inference attack scores."""
        weight, bias = self._split(parameters)
        logp = _log_softmax(data.x.astype(np.float64) @ weight.T + bias)
        out: F64 = -logp[np.arange(len(data)), data.y]
        return out
