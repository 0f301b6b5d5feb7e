"""scikit-learn's linear classifiers as federated models: the coefficients and intercepts are the
parameter vector, and each client continues from the global model with ``partial_fit``."""

from __future__ import annotations

from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.client._trainer import proximal_mu
from fedloom.data import ArrayData
from fedloom.errors import ConfigError
from fedloom.messages import Config, EvalResult, FitResult, setting
from fedloom.params import ParamSpec, Vector

__all__ = ["SklearnTrainer"]


class SklearnTrainer:
    """Trains a scikit-learn linear classifier with ``partial_fit`` (``SGDClassifier``,
    ``Perceptron``, ``PassiveAggressiveClassifier``): its ``coef_`` and ``intercept_`` are the
    federated parameters, ``coef`` (``k`` x features) and ``intercept`` (``k``), where ``k`` is 1
    for two classes (scikit-learn's binary layout) and the number of classes otherwise.

    Each :meth:`fit` clones ``estimator``, sets the global model as its coefficients and runs
    ``local_epochs`` passes of ``partial_fit`` over the client's examples (in an order drawn from
    the round's seed), declaring every class, so a client that lacks some still trains the model
    every other client has. The estimator's own settings (loss, ``alpha``, the learning-rate
    schedule) apply as they would on one machine; an instruction's ``local_epochs`` overrides
    the default. :meth:`estimator` gives the trained model back as a fitted estimator.

    Raises
    ------
    ConfigError
        If ``estimator`` has no ``partial_fit`` or is not a classifier, or the shape is wrong.
    """

    def __init__(
        self, estimator: Any, num_features: int, num_classes: int, *, local_epochs: int = 1
    ) -> None:
        if not (hasattr(estimator, "partial_fit") and hasattr(estimator, "decision_function")):
            raise ConfigError(
                f"{type(estimator).__name__} cannot continue from a global model: fedloom "
                "trains scikit-learn classifiers with partial_fit (SGDClassifier, Perceptron, "
                "PassiveAggressiveClassifier)"
            )
        if num_features < 1 or num_classes < 2:
            raise ConfigError(
                f"a linear model needs at least 1 feature and 2 classes, "
                f"got {num_features} and {num_classes}"
            )
        if local_epochs < 1:
            raise ConfigError(f"local_epochs must be at least 1, got {local_epochs}")
        self._template = estimator
        self.classes = np.arange(num_classes)
        rows = 1 if num_classes == 2 else num_classes
        self._spec = ParamSpec(
            ("coef", "intercept"), ((rows, num_features), (rows,)), ("float32", "float32")
        )
        self._epochs = local_epochs

    @property
    def spec(self) -> ParamSpec:
        return self._spec

    def init_parameters(self, seed: int) -> Vector:
        """Zeros: scikit-learn's own start for a linear model."""
        return np.zeros(self._spec.size, dtype=np.float32)

    def estimator(self, parameters: Vector) -> Any:
        """A fitted copy of the estimator holding ``parameters``: its ``predict``,
        ``decision_function`` and (for a probabilistic loss) ``predict_proba`` work."""
        from sklearn.base import clone

        arrays = self._spec.unpack(self._spec.check(parameters))
        model = clone(self._template)
        model.coef_ = np.array(arrays["coef"], dtype=np.float64)
        model.intercept_ = np.array(arrays["intercept"], dtype=np.float64)
        model.classes_ = self.classes
        model.n_features_in_ = self._spec.shapes[0][1]
        model.t_ = 1.0
        return model

    def fit(self, parameters: Vector, data: ArrayData, config: Config, seed: int) -> FitResult:
        """``local_epochs`` passes of ``partial_fit`` from ``parameters`` over ``data``."""
        if proximal_mu(config):
            raise ConfigError(
                "scikit-learn's partial_fit has no proximal term: FedProx (mu > 0) needs a "
                "fedloom trainer (logreg, mlp, cnn)"
            )
        epochs = int(setting(config, "local_epochs", self._epochs, int))
        model = self.estimator(parameters)
        if "random_state" in model.get_params():
            model.set_params(random_state=seed % (2**32))
        x = self._features(data)
        rng = np.random.default_rng(seed)
        for _ in range(epochs):
            order = rng.permutation(len(data))
            model.partial_fit(x[order], data.y[order], classes=self.classes)
        trained = np.concatenate([model.coef_.ravel(), model.intercept_.ravel()])
        if not np.isfinite(trained).all():
            raise ConfigError(
                f"{type(model).__name__} diverged on this client's examples; lower its "
                "learning rate (eta0) or scale the features"
            )
        loss = self._loss(model, x, data.y)
        return FitResult(trained.astype(np.float32), len(data), {"train_loss": loss})

    def evaluate(self, parameters: Vector, data: ArrayData) -> EvalResult:
        n = len(data)
        if n == 0:
            return EvalResult(float("nan"), float("nan"), 0)
        model = self.estimator(parameters)
        x = self._features(data)
        accuracy = float((model.predict(x) == data.y).mean())
        return EvalResult(self._loss(model, x, data.y), accuracy, n)

    def predict(self, parameters: Vector, x: np.ndarray) -> npt.NDArray[np.int64]:
        """The class each example of ``x`` is given, shape ``(n,)``."""
        model = self.estimator(parameters)
        out: npt.NDArray[np.int64] = model.predict(np.asarray(x, np.float64).reshape(len(x), -1))
        return out.astype(np.int64)

    def _features(self, data: ArrayData) -> npt.NDArray[np.float64]:
        return np.asarray(data.x, dtype=np.float64).reshape(len(data), -1)

    def _loss(self, model: Any, x: npt.NDArray[np.float64], y: npt.NDArray[np.int64]) -> float:
        """The log loss for a probabilistic estimator, else the mean hinge loss."""
        from sklearn.metrics import hinge_loss, log_loss

        if hasattr(model, "predict_proba"):  # a probabilistic loss (log_loss, modified_huber)
            return float(log_loss(y, model.predict_proba(x), labels=self.classes))
        return float(hinge_loss(y, model.decision_function(x), labels=self.classes))
