"""Loaders for datasets read from disk: MNIST (IDX), UCI Heart Disease, LEAF JSON."""

from __future__ import annotations

import csv
import gzip
import json
import math
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np

from fedloom.data._types import ArrayData, ClientData
from fedloom.errors import DataError

__all__ = [
    "FILL_MISSING",
    "HEART_SITES",
    "find_mnist_files",
    "impute_and_standardise",
    "label_names",
    "load_client_data",
    "load_heart_disease",
    "load_leaf",
    "load_mnist_idx",
    "read_heart_raw",
]

PathLike: TypeAlias = str | os.PathLike[str]

HEART_SITES = ("cleveland", "hungarian", "switzerland", "va")
# Columns where 0 is physiologically impossible and means "not recorded": trestbps, chol.
_HEART_ZERO_IS_MISSING = (3, 4)
_IDX_IMAGES, _IDX_LABELS = 2051, 2049


# ----------------------------------------------------------------------------- MNIST (IDX)


def load_mnist_idx(images_path: PathLike, labels_path: PathLike) -> ArrayData:
    """Read an MNIST-style pair of IDX files (gzip-compressed or raw).

    Parameters
    ----------
    images_path
        ``*-images-idx3-ubyte`` file (magic 2051, unsigned bytes, ``n x rows x cols``).
    labels_path
        ``*-labels-idx1-ubyte`` file (magic 2049, ``n`` unsigned bytes).

    Returns
    -------
    ArrayData
        ``x`` float32 of shape ``(n, rows * cols)`` with pixels scaled to [0, 1]; ``y`` int64.

    Raises
    ------
    DataError
        If a file is missing, truncated, has the wrong magic number, or the counts differ.
    """
    images = _read_idx(Path(images_path), _IDX_IMAGES, 3)
    labels = _read_idx(Path(labels_path), _IDX_LABELS, 1)
    if len(images) != len(labels):
        raise DataError(
            f"{images_path} has {len(images)} images but {labels_path} has {len(labels)} "
            "labels; use files from the same set"
        )
    x = images.reshape(len(images), -1).astype(np.float32) / np.float32(255.0)
    return ArrayData(x, labels.astype(np.int64))


def _read_idx(path: Path, magic: int, ndim: int) -> np.ndarray:
    try:
        raw = path.read_bytes()
        if raw[:2] == b"\x1f\x8b":
            raw = gzip.decompress(raw)
    except (OSError, EOFError) as exc:
        raise DataError(f"cannot read IDX file {path}: {exc}") from exc
    found = int.from_bytes(raw[:4], "big") if len(raw) >= 4 else -1
    if found != magic:
        raise DataError(
            f"{path} is not an IDX file with magic {magic} (found {found}); "
            f"expected an unsigned-byte {ndim}-d IDX file"
        )
    header = 4 + 4 * ndim
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(
            f"{path} is truncated or padded: {len(raw)} bytes, header says {expected}; "
            "download it again"
        )
    pixels: np.ndarray = np.frombuffer(raw, dtype=np.uint8, offset=header)
    return pixels.reshape(dims)


def find_mnist_files(directory: PathLike) -> dict[str, tuple[Path, Path]]:
    """Find the ``train`` and ``t10k`` IDX pairs present in ``directory``.

    Accepts ``{set}-images-idx3-ubyte`` and ``{set}-images.idx3-ubyte`` (likewise for labels),
    each optionally gzipped. Returns a mapping from ``"train"``/``"t10k"`` to
    ``(images, labels)`` for each complete pair.

    Raises
    ------
    DataError
        If the directory does not exist or holds no complete pair.
    """
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(f"MNIST directory {folder} does not exist; pass the folder of IDX files")
    found: dict[str, tuple[Path, Path]] = {}
    for split in ("train", "t10k"):
        images = _first_existing(folder, split, "images", 3)
        labels = _first_existing(folder, split, "labels", 1)
        if images is not None and labels is not None:
            found[split] = (images, labels)
    if not found:
        raise DataError(
            f"no MNIST IDX files in {folder}; expected train-images-idx3-ubyte[.gz] and "
            "train-labels-idx1-ubyte[.gz], or the t10k-* pair"
        )
    return found


def _first_existing(folder: Path, split: str, kind: str, ndim: int) -> Path | None:
    for sep in ("-", "."):
        for suffix in (".gz", ""):
            candidate = folder / f"{split}-{kind}{sep}idx{ndim}-ubyte{suffix}"
            if candidate.is_file():
                return candidate
    return None


# ----------------------------------------------------------------------- UCI Heart Disease


def load_heart_disease(directory: PathLike) -> list[ArrayData]:
    """Read the four UCI Heart Disease hospital sites, imputed and standardised.

    Reads ``processed.{cleveland,hungarian,switzerland,va}.data`` (14 comma-separated columns,
    ``?`` for missing). Features are the first 13 columns; the label is ``num > 0`` (heart
    disease present), so classes are 0/1.

    Missing values: ``?``, and a 0 in ``trestbps`` or ``chol`` (never recorded as a real 0;
    Switzerland's ``chol`` is 0 in every row), are replaced by the column's mean over the
    observed rows of all four sites pooled; nothing else (no indicator columns). Each column
    is then standardised with the pooled mean and standard deviation. (``load_dataset`` does
    the same with statistics from its training rows only.)

    Parameters
    ----------
    directory
        Folder holding the four ``processed.*.data`` files.

    Returns
    -------
    list of ArrayData
        One per site, in the order cleveland, hungarian, switzerland, va; ``x`` has 13
        float32 columns without NaN.

    Raises
    ------
    DataError
        If the folder or a file is missing, or a row is malformed.
    """
    sites = read_heart_raw(directory)
    pooled = np.concatenate([s.x for s in sites])
    return [ArrayData(impute_and_standardise(s.x, pooled), s.y) for s in sites]


def read_heart_raw(directory: PathLike) -> list[ArrayData]:
    """Read the four sites with missing values left as NaN and binary labels."""
    folder = Path(directory)
    if not folder.is_dir():
        raise DataError(f"heart disease directory {folder} does not exist; pass the UCI folder")
    return [_read_heart_site(folder / f"processed.{site}.data") for site in HEART_SITES]


def _read_heart_site(path: Path) -> ArrayData:
    try:
        lines = path.read_text(encoding="ascii").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path}: {exc}; it should be a UCI processed.*.data") from exc
    rows = []
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        fields = line.strip().split(",")
        if len(fields) != 14:
            raise DataError(f"{path}, line {number}: {len(fields)} fields, expected 14")
        try:
            rows.append([np.nan if f.strip() == "?" else float(f) for f in fields])
        except ValueError as exc:
            raise DataError(f"{path}, line {number}: {exc}") from exc
    if not rows:
        raise DataError(f"{path} holds no rows")
    table = np.array(rows, dtype=np.float64)
    x = table[:, :13]
    for col in _HEART_ZERO_IS_MISSING:
        x[x[:, col] == 0, col] = np.nan
    if np.isnan(table[:, 13]).any():
        raise DataError(f"{path}: the label column 'num' has missing values")
    return ArrayData(x, (table[:, 13] > 0).astype(np.int64))


def impute_and_standardise(x: np.ndarray, reference: np.ndarray) -> np.ndarray:
    """Fill NaN with the column means of ``reference``, then standardise with its statistics.

    Means and standard deviations are taken over the observed (non-NaN) entries of
    ``reference``; a column never observed becomes 0, a constant column is only centred.
    """
    observed = ~np.isnan(reference)
    counts = observed.sum(axis=0)
    safe = np.where(observed, reference, 0.0)
    mean = np.divide(safe.sum(axis=0), counts, out=np.zeros(x.shape[1]), where=counts > 0)
    sq = np.where(observed, (reference - mean) ** 2, 0.0).sum(axis=0)
    std = np.sqrt(np.divide(sq, counts, out=np.zeros(x.shape[1]), where=counts > 0))
    filled = np.where(np.isnan(x), mean, x)
    scaled: np.ndarray = (filled - mean) / np.where(std > 0, std, 1.0)
    return scaled.astype(np.float32)


# ------------------------------------------------------------------------------- LEAF JSON


def load_leaf(directory: PathLike) -> tuple[list[str], list[ClientData]]:
    """Read a LEAF dataset (e.g. FEMNIST): its natural split by user.

    ``directory`` holds ``train/`` and ``test/`` folders of LEAF JSON files
    (``{"users": [...], "num_samples": [...], "user_data": {user: {"x": [...], "y": [...]}}}``);
    every ``*.json`` in each folder is read, in file-name order.

    Parameters
    ----------
    directory
        The LEAF data folder (the one holding ``train/`` and ``test/``).

    Returns
    -------
    users, clients
        User ids in order of first appearance (train files first, then users found only in
        test files) and, per user, its train rows and test rows (either may be empty).

    Raises
    ------
    DataError
        If a folder is missing or empty, a file is not valid LEAF JSON, or feature widths differ.
    """
    folder = Path(directory)
    train = _read_leaf_folder(folder / "train")
    test = _read_leaf_folder(folder / "test")
    widths = {a.x.shape[1] for a in [*train.values(), *test.values()] if len(a)}
    if len(widths) > 1:
        raise DataError(f"LEAF files in {folder} mix feature widths {sorted(widths)}")
    width = widths.pop() if widths else 0
    empty = ArrayData(np.zeros((0, width), np.float32), np.zeros(0, np.int64))
    users = list(train) + [u for u in test if u not in train]
    clients = [
        ClientData(_or_empty(train.get(u), empty), _or_empty(test.get(u), empty)) for u in users
    ]
    return users, clients


def _or_empty(data: ArrayData | None, empty: ArrayData) -> ArrayData:
    return data if data is not None and len(data) else empty


def _read_leaf_folder(folder: Path) -> dict[str, ArrayData]:
    if not folder.is_dir():
        raise DataError(f"LEAF folder {folder} does not exist; expected train/ and test/ inside")
    files = sorted(folder.glob("*.json"))
    if not files:
        raise DataError(f"no LEAF .json files in {folder}")
    out: dict[str, ArrayData] = {}
    for path in files:
        try:
            with path.open(encoding="utf-8") as handle:
                doc = json.load(handle)
            parts = _leaf_users(doc)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            raise DataError(f"{path} is not LEAF JSON ({type(exc).__name__}: {exc})") from exc
        for user, data in parts.items():
            if user in out and len(out[user]) and len(data):
                data = ArrayData(np.concatenate([out[user].x, data.x]), np.r_[out[user].y, data.y])
            if user not in out or len(data):
                out[user] = data
    return out


def _leaf_users(doc: Any) -> dict[str, ArrayData]:
    out = {}
    for user in doc["users"]:
        record = doc["user_data"][user]
        x = np.asarray(record["x"], dtype=np.float32)
        x = x.reshape(len(x), -1) if len(x) else np.zeros((0, 0), np.float32)
        y = np.asarray(record["y"])
        if y.size and not np.all(np.equal(np.mod(y, 1), 0)):
            raise DataError(f"user {user!r} has non-integer labels")
        out[str(user)] = ArrayData(x, y.astype(np.int64))
    return out


FILL_MISSING = ("mean", "zero")
"""How ``fill_missing`` fills an empty feature cell of a CSV: the column's mean, or 0."""


def load_client_data(
    path: str,
    label: str | None = "label",
    user: str | None = None,
    *,
    classes: Sequence[str] | None = None,
    fill_missing: str | None = None,
) -> ArrayData:
    """A client's own data from its files.

    A ``.csv`` with a header and a ``label`` column (every other column a feature), a ``.npz``
    with arrays ``x`` and ``y``, a folder of MNIST IDX files (the ``train`` pair, else
    ``t10k``), or a LEAF ``.json`` file (the one user in it, or ``user``).

    A CSV's labels are whole numbers, or names (``yes``/``no``): a name's class is its index
    in ``classes`` (by default the file's names, sorted: see :func:`label_names`; every party
    of a federation must use the same list). An empty feature cell is refused with its row and
    column, or filled with its column's mean (``fill_missing="mean"``) or 0 (``"zero"``).
    ``label=None`` reads a CSV of features alone (every column; the classes are all 0).
    """
    file = Path(path)
    if not file.exists():
        raise DataError(f"data path {path} does not exist")
    if fill_missing is not None and fill_missing not in FILL_MISSING:
        raise DataError(
            f"fill_missing must be one of {', '.join(FILL_MISSING)}, got {fill_missing!r}"
        )
    if file.is_dir():
        pairs = find_mnist_files(file)
        images, labels = pairs.get("train") or pairs["t10k"]
        return load_mnist_idx(images, labels)
    if file.suffix == ".npz":
        with np.load(file) as arrays:
            if "x" not in arrays or "y" not in arrays:
                raise DataError(f"{path} must hold arrays named x and y")
            return ArrayData(arrays["x"].reshape(len(arrays["x"]), -1), arrays["y"])
    if file.suffix == ".json":
        return _leaf_user(file, user)
    if file.suffix == ".csv":
        return _csv(file, label, classes, fill_missing)
    raise DataError(
        f"{path}: give a .csv (with a label column), a .npz (x, y), a folder of MNIST IDX "
        "files or a LEAF .json file"
    )


def label_names(path: str, label: str = "label") -> list[str] | None:
    """The names a CSV's label column holds, sorted, or ``None`` when its labels are numbers
    (or the file is not a CSV)."""
    file = Path(path)
    if file.suffix != ".csv" or not file.is_file():
        return None
    header, rows = _csv_rows(file, label)
    raw = [r[header.index(label)].strip() for r in rows if len(r) == len(header)]
    if all(_is_number(v) for v in raw):
        return None
    return sorted(set(raw))


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _csv_rows(file: Path, label: str | None) -> tuple[list[str], list[list[str]]]:
    try:
        with file.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise DataError(f"{file} cannot be read as a UTF-8 CSV: {exc}") from None
    if not rows or (label is not None and label not in rows[0]):
        raise DataError(f"{file}: no {label!r} column in the header; name it with --label")
    return rows[0], rows[1:]


def _csv(
    file: Path, label: str | None, classes: Sequence[str] | None, fill_missing: str | None
) -> ArrayData:
    header, rows = _csv_rows(file, label)
    if not rows:
        raise DataError(f"{file}: no rows under the header")
    col = header.index(label) if label is not None else None
    names = None
    if label is not None:
        names = list(classes) if classes is not None else label_names(str(file), label)
    features = [name for i, name in enumerate(header) if i != col]
    x = np.empty((len(rows), len(features)), dtype=np.float64)
    y = np.zeros(len(rows), dtype=np.int64)
    missing = np.zeros(x.shape, dtype=bool)
    for r, row in enumerate(rows):
        where = f"{file}: row {r + 1} (line {r + 2})"
        if len(row) != len(header):
            raise DataError(f"{where} has {len(row)} cells; the header has {len(header)}")
        cells = [v.strip() for v in row]
        if col is not None:
            y[r] = _class_of(cells.pop(col), names, f"{where}, column {label!r}")
        for j, value in enumerate(cells):
            if value == "":
                if fill_missing is None:
                    raise DataError(
                        f"{where}, column {features[j]!r} is empty; fill it, or give "
                        "--fill-missing mean (or zero)"
                    )
                missing[r, j] = True
                x[r, j] = 0.0
                continue
            try:
                x[r, j] = float(value)
            except ValueError:
                raise DataError(
                    f"{where}, column {features[j]!r}: {value!r} is not a number"
                ) from None
            if not math.isfinite(x[r, j]):
                raise DataError(f"{where}, column {features[j]!r}: {value!r} is not finite")
    if fill_missing == "mean" and missing.any():
        counts = (~missing).sum(axis=0)
        means = np.where(missing, 0.0, x).sum(axis=0) / np.maximum(counts, 1)
        x = np.where(missing, means, x)
    return ArrayData(x, y)


def _class_of(value: str, names: Sequence[str] | None, where: str) -> int:
    if value == "":
        raise DataError(f"{where} is empty: every row needs its label")
    if names is not None:
        if value not in names:
            raise DataError(f"{where}: {value!r} is not one of the classes {', '.join(names)}")
        return list(names).index(value)
    try:
        number = float(value)
    except ValueError:
        raise DataError(f"{where}: {value!r} is not a class") from None
    if not math.isfinite(number) or number != round(number):
        raise DataError(f"{where}: {value!r}: labels must be whole-number classes, or names")
    return int(number)


def _leaf_user(file: Path, user: str | None) -> ArrayData:
    try:
        users = _leaf_users(json.loads(file.read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise DataError(f"{file} is not a LEAF JSON file: {exc}") from None
    if user is None:
        if len(users) != 1:
            raise DataError(f"{file} holds {len(users)} users; pick one with --user")
        return next(iter(users.values()))
    if user not in users:
        raise DataError(f"{file} has no user {user!r}")
    return users[user]
