"""The cryptographic primitives of secure aggregation, each a thin wrapper over ``cryptography``.

- :func:`generate_keypair` and :func:`agree`: X25519 key agreement, then HKDF-SHA256.
- :func:`encrypt` and :func:`decrypt`: AES-256-GCM, for the secret shares sent between clients.
- :func:`prg`: AES-128-CTR expanding a 32-byte seed (key and initial counter) into mask values.

Nothing here is hand-written cryptography; this module only fixes parameters, checks lengths and
translates errors.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, CipherContext, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedloom.errors import TamperedError

__all__ = [
    "KeyPair",
    "TamperedError",
    "agree",
    "agree_all",
    "decrypt",
    "encrypt",
    "generate_keypair",
    "prg",
    "prg_into",
]

KEY_BYTES = 32
NONCE_BYTES = 12
TAG_BYTES = 16
_RAW = serialization.Encoding.Raw
_CHUNK_BYTES = 1 << 18  # keystream made 256 KiB at a time: bounded memory, cache-resident


@dataclass(frozen=True, repr=False)
class KeyPair:
    """An X25519 key pair as raw bytes.

    Parameters
    ----------
    private
        The 32-byte private key. Never printed: ``repr`` shows the public key only.
    public
        The 32-byte public key.
    """

    private: bytes
    public: bytes

    def __repr__(self) -> str:
        return f"KeyPair(public={self.public.hex()})"


def _check_length(name: str, value: bytes, length: int = KEY_BYTES) -> None:
    if not isinstance(value, bytes) or len(value) != length:
        got = f"{len(value)} bytes" if isinstance(value, bytes) else type(value).__name__
        raise ValueError(f"{name} must be {length} raw bytes, got {got}")


def generate_keypair() -> KeyPair:
    """Draw a fresh X25519 key pair from the operating system's random source."""
    private = X25519PrivateKey.generate()
    return KeyPair(
        private=private.private_bytes(
            _RAW, serialization.PrivateFormat.Raw, serialization.NoEncryption()
        ),
        public=private.public_key().public_bytes(_RAW, serialization.PublicFormat.Raw),
    )


def agree(private: bytes, peer_public: bytes, *, info: bytes) -> bytes:
    """Derive a 32-byte key shared with a peer: X25519, then HKDF-SHA256.

    Both sides get the same key: ``agree(a.private, b.public, info=i) ==
    agree(b.private, a.public, info=i)``. HKDF uses no salt and ``info`` as its context, so keys
    for different purposes (say ``b"mask"`` and ``b"share"``) are independent.

    Raises
    ------
    ValueError
        A key is not 32 bytes, or the shared secret is all zeros (the peer key has low order).
    """
    return agree_all(private, [peer_public], info=info)[0]


def agree_all(private: bytes, peer_publics: Sequence[bytes], *, info: bytes) -> list[bytes]:
    """:func:`agree` with each of ``peer_publics`` in turn, loading the private key once (loading
    it costs about as much as one agreement)."""
    _check_length("private key", private)
    key = X25519PrivateKey.from_private_bytes(private)
    out = []
    for peer_public in peer_publics:
        _check_length("peer public key", peer_public)
        try:
            shared = key.exchange(X25519PublicKey.from_public_bytes(peer_public))
        except ValueError as error:  # cryptography refuses an all-zero result
            raise ValueError(
                "X25519 gave an all-zero shared secret: the peer public key has low order "
                "and must be rejected"
            ) from error
        hkdf = HKDF(algorithm=hashes.SHA256(), length=KEY_BYTES, salt=None, info=info)
        out.append(hkdf.derive(shared))
    return out


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """Encrypt and authenticate with AES-256-GCM under a fresh random 12-byte nonce.

    Returns ``nonce || ciphertext || tag``; ``associated`` is authenticated, not encrypted.
    """
    _check_length("key", key)
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, blob: bytes, associated: bytes) -> bytes:
    """Verify and decrypt a blob from :func:`encrypt`.

    Raises
    ------
    TamperedError
        The key or ``associated`` is wrong, or the blob was modified or truncated.
    """
    _check_length("key", key)
    if len(blob) < NONCE_BYTES + TAG_BYTES:
        raise TamperedError(
            f"ciphertext is {len(blob)} bytes, shorter than nonce and tag "
            f"({NONCE_BYTES + TAG_BYTES}): it was truncated"
        )
    try:
        return AESGCM(key).decrypt(blob[:NONCE_BYTES], blob[NONCE_BYTES:], associated)
    except InvalidTag:
        raise TamperedError(
            "ciphertext failed authentication: wrong key or associated data, or modified bytes"
        ) from None


def _keystream(seed: bytes) -> CipherContext:
    """AES-128-CTR keyed by the seed's first half, counting from its second half. A 128-bit key
    matches the rest of the protocol: X25519, which agrees the pairwise seeds, gives about 128
    bits of security, and AES-128 expands masks about a quarter faster than AES-256."""
    return Cipher(algorithms.AES(seed[:16]), modes.CTR(seed[16:])).encryptor()


def prg(seed: bytes, count: int, modulus_bits: int) -> npt.NDArray[np.uint64]:
    """Expand a 32-byte seed into ``count`` values uniform in ``[0, 2**modulus_bits)``.

    The keystream of AES-128-CTR (key ``seed[:16]``, initial counter block ``seed[16:]``, which
    counts up as one big-endian 128-bit integer) is read as
    little-endian ``uint32`` words when ``modulus_bits <= 32`` and ``uint64`` words otherwise, and
    each word is masked to its low ``modulus_bits`` bits. The counter always starts at zero, so
    **use each seed for one purpose only**: two calls with one seed give the same stream.

    Speed: 1,000,000 values take about 0.55 ms with ``modulus_bits <= 32`` and about 0.86 ms
    above (best of 50 calls, one core with AES-NI).

    Parameters
    ----------
    seed
        32 bytes, e.g. from :func:`agree` or ``os.urandom(32)``.
    count
        How many values, ``>= 0``.
    modulus_bits
        ``1 <= modulus_bits <= 64``.

    Examples
    --------
    >>> values = prg(bytes(32), 3, 16)
    >>> values.dtype, bool((values < 2**16).all()), bool((values == prg(bytes(32), 3, 16)).all())
    (dtype('uint64'), True, True)
    """
    _check_length("seed", seed)
    if count < 0:
        raise ValueError(f"count must be >= 0, got {count}")
    if not 1 <= modulus_bits <= 64:
        raise ValueError(f"modulus_bits must be between 1 and 64, got {modulus_bits}")
    word = np.dtype("<u4") if modulus_bits <= 32 else np.dtype("<u8")
    encryptor = _keystream(seed)
    out = np.empty(count, dtype=np.uint64)
    per_chunk = _CHUNK_BYTES // word.itemsize
    zeros = memoryview(bytes(min(count, per_chunk) * word.itemsize))
    # update_into may want block_size - 1 spare bytes; a small reused buffer stays in cache.
    scratch = bytearray(len(zeros) + 15)
    for start in range(0, count, per_chunk):
        stop = min(start + per_chunk, count)
        size = (stop - start) * word.itemsize
        encryptor.update_into(zeros[:size], scratch)
        out[start:stop] = np.frombuffer(scratch, dtype=word, count=stop - start)
    out &= np.uint64((1 << modulus_bits) - 1)
    return out


def prg_into(seed: bytes, out: npt.NDArray[np.unsignedinteger], subtract: bool) -> None:
    """Add (or subtract) the words of :func:`prg` (before masking) into ``out`` in place,
    wrapping in out's dtype (uint32 for k <= 32); the caller masks the low k bits at the end."""
    word = out.dtype
    _check_length("seed", seed)
    encryptor = _keystream(seed)
    count = out.shape[0]
    per_chunk = _CHUNK_BYTES // word.itemsize
    zeros = memoryview(bytes(min(count, per_chunk) * word.itemsize))
    scratch = bytearray(len(zeros) + 15)
    op = np.subtract if subtract else np.add
    for start in range(0, count, per_chunk):
        stop = min(start + per_chunk, count)
        encryptor.update_into(zeros[: (stop - start) * word.itemsize], scratch)
        ks = np.frombuffer(scratch, dtype=word, count=stop - start)
        op(out[start:stop], ks, out=out[start:stop])
