"""The client's half of secure aggregation: four handlers, one per phase (see ``_protocol``).

A client keeps the round's secrets in its state between phases (its key pairs, its self-mask
seed, its encoded update, the encrypted shares it holds for others) and forgets them when it has
answered the unmask phase. It refuses, with a :class:`~fedloom.errors.ClientError`, anything
that would let the server unmask its update alone: a survivor list below the threshold, a
client named both surviving and dropped, or a share that fails to authenticate.
"""

from __future__ import annotations

import dataclasses
import secrets
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
from fedloom.secagg._crypto import (
    KeyPair,
    TamperedError,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    prg_into,
)
from fedloom.secagg._protocol import (
    KEYS,
    MASK_INFO,
    MASKED,
    SHARE,
    SHARE_INFO,
    UNMASK,
    SecAggSettings,
    mask_sign,
    pack_map,
    unpack_ids,
    unpack_map,
)
from fedloom.secagg._shamir import Share, split

if TYPE_CHECKING:
    from fedloom.client import ClientContext

__all__ = [
    "encode_input",
    "held_secrets",
    "pairwise_mask_seed",
    "secagg_handlers",
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
    held: dict[str, bytes] = field(default_factory=dict)
    u2: frozenset[str] = frozenset()


def encode_input(
    delta: npt.NDArray[np.float32], num_examples: int, settings: SecAggSettings
) -> U64:
    """The integer vector a client masks: ``encode(w/W * delta)`` followed by ``w`` itself.

    ``w`` is the example count capped at the weight bound W, so the sum carries the weighted
    sum of the updates and the sum of the weights, and nothing else.
    """
    weight = min(num_examples, settings.weight_bound)
    scaled = delta.astype(np.float64) * (weight / settings.weight_bound)
    body = settings.encoding.encode(scaled)
    return np.concatenate([body, np.array([weight], dtype=np.uint64)])


def share_associated_data(round: int, sender: str, recipient: str) -> bytes:
    """What an encrypted share is bound to: the round, its sender and its recipient."""
    return f"fedloom-secagg|{round}|{sender}|{recipient}".encode()


def pairwise_mask_seed(s_private: bytes, peer_public: bytes, round: int) -> bytes:
    """The seed of the mask two clients share: the same from either side's private key."""
    return agree(s_private, peer_public, info=MASK_INFO + round.to_bytes(4, "big"))


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
        sealed = {}
        for v, s_share, b_share in zip(order, s_shares, b_shares, strict=True):
            key = agree(state.c.private, state.peers[v][0], info=SHARE_INFO)
            plaintext = s_share.to_bytes() + b_share.to_bytes()
            ad = share_associated_data(ins.round, ctx.client_id, v)
            sealed[v] = encrypt(key, plaintext, ad)
        return Reply(ctx.client_id, ins.round, ins.phase, payload={"shares": pack_map(sealed)})

    def masked(ctx: ClientContext, ins: Instruction) -> Reply:
        state = current(ctx, ins)
        held = entries(ctx, ins, "shares")
        try:
            u2 = frozenset(unpack_ids(payload(ctx, ins, "u2")))
        except ValueError as exc:
            raise fail(ctx, ins, f"malformed 'u2' payload: {exc}") from None
        active = sorted(v for v in state.peers if v in u2)
        t = state.settings.shares_needed(len(state.peers))
        if ctx.client_id not in u2 or len(active) < t:
            raise fail(ctx, ins, f"only {len(active)} neighbours shared keys, {t} needed")
        if set(held) - set(active):
            raise fail(ctx, ins, "shares from clients that are not neighbours in U2")
        state.held, state.u2 = held, u2
        k = state.settings.encoding.modulus_bits
        word = np.dtype("<u4") if k <= 32 else np.dtype("<u8")
        # summed in place in 32- (or 64-) bit words, which wrap mod 2^32; 2^k divides that
        y: npt.NDArray[np.unsignedinteger] = state.encoded.astype(word)
        prg_into(state.self_seed, y, subtract=False)
        for v in active:
            seed = pairwise_mask_seed(state.s.private, state.peers[v][1], ins.round)
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
        if not (u3 | dropped) <= state.u2 or ctx.client_id not in u3:
            raise fail(ctx, ins, "survivor lists that do not match the clients that shared keys")
        t = state.settings.shares_needed(len(state.peers))
        if len(u3) < t:
            raise fail(ctx, ins, f"only {len(u3)} survivors, {t} needed; refusing to unmask")
        released: dict[str, bytes] = {}
        for v, blob in state.held.items():
            key = agree(state.c.private, state.peers[v][0], info=SHARE_INFO)
            try:
                plain = decrypt(key, blob, share_associated_data(ins.round, v, ctx.client_id))
                s_share, b_share = Share.from_bytes(plain[:70]), Share.from_bytes(plain[70:])
            except (TamperedError, ValueError):
                raise fail(
                    ctx, ins, f"the share from client {v} failed to authenticate; refusing"
                ) from None
            if v in u3:
                released["b:" + v] = b_share.to_bytes()
            elif v in dropped:
                released["s:" + v] = s_share.to_bytes()
        del ctx.state[STATE_KEY]
        return Reply(ctx.client_id, ins.round, ins.phase, payload={"shares": pack_map(released)})

    return {KEYS: keys, SHARE: share, MASKED: masked, UNMASK: unmask}


def held_secrets(state: Mapping[str, Any]) -> _Round | None:
    """The secure aggregation state a client holds now (for tests and debugging)."""
    value = state.get(STATE_KEY)
    return value if isinstance(value, _Round) else None
