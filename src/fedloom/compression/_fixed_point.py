"""Fixed-point encoding of float updates into integers mod ``2**k``, as a link of the update
chain, and the arithmetic on such integers.

Secure aggregation masks and sums integers mod ``2**k`` (Bonawitz et al. 2017, section 3), so
each client clips its update to ``[-clip, clip]``, scales it to a signed ``bits``-bit integer
and stores that in two's complement mod ``2**k``. Sums of up to ``max_summands()`` such vectors
cannot wrap, so the server reads the masked-then-unmasked total back as signed and divides.

As a link (:class:`FixedPoint` runs on the client and is linear) it also carries the weight:
a client of ``n`` examples sends ``encode(w/W * update)`` followed by ``w = min(n, W)`` itself,
so the sum holds the weighted sum of the updates and the sum of the weights, and nothing else.
Arrays of integers mod ``2**k`` are ``uint64`` for every ``k <= 64``: uint64 arithmetic wraps
mod ``2**64`` and ``2**k`` divides ``2**64``, so masking the low ``k`` bits after it is exact.

Examples
--------
>>> import numpy as np
>>> fp = FixedPoint(clip=1.0, bits=4, modulus_bits=8)  # scale 7
>>> a, b = fp.encode(np.array([0.5, -1.0])), fp.encode(np.array([3.0, 0.0]))
>>> a.tolist(), b.tolist()
([4, 249], [7, 0])
>>> (fp.decode_sum(mod_add(a, b, 8), count=2) * 7).tolist()
[11.0, -7.0]
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt

from fedloom.errors import ConfigError
from fedloom.messages import ClientUpdate, Config, Metrics
from fedloom.strategy import Total

__all__ = ["FixedPoint", "mod_add", "mod_sub", "pack", "unpack"]

Encoded = npt.NDArray[np.uint64]


@dataclass(frozen=True)
class FixedPoint:
    """How float updates become integers mod ``2**modulus_bits``.

    Parameters
    ----------
    clip
        Values are clipped to ``[-clip, clip]`` before encoding; ``> 0`` (``--secagg-clip``).
    bits
        A clipped value becomes an integer in ``[-(2**(bits-1) - 1), 2**(bits-1) - 1]``;
        2 to 32 (``--secagg-bits``).
    modulus_bits
        ``k``: sums are taken mod ``2**k``; ``bits < k <= 64`` (``--secagg-modulus-bits``).
    weight_bound
        W: a client's weight is its example count capped at W; it sends ``w/W * update``, so
        the encoded values stay within the clip range, and ``w`` as an exact integer
        (``--secagg-weight-bound``).
    """

    clip: float = 1.0
    bits: int = 20
    modulus_bits: int = 32
    weight_bound: int = 1000

    def __post_init__(self) -> None:
        if not (isinstance(self.clip, int | float) and math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"--secagg-clip must be a finite number > 0, got {self.clip!r}")
        if not (_is_int(self.bits) and 2 <= self.bits <= 32):
            raise ConfigError(f"--secagg-bits must be an integer from 2 to 32, got {self.bits!r}")
        if not (_is_int(self.modulus_bits) and self.bits < self.modulus_bits <= 64):
            raise ConfigError(
                f"--secagg-modulus-bits must be an integer from {self.bits + 1} to 64 (above "
                f"--secagg-bits = {self.bits}), got {self.modulus_bits!r}"
            )
        if not (_is_int(self.weight_bound) and self.weight_bound >= 1):
            raise ConfigError(f"--secagg-weight-bound must be at least 1, got {self.weight_bound}")

    name: ClassVar[str] = "the fixed-point encoding"
    side: ClassVar[Literal["client"]] = "client"
    linear: ClassVar[bool] = True

    @property
    def scale(self) -> float:
        """Integer steps per unit: ``(2**(bits-1) - 1) / clip``."""
        return ((1 << (self.bits - 1)) - 1) / self.clip

    def max_summands(self) -> int:
        """The most encoded vectors whose sum cannot wrap mod ``2**k``.

        ``count * (2**(bits-1) - 1)`` must stay within ``2**(k-1) - 1``.
        """
        return ((1 << (self.modulus_bits - 1)) - 1) // ((1 << (self.bits - 1)) - 1)

    def encode(self, values: npt.NDArray[np.floating]) -> Encoded:
        """Clip, scale, round to nearest (``np.rint``), store in two's complement mod ``2**k``.

        ``ValueError`` if a value is NaN or infinite. The result has the input's shape.
        """
        floats = np.asarray(values, dtype=np.float64)
        bad = np.count_nonzero(~np.isfinite(floats))
        if bad:
            raise ValueError(f"cannot encode non-finite values: {bad} NaN or infinite entries")
        ints = np.rint(np.clip(floats, -self.clip, self.clip) * self.scale).astype(np.int64)
        return ints.astype(np.uint64) & _mask(self.modulus_bits)

    def decode_sum(self, total: Encoded, count: int) -> npt.NDArray[np.float64]:
        """Read a sum of ``count`` encoded vectors as signed integers and divide by ``scale``.

        Values ``>= 2**(k-1)`` are negative. ``ValueError`` if ``count`` is above
        ``max_summands()``, as such a sum may have wrapped, or if a value is ``>= 2**k``.
        """
        if not 0 <= count <= self.max_summands():
            raise ValueError(
                f"cannot decode a sum of {count} vectors: from 0 to {self.max_summands()} fit "
                f"mod 2**{self.modulus_bits} without wrapping; raise --secagg-modulus-bits or "
                "lower --secagg-bits"
            )
        ints = np.asarray(total, dtype=np.uint64)
        _check_range(ints, self.modulus_bits)
        shift = 64 - self.modulus_bits  # sign-extend bit k-1 through the int64
        signed = (ints << np.uint64(shift)).view(np.int64) >> shift
        decoded: npt.NDArray[np.float64] = signed.astype(np.float64) / self.scale
        return decoded

    def error_bound(self, count: int) -> float:
        """The largest ``|decoded sum - exact sum of the clipped values|`` per coordinate.

        ``count * 0.5 / scale`` for rounding to nearest (each scaled value moves by at most
        0.5), plus ``4 * count * clip * u`` for float64, ``u = 2**-53``: ``v * scale`` is
        rounded once (relative error ``u``, so at most ``clip * u`` per value once divided by
        the same ``scale``), and the exact integer sum, at most ``count * clip * scale`` in
        magnitude, is rounded to float64 and divided (``2u + u**2`` relative). That totals
        under ``3.01 * count * clip * u``; 4 leaves a margin. The midpoints ``v * scale =
        m + 0.5``, all rounded the same way, reach the first term.
        """
        if count < 0:
            raise ValueError(f"count must be >= 0, got {count}")
        return count * 0.5 / self.scale + 4.0 * count * self.clip * 2.0**-53

    def encoded_size(self, dim: int) -> int:
        """``dim`` encoded values and the weight."""
        return dim + 1

    def init(self, dim: int) -> None:
        return None

    def one(self, update: ClientUpdate, state: None) -> tuple[ClientUpdate, None]:
        """``encode(w/W * update)`` followed by ``w``, the example count capped at W."""
        weight = min(update.weight, self.weight_bound)
        scaled = update.vector.astype(np.float64) * (weight / self.weight_bound)
        body = self.encode(scaled)
        encoded = np.concatenate([body, np.array([weight], dtype=np.uint64)])
        return ClientUpdate(update.client_id, encoded, weight, update.metrics), state

    def total(self, total: Total, state: None) -> tuple[Total, None, Metrics]:
        """The weighted sum of the clipped updates and the sum of the weights, decoded."""
        weight = float(int(total.vector[-1]))
        summed = self.decode_sum(total.vector[:-1], total.count)
        return Total(summed * self.weight_bound, weight, total.count), state, {}

    def to_config(self) -> Config:
        return {
            "secagg.clip": self.clip,
            "secagg.bits": self.bits,
            "secagg.modulus_bits": self.modulus_bits,
            "secagg.weight_bound": self.weight_bound,
        }

    @classmethod
    def from_config(cls, config: Config) -> FixedPoint | None:
        """The encoding a client was sent; ``None`` when the config names none."""
        if "secagg.clip" not in config:
            return None
        try:
            return cls(
                float(config["secagg.clip"]),
                int(config["secagg.bits"]),
                int(config["secagg.modulus_bits"]),
                int(config["secagg.weight_bound"]),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(
                f"fixed-point encoding settings missing or malformed: {exc}"
            ) from None

    def error_bound_of_mean(self, count: int, total_weight: float) -> float:
        """The largest per-coordinate difference between the decoded mean and the weighted mean
        of the clipped updates, for ``count`` clients of summed weight ``total_weight``."""
        return self.error_bound(count) * self.weight_bound / total_weight


def mod_add(a: Encoded, b: Encoded, modulus_bits: int) -> Encoded:
    """``(a + b) mod 2**modulus_bits``, elementwise, for ``modulus_bits`` from 1 to 64."""
    return np.bitwise_and(np.add(a, b, dtype=np.uint64), _mask(modulus_bits))


def mod_sub(a: Encoded, b: Encoded, modulus_bits: int) -> Encoded:
    """``(a - b) mod 2**modulus_bits``, elementwise, for ``modulus_bits`` from 1 to 64."""
    return np.bitwise_and(np.subtract(a, b, dtype=np.uint64), _mask(modulus_bits))


def pack(values: Encoded, modulus_bits: int) -> bytes:
    """The values (flattened in C order) as little-endian uint32 words when ``modulus_bits <=
    32``, else uint64. ``ValueError`` if a value is ``>= 2**modulus_bits``."""
    ints = np.asarray(values, dtype=np.uint64)
    _check_range(ints, modulus_bits)
    return ints.astype(_word(modulus_bits)).tobytes()


def unpack(raw: bytes, count: int, modulus_bits: int) -> Encoded:
    """``count`` values written by ``pack``, as a new 1-D uint64 array.

    ``ValueError`` if ``raw`` is not ``count`` words long or a value is ``>= 2**modulus_bits``.
    """
    word = _word(modulus_bits)
    if count < 0 or len(raw) != count * word.itemsize:
        raise ValueError(
            f"expected {count} values of {word.itemsize} bytes ({count * word.itemsize} bytes) "
            f"for modulus 2**{modulus_bits}, got {len(raw)} bytes"
        )
    ints = np.frombuffer(raw, dtype=word).astype(np.uint64)
    _check_range(ints, modulus_bits)
    return ints


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _mask(modulus_bits: int) -> np.uint64:
    if not (_is_int(modulus_bits) and 1 <= modulus_bits <= 64):
        raise ValueError(f"modulus_bits must be an integer from 1 to 64, got {modulus_bits!r}")
    mask: np.uint64 = np.uint64((1 << modulus_bits) - 1)
    return mask


def _word(modulus_bits: int) -> np.dtype[np.unsignedinteger]:
    _mask(modulus_bits)
    return np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")


def _check_range(ints: Encoded, modulus_bits: int) -> None:
    if ints.size and int(ints.max()) > int(_mask(modulus_bits)):
        raise ValueError(f"values must be below 2**{modulus_bits}, got {int(ints.max())}")
