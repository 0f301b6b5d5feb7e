"""Model parameters as one flat float32 vector plus a spec.

Aggregation, clipping, noise, quantization and masking are all vector operations, so every model
crosses the client boundary as one contiguous ``float32`` vector. :class:`ParamSpec` remembers the
names, shapes and dtypes needed to turn the vector back into named arrays.

Examples
--------
>>> import numpy as np
>>> spec = ParamSpec.of({"w": np.zeros((2, 3)), "b": np.zeros(3)})
>>> vec = spec.pack({"w": np.ones((2, 3)), "b": np.arange(3)})
>>> vec.shape, vec.dtype
((9,), dtype('float32'))
>>> spec.unpack(vec)["b"].tolist()
[0.0, 1.0, 2.0]
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

import numpy as np
import numpy.typing as npt

from fedloom.errors import DataError

__all__ = ["ParamSpec", "Vector"]

Vector = npt.NDArray[np.float32]
"""A flat float32 parameter or update vector."""


@dataclass(frozen=True)
class ParamSpec:
    """Names, shapes and dtypes of a model's parameters, in packing order."""

    names: tuple[str, ...]
    shapes: tuple[tuple[int, ...], ...]
    dtypes: tuple[str, ...]

    def __post_init__(self) -> None:
        if not len(self.names) == len(self.shapes) == len(self.dtypes):
            raise DataError("parameter spec has names, shapes and dtypes of different lengths")
        if len(set(self.names)) != len(self.names):
            raise DataError("parameter spec has duplicate names")

    @classmethod
    def of(cls, arrays: Mapping[str, npt.ArrayLike]) -> ParamSpec:
        """The spec of a mapping of named arrays, in the mapping's order."""
        items = [(name, np.asarray(a)) for name, a in arrays.items()]
        return cls(
            names=tuple(n for n, _ in items),
            shapes=tuple(tuple(int(s) for s in a.shape) for _, a in items),
            dtypes=tuple(str(a.dtype) for _, a in items),
        )

    @cached_property
    def sizes(self) -> tuple[int, ...]:
        """Number of elements of each named array."""
        return tuple(math.prod(s) for s in self.shapes)

    @property
    def size(self) -> int:
        """Length of the packed vector."""
        return sum(self.sizes)

    def pack(self, arrays: Mapping[str, npt.ArrayLike]) -> Vector:
        """Concatenate named arrays into one new float32 vector, in spec order."""
        missing = [n for n in self.names if n not in arrays]
        if missing:
            raise DataError(f"parameters missing from the model: {', '.join(missing)}")
        out = np.empty(self.size, dtype=np.float32)
        offset = 0
        for name, shape, n in zip(self.names, self.shapes, self.sizes, strict=True):
            a = np.asarray(arrays[name])
            if a.shape != shape:
                raise DataError(f"parameter {name!r} has shape {a.shape}, the spec says {shape}")
            out[offset : offset + n] = a.reshape(-1)
            offset += n
        return out

    def unpack(self, vector: npt.ArrayLike) -> dict[str, npt.NDArray[np.generic]]:
        """Split a vector into named arrays of the spec's shapes and dtypes."""
        vec = self.check(vector)
        out: dict[str, npt.NDArray[np.generic]] = {}
        offset = 0
        for name, shape, dtype, n in zip(
            self.names, self.shapes, self.dtypes, self.sizes, strict=True
        ):
            out[name] = vec[offset : offset + n].reshape(shape).astype(dtype, copy=False)
            offset += n
        return out

    def check(self, vector: npt.ArrayLike) -> Vector:
        """The vector as float32, after checking that it is 1-D and of the spec's length."""
        vec = np.asarray(vector)
        if vec.ndim != 1 or vec.shape[0] != self.size:
            raise DataError(
                f"parameter vector has shape {vec.shape}; this model needs ({self.size},)"
            )
        return vec.astype(np.float32, copy=False)

    def to_json(self) -> str:
        """A JSON text that :meth:`from_json` reads back."""
        return json.dumps(
            {"names": self.names, "shapes": self.shapes, "dtypes": self.dtypes}, sort_keys=True
        )

    @classmethod
    def from_json(cls, text: str) -> ParamSpec:
        """Read a spec written by :meth:`to_json`."""
        try:
            raw = json.loads(text)
            return cls(
                names=tuple(str(n) for n in raw["names"]),
                shapes=tuple(tuple(int(d) for d in s) for s in raw["shapes"]),
                dtypes=tuple(str(d) for d in raw["dtypes"]),
            )
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"malformed parameter spec: {exc}") from exc
