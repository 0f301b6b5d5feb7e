import numpy as np
import pytest

from fedloom.errors import DataError
from fedloom.params import ParamSpec


def _spec() -> ParamSpec:
    return ParamSpec.of({"w": np.zeros((2, 3), np.float32), "b": np.zeros(3, np.float64)})


def test_pack_concatenates_in_spec_order_as_float32() -> None:
    # Prepare
    spec = _spec()
    arrays = {"b": np.array([7.0, 8.0, 9.0]), "w": np.arange(6).reshape(2, 3)}

    # Execute
    vec = spec.pack(arrays)

    # Assert
    assert vec.dtype == np.float32
    assert vec.tolist() == [0, 1, 2, 3, 4, 5, 7, 8, 9]
    assert spec.size == 9 and spec.sizes == (6, 3)


def test_unpack_restores_shapes_and_dtypes() -> None:
    # Prepare
    spec = _spec()
    vec = np.arange(9, dtype=np.float32)

    # Execute
    out = spec.unpack(vec)

    # Assert
    assert out["w"].shape == (2, 3) and out["w"].dtype == np.float32
    assert out["b"].dtype == np.float64 and out["b"].tolist() == [6.0, 7.0, 8.0]
    np.testing.assert_array_equal(spec.pack(out), vec)


def test_spec_survives_json() -> None:
    spec = _spec()
    assert ParamSpec.from_json(spec.to_json()) == spec


@pytest.mark.parametrize(
    ("arrays", "message"),
    [
        ({"w": np.zeros((2, 3))}, "missing"),
        ({"w": np.zeros((3, 2)), "b": np.zeros(3)}, "shape"),
    ],
)
def test_pack_rejects_missing_or_misshapen_arrays(
    arrays: dict[str, np.ndarray], message: str
) -> None:
    with pytest.raises(DataError, match=message):
        _spec().pack(arrays)


@pytest.mark.parametrize("vec", [np.zeros(8), np.zeros((3, 3)), np.zeros(10)])
def test_unpack_rejects_a_vector_of_the_wrong_length(vec: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"needs \(9,\)"):
        _spec().unpack(vec)


def test_malformed_spec_json_is_a_data_error() -> None:
    with pytest.raises(DataError, match="malformed"):
        ParamSpec.from_json('{"names": ["a"]}')


def test_duplicate_names_are_refused() -> None:
    with pytest.raises(DataError, match="duplicate"):
        ParamSpec(("a", "a"), ((1,), (1,)), ("float32", "float32"))
