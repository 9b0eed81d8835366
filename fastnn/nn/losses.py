"""Loss names, their targets and row weights. The numbers are computed by ``fastnn.kernels.losses``.

fastnn's own names are the kernels': ``"softmax_cross_entropy"``, ``"binary_cross_entropy"``
``"mse"`` and ``"poisson"`` (half the Poisson deviance on log rates). Keras' names are accepted
too and mean the same loss:
``"sparse_categorical_crossentropy"`` (integer labels) and ``"categorical_crossentropy"``
(one-hot rows) are softmax cross-entropy, ``"binary_crossentropy"`` is binary cross-entropy
on logits, ``"mean_squared_error"`` is mse. A model stores the canonical name.
"""
from __future__ import annotations

import numpy as np

from ..engine.core import LOSS_KERNELS
from ..kernels._checks import all_finite, labels_in_range

LOSSES = tuple(LOSS_KERNELS)
ALIASES = {"sparse_categorical_crossentropy": "softmax_cross_entropy",
           "categorical_crossentropy": "softmax_cross_entropy",
           "binary_crossentropy": "binary_cross_entropy",
           "mean_squared_error": "mse"}
CLASSIFIERS = ("softmax_cross_entropy", "binary_cross_entropy")


def check_loss(loss):
    """The canonical name of a loss name (fastnn's or Keras'); an unknown name lists the known ones."""
    if isinstance(loss, str) and loss in LOSS_KERNELS:
        return loss
    if isinstance(loss, str) and loss in ALIASES:
        return ALIASES[loss]
    raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)} "
                     f"(or Keras' {sorted(ALIASES)})")


def _class_labels(loss, y, n, outputs):
    """Integer labels (n,) from labels of any numeric dtype, or from one-hot rows (n, outputs)."""
    if y.ndim == 2 and y.shape == (n, outputs) and outputs > 1:
        ones = np.count_nonzero(y == 1, axis=1)
        if y.dtype.kind not in "biuf" or not (np.all(ones == 1) and np.count_nonzero(y) == n):
            raise ValueError(f"y of shape ({n}, {outputs}) must be one-hot rows (a single 1 per row, the rest 0) "
                             f"for {loss}; soft labels are not supported: pass the most likely class, "
                             f"y.argmax(axis=1)")
        return np.ascontiguousarray(y.argmax(axis=1), dtype=np.int64)
    if y.dtype.kind not in "biuf":
        raise TypeError(f"y must hold integer class labels for {loss}, got dtype {y.dtype}; labels such as strings "
                        f"must be encoded first (np.unique(y, return_inverse=True)[1])")
    if y.ndim != 1 or y.shape[0] != n:
        one_hot = f" or be one-hot rows ({n}, {outputs})" if outputs > 1 else ""
        raise ValueError(f"y must have shape ({n},) (one label per row of X){one_hot}, got {y.shape}")
    if y.dtype.kind == "f":
        if not all_finite(y):
            raise ValueError("y contains NaN or inf; class labels must be whole numbers")
        if n and not np.all(y == np.round(y)):
            bad = y[y != np.round(y)][0]
            raise ValueError(f"y holds values that are not whole numbers (such as {bad}), so they are not class "
                             f"labels for {loss}; for regression use loss='mse'")
    if n and (y.min() < 0 or y.max() >= outputs):
        raise ValueError(f"y labels must lie in [0, {outputs}) for a model with {outputs} outputs, "
                         f"got values from {y.min()} to {y.max()}")
    return np.array(y, dtype=np.int64, order="C", copy=True)


def prepare_targets(loss: str, y, n: int, outputs: int, dtype, check: bool = True) -> np.ndarray:
    """Check ``y`` for ``loss`` (a canonical name) and convert it once to what the kernel reads.

    softmax_cross_entropy: class labels (n,) in [0, outputs) (integers, or floats that are whole
    numbers) or one-hot rows (n, outputs) -> int64 labels.
    binary_cross_entropy: targets in [0, 1] (0/1 labels, bools or probabilities), (n, outputs),
    or (n,) for one output -> the model's dtype.
    mse: float targets (n, outputs) -> the model's dtype (a 1-D y is taken as one output).
    poisson: counts or rates >= 0, (n, outputs), or (n,) for one output -> the model's dtype.
    ``check=False`` leaves the values (labels in range, finite targets) to the kernels, which
    check them as they read them: the per-step fast path, which then copies nothing.
    """
    if type(y) is np.ndarray and y.ndim and y.flags.c_contiguous and y.flags.aligned and y.shape[0] == n:
        if loss == "softmax_cross_entropy":
            if y.dtype == np.int64 and y.ndim == 1 and (not check or labels_in_range(y, outputs)):
                return y  # already what the kernel reads
        elif y.dtype == dtype and (y.shape == (n, outputs) or (outputs == 1 and y.shape == (n,))) and (
                not check or _in_range(loss, y)):
            return y.reshape(n, outputs)
    loss = check_loss(loss)
    y = np.asarray(y)
    if loss == "softmax_cross_entropy":
        return _class_labels(loss, y, n, outputs)
    if y.dtype.kind not in ("biuf" if loss == "binary_cross_entropy" else "iuf"):
        raise TypeError(f"y must be numeric for {loss}, got dtype {y.dtype}")
    if y.ndim == 1 and outputs == 1:
        y = y.reshape(-1, 1)
    if y.shape != (n, outputs):
        raise ValueError(f"y must have shape ({n}, {outputs}) to match X and the model's outputs, got {y.shape}")
    y = np.array(y, dtype=dtype, order="C", copy=True)  # owned and writable, whatever came in
    if not all_finite(y):
        raise ValueError("y contains NaN or inf; remove or impute those targets")
    if loss == "poisson" and not np.all(y >= 0):
        raise ValueError(f"y must hold counts or rates >= 0 for poisson, got values from {y.min()} to {y.max()}; "
                         f"for targets of any sign use loss='mse'")
    if loss == "binary_cross_entropy" and not np.all((y >= 0) & (y <= 1)):
        raise ValueError(f"y must hold 0/1 labels (or probabilities in [0, 1]) for {loss}, got values from "
                         f"{y.min()} to {y.max()}; for regression use loss='mse', for one label out of several "
                         f"classes loss='softmax_cross_entropy'")
    return y


def _in_range(loss, y):
    """A float target array's values are what ``loss`` takes (finite, and its range)."""
    if loss == "mse":
        return all_finite(y)
    if loss == "poisson":
        return all_finite(y) and bool(np.all(y >= 0))
    return bool(np.all((y >= 0) & (y <= 1)))


def _class_labels_of(loss, y):
    """``(labels, classes)`` for class weights: the integer label of each row, and how many
    classes there are at least (None: as many as the labels show)."""
    if loss == "softmax_cross_entropy":
        return y, None
    if loss == "binary_cross_entropy" and y.shape[1] == 1 and np.all((y == 0) | (y == 1)):
        return y[:, 0].astype(np.int64), 2
    raise ValueError(f"class_weight needs class labels (softmax_cross_entropy, or binary_cross_entropy with "
                     f"one output and 0/1 labels), not {loss}; use sample_weight")


def class_weights(loss: str, y: np.ndarray, class_weight) -> dict:
    """``class_weight`` as a checked dict ``{class index: weight}``: a dict as given, or
    ``"balanced"`` computed from the rows of ``y`` (what ``prepare_targets`` returned): n /
    (classes present * rows of the class), as scikit-learn. Computed once from the training
    rows, it weighs validation rows alike."""
    labels, _ = _class_labels_of(loss, y)
    if isinstance(class_weight, str) and class_weight == "balanced":
        counts = np.bincount(labels)
        present = np.flatnonzero(counts)
        return {int(c): float(len(labels) / (len(present) * counts[c])) for c in present}
    if isinstance(class_weight, dict):
        for k, v in class_weight.items():
            if isinstance(k, (bool, np.bool_)) or not (isinstance(k, (int, np.integer)) and k >= 0):
                raise ValueError(f"class_weight keys must be class indices >= 0, got {k!r}")
            if not (isinstance(v, (int, float, np.integer, np.floating)) and np.isfinite(v) and v >= 0):
                raise ValueError(f"class_weight[{k}] must be a finite number >= 0, got {v!r}")
        return {int(k): float(v) for k, v in class_weight.items()}
    raise TypeError(f"class_weight must be a dict {{class: weight}} or 'balanced', got {class_weight!r}")


def row_weights(loss: str, y: np.ndarray, n: int, dtype, sample_weight=None, class_weight=None) -> np.ndarray:
    """Each row's weight: ``sample_weight[i] * class_weight[label of row i]`` (ones by default).

    ``y`` is what ``prepare_targets`` returned. ``class_weight`` is a dict ``{class: weight}``
    (classes left out weigh 1) or ``"balanced"`` (from these rows: see ``class_weights``); it
    needs class labels: softmax cross-entropy, or binary cross-entropy with one output.
    """
    w = np.ones(n, dtype)
    if sample_weight is not None:
        sw = np.asarray(sample_weight)
        if sw.dtype.kind not in "iuf" or sw.shape != (n,):
            raise ValueError(f"sample_weight must be {n} numbers (one per row of X), got "
                             f"{sw.dtype} of shape {sw.shape}")
        if not (all_finite(sw) and np.all(sw >= 0)):
            raise ValueError("sample_weight must be finite and >= 0")
        w *= sw
    if class_weight is not None:
        labels, classes = _class_labels_of(loss, y)
        given = class_weights(loss, y, class_weight)
        table = np.ones(max(classes or int(labels.max(initial=-1)) + 1, 1 + max(given, default=-1)))
        for k, v in given.items():
            table[k] = v
        w *= table[labels].astype(dtype)
    if not all_finite(w):
        raise ValueError(f"row weights overflow {np.dtype(dtype).name}: scale sample_weight and class_weight down "
                         f"(only their ratios matter)")
    return w
