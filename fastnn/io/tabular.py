"""A user's own data for the command line: ``.npz`` and ``.csv`` files, the task they pose
(classify or regress), and the preparation a model keeps so that it can be used on new raw
rows (the class labels, the input and target scaling).

- ``.npz``: arrays ``X`` (rows, features) and ``y``, optionally ``X_test`` and ``y_test``
  (for prediction only ``X``). Read without pickle.
- ``.csv``: numeric feature columns and one label column (``target``: a header name or a
  column number, default the last); a first row that is not numbers where the rows below are
  is taken as a header. A model trained on a header keeps the names, and the rows it is used on
  later are matched to them by name (``read_rows``).
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


def read_table(path, target=None) -> Table:
    """Read a table to train on from ``path`` (.npz or .csv); ``target``: the CSV's label
    column, a header name or a column number (default: the last)."""
    path = _data_file(path)
    if path.suffix.lower() == ".npz":
        return _read_npz(path, None)
    header, texts = _csv_cells(path)
    width = len(texts[0])
    if width < 2:
        raise DataError(f"{path} has one column; training needs feature columns and a label column")
    label_col = _column(target, header, width, path)
    cols = [c for c in range(width) if c != label_col]
    if header is not None:
        if header[label_col] in [header[c] for c in cols]:
            raise DataError(f"{path}: the label column's name {header[label_col]!r} is also a feature column's; "
                            f"columns are matched by name when the model is used later, so names must be distinct")
        seen = set()
        for c in cols:
            if header[c] in seen:
                raise DataError(f"{path}: the column name {header[c]!r} appears twice; columns are matched by name "
                                f"when the model is used later, so names must be distinct")
            seen.add(header[c])
    return Table(_numbers(path, header, texts, cols), _label_column(path, header, texts, label_col),
                 columns=[header[c] for c in cols] if header else None,
                 target=header[label_col] if header else label_col)


def read_rows(path, *, features, names=None, target=None, label_name=None, label_at=None, labels=False):
    """Read the rows a trained model is used on, from ``path`` (.npz or .csv).

    ``features``: how many inputs the model takes; ``names``: its column names in order (a CSV
    header at training), or None; ``target``: the label column (a name or a number; default:
    ``label_name``, the model's label column, if the file has it, else the column left over when
    the model's label column has no name; in a file without names, ``label_at``, its position in
    the training file, else the last); ``labels``:
    the rows' labels are needed (evaluation). A CSV with a header is matched to ``names`` by
    name: reordered columns work, a missing one is an error naming it, and other columns (an id,
    the label) are dropped. Without names on one side, columns go by position, with at most
    one extra column, the label. Returns ``(table, notes)``: notes say what was dropped or
    assumed, for the user to read."""
    path = _data_file(path)
    notes = []
    if path.suffix.lower() == ".npz":
        table = _read_npz(path, features)
        if labels and table.X_test is not None:  # an .npz with a test split: evaluate on it
            table.X, table.y = table.X_test, table.y_test
        if labels and table.y is None:
            raise DataError(f"{path} has no array y: the rows' labels are needed to evaluate")
        return table, notes
    header, texts = _csv_cells(path, names)
    width = len(texts[0])
    if header is not None and names is not None:
        label_col = None
        if target is not None:
            label_col = _column(target, header, width, path)
        elif label_name is not None and label_name in header:
            label_col = header.index(label_name)
        missing = [n for n in names if n not in header]
        if missing:
            raise DataError(f"{path} lacks the column{'s' if len(missing) > 1 else ''} {missing} the model was trained "
                            f"on; it has {header}")
        twice = [n for n in names if header.count(n) > 1]
        if twice:
            raise DataError(f"{path}: the column {twice[0]!r} appears more than once; which one the model takes is "
                            f"not clear")
        cols = [header.index(n) for n in names]
        rest = [c for c in range(width) if c not in cols]
        if label_col is None and labels:
            if label_name is not None:
                raise DataError(f"{path} has no column {label_name!r}, the label column the model was trained with: "
                                f"name the file's label column with --target")
            if len(rest) != 1:
                raise DataError(f"{path}: name the label column with --target; besides the model's columns it has "
                                f"{[header[c] for c in rest] or 'none'}")
            label_col = rest[0]
        if label_col in cols:
            raise DataError(f"{path}: the label column {header[label_col]!r} is one of the model's inputs")
        dropped = [header[c] for c in rest if c != label_col or not labels]
        if dropped:
            notes.append(f"{path.name}: columns not used by the model, dropped: {', '.join(dropped)}")
        if cols != sorted(cols) or len(rest) > (label_col is not None):
            notes.append(f"{path.name}: columns matched by name to the model's {len(names)} inputs")
    else:
        if width == features and not labels:
            label_col = None
        elif width == features + 1:
            if target is None and header is not None and label_name in header:
                target = label_name
            elif target is None and label_at is not None and label_at < width:
                target = label_at  # (where the training file had its label)
            label_col = _column(target, header, width, path)
        else:
            raise DataError(f"{path} has {width} columns; the model takes {features} features"
                            + (" and the label column" if labels else " (and may be given the label column)"))
        cols = [c for c in range(width) if c != label_col]
        if names is not None:
            notes.append(f"{path.name} has no header row: its columns are taken in the order the model was "
                         f"trained on: {', '.join(map(str, names))}")
    X = _numbers(path, header, texts, cols)
    y = _label_column(path, header, texts, label_col) if label_col is not None else None
    if labels and y is None:
        raise DataError(f"{path} has no label column to evaluate against")
    return Table(X, y, columns=[header[c] for c in cols] if header else None), notes


def _data_file(path):
    path = pathlib.Path(path)
    if not path.is_file():
        raise DataError(f"no data file {path}")
    if path.suffix.lower() not in (".npz", ".csv"):
        raise DataError(f"{path}: expected a .npz (arrays X, y) or a .csv file, got {path.suffix or 'no extension'}")
    return path


def _read_npz(path, features):
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path} is not an .npz archive (write one with np.savez(path, X=X, y=y))")
    from .files import Archive

    with Archive(path, "data file (.npz)", error=DataError) as archive:  # (members other than these: unread)
        arrays = {k: archive.read(k, kinds="biufUS") for k in ("X", "y", "X_test", "y_test") if k in archive.members}
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


def _csv_cells(path, names=None):
    """``(header or None, rows of stripped cells)`` of a CSV file with rows of one width. A byte
    order mark (as Excel writes) is not part of the first name, and a column empty in every row,
    header included (a comma at the end of every line), is not a column. The first row is a
    header when it holds more text than the row below, when a column that is text in every row
    below holds a number there (names that are numbers, over text labels), or when it holds
    every one of ``names`` (the columns a model was trained on)."""
    with open(path, newline="", encoding="utf-8-sig") as f:
        rows = [row for row in csv.reader(f) if any(cell.strip() for cell in row)]
    if not rows:
        raise DataError(f"{path} is empty")
    width = len(rows[0])
    for i, row in enumerate(rows):
        if len(row) != width:
            raise DataError(f"{path}: row {i + 1} has {len(row)} columns, row 1 has {width}")
    texts = [[cell.strip() for cell in row] for row in rows]
    empty = [c for c in range(width) if not any(row[c] for row in texts)]
    if empty:
        texts = [[cell for c, cell in enumerate(row) if c not in empty] for row in texts]
        width -= len(empty)
    is_text = [[_number(c) is None for c in row] for row in texts]
    non_numbers = [sum(row) for row in is_text]
    header = None
    if len(texts) > 1 and (non_numbers[0] > max(non_numbers[1:2])  # more text than the row below: names
                           or any(not is_text[0][c] and all(r[c] for r in is_text[1:]) for c in range(width))
                           or (names is not None and set(names) <= set(texts[0]))):
        header, texts = texts[0], texts[1:]
    elif len(texts) == 1 and (non_numbers[0] == width or (names is not None and set(names) <= set(texts[0]))):
        raise DataError(f"{path} has a header row and no data")
    return header, texts


def _numbers(path, header, texts, cols):
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
    return X


def _label_column(path, header, texts, label_col):
    labels = [row[label_col] for row in texts]
    if any(not cell for cell in labels):
        r = labels.index("")
        raise DataError(f"{path}: row {r + 1 + (header is not None)} has no label (column {label_col + 1})")
    numbers = [_number(cell) for cell in labels]
    if all(v is not None for v in numbers):
        bad = [i for i, v in enumerate(numbers) if not np.isfinite(v)]
        if bad:
            raise DataError(f"{path}: row {bad[0] + 1 + (header is not None)} has the label {labels[bad[0]]!r}, which "
                            f"is not a value to learn (column {label_col + 1}); fill or drop the row")
        y = np.array(numbers)
        if all(cell.lstrip("+-").isdigit() for cell in labels):
            y = y.astype(np.int64)
        return y
    return np.array(labels)


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
    output -> output * target_scale + target_mean. The input columns are the model's
    ``feature_names_in_`` (when the table had a header), in that order."""
    input_mean: np.ndarray
    input_scale: np.ndarray
    classes: np.ndarray | None = None
    target_mean: np.ndarray | None = None
    target_scale: np.ndarray | None = None
    target: np.ndarray | None = None  # the label column's name (a 0-d str array), to find it again
    target_at: np.ndarray | None = None  # its position in the training file (a 0-d int array)

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

    def check(self, n_in, n_out, loss):
        """Refuse a preparation that does not fit a network of ``n_in`` inputs and ``n_out``
        outputs trained with ``loss`` (a damaged or foreign model file), saying what is wrong."""
        def vector(name, a, size, positive=False):
            if a is None or a.ndim != 1 or a.shape[0] != size or a.dtype.kind != "f":
                raise ValueError(f"{name} must be {size} floats, got {getattr(a, 'dtype', None)}"
                                 f"{getattr(a, 'shape', '')}")
            if not np.all(np.isfinite(a)) or (positive and not np.all(a > 0)):
                raise ValueError(f"{name} holds {'NaN, inf or values <= 0' if positive else 'NaN or inf'}")
        vector("input_mean", self.input_mean, n_in)
        vector("input_scale", self.input_scale, n_in, positive=True)
        if loss == "mse":
            if self.classes is not None:
                raise ValueError("a regression model with class labels")
            vector("target_mean", self.target_mean, n_out)
            vector("target_scale", self.target_scale, n_out, positive=True)
        else:
            c = self.classes
            if c is None or c.ndim != 1 or c.dtype.kind not in "iufU" or c.shape[0] != n_out:
                raise ValueError(f"a classifier of {n_out} outputs needs {n_out} class labels, got "
                                 f"{getattr(c, 'shape', None)}")
            if c.dtype.kind == "f" and not np.all(np.isfinite(c)):
                raise ValueError("class labels hold NaN or inf")
            if n_out > 1 and not np.all(c[1:] > c[:-1]):
                raise ValueError("class labels must be distinct and sorted")
            if self.target_mean is not None or self.target_scale is not None:
                raise ValueError("a classifier with a target scaling")
        if self.target is not None and not (self.target.ndim == 0 and self.target.dtype.kind == "U"):
            raise ValueError("the label column's name is not a name")
        if self.target_at is not None and not (self.target_at.ndim == 0 and self.target_at.dtype.kind in "iu"
                                               and 0 <= int(self.target_at) <= n_in):
            raise ValueError("the label column's position is not one of the training file's columns")

    def inputs(self, X, dtype=np.float32):
        return ((X - self.input_mean) / self.input_scale).astype(dtype)

    def labels(self, y):
        """Class indices of the labels ``y`` (an error names a label the model does not know)."""
        y = np.asarray(y)
        index = np.searchsorted(self.classes, y)
        known = (index < len(self.classes)) & (self.classes[np.minimum(index, len(self.classes) - 1)] == y)
        if not known.all():
            raise DataError(f"label {y[~known][0].item()!r} is not one the model was trained on: "
                            f"{self.classes.tolist()}")
        return index.astype(np.int64)

    def targets(self, y):
        return (np.asarray(y, np.float64).reshape(len(y), -1) - self.target_mean) / self.target_scale

    def outputs(self, out):
        return out * self.target_scale + self.target_mean


def column_names(X):
    """The column names of a table (a pandas DataFrame, or anything with string ``columns``), as
    an array of str; None for an array, or columns that are not named by text (as
    scikit-learn)."""
    columns = getattr(X, "columns", None)
    if columns is None or isinstance(X, np.ndarray):
        return None
    names = list(columns)
    text = [isinstance(c, str) for c in names]
    if not any(text):
        return None
    if not all(text):
        raise TypeError(f"the columns of X are named by text and by other values ({names[:6]}...): name every "
                        f"column by text (X.columns = X.columns.astype(str)) or none")
    twice = sorted({c for c in names if names.count(c) > 1})
    if twice:
        raise ValueError(f"X names the column(s) {twice[:5]} more than once: columns are matched by name, so each "
                         f"name must be given once")
    return np.array(names, dtype=object)




def check_columns(names, expected, what="X"):
    """Refuse columns ``names`` that are not ``expected`` in the same order, saying what differs."""
    names, expected = list(names), list(expected)
    if names == expected:
        return
    missing = [c for c in expected if c not in names]
    extra = [c for c in names if c not in expected]
    if missing or extra:
        parts = ([f"missing {missing}"] if missing else []) + ([f"not seen in training {extra}"] if extra else [])
        raise ValueError(f"{what} has other columns than the model was trained on: {'; '.join(parts)}. The model "
                         f"takes {expected}")
    raise ValueError(f"{what} has the model's columns in another order: trained on {expected}, got {names}; "
                     f"reorder them (X[model.feature_names_in_])")
