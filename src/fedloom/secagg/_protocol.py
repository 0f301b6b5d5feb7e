"""What the secure aggregation client and server agree on: settings, phases, message layouts.

Phases of one round (Bonawitz et al. 2017, §4; the semi-honest variant, without the consistency
check round):

1. ``secagg.keys``: the server sends the model; each client trains, keeps its encoded update,
   makes two X25519 key pairs (``c`` to encrypt shares, ``s`` to derive pairwise masks) and
   replies with the public keys.
2. ``secagg.share``: the server relays each client its neighbours' public keys; the client
   Shamir-shares its mask private key ``s_sk`` and a fresh self-mask seed ``b`` among those
   neighbours and replies with each share encrypted for its recipient (AES-GCM under a key
   agreed from ``c``).
3. ``secagg.masked``: the server forwards each client the encrypted shares addressed to it and
   names who shared (U2); the client replies with its masked input
   ``y = x + PRG(b) + Σ_v ±PRG(s_uv) mod 2^k`` over its neighbours in U2.
4. ``secagg.unmask``: the server names the survivors (U3) and the dropped (U2 minus U3); each
   survivor returns its share of ``b_v`` for every surviving neighbour ``v`` and of ``s_sk_v``
   for every dropped one, never both for the same ``v``. The server rebuilds the secrets,
   removes the masks and decodes the sum.

Shares travel as fixed-size records in an order both sides know, so nobody parses a map of
client ids per share: a client's phase-2 reply is one :data:`SEALED_BYTES` record per
neighbour, in sorted id order; the phase-3 instruction hands each client the records addressed
to it, in sorted order of its neighbours in U2; its phase-4 reply is one :data:`RELEASED_BYTES`
``y`` value per neighbour in U2, in the same order (the share's ``x`` is the recipient's
1-based rank among the sender's sorted neighbours, which the server knows).
"""

from __future__ import annotations

import math
import struct
from collections.abc import Mapping
from dataclasses import dataclass

from fedloom.errors import ConfigError
from fedloom.messages import Config
from fedloom.secagg._crypto import NONCE_BYTES, TAG_BYTES
from fedloom.secagg._shamir import SHARE_BYTES, Y_BYTES

__all__ = [
    "PHASES",
    "RELEASED_BYTES",
    "SEALED_BYTES",
    "SecAggSettings",
    "mask_sign",
    "pack_ids",
    "pack_map",
    "unpack_ids",
    "unpack_map",
]

KEYS, SHARE, MASKED, UNMASK = "secagg.keys", "secagg.share", "secagg.masked", "secagg.unmask"
PHASES = (KEYS, SHARE, MASKED, UNMASK)
"""The four phases, in order."""

SEALED_BYTES = NONCE_BYTES + 2 * SHARE_BYTES + TAG_BYTES
"""One encrypted share pair (of ``s_sk`` and of ``b``) for one neighbour: 168 bytes."""
RELEASED_BYTES = Y_BYTES
"""One released share's ``y`` value: 66 bytes."""

SHARE_INFO = b"fedloom secagg share key"
MASK_INFO = b"fedloom secagg pairwise mask"


@dataclass(frozen=True)
class SecAggSettings:
    """The parameters of the protocol, the same on the server and every client.

    How an update becomes integers mod 2^k (the fixed-point encoding, or distributed DP's) is
    not the protocol's business: it is the last client link of the strategy's update chain.

    Parameters
    ----------
    threshold
        t as a fraction of a client's neighbourhood, in (0.5, 1]: a client's secrets are shared
        so that any ``ceil(threshold * neighbours)`` of its neighbours can rebuild them and
        fewer learn nothing. Above one half, so that the server can never gather enough
        shares of both secrets of one client; the round also needs at least t survivors.
    degree
        ``None`` for SecAgg (every client masks with every other); a number for SecAgg+ (each
        client masks with ``degree`` neighbours of a random Harary graph).
    """

    threshold: float = 2 / 3
    degree: int | None = None

    def __post_init__(self) -> None:
        if not 0.5 < self.threshold <= 1.0:
            raise ConfigError(
                f"--secagg-threshold must be in (0.5, 1], got {self.threshold}: at or below "
                "one half, the shares of disjoint groups of clients could unmask one update"
            )
        if self.degree is not None and self.degree < 2:
            raise ConfigError(f"--secagg-degree must be at least 2, got {self.degree}")

    def shares_needed(self, neighbours: int) -> int:
        """t for a client with ``neighbours`` neighbours: more than half of them."""
        return max(1, math.ceil(self.threshold * neighbours))

    def to_config(self) -> Config:
        """The settings as client config (``secagg.*`` keys)."""
        return {"secagg.threshold": self.threshold, "secagg.degree": self.degree or 0}

    @classmethod
    def from_config(cls, config: Config) -> SecAggSettings:
        """The settings a client was sent; a clear error when they are missing or malformed."""
        try:
            degree = int(config["secagg.degree"])
            return cls(threshold=float(config["secagg.threshold"]), degree=degree or None)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"secure aggregation settings missing or malformed: {exc}") from None


def mask_sign(u: str, v: str) -> int:
    """+1 when ``u`` adds the mask it shares with ``v``, -1 when it subtracts it."""
    return 1 if u < v else -1


def pack_map(entries: Mapping[str, bytes]) -> bytes:
    """``{id: bytes}`` as one byte string: per entry, id length, id, value length, value."""
    out = bytearray()
    for key, value in entries.items():
        raw = key.encode()
        out += struct.pack("<H", len(raw)) + raw + struct.pack("<I", len(value)) + value
    return bytes(out)


def unpack_map(raw: bytes) -> dict[str, bytes]:
    """The inverse of :func:`pack_map`; ``ValueError`` on malformed input."""
    out: dict[str, bytes] = {}
    view = memoryview(raw)
    pos = 0
    try:
        while pos < len(view):
            (n,) = struct.unpack_from("<H", view, pos)
            key = bytes(view[pos + 2 : pos + 2 + n]).decode()
            pos += 2 + n
            (m,) = struct.unpack_from("<I", view, pos)
            if pos + 4 + m > len(view) or key in out:
                raise ValueError("truncated or repeated entry")
            out[key] = bytes(view[pos + 4 : pos + 4 + m])
            pos += 4 + m
    except (struct.error, UnicodeDecodeError) as exc:
        raise ValueError(f"malformed map: {exc}") from None
    return out


def pack_ids(ids: list[str] | tuple[str, ...]) -> bytes:
    """A list of client ids as bytes."""
    return pack_map(dict.fromkeys(ids, b""))


def unpack_ids(raw: bytes) -> list[str]:
    """The inverse of :func:`pack_ids`."""
    return list(unpack_map(raw))
