import numpy as np
import pytest

from fedloom.compression._fixed_point import FixedPoint, mod_add, mod_sub, pack, unpack
from fedloom.errors import ConfigError


def _sum(encoded: list[np.ndarray], modulus_bits: int) -> np.ndarray:
    total = np.zeros_like(encoded[0])
    for vector in encoded:
        total = mod_add(total, vector, modulus_bits)
    return total


def test_encode_matches_hand_computed_values() -> None:
    # Prepare: clip 1, bits 4 -> scale 7
    fp = FixedPoint(clip=1.0, bits=4, modulus_bits=32)
    values = np.array([0.5, -1.0, 3.0, 0.0, -0.5, 0.07, -9.0], dtype=np.float32)

    # Execute
    encoded = fp.encode(values)

    # Assert: 0.5 -> rint(3.5) = 4; -1 -> -7; 3 clipped to 1 -> 7; -0.5 -> -4; 0.49 -> 0
    assert fp.scale == 7.0
    assert encoded.dtype == np.uint64
    assert encoded.tolist() == [4, 2**32 - 7, 7, 0, 2**32 - 4, 0, 2**32 - 7]


def test_scale_and_max_summands_match_hand_computed_values() -> None:
    assert FixedPoint(clip=2.0, bits=16).scale == 32767 / 2
    # (2^31 - 1) // (2^15 - 1): 32767 * 65538 = 2147483646 <= 2147483647
    assert FixedPoint(bits=16).max_summands() == 65538
    # the default, 20 bits mod 2^32: (2^31 - 1) // (2^19 - 1) = 4096
    assert FixedPoint().max_summands() == 4096
    assert FixedPoint(bits=4, modulus_bits=8).max_summands() == 127 // 7 == 18
    assert FixedPoint(bits=32, modulus_bits=64).max_summands() == (2**63 - 1) // (2**31 - 1)


def test_decode_sum_reads_values_at_or_above_half_the_modulus_as_negative() -> None:
    # Prepare
    fp32 = FixedPoint(clip=1.0, bits=4, modulus_bits=32)
    fp64 = FixedPoint(clip=1.0, bits=4, modulus_bits=64)
    total32 = np.array([4, 2**32 - 7, 0, 2**31 - 1, 2**31], dtype=np.uint64)
    total64 = np.array([2**64 - 1, 2**63 - 1, 2**63], dtype=np.uint64)

    # Execute
    decoded32 = fp32.decode_sum(total32, 1)
    decoded64 = fp64.decode_sum(total64, 1)

    # Assert
    assert (decoded32 * 7).tolist() == [4.0, -7.0, 0.0, 2**31 - 1, -(2**31)]
    assert decoded64.dtype == np.float64
    assert (decoded64 * 7).tolist() == [-1.0, 2.0**63, -(2.0**63)]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_the_sum_of_encoded_vectors_decodes_to_the_sum_within_the_bound(seed: int) -> None:
    # Prepare: 50 clients, about a third of the values beyond the clip
    rng = np.random.default_rng(seed)
    fp = FixedPoint(clip=0.8, bits=16, modulus_bits=32)
    updates = rng.uniform(-1.2, 1.2, size=(50, 1000))

    # Execute
    decoded = fp.decode_sum(_sum([fp.encode(u) for u in updates], 32), 50)

    # Assert
    error = np.abs(decoded - np.clip(updates, -0.8, 0.8).sum(axis=0))
    assert error.max() <= fp.error_bound(50)


def test_the_error_bound_is_not_vacuous() -> None:
    # Prepare: a large random vector, and values on a rounding midpoint (0.5 * 7 = 3.5 -> 4)
    rng = np.random.default_rng(3)
    fp = FixedPoint(bits=16, modulus_bits=32)
    updates = rng.uniform(-1.0, 1.0, size=(50, 20_000))
    coarse = FixedPoint(clip=1.0, bits=4, modulus_bits=32)

    # Execute
    decoded = fp.decode_sum(_sum([fp.encode(u) for u in updates], 32), 50)
    midpoints = coarse.decode_sum(_sum([coarse.encode(np.array([0.5]))] * 50, 32), 50)

    # Assert: random errors reach well over 10% of the bound; midpoints reach 50 * 0.5 / 7
    observed = np.abs(decoded - updates.sum(axis=0)).max()
    assert 0.1 * fp.error_bound(50) <= observed <= fp.error_bound(50)
    assert midpoints[0] == 50 * 4 / 7
    assert coarse.error_bound(50) - 1e-12 < midpoints[0] - 25.0 <= coarse.error_bound(50)


def test_one_summand_past_max_summands_wraps_and_decode_refuses_it() -> None:
    # Prepare: bits 4, k 8 -> 18 summands of 7 reach 126 <= 127; a 19th would reach 133
    fp = FixedPoint(clip=1.0, bits=4, modulus_bits=8)
    top = fp.encode(np.array([1.0]))

    # Execute
    fits = _sum([top] * 18, 8)
    wraps = _sum([top] * 19, 8)

    # Assert: 133 >= 2^7 reads as 133 - 256 = -123
    assert fp.decode_sum(fits, 18).tolist() == [18.0]
    assert wraps.tolist() == [133]
    with pytest.raises(ValueError, match="sum of 19 vectors: from 0 to 18 fit mod 2\\*\\*8"):
        fp.decode_sum(wraps, 19)
    with pytest.raises(ValueError, match="sum of -1 vectors"):
        fp.decode_sum(fits, -1)


def test_decode_sum_refuses_values_beyond_the_modulus() -> None:
    with pytest.raises(ValueError, match="below 2\\*\\*8, got 256"):
        FixedPoint(bits=4, modulus_bits=8).decode_sum(np.array([256], dtype=np.uint64), 1)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_encode_refuses_non_finite_values(bad: float) -> None:
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        FixedPoint().encode(np.array([0.0, bad]))


@pytest.mark.parametrize("modulus_bits", [64, 20])
def test_mod_add_and_mod_sub_match_python_integers(modulus_bits: int) -> None:
    # Prepare: random values plus the extremes 0 and 2^k - 1
    rng = np.random.default_rng(modulus_bits)
    top = 2**modulus_bits - 1
    edges_a, edges_b = np.array([top, 0, top], np.uint64), np.array([top, top, 0], np.uint64)
    a = np.concatenate([rng.integers(0, 2**modulus_bits, 200, dtype=np.uint64), edges_a])
    b = np.concatenate([rng.integers(0, 2**modulus_bits, 200, dtype=np.uint64), edges_b])

    # Execute
    added = mod_add(a, b, modulus_bits)
    subtracted = mod_sub(a, b, modulus_bits)

    # Assert
    pairs = list(zip(a.tolist(), b.tolist(), strict=True))
    assert added.dtype == subtracted.dtype == np.uint64
    assert added.tolist() == [(x + y) % 2**modulus_bits for x, y in pairs]
    assert subtracted.tolist() == [(x - y) % 2**modulus_bits for x, y in pairs]
    assert mod_add(subtracted, b, modulus_bits).tolist() == a.tolist()


@pytest.mark.parametrize(("modulus_bits", "width"), [(20, 4), (32, 4), (33, 8), (40, 8), (64, 8)])
def test_pack_round_trips_with_the_word_size_of_the_modulus(modulus_bits: int, width: int) -> None:
    # Prepare
    values = np.random.default_rng(5).integers(0, 2**modulus_bits, 37, dtype=np.uint64)

    # Execute
    raw = pack(values, modulus_bits)

    # Assert
    assert len(raw) == 37 * width
    assert unpack(raw, 37, modulus_bits).tolist() == values.tolist()


def test_pack_writes_little_endian_words() -> None:
    values = np.array([1, 0x01020304], dtype=np.uint64)
    assert pack(values, 32) == b"\x01\x00\x00\x00\x04\x03\x02\x01"
    assert pack(values, 40) == b"\x01" + b"\x00" * 7 + b"\x04\x03\x02\x01" + b"\x00" * 4
    assert pack(np.array([], dtype=np.uint64), 32) == b""


def test_pack_and_unpack_refuse_bad_input() -> None:
    with pytest.raises(ValueError, match="below 2\\*\\*20, got 1048576"):
        pack(np.array([2**20], dtype=np.uint64), 20)
    with pytest.raises(ValueError, match="below 2\\*\\*20, got 1048576"):
        unpack((2**20).to_bytes(4, "little"), 1, 20)
    with pytest.raises(ValueError, match=r"expected 2 values of 4 bytes \(8 bytes\).*got 7"):
        unpack(b"\x00" * 7, 2, 32)
    with pytest.raises(ValueError, match="expected 1 values of 8 bytes"):
        unpack(b"\x00" * 4, 1, 40)
    with pytest.raises(ValueError, match="modulus_bits must be an integer from 1 to 64, got 65"):
        pack(np.array([1], dtype=np.uint64), 65)


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"clip": 0.0}, "--secagg-clip must be a finite number > 0, got 0.0"),
        ({"clip": -1.0}, "--secagg-clip must be"),
        ({"clip": float("inf")}, "--secagg-clip must be"),
        ({"clip": float("nan")}, "--secagg-clip must be"),
        ({"bits": 1}, "--secagg-bits must be an integer from 2 to 32, got 1"),
        ({"bits": 33, "modulus_bits": 64}, "--secagg-bits must be an integer from 2 to 32, got 33"),
        ({"bits": 16, "modulus_bits": 16}, "--secagg-modulus-bits must be an integer from 17 "),
        ({"modulus_bits": 65}, "--secagg-modulus-bits must be .* got 65"),
        ({"bits": 8.0}, "--secagg-bits must be an integer"),
    ],
)
def test_out_of_range_settings_are_config_errors(settings: dict[str, float], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        FixedPoint(**settings)  # type: ignore[arg-type]
