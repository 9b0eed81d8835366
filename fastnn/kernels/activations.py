"""Element-wise activations, forward and backward.

Shapes: N = batch, O = features. z (pre-activation) and y = act(z) are (N, O), float32 or
float64, C-contiguous. An activation is chosen by a small integer code (jitted functions
passed as arguments would defeat caching, pynndescent#226).

Derivatives come from the forward output y where the maths allows, so the fused dense
kernel needs no extra buffer:
    relu'       = [y > 0]            leaky_relu' = 1 if y > 0 else 0.01
    sigmoid'    = y (1 - y)          tanh'       = 1 - y^2
    identity'   = 1
gelu is the exception: its derivative needs the pre-activation z, so layers with gelu keep
a separate z buffer (``NEEDS_PREACTIVATION``).
"""
from __future__ import annotations

import math

import numpy as np

from . import _checks
from ._jit import helper, kernel

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU = range(6)
CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU,
         "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU}
NAMES = {code: name for name, code in CODES.items()}
NEEDS_PREACTIVATION = frozenset({GELU})
LEAKY_SLOPE = 0.01
GELU_C = math.sqrt(2.0 / math.pi)  # tanh form, as PyTorch's gelu(approximate="tanh")
GELU_A = 0.044715


def code_of(activation) -> int:
    """Map an activation name (or None for identity) to its kernel code."""
    if activation is None:
        return IDENTITY
    if isinstance(activation, str) and activation in CODES:
        return CODES[activation]
    raise ValueError(f"unknown activation {activation!r}; expected None or one of {sorted(CODES)}")


@helper
def activate(z, act):
    """act(z) for one element. Written so NaN propagates as in the reference."""
    if act == RELU:
        return 0.0 if z < 0.0 else z
    if act == LEAKY_RELU:
        return z * LEAKY_SLOPE if z < 0.0 else z
    if act == SIGMOID:
        e = math.exp(-abs(z))  # never overflows
        return 1.0 / (1.0 + e) if z >= 0.0 else e / (1.0 + e)
    if act == TANH:
        return math.tanh(z)
    if act == GELU:
        return 0.5 * z * (1.0 + math.tanh(GELU_C * (z + GELU_A * z * z * z)))
    return z


# Differentiates `activate`: the derivative of y = act(z), from y (and z for gelu).
@helper
def derivative(y, z, act):
    if act == RELU:
        return 1.0 if y > 0.0 else 0.0
    if act == LEAKY_RELU:
        return 1.0 if y > 0.0 else LEAKY_SLOPE
    if act == SIGMOID:
        return y * (1.0 - y)
    if act == TANH:
        return 1.0 - y * y
    if act == GELU:
        t = math.tanh(GELU_C * (z + GELU_A * z * z * z))
        return 0.5 * (1.0 + t) + 0.5 * z * (1.0 - t * t) * GELU_C * (1.0 + 3.0 * GELU_A * z * z)
    return 1.0


@kernel
def _activation_forward(z, act, y):
    # z, y: (N, O); y may be z (in place).
    n, m = z.shape
    for i in range(n):
        for j in range(m):
            y[i, j] = activate(z[i, j], act)


# Differentiates y = act(z) above: dz = dy * act'(y, z). dz may be dy (then dy is overwritten).
@kernel
def _activation_backward(dy, y, z, act, dz):
    n, m = dy.shape
    for i in range(n):
        for j in range(m):
            dz[i, j] = dy[i, j] * derivative(y[i, j], z[i, j], act)


def activation_forward(z, act, y=None):
    """Write ``act(z)`` into ``y`` (N, O) and return it.

    Parameters
    ----------
    z : ndarray (N, O), float32 or float64, C-contiguous
    act : str or None
        One of ``None``/"identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu".
    y : ndarray (N, O) of z's dtype, optional
        Output; allocated when omitted. May be ``z`` itself.
    """
    code = code_of(act)
    _checks.float_array("z", z, ndim=2)
    if y is None:
        y = np.empty_like(z)
    _checks.float_array("y", y, ndim=2, dtype=z.dtype)
    _checks.shape("y", y, z.shape)
    _checks.writable("y", y)
    _activation_forward(z, code, y)
    return y


def activation_backward(dy, y, z, act, dz=None):
    """Write ``dL/dz = dy * act'(z)`` into ``dz`` (overwritten) and return it.

    ``y`` is the forward output; ``z`` the pre-activation, read only for gelu (pass ``y``
    again for the other activations). ``dz`` may be ``dy``, which is then overwritten.
    """
    code = code_of(act)
    _checks.float_array("dy", dy, ndim=2)
    for name, a in (("y", y), ("z", z)):
        _checks.float_array(name, a, ndim=2, dtype=dy.dtype)
        _checks.shape(name, a, dy.shape)
    if dz is None:
        dz = np.empty_like(dy)
    _checks.float_array("dz", dz, ndim=2, dtype=dy.dtype)
    _checks.shape("dz", dz, dy.shape)
    _checks.writable("dz", dz)
    _activation_backward(dy, y, z, code, dz)
    return dz
