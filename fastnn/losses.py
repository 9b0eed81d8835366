"""Loss names and their targets. The numbers are computed by ``fastnn.kernels.losses``."""
from __future__ import annotations

import numpy as np

from .kernels import losses as _kernels
from .kernels._checks import all_finite, labels_in_range

LOSSES = {
    "softmax_cross_entropy": _kernels._softmax_cross_entropy,
    "mse": _kernels._mse,
}


def check_loss(loss):
    """Return the fused loss kernel for a loss name."""
    if not isinstance(loss, str) or loss not in LOSSES:
        raise ValueError(f"unknown loss {loss!r}; expected one of {sorted(LOSSES)}")
    return LOSSES[loss]


def prepare_targets(loss: str, y, n: int, outputs: int, dtype) -> np.ndarray:
    """Check ``y`` for ``loss`` and convert it once to what the kernel reads.

    softmax_cross_entropy: integer labels (n,) in [0, outputs) -> int64.
    mse: float targets (n, outputs) -> the model's dtype (a 1-D y is taken as one output).
    """
    check_loss(loss)
    if (loss == "softmax_cross_entropy" and type(y) is np.ndarray and y.dtype == np.int64 and y.ndim == 1
            and y.shape[0] == n and y.flags.c_contiguous and y.flags.writeable and labels_in_range(y, outputs)):
        return y  # the per-step fast path: already what the kernel reads
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
