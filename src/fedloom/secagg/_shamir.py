"""Shamir secret sharing over the prime field of ``PRIME = 2**521 - 1`` (the Mersenne prime M521).

A dealer hides a secret ``s`` as the constant term of a random polynomial ``f`` of degree
``t - 1`` and hands out the points ``(x, f(x))``. Any ``t`` of them determine ``f`` and so
``s = f(0)``; the scheme is information-theoretically hiding: fewer than ``t`` shares reveal
nothing about the secret, because for every candidate secret exactly one polynomial of degree
``t - 1`` passes through them (Shamir, "How to share a secret", CACM 1979). Secure aggregation
uses it to recover a dropped client's mask key, or a surviving client's self-mask seed.

Secrets are 1 to 64 bytes, read as a big-endian integer (below ``2**512 < PRIME``); ``combine``
needs their length back because leading zero bytes do not survive that reading.

Examples
--------
>>> shares = split(b"mask key", 2, [1, 2, 3])
>>> combine([shares[2], shares[0]], 2, 8)
b'mask key'
"""

from __future__ import annotations

import functools
import operator
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = [
    "MAX_SECRET_BYTES",
    "PRIME",
    "SHARE_BYTES",
    "Y_BYTES",
    "Share",
    "combine",
    "interpolate",
    "split",
]

PRIME: int = 2**521 - 1
MAX_SECRET_BYTES = 64
_X_BYTES = 4
Y_BYTES = 66  # 521 bits
SHARE_BYTES = _X_BYTES + Y_BYTES


@dataclass(frozen=True)
class Share:
    """One point ``(x, f(x) mod PRIME)`` of a sharing polynomial.

    Parameters
    ----------
    x
        The evaluation point, ``1 <= x < PRIME`` (secure aggregation uses a client's 1-based
        index); ``to_bytes`` needs it below ``2**32``.
    y
        ``f(x) mod PRIME``; left out of ``repr`` so that logs do not collect shares.
    """

    x: int
    y: int = field(repr=False)

    def __post_init__(self) -> None:
        if not 1 <= self.x < PRIME:
            raise ValueError(f"share x must be in [1, 2**521 - 1), got {self.x}")
        if not 0 <= self.y < PRIME:
            raise ValueError("share y must be in [0, 2**521 - 1)")

    def to_bytes(self) -> bytes:
        """The share as 70 bytes: ``x`` in 4 and ``y`` in 66, both big-endian."""
        if self.x >= 1 << (8 * _X_BYTES):
            raise ValueError(f"share x = {self.x} does not fit the 4-byte encoding (below 2**32)")
        return self.x.to_bytes(_X_BYTES, "big") + self.y.to_bytes(Y_BYTES, "big")

    @classmethod
    def from_bytes(cls, raw: bytes) -> Share:
        """Read a share written by ``to_bytes``; ``ValueError`` on a wrong length or range."""
        if len(raw) != SHARE_BYTES:
            raise ValueError(f"a share is {SHARE_BYTES} bytes, got {len(raw)}")
        return cls(int.from_bytes(raw[:_X_BYTES], "big"), int.from_bytes(raw[_X_BYTES:], "big"))


def split(
    secret: bytes,
    threshold: int,
    xs: Sequence[int],
    *,
    randbelow: Callable[[int], int] = secrets.randbelow,
) -> list[Share]:
    """Share ``secret`` so that any ``threshold`` of the shares recover it and fewer reveal nothing.

    Parameters
    ----------
    secret
        1 to 64 bytes; the polynomial's constant term is ``int.from_bytes(secret, "big")``.
    threshold
        ``t``, the number of shares that reconstruct: the polynomial has degree ``t - 1``.
    xs
        The distinct evaluation points, each in ``[1, PRIME)``: one share per point, in order.
    randbelow
        Draws the ``t - 1`` other coefficients, as ``randbelow(PRIME)`` in order from the
        ``x**1`` coefficient up. The default is a CSPRNG; only tests should pass another.

    Returns
    -------
    list[Share]
        ``Share(x, f(x))`` for each ``x`` in ``xs``.
    """
    if not 1 <= len(secret) <= MAX_SECRET_BYTES:
        raise ValueError(f"secret must be 1 to {MAX_SECRET_BYTES} bytes, got {len(secret)}")
    if not 1 <= threshold <= len(xs):
        raise ValueError(
            f"threshold must be between 1 and the number of shares ({len(xs)}), got {threshold}"
        )
    for x in xs:
        if not 1 <= x < PRIME:
            raise ValueError(f"share points must be in [1, 2**521 - 1), got {x}")
    if len(set(xs)) != len(xs):
        raise ValueError(f"share points must be distinct, got a repeated one in {list(xs)}")
    coefficients = [int.from_bytes(secret, "big")]
    coefficients += [randbelow(PRIME) for _ in range(threshold - 1)]
    return [Share(x, _evaluate(coefficients, x)) for x in xs]


def combine(shares: Sequence[Share], threshold: int, length: int) -> bytes:
    """Recover the secret from the first ``threshold`` of ``shares`` (Lagrange at 0).

    Parameters
    ----------
    shares
        At least ``threshold`` shares with distinct ``x``; those after the first ``threshold``
        are not used.
    threshold
        ``t``, as given to ``split``.
    length
        The secret's length in bytes (1 to 64).

    Returns
    -------
    bytes
        The secret, ``length`` bytes big-endian. A wrong or tampered share gives a wrong value,
        and ``ValueError`` only when that value does not fit in ``length`` bytes, which a small
        change need not cause: with ``x = 1..t`` the Lagrange weights at 0 are small integers
        (binomial coefficients), so a change in a share's low bytes moves the secret by a small
        multiple of it, silently. Shamir sharing does not detect tampering: authenticate shares
        in transit, and check a rebuilt secret against a commitment (as secure aggregation does
        with the self-mask seed's hash and the mask key's public key).
    """
    if not 1 <= length <= MAX_SECRET_BYTES:
        raise ValueError(f"secret length must be 1 to {MAX_SECRET_BYTES} bytes, got {length}")
    if threshold < 1:
        raise ValueError(f"threshold must be at least 1, got {threshold}")
    if len(shares) < threshold:
        raise ValueError(
            f"combine needs at least {threshold} shares, got {len(shares)}: "
            "fewer than the threshold reveal nothing about the secret"
        )
    xs = [share.x for share in shares]
    if len(set(xs)) != len(xs):
        raise ValueError(f"shares must have distinct x, got {xs}")
    used = shares[:threshold]
    return interpolate(tuple(share.x for share in used), [share.y for share in used], length)


def interpolate(xs: tuple[int, ...], ys: Sequence[int], length: int) -> bytes:
    """The secret through the points ``(xs[i], ys[i])``: :func:`combine` without the checks on
    its arguments, for a caller that holds many sharings' ``y`` values as integers (a server
    rebuilding a secret per client). ``xs`` must be distinct and in ``[1, PRIME)``; the same
    ``xs`` reuse their Lagrange weights. ``ValueError`` when the value does not fit ``length``.
    """
    weights = _lagrange_at_zero(xs)
    if len(weights) != len(ys):
        raise ValueError(f"{len(xs)} points but {len(ys)} values")
    value: int = sum(map(operator.mul, weights, ys)) % PRIME
    if value.bit_length() > 8 * length:
        raise ValueError(
            f"the shares interpolate to a value that does not fit in {length} bytes: "
            "a share is wrong or tampered with, or the length is wrong"
        )
    return value.to_bytes(length, "big")


def _evaluate(coefficients: Sequence[int], x: int) -> int:
    """``f(x) mod PRIME`` by Horner's rule; ``coefficients[i]`` multiplies ``x**i``."""
    y = 0
    for c in reversed(coefficients):
        y = (y * x + c) % PRIME
    return y


@functools.lru_cache(maxsize=32)
def _lagrange_at_zero(xs: tuple[int, ...]) -> tuple[int, ...]:
    """``l_j(0) = prod_{m != j} x_m / (x_m - x_j) mod PRIME`` for each ``j``.

    They depend only on the points, so a server recovering many secrets from the same set of
    surviving clients computes them once (cached).
    """
    weights = []
    for j, x_j in enumerate(xs):
        numerator = denominator = 1
        for m, x_m in enumerate(xs):
            if m != j:
                numerator = numerator * x_m % PRIME
                denominator = denominator * (x_m - x_j) % PRIME
        weights.append(numerator * pow(denominator, -1, PRIME) % PRIME)
    return tuple(weights)
