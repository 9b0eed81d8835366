"""A user's own data for the command line: ``.npz`` and ``.csv`` files, the task they pose
(classify or regress), and the preparation a model keeps so that it can be used on new raw
rows (the class labels, the input and target scaling).

- ``.npz``: arrays ``X`` (rows, features) and ``y``, optionally ``X_test`` and ``y_test``
  (for prediction only ``X``). Read without pickle.
- ``.csv``: numeric feature columns and one label column (``target``: a header name or a
  column number, default the last); a first row that is not numbers where the rows below are
  is taken as a header.
"""
from __future__ import annotations

import csv
import pathlib
import zipfile
from dataclasses import dataclass

import numpy as np

MAX_CLASSES_FROM_NUMBERS = 50  # whole-number labels with more distinct values are a regression target


class DataError(ValueError):
    """A data file that cannot be used, with what is wrong and how to fix it."""


@dataclass
class Table:
    X: np.ndarray                  # (rows, features) float64
    y: np.ndarray | None           # (rows,) labels or targets as read (strings or numbers)
    X_test: np.ndarray | None = None
    y_test: np.ndarray | None = None
    columns: list | None = None    # feature names (a CSV header), for messages
    target: str | int | None = None


def _number(text):
    try:
        return float(text)
    except ValueError:
        return None


def read_table(path, target=None, *, features=None) -> Table:
    """Read ``path`` (.npz or .csv). ``features``: the number of feature columns a model expects
    (prediction): a CSV with one more column has its label column (``target``) dropped."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"no data file {path}")
    if path.suffix.lower() == ".npz":
        return _read_npz(path, features)
    if path.suffix.lower() == ".csv":
        return _read_csv(path, target, features)
    raise DataError(f"{path}: expected a .npz (arrays X, y) or a .csv file, got {path.suffix or 'no extension'}")


def _read_npz(path, features):
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive (write one with np.savez(path, X=X, y=y))")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {k: f[k] for k in f.files}
    except ValueError as e:
        raise DataError(f"{path}: {'it holds pickled objects, which fastnn never loads' if 'pickle' in str(e) else e}"
                        ) from None
    if "X" not in arrays:
        raise DataError(f"{path} has arrays {sorted(arrays)}; it needs X (rows, features) and, to train, y")
    if features is None and "y" not in arrays:
        raise DataError(f"{path} has no array y: training needs the labels or targets of X's rows")
    table = Table(_features(arrays["X"], f"{path}: X"), arrays.get("y"))
    if table.y is not None:
        table.y = _labels(table.y, len(table.X), f"{path}: y")
    if ("X_test" in arrays) != ("y_test" in arrays):
        raise DataError(f"{path}: X_test and y_test go together; it has only one of them")
    if "X_test" in arrays:
        table.X_test = _features(arrays["X_test"], f"{path}: X_test")
        table.y_test = _labels(arrays["y_test"], len(table.X_test), f"{path}: y_test")
        if table.X_test.shape[1] != table.X.shape[1]:
            raise DataError(f"{path}: X_test has {table.X_test.shape[1]} columns, X {table.X.shape[1]}")
    if features is not None and table.X.shape[1] != features:
        raise DataError(f"{path}: X has {table.X.shape[1]} columns; the model takes {features} features")
    return table


def _features(X, what):
    X = np.asarray(X)
    if X.ndim != 2 or X.shape[0] == 0 or X.shape[1] == 0:
        raise DataError(f"{what} must be a non-empty 2-D array (rows, features), got shape {X.shape}")
    if X.dtype.kind not in "biuf":
        raise DataError(f"{what} must be numeric, got dtype {X.dtype}; encode text columns as numbers first")
    X = X.astype(np.float64)
    if not np.all(np.isfinite(X)):
        r, c = np.argwhere(~np.isfinite(X))[0]
        raise DataError(f"{what} has a missing or non-finite value (row {r + 1}, column {c + 1}); fill or drop it")
    return X


def _labels(y, n, what):
    y = np.asarray(y)
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{what} must hold one label per row ({n}), got shape {y.shape}")
    if y.dtype.kind == "f" and not np.all(np.isfinite(y)):
        raise DataError(f"{what} has missing or non-finite labels (row {int(np.argmin(np.isfinite(y))) + 1})")
    if y.dtype.kind not in "biufUS":
        raise DataError(f"{what} must hold numbers or strings, got dtype {y.dtype}")
    return y


def _read_csv(path, target, features):
    with open(path, newline="") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path} is empty")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: row {i + 1} has {len(row)} columns, row 1 has {width}")
    texts = [[cell.strip() for cell in row] for row in rows]
    non_numbers = [sum(_number(c) is None for c in row) for row in texts]
    header = None
    if len(texts) > 1 and non_numbers[0] > max(non_numbers[1:2]):  # more text than the row below: names
        header, texts = texts[0], texts[1:]
    elif len(texts) == 1 and non_numbers[0] == width:
        raise DataError(f"{path} has a header row and no data")
    predicting = features is not None
    if predicting and width == features:
        label_col = None
    else:
        label_col = _column(target, header, width, path)
    if predicting and label_col is not None and width != features + 1:
        raise DataError(f"{path} has {width} columns; the model takes {features} features (or {features} and the "
                        f"label column)")
    if not predicting and width < 2:
        raise DataError(f"{path} has one column; training needs feature columns and a label column")
    cols = [c for c in range(width) if c != label_col]
    X = np.empty((len(texts), len(cols)))
    for i, row in enumerate(texts):
        for j, c in enumerate(cols):
            value = _number(row[c]) if row[c] else None
            if value is None or not np.isfinite(value):
                name = f" ({header[c]})" if header else ""
                what = "is empty" if not row[c] else f"holds {row[c]!r}, which is not a number"
                raise DataError(f"{path}: row {i + 1 + (header is not None)}, column {c + 1}{name} {what}; feature "
                                f"columns must be numbers (fill missing values, encode categories as numbers)")
            X[i, j] = value
    y = None
    if label_col is not None:
        labels = [row[label_col] for row in texts]
        if any(not cell for cell in labels):
            r = labels.index("")
            raise DataError(f"{path}: row {r + 1 + (header is not None)} has no label (column {label_col + 1})")
        numbers = [_number(cell) for cell in labels]
        if all(v is not None for v in numbers):
            y = np.array(numbers)
            if all(cell.lstrip("+-").isdigit() for cell in labels):
                y = y.astype(np.int64)
        else:
            y = np.array(labels)
    columns = [header[c] for c in cols] if header else None
    name = header[label_col] if header and label_col is not None else label_col
    return Table(X, y, columns=columns, target=name)


def _column(target, header, width, path):
    if target is None:
        return width - 1
    if header is not None and target in header:
        return header.index(target)
    try:
        index = int(target)
    except (TypeError, ValueError):
        names = f"; its columns are {header}" if header else " (it has no header row: give a column number)"
        raise DataError(f"{path} has no column {target!r}{names}") from None
    if not -width <= index < width:
        raise DataError(f"{path} has {width} columns; --target {index} is not one of them")
    return index % width


# -- the task ------------------------------------------------------------------------------

def infer_task(y) -> tuple[str, str]:
    """``(task, why)``: classify when the labels are strings, or whole numbers (integers, or
    floats that are all whole) with at most 50 distinct values; otherwise regress."""
    y = np.asarray(y)
    if y.dtype.kind in "USb":
        return "classify", "the labels are text" if y.dtype.kind != "b" else "the labels are true/false"
    distinct = np.unique(y)
    whole = y.dtype.kind in "iu" or bool(np.all(distinct == np.round(distinct)))
    if whole and len(distinct) <= MAX_CLASSES_FROM_NUMBERS:
        return "classify", f"the labels are {len(distinct)} distinct whole numbers"
    if whole:
        return "regress", f"the labels are whole numbers with {len(distinct)} distinct values (more than " \
                          f"{MAX_CLASSES_FROM_NUMBERS})"
    return "regress", "the labels are numbers that are not all whole"


def holdout(n, fraction=0.2, seed=0):
    """``(train rows, test rows)``: a seeded random ``fraction`` held out for testing."""
    order = np.random.default_rng(seed).permutation(n)
    held = max(1, int(round(fraction * n)))
    if held >= n:
        raise DataError(f"{n} rows are too few to hold out a test set; give at least 2 (or a test set)")
    return np.sort(order[held:]), np.sort(order[:held])


# -- what a model keeps to be used on raw rows ---------------------------------------------------

@dataclass
class Preparation:
    """How the command line turned raw rows into the network's inputs and outputs:
    x -> (x - input_mean) / input_scale; a class index -> classes[index]; a regression
    output -> output * target_scale + target_mean."""
    input_mean: np.ndarray
    input_scale: np.ndarray
    classes: np.ndarray | None = None
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None

    @classmethod
    def fit(cls, X, y=None, task="classify"):
        mean, scale = X.mean(axis=0), X.std(axis=0)
        prep = cls(mean, np.where(scale > 0, scale, 1.0))
        if task == "classify":
            prep.classes = np.unique(y)
        else:
            Y = np.asarray(y, np.float64).reshape(len(y), -1)
            t_scale = Y.std(axis=0)
            prep.target_mean, prep.target_scale = Y.mean(axis=0), np.where(t_scale > 0, t_scale, 1.0)
        return prep

    def inputs(self, X, dtype=np.float32):
        return ((X - self.input_mean) / self.input_scale).astype(dtype)

    def labels(self, y):
        """Class indices of the labels ``y`` (an error names a label the model does not know)."""
        y = np.asarray(y)
        index = np.searchsorted(self.classes, y)
        known = (index < len(self.classes)) & (self.classes[np.minimum(index, len(self.classes) - 1)] == y)
        if not known.all():
            raise DataError(f"label {y[~known][0]!r} is not one the model was trained on: {self.classes.tolist()}")
        return index.astype(np.int64)

    def targets(self, y):
        return (np.asarray(y, np.float64).reshape(len(y), -1) - self.target_mean) / self.target_scale

    def outputs(self, out):
        return out * self.target_scale + self.target_mean
