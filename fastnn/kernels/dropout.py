"""Dropout, forward and backward, with masks from a counter-based generator.

Shapes: N = batch, O = features; y, dy (N, O) float32/float64, C-contiguous, in place.
Element (i, j) of layer ``layer`` at optimizer step ``step`` is dropped when
``uniform(seed, step, layer, i*O + j) < p_drop``; kept elements are scaled by 1/(1 - p_drop)
(inverted dropout, so inference needs no rescaling). The uniform number is a hash of the
four counters (SplitMix64's finaliser), so masks depend on neither the thread count nor the
order of evaluation, the backward pass regenerates them instead of storing them, and a
resumed run draws exactly the masks an uninterrupted one would.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from ._compose import run, slot
from ._jit import array_type, helper, kernel


def signatures(dtype):
    """(forward, backward) Numba signatures: what a driver calls."""
    from numba import types
    m, i = array_type(dtype, 2), types.int64
    return types.none(m, types.float64, i, i, i), types.none(m, types.float64, i, i, i, m)


slot("dropout_forward", lambda dtype: signatures(dtype)[0])
slot("dropout_backward", lambda dtype: signatures(dtype)[1])

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31, _S11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
_LAYER_SHIFT = np.uint64(40)
_TO_UNIT = 1.0 / 9007199254740992.0  # 2^-53


@helper
def uniform(seed, step, layer, element):
    """A number in [0, 1) from four integer counters (SplitMix64 finaliser over their mix)."""
    x = (np.uint64(seed) * _GOLDEN) ^ (np.uint64(step) * _MIX2) ^ (np.uint64(layer) << _LAYER_SHIFT) \
        ^ np.uint64(element)
    x = (x ^ (x >> _S30)) * _MIX1
    x = (x ^ (x >> _S27)) * _MIX2
    x = x ^ (x >> _S31)
    return (x >> _S11) * _TO_UNIT


@kernel(python_entry=False)
def _dropout_forward(y, p_drop, seed, step, layer):
    # y (N, O) in place: y <- y * keep / (1 - p_drop)
    n, m = y.shape
    scale = 1.0 / (1.0 - p_drop)
    for i in range(n):
        for j in range(m):
            keep = uniform(seed, step, layer, i * m + j) >= p_drop
            y[i, j] = y[i, j] * scale if keep else y[i, j] * 0.0


# Differentiates `y <- y * keep / (1 - p_drop)` above: dy <- dy * keep / (1 - p_drop), in place.
# ``y``, when not empty, is also given back its value before dropout (y * (1 - p_drop) where
# kept), so that activation derivatives taken from the output see the undropped output.
@kernel(python_entry=False)
def _dropout_backward(dy, p_drop, seed, step, layer, y):
    n, m = dy.shape
    scale = 1.0 / (1.0 - p_drop)
    restore = y.size != 0
    for i in range(n):
        for j in range(m):
            keep = uniform(seed, step, layer, i * m + j) >= p_drop
            dy[i, j] = dy[i, j] * scale if keep else dy[i, j] * 0.0
            if restore:
                y[i, j] = y[i, j] * (1.0 - p_drop)


BARE = (_dropout_forward, _dropout_backward)  # the bare kernels the engine's drivers call


def _check(name, a, p_drop, seed, step, layer):
    _checks.float_array(name, a, ndim=2)
    _checks.writable(name, a)
    if isinstance(p_drop, (bool, np.bool_)) or not isinstance(p_drop, (int, float, np.integer, np.floating)) \
            or not 0.0 <= p_drop < 1.0:
        raise ValueError(f"p_drop must be a number in [0, 1), got {p_drop!r}")
    for arg, value in (("seed", seed), ("step", step), ("layer", layer)):
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
            raise ValueError(f"{arg} must be an integer >= 0, got {value!r}")


def dropout_forward(y, p_drop, seed, step, layer):
    """Apply inverted dropout to ``y`` (N, O) in place and return it.

    The mask of element (i, j) is ``uniform(seed, step, layer, i*O + j) >= p_drop``.
    """
    _check("y", y, p_drop, seed, step, layer)
    run(_dropout_forward, signatures(y.dtype)[0], y, float(p_drop), int(seed), int(step), int(layer))
    return y


def dropout_backward(dy, p_drop, seed, step, layer):
    """Apply the same mask and scale to the gradient ``dy`` (N, O) in place and return it."""
    _check("dy", dy, p_drop, seed, step, layer)
    run(_dropout_backward, signatures(dy.dtype)[1], dy, float(p_drop), int(seed), int(step), int(layer), dy[:0])
    return dy


class Dropout:
    """Inverted dropout on the output of the layer before it, during training only.

    Parameters
    ----------
    p_drop : float in [0, 1)
        The probability that an element is dropped (set to 0); kept elements are scaled by
        1 / (1 - p_drop), so ``predict`` uses the network as it is.

    Masks come from a counter-based generator keyed on (model seed, optimizer step, layer,
    element), so they do not depend on the thread count and a resumed run draws the same ones.
    Dropout is no layer of its own in the compiled path: it rides on the layer before it.
    """

    def __init__(self, p_drop):
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float, np.floating)) or not 0 <= p_drop < 1:
            raise ValueError(f"p_drop must be a probability in [0, 1), got {p_drop!r}")
        self.p_drop = float(p_drop)

    def architecture(self):
        return {"p_drop": self.p_drop}

    def summary(self):
        return f"Dropout({self.p_drop})"

    def __repr__(self):
        return f"Dropout(p_drop={self.p_drop})"
