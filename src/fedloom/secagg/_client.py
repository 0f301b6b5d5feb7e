"""The client's half of secure aggregation: one function per phase (see ``_protocol``).

A client keeps the round's secrets in its state between phases (its key pairs, its self-mask
seed, its encoded update, the encrypted shares it holds for others) and forgets them when it has
answered the unmask phase. It refuses, with a :class:`~fedloom.errors.ClientError`, anything
that would let the server unmask its update alone: a survivor list below the threshold, a
client named both surviving and dropped, or a share that fails to authenticate.

Training and encoding are not done here: the client runtime's ``secagg_mod`` trains, runs the
update chain's client links (which end in an integer encoding), and hands the encoded update to
:func:`advertise`.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Mapping, MutableMapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedloom.errors import ClientError, ConfigError
from fedloom.messages import Instruction, Reply
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
    SecAggSettings,
    mask_sign,
    unpack_ids,
    unpack_map,
)
from fedloom.secagg._shamir import SHARE_BYTES, Y_BYTES, Share, split

__all__ = [
    "STATE_KEY",
    "advertise",
    "held_secrets",
    "pairwise_mask_seed",
    "pairwise_mask_seeds",
    "respond",
    "self_seed_commitment",
    "settings_of",
    "share_associated_data",
]

STATE_KEY = "secagg"
"""Where a client keeps its secure aggregation round (keys, encoded update) in its state."""
U64 = npt.NDArray[np.uint64]


@dataclass
class _Round:
    """One client's secrets for one round."""

    round: int
    settings: SecAggSettings
    encoded: U64
    modulus_bits: int
    c: KeyPair
    s: KeyPair
    self_seed: bytes = b""
    peers: dict[str, tuple[bytes, bytes]] = field(default_factory=dict)
    share_keys: dict[str, bytes] = field(default_factory=dict)
    active: list[str] = field(default_factory=list)
    held: bytes = b""
    u2: frozenset[str] = frozenset()


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


def _fail(client_id: str, ins: Instruction, reason: str) -> ClientError:
    return ClientError(client_id, ins.round, ins.phase, reason)


def _current(client_id: str, state: Mapping[str, Any], ins: Instruction) -> _Round:
    held: Any = state.get(STATE_KEY)
    if not isinstance(held, _Round) or held.round != ins.round:
        raise _fail(client_id, ins, "no secure aggregation state for this round (out of order?)")
    return held


def _payload(client_id: str, ins: Instruction, key: str) -> bytes:
    raw = ins.payload.get(key)
    if raw is None:
        raise _fail(client_id, ins, f"the instruction has no {key!r} payload")
    return raw


def _entries(client_id: str, ins: Instruction, key: str) -> dict[str, bytes]:
    try:
        return unpack_map(_payload(client_id, ins, key))
    except ValueError as exc:
        raise _fail(client_id, ins, f"malformed {key!r} payload: {exc}") from None


def settings_of(client_id: str, ins: Instruction) -> SecAggSettings:
    """The protocol's settings from a key-phase instruction; a ClientError when malformed."""
    try:
        return SecAggSettings.from_config(ins.config)
    except ConfigError as exc:
        raise _fail(client_id, ins, str(exc)) from None


def advertise(
    client_id: str,
    state: MutableMapping[str, Any],
    ins: Instruction,
    settings: SecAggSettings,
    encoded: U64,
    modulus_bits: int,
) -> Reply:
    """Phase 1: keep the encoded update (integers mod ``2**modulus_bits``), make the round's
    two key pairs, and reply with their public halves."""
    held = _Round(
        ins.round, settings, encoded, modulus_bits, generate_keypair(), generate_keypair()
    )
    state[STATE_KEY] = held
    public = {"c_pk": held.c.public, "s_pk": held.s.public}
    return Reply(client_id, ins.round, ins.phase, payload=public)


def _share(client_id: str, state: MutableMapping[str, Any], ins: Instruction) -> Reply:
    held = _current(client_id, state, ins)
    peers = _entries(client_id, ins, "keys")
    peers.pop(client_id, None)
    if not peers or any(len(k) != 64 for k in peers.values()):
        raise _fail(client_id, ins, "the neighbours' public keys are missing or malformed")
    held.peers = {v: (k[:32], k[32:]) for v, k in peers.items()}
    order = sorted(held.peers)
    t = held.settings.shares_needed(len(order))
    held.self_seed = secrets.token_bytes(32)
    xs = list(range(1, len(order) + 1))
    s_shares = split(held.s.private, t, xs)
    b_shares = split(held.self_seed, t, xs)
    share_keys = agree_all(held.c.private, [held.peers[v][0] for v in order], info=SHARE_INFO)
    held.share_keys = dict(zip(order, share_keys, strict=True))
    sealed = bytearray()  # one SEALED_BYTES record per neighbour, in sorted order
    for v, key, s_share, b_share in zip(order, share_keys, s_shares, b_shares, strict=True):
        plaintext = s_share.to_bytes() + b_share.to_bytes()
        sealed += encrypt(key, plaintext, share_associated_data(ins.round, client_id, v))
    commitment = self_seed_commitment(held.self_seed)
    return Reply(
        client_id,
        ins.round,
        ins.phase,
        payload={"shares": bytes(sealed), "b_commit": commitment},
    )


def _masked(client_id: str, state: MutableMapping[str, Any], ins: Instruction) -> Reply:
    held = _current(client_id, state, ins)
    inbox = _payload(client_id, ins, "shares")
    try:
        u2 = frozenset(unpack_ids(_payload(client_id, ins, "u2")))
    except ValueError as exc:
        raise _fail(client_id, ins, f"malformed 'u2' payload: {exc}") from None
    active = sorted(v for v in held.peers if v in u2)
    t = held.settings.shares_needed(len(held.peers))
    if client_id not in u2 or len(active) < t:
        raise _fail(client_id, ins, f"only {len(active)} neighbours shared keys, {t} needed")
    if len(inbox) != len(active) * SEALED_BYTES:
        raise _fail(
            client_id,
            ins,
            f"expected {len(active)} encrypted shares of {SEALED_BYTES} bytes (one per "
            f"neighbour in U2), got {len(inbox)} bytes",
        )
    held.held, held.active, held.u2 = inbox, active, u2
    k = held.modulus_bits
    word = np.dtype("<u4") if k <= 32 else np.dtype("<u8")
    # summed in place in 32- (or 64-) bit words, which wrap mod 2^32; 2^k divides that
    y: npt.NDArray[np.unsignedinteger] = held.encoded.astype(word)
    prg_into(held.self_seed, y, subtract=False)
    seeds = pairwise_mask_seeds(held.s.private, [held.peers[v][1] for v in active], ins.round)
    for v, seed in zip(active, seeds, strict=True):
        prg_into(seed, y, subtract=mask_sign(client_id, v) < 0)
    if k < 8 * word.itemsize:
        np.bitwise_and(y, word.type((1 << k) - 1), out=y)
    return Reply(client_id, ins.round, ins.phase, payload={"masked": y.tobytes()})


def _unmask(client_id: str, state: MutableMapping[str, Any], ins: Instruction) -> Reply:
    held = _current(client_id, state, ins)
    try:
        u3 = frozenset(unpack_ids(_payload(client_id, ins, "u3")))
        dropped = frozenset(unpack_ids(_payload(client_id, ins, "dropped")))
    except ValueError as exc:
        raise _fail(client_id, ins, f"malformed survivor lists: {exc}") from None
    if u3 & dropped:
        raise _fail(client_id, ins, "clients named both surviving and dropped; refusing to unmask")
    if (u3 | dropped) != held.u2 or client_id not in u3:
        raise _fail(client_id, ins, "survivor lists that do not match the clients that shared keys")
    t = held.settings.shares_needed(len(held.peers))
    if len(u3) < t:
        raise _fail(client_id, ins, f"only {len(u3)} survivors, {t} needed; refusing to unmask")
    # one y per neighbour in U2, in sorted order: of b_v for a survivor, of s_sk_v otherwise
    released = bytearray()
    for i, v in enumerate(held.active):
        blob = held.held[i * SEALED_BYTES : (i + 1) * SEALED_BYTES]
        ad = share_associated_data(ins.round, v, client_id)
        try:
            plain = decrypt(held.share_keys[v], blob, ad)
            s_share = Share.from_bytes(plain[:SHARE_BYTES])
            b_share = Share.from_bytes(plain[SHARE_BYTES:])
        except (TamperedError, ValueError):
            raise _fail(
                client_id, ins, f"the share from client {v} failed to authenticate; refusing"
            ) from None
        share = b_share if v in u3 else s_share
        released += share.y.to_bytes(Y_BYTES, "big")
    del state[STATE_KEY]
    return Reply(client_id, ins.round, ins.phase, payload={"shares": bytes(released)})


_AFTER_KEYS = {SHARE: _share, MASKED: _masked, UNMASK: _unmask}


def respond(client_id: str, state: MutableMapping[str, Any], ins: Instruction) -> Reply:
    """Phases 2 to 4 (share keys, masked input, unmask) for one client, from its state."""
    step = _AFTER_KEYS.get(ins.phase)
    if step is None:
        raise _fail(client_id, ins, f"not a phase after {KEYS!r}")
    return step(client_id, state, ins)


def held_secrets(state: Mapping[str, Any]) -> _Round | None:
    """The secure aggregation state a client holds now (for tests and debugging)."""
    value = state.get(STATE_KEY)
    return value if isinstance(value, _Round) else None
