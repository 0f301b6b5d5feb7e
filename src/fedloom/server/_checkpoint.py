"""Model checkpoints: the parameter vector, its spec and the round, in one ``.npz`` file."""

from __future__ import annotations

import io
import os
from dataclasses import dataclass

import numpy as np

from fedloom._io import atomic_write
from fedloom.errors import DataError
from fedloom.params import ParamSpec, Vector

__all__ = ["Checkpoint", "load_checkpoint", "save_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """A saved global model: the parameters after ``round`` rounds, and how to unpack them."""

    round: int
    parameters: Vector
    spec: ParamSpec


def save_checkpoint(path: str | os.PathLike[str], checkpoint: Checkpoint) -> None:
    """Write ``checkpoint`` atomically: a crash leaves the previous file whole."""
    buf = io.BytesIO()
    np.savez(
        buf,
        parameters=checkpoint.parameters,
        round=np.int64(checkpoint.round),
        spec=np.frombuffer(checkpoint.spec.to_json().encode(), dtype=np.uint8),
    )
    atomic_write(path, buf.getvalue())


def load_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`."""
    try:
        with np.load(path, allow_pickle=False) as f:
            spec = ParamSpec.from_json(f["spec"].tobytes().decode())
            parameters = spec.check(f["parameters"])
            return Checkpoint(int(f["round"]), parameters, spec)
    except FileNotFoundError:
        raise DataError(f"no checkpoint at {path}") from None
    except (OSError, KeyError, ValueError) as exc:
        raise DataError(f"{path} is not a fedloom checkpoint: {exc}") from None
