"""The built-in models, by name: ``mlp``, ``cnn`` (PyTorch modules) and ``logreg`` (NumPy), and
their trainers. ``mlp(64, 10)`` is the module a run with ``--model mlp`` on digits trained, so
an exported state dict loads straight into it."""

from fedloom.models._builtin import EXPORT_FORMATS, MODELS, cnn, make_trainer, mlp

__all__ = ["EXPORT_FORMATS", "MODELS", "cnn", "make_trainer", "mlp"]
