"""A trained model, used: ``fedloom predict`` and ``fedloom export`` on a run's folder.

A run's folder (``fedloom simulate --out`` or ``fedloom server --out``) holds ``model.npz`` (the
parameters) and ``model.json`` (the built-in model's name, its input shape, its classes and,
where the labels were names, those names), which is enough to rebuild the model without the
run's data.
"""

from __future__ import annotations

import csv
import json
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom._io import atomic_write
from fedloom.client import LinearTrainer, SklearnTrainer, TorchTrainer
from fedloom.data import ArrayData, load_client_data
from fedloom.errors import ConfigError, DataError
from fedloom.models import EXPORT_FORMATS, make_trainer
from fedloom.server import load_checkpoint

__all__ = [
    "EXPORT_FORMATS",
    "MODEL_FILE",
    "Predictions",
    "check_out_dir",
    "export",
    "predict",
    "write_model_file",
]

MODEL_FILE = "model.json"
"""The name of the model's description in a run's folder."""


@dataclass(frozen=True)
class Predictions:
    """The classes a run's model gives a file's examples.

    ``classes`` are indices; ``names`` the label names they stand for, when the run had them;
    ``accuracy`` is against the file's labels when it has a label column, else ``None``.
    """

    classes: npt.NDArray[np.int64]
    names: tuple[str, ...] | None
    accuracy: float | None


def check_out_dir(out: str | Path) -> None:
    """Refuse an ``--out`` that cannot hold a run: an existing file, a path under a file, or a
    folder that cannot be written; nothing is created."""
    path = Path(out)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder")
    parent = path
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out} lies under the file {parent}; give a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out}: {parent} cannot be written to; give another folder")


def write_model_file(out: str | Path, description: Mapping[str, Any]) -> None:
    """Write ``model.json`` (the model's name, input shape, classes, label names) in ``out``."""
    keep = {k: description[k] for k in ("model", "input_shape", "num_classes", "labels", "trainer")
            if k in description}  # fmt: skip
    atomic_write(Path(out) / MODEL_FILE, (json.dumps(keep, indent=1) + "\n").encode())


def _load(run_dir: str | Path) -> tuple[dict[str, Any], Any, np.ndarray]:
    """The run's model description, a trainer of that model, and its final parameters."""
    run = Path(run_dir)
    if not (run / "model.npz").is_file():
        raise DataError(f"{run} has no model.npz; give the --out folder of a finished run")
    try:
        description: dict[str, Any] = json.loads((run / MODEL_FILE).read_text())
    except FileNotFoundError:
        raise DataError(
            f"{run} has no {MODEL_FILE} (runs before this version did not write one); load "
            "model.npz with fedloom.load_checkpoint and the run's trainer"
        ) from None
    except (OSError, ValueError) as exc:
        raise DataError(f"{run / MODEL_FILE} is not a model description: {exc}") from None
    name = description.get("model")
    if name == "custom" or "trainer" in description:
        raise ConfigError(
            f"{run} trained your own model; load model.npz with fedloom.load_checkpoint and "
            "your trainer"
        )
    try:
        shape = tuple(int(v) for v in description["input_shape"])
        trainer = make_trainer(
            str(name), input_shape=shape, num_classes=int(description["num_classes"]),
            lr=0.1, local_epochs=1, batch_size=1,
        )  # fmt: skip
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise DataError(f"{run / MODEL_FILE} is malformed: {exc}") from None
    checkpoint = load_checkpoint(run / "model.npz")
    if checkpoint.spec != trainer.spec:
        raise DataError(f"{run}/model.npz does not hold a {name} model of {shape} inputs")
    return description, trainer, checkpoint.parameters


def predict(
    run_dir: str | Path, data: str, *, label: str = "label", out: str | Path | None = None
) -> Predictions:
    """The classes the run's final model gives ``data`` (a file of any format ``fedloom
    client --data`` reads; a CSV needs no label column), written to ``out`` as a CSV of one
    ``prediction`` column (label names, where the run had them) when given."""
    description, trainer, parameters = _load(run_dir)
    names = description.get("labels")
    examples, truth = _examples(data, label, names)
    width = math.prod(int(v) for v in description["input_shape"])
    if math.prod(examples.shape[1:]) != width:
        raise DataError(
            f"{data}'s examples have {math.prod(examples.shape[1:])} features; the model takes "
            f"{width}"
        )
    classes = trainer.predict(parameters, examples.reshape(len(examples), -1))
    accuracy = float((classes == truth).mean()) if truth is not None and len(truth) else None
    labels = tuple(names) if isinstance(names, list) else None
    if out is not None:
        shown = [labels[c] for c in classes] if labels is not None else classes.tolist()
        rows = "".join(f"{v}\n" for v in shown)
        try:
            atomic_write(Path(out), ("prediction\n" + rows).encode())
        except OSError as exc:
            raise DataError(f"cannot write --out {out}: {exc}") from None
    return Predictions(classes, labels, accuracy)


def _examples(data: str, label: str, names: Any) -> tuple[np.ndarray, npt.NDArray[np.int64] | None]:
    """The examples of ``data``, and their classes when it has them (a CSV may hold features
    alone)."""
    path = Path(data)
    labelled = True
    if path.suffix == ".csv" and path.is_file():
        try:
            with path.open(newline="", encoding="utf-8") as handle:
                labelled = label in next(csv.reader(handle), [])
        except (OSError, UnicodeDecodeError, csv.Error) as exc:
            raise DataError(f"{path} cannot be read as a UTF-8 CSV: {exc}") from None
    classes = names if isinstance(names, list) else None
    table: ArrayData = load_client_data(data, label if labelled else None, classes=classes)
    return table.x, table.y if labelled else None


def export(
    run_dir: str | Path, out: str | Path | None = None, *, format: str | None = None
) -> Path:
    """Write the run's final model as a PyTorch state dict (``RUN_DIR/model.pt`` by default) or,
    with ``format="onnx"`` (or an ``out`` ending in ``.onnx``), as an ONNX graph
    (``RUN_DIR/model.onnx``).

    The state dict loads into ``fedloom.models.mlp(...)`` or ``cnn(...)`` with the run's input
    shape and classes (``model.json`` says which), and a ``logreg`` or ``sklearn-sgd`` model's
    into ``torch.nn.Linear(features, classes)``. The ONNX graph is that module, written by torch's
    exporter (``fedloom[onnx]``): one float32 input ``x``, of shape ``(batch, *input_shape)`` for
    a ``cnn`` and ``(batch, features)`` (the examples flattened) otherwise, and one output
    ``logits`` of shape ``(batch, classes)``; any batch size.
    """
    chosen = format or ("onnx" if out is not None and Path(out).suffix == ".onnx" else "torch")
    if chosen not in EXPORT_FORMATS:
        raise ConfigError(
            f"unknown export format {chosen!r}; choose one of: {', '.join(EXPORT_FORMATS)}"
        )
    try:
        import torch
    except ImportError:
        raise ConfigError("fedloom export writes a PyTorch model: install fedloom[torch]") from None
    if chosen == "onnx":
        try:
            import onnxscript  # noqa: F401  (torch's exporter needs it)
        except ImportError:
            raise ConfigError(
                "fedloom export --format onnx needs torch's exporter: install fedloom[onnx]"
            ) from None

    description, trainer, parameters = _load(run_dir)
    suffix = ".onnx" if chosen == "onnx" else ".pt"
    target = Path(out) if out is not None else Path(run_dir) / f"model{suffix}"
    module = _module(trainer, parameters)
    temporary = target.with_name(target.name + ".tmp")
    try:
        if chosen == "onnx":
            shape = tuple(int(v) for v in description["input_shape"])
            _write_onnx(module, shape if description["model"] == "cnn" else (math.prod(shape),),
                        temporary)  # fmt: skip
        else:
            torch.save({k: v.detach().clone() for k, v in module.state_dict().items()}, temporary)
        temporary.replace(target)
    except OSError as exc:
        raise DataError(f"cannot write {target}: {exc}") from None
    finally:
        temporary.unlink(missing_ok=True)
    return target


def _module(trainer: Any, parameters: np.ndarray) -> Any:
    """The run's final model as a PyTorch module; a linear model (logreg, sklearn-sgd) as
    ``torch.nn.Linear(features, classes)``."""
    import torch

    if isinstance(trainer, TorchTrainer):
        trainer.load(parameters)
        return trainer.model
    if isinstance(trainer, LinearTrainer):
        arrays = trainer.spec.unpack(parameters)
        weight, bias = arrays["weight"], arrays["bias"]
    elif isinstance(trainer, SklearnTrainer):
        arrays = trainer.spec.unpack(parameters)
        weight, bias = arrays["coef"], arrays["intercept"]
        if len(weight) == 1:  # scikit-learn's binary layout: class 1's logit against 0's zero
            weight = np.vstack([np.zeros_like(weight), weight])
            bias = np.concatenate([np.zeros_like(bias), bias])
    else:  # make_trainer builds none other
        raise ConfigError(f"cannot export a {type(trainer).__name__}")
    classes, features = weight.shape
    linear = torch.nn.Linear(features, classes)
    state = {"weight": np.array(weight, copy=True), "bias": np.array(bias, copy=True)}
    linear.load_state_dict({k: torch.from_numpy(v) for k, v in state.items()})
    return linear


def _write_onnx(module: Any, input_shape: tuple[int, ...], path: Path) -> None:
    """Write ``module`` as ONNX with torch's exporter, the batch dimension left free."""
    import logging
    import warnings

    import torch

    # The exporter logs a line for each torchvision operator it cannot register (fedloom's
    # models use none of them) and warns about its own internals (deprecated pytree calls).
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            warnings.simplefilter("ignore", DeprecationWarning)
            program = torch.onnx.export(
                module.eval(), (torch.zeros((2, *input_shape)),), dynamo=True, verbose=False,
                input_names=["x"], output_names=["logits"],
                dynamic_shapes=({0: torch.export.Dim("batch")},),
            )  # fmt: skip
    finally:
        registration.setLevel(level)
    if program is None:  # only the legacy exporter returns nothing
        raise ConfigError("torch's ONNX exporter wrote no program")
    program.save(str(path))
