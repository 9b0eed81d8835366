"""Loss names and their targets. The numbers are computed by ``fastnn.kernels.losses``."""
from __future__ import annotations

import numpy as np

from .engine import LOSS_KERNELS
from .kernels._checks import all_finite, labels_in_range

LOSSES = tuple(LOSS_KERNELS)


def check_loss(loss):
    """Check a loss name and return it."""
    if not isinstance(loss, str) or loss not in LOSS_KERNELS:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    return loss


def prepare_targets(loss: str, y, n: int, outputs: int, dtype, check: bool = True) -> np.ndarray:
    """Check ``y`` for ``loss`` and convert it once to what the kernel reads.

    softmax_cross_entropy: integer labels (n,) in [0, outputs) -> int64.
    mse: float targets (n, outputs) -> the model's dtype (a 1-D y is taken as one output).
    ``check=False`` leaves the values (labels in range, finite targets) to the kernels, which
    check them as they read them: the per-step fast path, which then copies nothing.
    """
    if type(y) is np.ndarray and y.ndim and y.flags.c_contiguous and y.flags.aligned and y.shape[0] == n:
        if loss == "softmax_cross_entropy":
            if y.dtype == np.int64 and y.ndim == 1 and (not check or labels_in_range(y, outputs)):
                return y  # already what the kernel reads
        elif y.dtype == dtype and (y.shape == (n, outputs) or (outputs == 1 and y.shape == (n,))) and (
                not check or all_finite(y)):
            return y.reshape(n, outputs)
    check_loss(loss)
    y = np.asarray(y)
    if loss == "softmax_cross_entropy":
        if y.dtype.kind not in "iu":
            raise TypeError(f"y must hold integer class labels for {loss}, got dtype {y.dtype}; "
                            f"convert with y.astype(np.int64)")
        if y.ndim != 1 or y.shape[0] != n:
            raise ValueError(f"y must have shape ({n},) (one label per row of X), got {y.shape}")
        if n and (y.min() < 0 or y.max() >= outputs):
            raise ValueError(f"y labels must lie in [0, {outputs}) for a model with {outputs} outputs, "
                             f"got values from {y.min()} to {y.max()}")
        return np.array(y, dtype=np.int64, order="C", copy=True)
    if y.dtype.kind not in "iuf":
        raise TypeError(f"y must be numeric for {loss}, got dtype {y.dtype}")
    if y.ndim == 1 and outputs == 1:
        y = y.reshape(-1, 1)
    if y.shape != (n, outputs):
        raise ValueError(f"y must have shape ({n}, {outputs}) to match X and the model's outputs, got {y.shape}")
    y = np.array(y, dtype=dtype, order="C", copy=True)  # owned and writable, whatever came in
    if not all_finite(y):
        raise ValueError("y contains NaN or inf; remove or impute those targets")
    return y
