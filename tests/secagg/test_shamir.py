import itertools
import random
from collections.abc import Callable, Sequence

import pytest
from Crypto.Protocol.SecretSharing import Shamir

from fedloom.secagg._shamir import PRIME, SHARE_BYTES, Share, combine, split

# The classic example (Wikipedia, "Shamir's secret sharing"): f(x) = 1234 + 166x + 94x^2.
#   x     1     2     3     4     5
#   f(x)  1494  1942  2578  3402  4414
# From x = 2, 4, 5 the Lagrange weights at 0 are 4*5/((4-2)(5-2)) = 10/3,
# 2*5/((2-4)(5-4)) = -5 and 2*4/((2-5)(4-5)) = 8/3:
#   1942 * 10/3 - 3402 * 5 + 4414 * 8/3 = 54732/3 - 17010 = 18244 - 17010 = 1234.
SECRET_1234 = (1234).to_bytes(2, "big")
WIKIPEDIA_YS = [1494, 1942, 2578, 3402, 4414]


def _draws(*values: int) -> Callable[[int], int]:
    """A ``randbelow`` that returns ``values`` in order and checks it is asked for PRIME."""
    it = iter(values)

    def randbelow(bound: int) -> int:
        assert bound == PRIME
        return next(it)

    return randbelow


def _recovers(shares: Sequence[Share], threshold: int, length: int) -> bytes | None:
    """What ``combine`` returns, or None where it finds the shares inconsistent."""
    try:
        return combine(shares, threshold, length)
    except ValueError:
        return None


def _coefficients_through(points: Sequence[tuple[int, int]]) -> list[int]:
    """The coefficients (from x**0 up) of the polynomial of degree < len(points) through them."""
    coefficients = [0] * len(points)
    for j, (x_j, y_j) in enumerate(points):
        basis = [1]  # prod_{m != j} (x - x_m), lowest degree first
        denominator = 1
        for m, (x_m, _) in enumerate(points):
            if m != j:
                basis = [
                    (shifted - x_m * same) % PRIME
                    for shifted, same in zip([0, *basis], [*basis, 0], strict=True)
                ]
                denominator = denominator * (x_j - x_m) % PRIME
        factor = y_j * pow(denominator, -1, PRIME) % PRIME
        coefficients = [(c + factor * b) % PRIME for c, b in zip(coefficients, basis, strict=True)]
    return coefficients


def test_split_evaluates_the_injected_polynomial_at_each_point() -> None:
    # Prepare / Execute
    shares = split(SECRET_1234, 3, [1, 2, 3, 4, 5], randbelow=_draws(166, 94))

    # Assert
    assert shares == [Share(x, y) for x, y in zip([1, 2, 3, 4, 5], WIKIPEDIA_YS, strict=True)]


def test_combine_recovers_the_hand_computed_secret_from_any_three_shares() -> None:
    # Prepare
    shares = [Share(x, y) for x, y in zip([1, 2, 3, 4, 5], WIKIPEDIA_YS, strict=True)]

    # Execute / Assert
    for subset in itertools.combinations(shares, 3):
        assert combine(subset, 3, 2) == SECRET_1234
        assert combine(subset[::-1], 3, 2) == SECRET_1234


def test_combine_uses_only_the_first_threshold_shares() -> None:
    # Prepare: the shares after the first three are wrong
    shares = [Share(2, 1942), Share(4, 3402), Share(5, 4414), Share(1, 1), Share(3, 2)]

    # Execute / Assert
    assert combine(shares, 3, 2) == SECRET_1234


def test_every_threshold_subset_reconstructs_a_random_secret() -> None:
    # Prepare
    rng = random.Random(0)
    secret = rng.randbytes(32)
    shares = split(secret, 6, range(1, 11))

    # Execute / Assert: all C(10, 6) = 210 subsets
    for subset in itertools.combinations(shares, 6):
        assert combine(subset, 6, 32) == secret


def test_fewer_than_threshold_shares_never_reconstruct() -> None:
    rng = random.Random(1)
    for _ in range(20):
        # Prepare
        secret = rng.randbytes(32)
        five = rng.sample(split(secret, 6, range(1, 11)), 5)

        # Execute / Assert: combine refuses, and interpolating the 5 as if t were 5 is wrong
        with pytest.raises(ValueError, match="needs at least 6 shares, got 5"):
            combine(five, 6, 32)
        assert _recovers(five, 5, 32) != secret


def test_threshold_minus_one_shares_are_consistent_with_every_candidate_secret() -> None:
    # Prepare: t - 1 = 3 shares of a random secret
    rng = random.Random(2)
    shares = split(rng.randbytes(32), 4, [3, 7, 9, 11])[:3]
    for candidate in [b"\x00", b"another secret", rng.randbytes(64)]:
        s = int.from_bytes(candidate, "big")

        # Execute: the degree-3 polynomial through (0, s) and the three shares
        coefficients = _coefficients_through([(0, s), *((sh.x, sh.y) for sh in shares)])

        # Assert: a dealer holding that secret and drawing those coefficients hands out the
        # very same shares, so the shares say nothing about which secret was dealt
        assert coefficients[0] == s
        again = split(candidate, 4, [3, 7, 9, 11], randbelow=_draws(*coefficients[1:]))
        assert again[:3] == shares


def test_changing_one_share_changes_the_secret() -> None:
    rng = random.Random(3)
    secret = rng.randbytes(32)
    shares = split(secret, 4, range(1, 8))[:4]
    for i in range(4):
        # Prepare
        tampered = list(shares)
        tampered[i] = Share(shares[i].x, (shares[i].y + rng.randrange(1, PRIME)) % PRIME)

        # Execute / Assert
        try:
            assert combine(tampered, 4, 32) != secret
        except ValueError as exc:
            assert "does not fit in 32 bytes" in str(exc)


@pytest.mark.parametrize("secret", [b"\x00\x00ab", b"\xff" * 64, b"\x00", b"k"])
def test_leading_zeros_and_the_largest_secret_survive(secret: bytes) -> None:
    assert combine(split(secret, 2, [5, 1, 9]), 2, len(secret)) == secret


def test_threshold_one_shares_the_secret_in_the_clear() -> None:
    assert split(b"\x01\x02", 1, [1, 2]) == [Share(1, 258), Share(2, 258)]


def test_share_bytes_round_trip() -> None:
    # Prepare
    share = Share(2**32 - 1, PRIME - 1)

    # Execute
    raw = share.to_bytes()

    # Assert
    assert len(raw) == SHARE_BYTES == 70
    assert raw[:4] == b"\xff\xff\xff\xff"
    assert Share.from_bytes(raw) == share
    assert Share(7, 3).to_bytes() == (7).to_bytes(4, "big") + (3).to_bytes(66, "big")


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"\x00" * 69, "a share is 70 bytes, got 69"),
        (b"\x00" * 71, "a share is 70 bytes, got 71"),
        (b"\x00" * 70, "share x must be in"),
        ((1).to_bytes(4, "big") + PRIME.to_bytes(66, "big"), "share y must be in"),
        ((1).to_bytes(4, "big") + b"\xff" * 66, "share y must be in"),
    ],
)
def test_malformed_share_bytes_are_refused(raw: bytes, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Share.from_bytes(raw)


def test_a_share_with_x_beyond_four_bytes_cannot_be_written() -> None:
    with pytest.raises(ValueError, match="4-byte encoding"):
        Share(2**32, 1).to_bytes()


@pytest.mark.parametrize(
    ("secret", "threshold", "xs", "message"),
    [
        (b"", 1, [1], "secret must be 1 to 64 bytes, got 0"),
        (b"x" * 65, 1, [1], "secret must be 1 to 64 bytes, got 65"),
        (b"x", 0, [1, 2], "threshold must be between 1 and the number of shares"),
        (b"x", 3, [1, 2], r"number of shares \(2\), got 3"),
        (b"x", 2, [1, 0], "share points must be in"),
        (b"x", 2, [1, PRIME], "share points must be in"),
        (b"x", 2, [1, 2, 1], "share points must be distinct"),
    ],
)
def test_split_refuses_bad_arguments(
    secret: bytes, threshold: int, xs: list[int], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        split(secret, threshold, xs)


def test_combine_refuses_bad_arguments() -> None:
    shares = split(b"\x10\x00", 2, [1, 2, 3])
    with pytest.raises(ValueError, match="combine needs at least 2 shares, got 1"):
        combine(shares[:1], 2, 2)
    with pytest.raises(ValueError, match="distinct x"):
        combine([shares[0], shares[0], shares[1]], 2, 2)
    with pytest.raises(ValueError, match="does not fit in 1 bytes"):
        combine(shares, 2, 1)
    with pytest.raises(ValueError, match="secret length must be 1 to 64"):
        combine(shares, 2, 0)
    with pytest.raises(ValueError, match="threshold must be at least 1"):
        combine(shares, 0, 2)


def test_both_schemes_reconstruct_from_every_threshold_subset_and_need_threshold_shares() -> None:
    # Prepare: pycryptodome shares 16-byte secrets over GF(2^128), we over GF(2^521 - 1): the
    # shares differ, but both schemes must behave alike
    secret = random.Random(4).randbytes(16)
    theirs = Shamir.split(3, 5, secret)
    ours = split(secret, 3, range(1, 6))

    for subset in itertools.combinations(range(5), 3):
        # Execute / Assert: any 3 reconstruct in each scheme
        assert Shamir.combine([theirs[i] for i in subset]) == secret
        assert combine([ours[i] for i in subset], 3, 16) == secret
    for pair in itertools.combinations(range(5), 2):
        # Execute / Assert: 2 do not (pycryptodome interpolates a line through them)
        assert Shamir.combine([theirs[i] for i in pair]) != secret
        with pytest.raises(ValueError, match="needs at least 3 shares"):
            combine([ours[i] for i in pair], 3, 16)
        assert _recovers([ours[i] for i in pair], 2, 16) != secret


def test_a_small_change_to_a_share_moves_the_secret_silently_by_its_lagrange_weight() -> None:
    # With x = 1, 2, 3 the Lagrange weights at 0 are 3, -3, 1: flipping the lowest bit of the
    # first share's y (y ^ 1 changes y by +1 or -1) moves the secret by 3 either way, and the
    # result still fits in 32 bytes, so combine cannot tell. Secure aggregation checks every
    # rebuilt secret against a commitment for this reason.
    secret = (10**30).to_bytes(32, "big")
    shares = split(secret, 3, [1, 2, 3])
    change = 1 if shares[0].y % 2 == 0 else -1
    tampered = Share(shares[0].x, shares[0].y ^ 1)

    rebuilt = combine([tampered, shares[1], shares[2]], 3, 32)

    assert int.from_bytes(rebuilt, "big") == 10**30 + 3 * change
