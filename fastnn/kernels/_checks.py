"""Argument checks shared by the kernel wrappers. Every error message is written here.

Kernels never check anything (Numba does not bounds-check), so a wrapper must call these
before any kernel runs.
"""
from __future__ import annotations

import math
import threading

import numba
import numpy as np


FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def float_array(name: str, a, ndim: int | None = None, dtype=None) -> np.ndarray:
    """Check that ``a`` is a C-contiguous float32/float64 ndarray (of ``dtype`` if given)."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")
    if a.dtype not in FLOAT_DTYPES or not a.dtype.isnative:
        raise TypeError(f"{name} must have dtype float32 or float64 (native byte order), got {a.dtype}")
    if dtype is not None and a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {np.dtype(dtype)} like the other arrays, got {a.dtype}")
    if ndim is not None and a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous; pass np.ascontiguousarray({name})")
    return a


def shape(name: str, a: np.ndarray, expected: tuple) -> None:
    if a.shape != expected:
        raise ValueError(f"{name} must have shape {expected}, got {a.shape}")


def nonempty(name: str, a: np.ndarray) -> None:
    if a.size == 0:
        raise ValueError(f"{name} is empty (shape {a.shape}); kernels need at least one element")


def writable(name: str, a: np.ndarray) -> None:
    if not a.flags.writeable:
        raise ValueError(f"{name} is an output and must be writable")


def same_array(a: np.ndarray, b: np.ndarray) -> bool:
    """True when ``a`` and ``b`` are the same elements in the same order (one buffer, aliased)."""
    return (a.__array_interface__["data"][0] == b.__array_interface__["data"][0] and a.shape == b.shape
            and a.strides == b.strides)


def no_overlap(name: str, out: np.ndarray, *inputs, allow_same: bool = False) -> None:
    """Refuse an output that shares memory with any ``(name, array)`` in ``inputs``; with
    ``allow_same``, exactly the same array (an in-place call the kernel documents) is fine."""
    for other, a in inputs:
        if a is None or not np.may_share_memory(out, a):  # contiguous arrays: bounds overlap = overlap
            continue
        if allow_same and same_array(out, a):
            continue
        allowed = f" (it may be {other} itself, but not part of it)" if allow_same else ""
        raise ValueError(f"{name} overlaps {other} in memory{allowed}; pass a separate array")


def label_array(name: str, labels, n: int, classes: int) -> np.ndarray:
    """Integer labels (n,) in [0, classes), int64 and contiguous."""
    if not isinstance(labels, np.ndarray) or labels.dtype != np.int64 or not labels.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous int64 ndarray, got "
                        f"{getattr(labels, 'dtype', type(labels).__name__)}")
    if labels.shape != (n,):
        raise ValueError(f"{name} must have shape ({n},) to match the logits, got {labels.shape}")
    if n and (labels.min() < 0 or labels.max() >= classes):
        raise ValueError(f"{name} must lie in [0, {classes}), got values from {labels.min()} to {labels.max()}")
    return labels


def positive_int(name: str, value) -> int:
    """An integer >= 1 (a count or a size): Python or NumPy integers, not bools or floats."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    if value < 1:
        raise ValueError(f"{name} must be an integer >= 1, got {value}")
    return int(value)


def positive(name: str, value, *, allow_zero: bool = False) -> float:
    v = float(value)
    if not np.isfinite(v) or v < 0 or (v == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"{name} must be a finite number {bound}, got {value!r}")
    return v


def setting(name: str, value) -> float:
    """A layer's setting (an eps): a finite number > 0, not a bool or a string."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not 0 < value < np.inf:
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")
    return float(value)


PARALLEL_CHECK_BYTES = 8 << 20  # below this a second thread costs more than it saves (~60 us to start)


def all_finite(a: np.ndarray) -> bool:
    """True when no element of ``a`` is NaN or +-inf, without allocating or compiling anything.

    A NaN or inf makes the sum non-finite, so one vectorised pass clears almost every array;
    only a non-finite sum, which may be an overflow of finite values, is decided by min and
    max (which propagate NaN and show +-inf). The pass is memory-bound: a large C-contiguous
    array is summed in parts on Numba's thread count (60,000 x 784 float32: 10.3 ms on one
    thread, 5.9 ms on two); the threads live only for the call, so none is left running."""
    if a.size == 0:
        return True
    threads = numba.get_num_threads() if a.nbytes >= PARALLEL_CHECK_BYTES else 1  # (a call costs 1.2 us)
    if threads > 1 and a.flags.c_contiguous:
        flat = a.reshape(-1)
        bounds = np.linspace(0, flat.size, threads + 1).astype(np.int64)
        sums = np.full(threads, np.nan)  # a part that failed counts as not finite (min/max decide)

        def part(i):
            with np.errstate(over="ignore", invalid="ignore"):  # errstate is per thread
                sums[i] = flat[bounds[i]:bounds[i + 1]].sum()
        workers = [threading.Thread(target=part, args=(i,)) for i in range(1, threads)]
        for w in workers:
            w.start()
        part(0)
        for w in workers:
            w.join()
        total = sum(float(part) for part in sums)  # Python floats: inf - inf is NaN, with no FP flag
    else:
        with np.errstate(over="ignore", invalid="ignore"):  # an overflow, or inf - inf, is decided below
            total = a.sum()
    if math.isfinite(total):
        return True
    return bool(np.isfinite(a.min()) and np.isfinite(a.max()))


def labels_in_range(labels: np.ndarray, classes: int) -> bool:
    """True when every label lies in [0, classes) (no allocation)."""
    return labels.size == 0 or bool(labels.min() >= 0 and labels.max() < classes)
