"""Built-in models, by name: ``mlp``, ``cnn`` (PyTorch), ``logreg`` (NumPy) and ``sklearn-sgd``
(scikit-learn's ``SGDClassifier``)."""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

from fedloom.client import LinearTrainer, SklearnTrainer, Trainer
from fedloom.errors import ConfigError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["EXPORT_FORMATS", "MODELS", "cnn", "make_trainer", "mlp"]

MODELS = ("mlp", "cnn", "logreg", "sklearn-sgd")
"""The names ``--model`` accepts."""

EXPORT_FORMATS = ("torch", "onnx")
"""What ``fedloom export --format`` writes a built-in model as: a PyTorch state dict, or ONNX."""


def mlp(input_dim: int, num_classes: int, hidden: Sequence[int] = (128,)) -> nn.Module:
    """A fully connected network with ReLU between layers (64-128-10 for digits)."""
    from torch import nn

    layers: list[nn.Module] = []
    width = input_dim
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, num_classes))
    return nn.Sequential(*layers)


def cnn(input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """The CNN of McMahan et al. (2017): two 5x5 convolutions (32, 64 channels), each followed by
    2x2 max pooling, a 512-unit fully connected layer and a linear output. On 28x28 MNIST it has
    1,663,370 parameters, as in the paper.
    """
    from torch import nn

    if len(input_shape) != 3:
        raise ConfigError(
            f"the cnn model needs image data (channels, height, width); this dataset's examples "
            f"have shape {input_shape}; use --model mlp or logreg"
        )
    channels, height, width = input_shape
    flat = 64 * (height // 4) * (width // 4)
    return nn.Sequential(
        nn.Conv2d(channels, 32, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 5, padding=2),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(flat, 512),
        nn.ReLU(),
        nn.Linear(512, num_classes),
    )


def make_trainer(
    model: str,
    *,
    input_shape: tuple[int, ...],
    num_classes: int,
    lr: float,
    local_epochs: int,
    batch_size: int,
    momentum: float = 0.0,
) -> Trainer:
    """The trainer for the built-in model ``model`` on examples of ``input_shape``."""
    input_dim = math.prod(input_shape)
    if model == "logreg":
        return LinearTrainer(
            input_dim, num_classes, lr=lr, local_epochs=local_epochs, batch_size=batch_size
        )
    if model == "sklearn-sgd":  # logistic regression by scikit-learn's SGD, one example a step
        from sklearn.linear_model import SGDClassifier

        estimator = SGDClassifier(loss="log_loss", learning_rate="constant", eta0=lr)
        return SklearnTrainer(estimator, input_dim, num_classes, local_epochs=local_epochs)
    if model not in MODELS:
        raise ConfigError(f"unknown model {model!r}; choose one of: {', '.join(MODELS)}")
    try:
        from fedloom.client import TorchTrainer
    except ImportError:
        raise ConfigError(
            f"the {model} model needs PyTorch; install fedloom[torch] or use --model logreg"
        ) from None
    if model == "mlp":
        return TorchTrainer(
            functools.partial(mlp, input_dim, num_classes),
            lr=lr, momentum=momentum, local_epochs=local_epochs, batch_size=batch_size,
        )  # fmt: skip
    image_shape = input_shape
    cnn(image_shape, num_classes)  # validates the shape before the trainer builds it
    return TorchTrainer(
        functools.partial(cnn, image_shape, num_classes),
        input_shape=image_shape,
        lr=lr, momentum=momentum, local_epochs=local_epochs, batch_size=batch_size,
    )  # fmt: skip
