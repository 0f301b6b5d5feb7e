"""A deployed client's own data files: CSV, NumPy, MNIST IDX and LEAF JSON."""

import json
from pathlib import Path

import numpy as np
import pytest

from fedloom.data import label_names, load_client_data
from fedloom.errors import DataError

MNIST = Path(__file__).resolve().parents[2].parent / "shared" / "data" / "mnist"


def test_csv_with_a_label_column_anywhere(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("f1,diagnosis,f2\n0.5,1,2\n1.5,0,3\n")
    data = load_client_data(str(tmp_path / "a.csv"), label="diagnosis")
    np.testing.assert_array_equal(data.x, [[0.5, 2.0], [1.5, 3.0]])
    np.testing.assert_array_equal(data.y, [1, 0])


def test_npz_with_x_and_y(tmp_path: Path) -> None:
    np.savez(tmp_path / "d.npz", x=np.ones((3, 2, 2)), y=np.array([0, 1, 2]))
    data = load_client_data(str(tmp_path / "d.npz"))
    assert data.x.shape == (3, 4) and data.y.tolist() == [0, 1, 2]


def test_leaf_json_takes_the_named_or_only_user(tmp_path: Path) -> None:
    doc = {"users": ["u1", "u2"], "num_samples": [1, 2],
           "user_data": {"u1": {"x": [[1.0, 2.0]], "y": [3]},
                         "u2": {"x": [[0.0, 1.0], [1.0, 0.0]], "y": [0, 1]}}}  # fmt: skip
    (tmp_path / "leaf.json").write_text(json.dumps(doc))
    assert load_client_data(str(tmp_path / "leaf.json"), user="u2").y.tolist() == [0, 1]
    with pytest.raises(DataError, match="holds 2 users; pick one with --user"):
        load_client_data(str(tmp_path / "leaf.json"))


@pytest.mark.skipif(not MNIST.is_dir(), reason="needs ../shared/data/mnist")
def test_a_folder_of_mnist_idx_files() -> None:
    data = load_client_data(str(MNIST))
    assert data.x.shape == (10_000, 784) and set(data.y.tolist()) == set(range(10))


@pytest.mark.parametrize(
    ("name", "text", "message"),
    [
        ("a.csv", "f1,f2\n1,2\n", "no 'label' column"),
        ("b.csv", "f1,label\nx,1\n", "not a number"),
        ("c.csv", "f1,label\n1,0.5\n", "whole-number classes"),
        ("d.txt", "hello", "give a .csv"),
        ("e.json", "{not json", "not a LEAF JSON file"),
    ],
)
def test_bad_files_say_what_is_wrong(tmp_path: Path, name: str, text: str, message: str) -> None:
    (tmp_path / name).write_text(text)
    with pytest.raises(DataError, match=message):
        load_client_data(str(tmp_path / name))


def test_a_missing_path_is_named() -> None:
    with pytest.raises(DataError, match=r"/no/such\.csv does not exist"):
        load_client_data("/no/such.csv")


def _csv(tmp_path: Path, text: str) -> str:
    path = tmp_path / "site.csv"
    path.write_text(text)
    return str(path)


def test_label_names_become_classes_in_sorted_order_or_in_the_order_given(tmp_path: Path) -> None:
    path = _csv(tmp_path, "f1,f2,label\n1,2,yes\n3,4,no\n5,6,yes\n")
    assert label_names(path) == ["no", "yes"]
    assert load_client_data(path).y.tolist() == [1, 0, 1]
    assert load_client_data(path, classes=["yes", "no"]).y.tolist() == [0, 1, 0]
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'label': 'no' is not one of"):
        load_client_data(path, classes=["yes", "maybe"])


def test_an_empty_cell_is_refused_with_its_row_and_column_or_filled_when_asked(
    tmp_path: Path,
) -> None:
    path = _csv(tmp_path, "f1,chol,label\n1,200,0\n2,,1\n3,400,0\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'chol' is empty"):
        load_client_data(path)
    assert load_client_data(path, fill_missing="mean").x[:, 1].tolist() == [200, 300, 400]
    assert load_client_data(path, fill_missing="zero").x[:, 1].tolist() == [200, 0, 400]
    assert label_names(path) is None  # numbered classes


def test_a_bad_cell_names_its_row_and_column(tmp_path: Path) -> None:
    path = _csv(tmp_path, "f1,f2,label\n1,2,0\n3,x,1\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'f2': 'x' is not a number"):
        load_client_data(path)
    short = _csv(tmp_path, "f1,f2,label\n1,2\n")
    with pytest.raises(DataError, match=r"row 1 \(line 2\) has 2 cells; the header has 3"):
        load_client_data(short)


def test_label_names_are_read_as_the_loader_reads_them_and_bad_cells_are_data_errors(
    tmp_path: Path,
) -> None:
    spaced = _csv(tmp_path, "f1,label\n1, yes\n2, no\n")
    assert label_names(spaced) == ["no", "yes"]
    assert load_client_data(spaced, classes=label_names(spaced)).y.tolist() == [1, 0]
    for text, message in (
        ("f1,label\n1,nan\n", r"'nan' is not a class|whole-number"),
        ("f1,label\ninf,0\n", "'inf' is not finite"),
    ):
        with pytest.raises(DataError, match=message):
            load_client_data(_csv(tmp_path, text))
    latin = tmp_path / "latin.csv"
    latin.write_bytes("f1,label\n1,\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match="cannot be read as a UTF-8 CSV"):
        load_client_data(str(latin))
