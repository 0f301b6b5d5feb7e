"""The client's half of secure aggregation: four handlers, one per phase (see ``_protocol``).

A client keeps the round's secrets in its state between phases (its key pairs, its self-mask
seed, its encoded update, the encrypted shares it holds for others) and forgets them when it has
answered the unmask phase. It refuses, with a :class:`~fedloom.errors.ClientError`, anything
that would let the server unmask its update alone: a survivor list below the threshold, a
client named both surviving and dropped, or a share that fails to authenticate.
"""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.privacy._discrete import discrete_gaussian
from fedloom.secagg._crypto import (
    KeyPair,
    TamperedError,
    agree,
    agree_all,
    decrypt,
    encrypt,
    generate_keypair,
    prg_into,
)
from fedloom.secagg._protocol import (
    KEYS,
    MASK_INFO,
    MASKED,
    SEALED_BYTES,
    SHARE,
    SHARE_INFO,
    UNMASK,
    DistributedNoise,
    SecAggSettings,
    mask_sign,
    unpack_ids,
    unpack_map,
)
from fedloom.secagg._shamir import SHARE_BYTES, Y_BYTES, Share, split

if TYPE_CHECKING:
    from fedloom.client import ClientContext

__all__ = [
    "encode_input",
    "encode_noised",
    "held_secrets",
    "pairwise_mask_seed",
    "pairwise_mask_seeds",
    "secagg_handlers",
    "self_seed_commitment",
    "share_associated_data",
]

STATE_KEY = "secagg"
U64 = npt.NDArray[np.uint64]
Handler = Callable[["ClientContext", Instruction], Reply]


@dataclass
class _Round:
    """One client's secrets for one round."""

    round: int
    settings: SecAggSettings
    encoded: U64
    c: KeyPair
    s: KeyPair
    self_seed: bytes = b""
    peers: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    share_keys: dict[str, bytes] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    held: bytes = b""
    u2: frozenset[str] = frozenset()


def encode_input(
    delta: npt.NDArray[np.float32], num_examples: int, settings: SecAggSettings
) -> U64:
    """The integer vector a client masks: ``encode(w/W * delta)`` followed by ``w`` itself.

    ``w`` is the example count capped at the weight bound W, so the sum carries the weighted
    sum of the updates and the sum of the weights, and nothing else. Under distributed DP
    (``settings.noise``) it is :func:`encode_noised` instead, with weight 1.
    """
    if settings.noise is not None:
        return encode_noised(delta, settings.noise, settings.encoding.modulus_bits)
    weight = min(num_examples, settings.weight_bound)
    scaled = delta.astype(np.float64) * (weight / settings.weight_bound)
    body = settings.encoding.encode(scaled)
    return np.concatenate([body, np.array([weight], dtype=np.uint64)])


def encode_noised(
    delta: npt.NDArray[np.floating],
    noise: DistributedNoise,
    modulus_bits: int,
    rng: np.random.Generator | None = None,
) -> U64:
    """Distributed DP's client step: scale ``delta`` down to L2 norm at most ``clip_norm``,
    multiply by ``scale``, round to the nearest integer, add discrete Gaussian noise of
    standard deviation ``sigma``, and store in two's complement mod ``2**modulus_bits``,
    followed by a weight of 1. ``rng`` defaults to a generator seeded from the operating
    system's random source (numpy's PCG64: statistically sound, not a cryptographic RNG).
    """
    floats = np.asarray(delta, dtype=np.float64)
    bad = np.count_nonzero(~np.isfinite(floats))
    if bad:
        raise ValueError(f"cannot encode non-finite values: {bad} NaN or infinite entries")
    norm = float(np.linalg.norm(floats))
    factor = noise.scale * min(1.0, noise.clip_norm / norm) if norm > 0 else noise.scale
    ints = np.rint(floats * factor).astype(np.int64)
    if noise.sigma > 0:
        rng = rng if rng is not None else np.random.default_rng(secrets.randbits(128))
        ints += discrete_gaussian(noise.sigma, ints.shape[0], rng)
    mask = np.uint64((1 << modulus_bits) - 1)
    body = ints.astype(np.uint64) & mask
    return np.concatenate([body, np.array([1], dtype=np.uint64)])


def share_associated_data(round: int, sender: str, recipient: str) -> bytes:
    """What an encrypted share is bound to: the round, its sender and its recipient."""
    return f"fedloom-secagg|{round}|{sender}|{recipient}".encode()


def pairwise_mask_seed(s_private: bytes, peer_public: bytes, round: int) -> bytes:
    """The seed of the mask two clients share: the same from either side's private key."""
    return agree(s_private, peer_public, info=MASK_INFO + round.to_bytes(4, "big"))


def pairwise_mask_seeds(s_private: bytes, peer_publics: list[bytes], round: int) -> list[bytes]:
    """:func:`pairwise_mask_seed` with each of ``peer_publics``, loading the private key once."""
    return agree_all(s_private, peer_publics, info=MASK_INFO + round.to_bytes(4, "big"))


def self_seed_commitment(seed: bytes) -> bytes:
    """SHA-256 of the self-mask seed: sent with the shares so that the server can tell a
    correctly rebuilt seed from one spoilt by a bad share. The seed is 32 fresh random bytes,
    so its hash reveals nothing of it."""
    return hashlib.sha256(seed).digest()


def secagg_handlers(train: Handler) -> dict[str, Handler]:
    """The four phase handlers; ``train`` is the app's own fit handler (so an attack or a
    custom fit composes with secure aggregation)."""

    def fail(ctx: ClientContext, ins: Instruction, reason: str) -> ClientError:
        return ClientError(ctx.client_id, ins.round, ins.phase, reason)

    def current(ctx: ClientContext, ins: Instruction) -> _Round:
        state: Any = ctx.state.get(STATE_KEY)
        if not isinstance(state, _Round) or state.round != ins.round:
            raise fail(ctx, ins, "no secure aggregation state for this round (out of order?)")
        return state

    def payload(ctx: ClientContext, ins: Instruction, key: str) -> bytes:
        raw = ins.payload.get(key)
        if raw is None:
            raise fail(ctx, ins, f"the instruction has no {key!r} payload")
        return raw

    def entries(ctx: ClientContext, ins: Instruction, key: str) -> dict[str, bytes]:
        try:
            return unpack_map(payload(ctx, ins, key))
        except ValueError as exc:
            raise fail(ctx, ins, f"malformed {key!r} payload: {exc}") from None

    def keys(ctx: ClientContext, ins: Instruction) -> Reply:
        try:
            settings = SecAggSettings.from_config(ins.config)
        except ConfigError as exc:
            raise fail(ctx, ins, str(exc)) from None
        trained = train(ctx, dataclasses.replace(ins, phase="fit", payload={}))
        if trained.vector is None:
            raise fail(ctx, ins, "training produced no update")
        encoded = encode_input(trained.vector, trained.num_examples, settings)
        state = _Round(ins.round, settings, encoded, generate_keypair(), generate_keypair())
        ctx.state[STATE_KEY] = state
        public = {"c_pk": state.c.public, "s_pk": state.s.public}
        return Reply(ctx.client_id, ins.round, ins.phase, payload=public)

    def share(ctx: ClientContext, ins: Instruction) -> Reply:
        state = current(ctx, ins)
        peers = entries(ctx, ins, "keys")
        peers.pop(ctx.client_id, None)
        if not peers or any(len(k) != 64 for k in peers.values()):
            raise fail(ctx, ins, "the neighbours' public keys are missing or malformed")
        state.peers = {v: (k[:32], k[32:]) for v, k in peers.items()}
        order = sorted(state.peers)
        t = state.settings.shares_needed(len(order))
        state.self_seed = secrets.token_bytes(32)
        xs = list(range(1, len(order) + 1))
        s_shares = split(state.s.private, t, xs)
        b_shares = split(state.self_seed, t, xs)
        share_keys = agree_all(state.c.private, [state.peers[v][0] for v in order], info=SHARE_INFO)
        state.share_keys = dict(zip(order, share_keys, strict=True))
        sealed = bytearray()  # one SEALED_BYTES record per neighbour, in sorted order
        for v, key, s_share, b_share in zip(order, share_keys, s_shares, b_shares, strict=True):
            plaintext = s_share.to_bytes() + b_share.to_bytes()
            sealed += encrypt(key, plaintext, share_associated_data(ins.round, ctx.client_id, v))
        commitment = self_seed_commitment(state.self_seed)
        return Reply(
            ctx.client_id,
            ins.round,
            ins.phase,
            payload={"shares": bytes(sealed), "b_commit": commitment},
        )

    def masked(ctx: ClientContext, ins: Instruction) -> Reply:
        state = current(ctx, ins)
        held = payload(ctx, ins, "shares")
        try:
            u2 = frozenset(unpack_ids(payload(ctx, ins, "u2")))
        except ValueError as exc:
            raise fail(ctx, ins, f"malformed 'u2' payload: {exc}") from None
        active = sorted(v for v in state.peers if v in u2)
        t = state.settings.shares_needed(len(state.peers))
        if ctx.client_id not in u2 or len(active) < t:
            raise fail(ctx, ins, f"only {len(active)} neighbours shared keys, {t} needed")
        if len(held) != len(active) * SEALED_BYTES:
            raise fail(
                ctx,
                ins,
                f"expected {len(active)} encrypted shares of {SEALED_BYTES} bytes (one per "
                f"neighbour in U2), got {len(held)} bytes",
            )
        state.held, state.active, state.u2 = held, active, u2
        k = state.settings.encoding.modulus_bits
        word = np.dtype("<u4") if k <= 32 else np.dtype("<u8")
        # summed in place in 32- (or 64-) bit words, which wrap mod 2^32; 2^k divides that
        y: npt.NDArray[np.unsignedinteger] = state.encoded.astype(word)
        prg_into(state.self_seed, y, subtract=False)
        seeds = pairwise_mask_seeds(state.s.private, [state.peers[v][1] for v in active], ins.round)
        for v, seed in zip(active, seeds, strict=True):
            prg_into(seed, y, subtract=mask_sign(ctx.client_id, v) < 0)
        if k < 8 * word.itemsize:
            np.bitwise_and(y, word.type((1 << k) - 1), out=y)
        return Reply(ctx.client_id, ins.round, ins.phase, payload={"masked": y.tobytes()})

    def unmask(ctx: ClientContext, ins: Instruction) -> Reply:
        state = current(ctx, ins)
        try:
            u3 = frozenset(unpack_ids(payload(ctx, ins, "u3")))
            dropped = frozenset(unpack_ids(payload(ctx, ins, "dropped")))
        except ValueError as exc:
            raise fail(ctx, ins, f"malformed survivor lists: {exc}") from None
        if u3 & dropped:
            raise fail(ctx, ins, "clients named both surviving and dropped; refusing to unmask")
        if (u3 | dropped) != state.u2 or ctx.client_id not in u3:
            raise fail(ctx, ins, "survivor lists that do not match the clients that shared keys")
        t = state.settings.shares_needed(len(state.peers))
        if len(u3) < t:
            raise fail(ctx, ins, f"only {len(u3)} survivors, {t} needed; refusing to unmask")
        # one y per neighbour in U2, in sorted order: of b_v for a survivor, of s_sk_v otherwise
        released = bytearray()
        for i, v in enumerate(state.active):
            blob = state.held[i * SEALED_BYTES : (i + 1) * SEALED_BYTES]
            ad = share_associated_data(ins.round, v, ctx.client_id)
            try:
                plain = decrypt(state.share_keys[v], blob, ad)
                s_share = Share.from_bytes(plain[:SHARE_BYTES])
                b_share = Share.from_bytes(plain[SHARE_BYTES:])
            except (TamperedError, ValueError):
                raise fail(
                    ctx, ins, f"the share from client {v} failed to authenticate; refusing"
                ) from None
            share = b_share if v in u3 else s_share
            released += share.y.to_bytes(Y_BYTES, "big")
        del ctx.state[STATE_KEY]
        return Reply(ctx.client_id, ins.round, ins.phase, payload={"shares": bytes(released)})

    return {KEYS: keys, SHARE: share, MASKED: masked, UNMASK: unmask}


def held_secrets(state: Mapping[str, Any]) -> _Round | None:
    """The secure aggregation state a client holds now (for tests and debugging)."""
    value = state.get(STATE_KEY)
    return value if isinstance(value, _Round) else None
