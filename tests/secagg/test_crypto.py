"""Secure-aggregation primitives against RFC 7748, independent HKDF and AES, and statistics."""

import numpy as np
import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from fedloom.errors import FedloomError
from fedloom.secagg._crypto import (
    KeyPair,
    TamperedError,
    agree,
    decrypt,
    encrypt,
    generate_keypair,
    prg,
    prg_into,
)

# RFC 7748, section 6.1.
ALICE_PRIVATE = bytes.fromhex("77076d0a7318a57d3c16c17251b26645df4c2f87ebc0992ab177fba51db92c2a")
ALICE_PUBLIC = bytes.fromhex("8520f0098930a754748b7ddcb43ef75a0dbf3a0d26381af4eba4a98eaa9b4e6a")
BOB_PRIVATE = bytes.fromhex("5dab087e624a8a4b79e17f8b83800ee66f3bb1292618b6fd1c2f8b27ff88e0eb")
BOB_PUBLIC = bytes.fromhex("de9edb7d7b7dc1b4d35b61c2ece435373f8343c85b78674dadfc7e146f882b4f")
SHARED = bytes.fromhex("4a5d9d5ba4ce2de1728e3bf480350f25e07e21c947d19e3376f09b3c1e161742")

KEY = bytes(range(32))
SEED_A = bytes(range(32))
SEED_B = bytes(range(1, 33))


def test_rfc7748_vector_and_agree_is_hkdf_of_the_shared_secret() -> None:
    alice = X25519PrivateKey.from_private_bytes(ALICE_PRIVATE)
    bob = X25519PrivateKey.from_private_bytes(BOB_PRIVATE)
    assert alice.exchange(X25519PublicKey.from_public_bytes(BOB_PUBLIC)) == SHARED
    assert bob.exchange(X25519PublicKey.from_public_bytes(ALICE_PUBLIC)) == SHARED
    expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=b"mask").derive(SHARED)

    assert agree(ALICE_PRIVATE, BOB_PUBLIC, info=b"mask") == expected
    assert agree(BOB_PRIVATE, ALICE_PUBLIC, info=b"mask") == expected


def test_agreement_is_symmetric_and_depends_on_info_and_peer() -> None:
    a, b, c = generate_keypair(), generate_keypair(), generate_keypair()

    ab = agree(a.private, b.public, info=b"mask")

    assert len(ab) == 32
    assert ab == agree(b.private, a.public, info=b"mask")
    assert ab != agree(a.private, b.public, info=b"share")
    assert ab != agree(a.private, c.public, info=b"mask")


def test_keypair_is_raw_bytes_and_repr_hides_the_private_key() -> None:
    pair = generate_keypair()

    text = repr(pair)

    assert len(pair.private) == 32 and len(pair.public) == 32
    assert pair.public.hex() in text
    assert pair.private.hex() not in text
    assert isinstance(pair, KeyPair)


@pytest.mark.parametrize(
    ("private", "public", "match"),
    [
        (bytes(31), BOB_PUBLIC, "private key must be 32"),
        (ALICE_PRIVATE, bytes(33), "peer public key must be 32"),
        (ALICE_PRIVATE, bytes(32), "all-zero shared secret"),  # u = 0 has low order
    ],
)
def test_agree_rejects_malformed_and_low_order_keys(
    private: bytes, public: bytes, match: str
) -> None:
    with pytest.raises(ValueError, match=match):
        agree(private, public, info=b"mask")


def test_encrypt_round_trip_with_fresh_nonces() -> None:
    blob = encrypt(KEY, b"share of client 7", b"round 3")

    again = encrypt(KEY, b"share of client 7", b"round 3")

    assert decrypt(KEY, blob, b"round 3") == b"share of client 7"
    assert len(blob) == 12 + len(b"share of client 7") + 16
    assert blob != again and blob[:12] != again[:12]
    assert decrypt(KEY, encrypt(KEY, b"", b""), b"") == b""


def test_every_sampled_bit_flip_is_detected() -> None:
    blob = encrypt(KEY, b"x" * 40, b"ad")
    # Nonce 0..11, ciphertext 12..51, tag 52..67: every bit of the nonce and tag, and a spread of
    # ciphertext positions including its first and last byte.
    positions = [*range(12), 12, 20, 31, 40, 51, *range(52, len(blob))]

    for position in positions:
        for bit in range(8):
            tampered = bytearray(blob)
            tampered[position] ^= 1 << bit
            with pytest.raises(TamperedError):
                decrypt(KEY, bytes(tampered), b"ad")


@pytest.mark.parametrize(
    ("key", "cut", "associated"),
    [
        (bytes(32), 0, b"ad"),  # wrong key
        (KEY, 0, b"AD"),  # wrong associated data
        (KEY, 1, b"ad"),  # truncated tag
        (KEY, 40, b"ad"),  # truncated below nonce + tag
        (KEY, 68, b"ad"),  # empty
    ],
)
def test_wrong_key_associated_data_or_truncation_is_detected(
    key: bytes, cut: int, associated: bytes
) -> None:
    blob = encrypt(KEY, b"x" * 40, b"ad")

    with pytest.raises(TamperedError) as caught:
        decrypt(key, blob[: len(blob) - cut], associated)

    assert isinstance(caught.value, FedloomError)


def test_encrypt_and_decrypt_reject_a_malformed_key() -> None:
    with pytest.raises(ValueError, match="key must be 32"):
        encrypt(bytes(16), b"x", b"")
    with pytest.raises(ValueError, match="key must be 32"):
        decrypt(bytes(16), bytes(40), b"")


def test_prg_keystream_is_aes128_ctr_keyed_and_started_by_the_seed() -> None:
    # CTR keystream block i is AES_K(counter + i): K is the seed's first 16 bytes, the counter
    # starts at its last 16 read as a big-endian integer (wrapping mod 2^128).
    start = int.from_bytes(SEED_A[16:], "big")
    ecb = Cipher(algorithms.AES(SEED_A[:16]), modes.ECB()).encryptor()
    counters = [((start + i) % 2**128).to_bytes(16, "big") for i in range(2)]
    blocks = ecb.update(b"".join(counters)) + ecb.finalize()

    words32 = prg(SEED_A, 8, 32)
    words64 = prg(SEED_A, 4, 64)

    assert words32.astype("<u4").tobytes() == blocks
    assert words64.astype("<u8").tobytes() == blocks


def test_prg_is_deterministic_per_seed_and_in_range() -> None:
    for bits in (1, 7, 20, 32, 33, 63, 64):
        values = prg(SEED_A, 5000, bits)
        assert values.dtype == np.uint64 and values.shape == (5000,)
        np.testing.assert_array_equal(values, prg(SEED_A, 5000, bits))
        assert not np.array_equal(values, prg(SEED_B, 5000, bits))
        assert int(values.max()) < 2**bits
        assert int(values.max()) >= 2 ** (bits - 1)  # the top bit is used
    assert prg(SEED_A, 0, 32).shape == (0,)


def test_prg_spans_chunks_without_a_seam() -> None:
    # 300,000 uint32 words cross the 256 KiB chunk boundary; a prefix must not depend on count.
    long = prg(SEED_A, 300_000, 32)

    np.testing.assert_array_equal(long[:70_000], prg(SEED_A, 70_000, 32))
    np.testing.assert_array_equal(long[65_530:65_540], prg(SEED_A, 65_540, 32)[65_530:])


@pytest.mark.parametrize("bits", [32, 20])
def test_prg_is_uniform(bits: int) -> None:
    # Thresholds for a false alarm below 1e-6 under a correct (uniform) generator:
    # - chi-square of the top 4 bits in 16 bins has 15 degrees of freedom, and
    #   P(chi2_15 > 57) = 8.2e-7 (scipy.stats.chi2.sf(57, 15));
    # - the low bit's mean over N draws has sd 0.5 / sqrt(N), and P(|z| > 5) = 5.7e-7.
    n = 200_000
    values = prg(SEED_A, n, bits)

    counts = np.bincount((values >> np.uint64(bits - 4)).astype(np.int64), minlength=16)
    expected = n / 16
    chi_square = float(((counts - expected) ** 2 / expected).sum())
    low_mean = float((values & np.uint64(1)).mean())

    assert counts.shape == (16,)
    assert chi_square < 57.0
    assert abs(low_mean - 0.5) < 5 * 0.5 / np.sqrt(n)


@pytest.mark.parametrize(
    ("seed", "count", "bits", "match"),
    [
        (bytes(16), 1, 32, "seed must be 32"),
        (SEED_A, -1, 32, "count must be >= 0"),
        (SEED_A, 1, 0, "modulus_bits must be between 1 and 64"),
        (SEED_A, 1, 65, "modulus_bits must be between 1 and 64"),
    ],
)
def test_prg_validates_its_arguments(seed: bytes, count: int, bits: int, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        prg(seed, count, bits)


@pytest.mark.parametrize(("k", "dtype"), [(20, np.uint32), (32, np.uint32), (48, np.uint64)])
def test_prg_into_adds_and_subtracts_the_same_stream_mod_2_to_the_k(k: int, dtype: type) -> None:
    # Adding the raw words and masking to k bits at the end equals adding prg's k-bit values.
    seed, count = bytes(range(32)), 70_000  # more than one 256 KiB keystream chunk for uint64
    start = np.arange(count, dtype=dtype)
    added = start.copy()
    prg_into(seed, added, subtract=False)
    mask = np.uint64((1 << k) - 1)
    expected = (start.astype(np.uint64) + prg(seed, count, k)) & mask
    np.testing.assert_array_equal(added.astype(np.uint64) & mask, expected)
    prg_into(seed, added, subtract=True)
    np.testing.assert_array_equal(added, start)
