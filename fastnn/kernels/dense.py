"""Dense layer, forward and backward: out = act(x @ W + b).

Shapes: N = batch, I = in_features, O = out_features.
    x   (N, I)    input                     W  (I, O)  weights (x @ W reads W row by row)
    b   (O,)      bias                      out (N, O) act(z)
    z   (N, O)    pre-activation x @ W + b; the same array as ``out`` unless the activation
                  needs z for its derivative (gelu)
All float32 or all float64, C-contiguous. The matrix products run through BLAS (SciPy's,
called from Numba); bias and activation are fused into one pass over the product.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from ._jit import kernel, loop_helper
from .activations import (GELU, IDENTITY, LEAKY_RELU, NEEDS_PREACTIVATION, RELU, SIGMOID, TANH, activate,
                          code_of, derivative)


@loop_helper
def _bias_activation_loop(b, code, out, z):
    # z holds x @ W; add the bias, keep it in z, write act(z) to out.
    n, m = z.shape
    if z.ctypes.data == out.ctypes.data:
        # One store: two stores to one address per element made LLVM's alias check fail and
        # run the scalar loop (64x64 tanh 10.6 us -> 2.0 us, sigmoid 50.5 us -> 5.5 us).
        for i in range(n):
            for j in range(m):
                out[i, j] = activate(out[i, j] + b[j], code)
    else:
        for i in range(n):
            for j in range(m):
                v = z[i, j] + b[j]
                z[i, j] = v
                out[i, j] = activate(v, code)


@kernel
def _dense_forward(x, W, b, act, out, z):
    np.dot(x, W, z)
    # one loop per activation code, so each vectorises (see activations.py)
    if act == RELU:
        _bias_activation_loop(b, RELU, out, z)
    elif act == LEAKY_RELU:
        _bias_activation_loop(b, LEAKY_RELU, out, z)
    elif act == SIGMOID:
        _bias_activation_loop(b, SIGMOID, out, z)
    elif act == TANH:
        _bias_activation_loop(b, TANH, out, z)
    elif act == GELU:
        _bias_activation_loop(b, GELU, out, z)
    else:
        _bias_activation_loop(b, IDENTITY, out, z)


# Differentiates `out = act(x @ W + b)`:
#   dz = dout * act'(out, z);  dW = x.T @ dz;  db = dz.sum(0);  dx = dz @ W.T
# dz may be dout (then dout is overwritten). dx with zero rows skips dx (the first layer).
@loop_helper
def _activation_grad_loop(dout, out, z, code, dz, db):
    n, m = dout.shape
    for j in range(m):
        db[j] = 0.0
    for i in range(n):
        for j in range(m):
            d = dout[i, j] * derivative(out[i, j], z[i, j], code)
            dz[i, j] = d
            db[j] += d


@kernel
def _dense_backward(dout, x, W, out, z, act, dW, db, dx, dz):
    if act == RELU:
        _activation_grad_loop(dout, out, z, RELU, dz, db)
    elif act == LEAKY_RELU:
        _activation_grad_loop(dout, out, z, LEAKY_RELU, dz, db)
    elif act == SIGMOID:
        _activation_grad_loop(dout, out, z, SIGMOID, dz, db)
    elif act == TANH:
        _activation_grad_loop(dout, out, z, TANH, dz, db)
    elif act == GELU:
        _activation_grad_loop(dout, out, z, GELU, dz, db)
    else:
        _activation_grad_loop(dout, out, z, IDENTITY, dz, db)
    np.dot(x.T, dz, dW)
    if dx.shape[0] != 0:
        np.dot(dz, W.T, dx)


def _check_layer(x, W, b=None):
    _checks.float_array("x", x, ndim=2)
    _checks.nonempty("x", x)
    _checks.float_array("W", W, ndim=2, dtype=x.dtype)
    _checks.nonempty("W", W)
    if W.shape[0] != x.shape[1]:
        raise ValueError(f"W must have shape (I, O) with I = x.shape[1] = {x.shape[1]}, got {W.shape}")
    if b is not None:
        _checks.float_array("b", b, ndim=1, dtype=x.dtype)
        _checks.shape("b", b, (W.shape[1],))
    return x.shape[0], W.shape[1]


def _output(name, a, shape, dtype):
    if a is None:
        return np.empty(shape, dtype)
    _checks.float_array(name, a, ndim=len(shape), dtype=dtype)
    _checks.shape(name, a, shape)
    _checks.writable(name, a)
    return a


def dense_forward(x, W, b, act, out=None, z=None):
    """Write ``act(x @ W + b)`` into ``out`` and return it.

    Parameters
    ----------
    x : ndarray (N, I); W : ndarray (I, O); b : ndarray (O,)
        float32 or float64 (all the same), C-contiguous.
    act : str or None
        Activation name; None is identity.
    out : ndarray (N, O), optional
        Output; allocated when omitted.
    z : ndarray (N, O), optional
        Receives the pre-activation ``x @ W + b``. Needed by ``dense_backward`` for gelu;
        when omitted, ``out`` doubles as the buffer (gelu: allocated and discarded).

    Returns
    -------
    out : ndarray (N, O)
    """
    code = code_of(act)
    n, o = _check_layer(x, W, b)
    out = _output("out", out, (n, o), x.dtype)
    if z is None:
        z = np.empty_like(out) if code in NEEDS_PREACTIVATION else out
    else:
        z = _output("z", z, (n, o), x.dtype)
    _dense_forward(x, W, b, code, out, z)
    return out


def dense_backward(dout, x, W, out, z, act, dW=None, db=None, dx=None, dz=None, *, need_dx=True):
    """Gradients of a dense layer from ``dout = dL/d(out)``; outputs are overwritten.

    Parameters
    ----------
    dout : ndarray (N, O)
        Gradient of the loss with respect to the layer's output.
    x, W : the forward inputs, (N, I) and (I, O).
    out : ndarray (N, O)
        The forward output ``act(x @ W + b)``.
    z : ndarray (N, O)
        The pre-activation ``x @ W + b``; read only for gelu (pass ``out`` otherwise).
    act : str or None
    dW (I, O), db (O,), dx (N, I), dz (N, O) : ndarray, optional
        Outputs, allocated when omitted. ``dz`` is scratch for ``dout * act'``; it may be
        ``dout`` itself, which is then overwritten.
    need_dx : bool
        False skips ``dx`` (the first layer has no input gradient to pass on).

    Returns
    -------
    dW, db, dx : dx is None when ``need_dx`` is False.
    """
    code = code_of(act)
    n, o = _check_layer(x, W)
    for name, a in (("dout", dout), ("out", out), ("z", z)):
        _checks.float_array(name, a, ndim=2, dtype=x.dtype)
        _checks.shape(name, a, (n, o))
    dW = _output("dW", dW, W.shape, x.dtype)
    db = _output("db", db, (o,), x.dtype)
    dz = _output("dz", dz, (n, o), x.dtype)
    if need_dx:
        dx = _output("dx", dx, x.shape, x.dtype)
        _dense_backward(dout, x, W, out, z, code, dW, db, dx, dz)
        return dW, db, dx
    _dense_backward(dout, x, W, out, z, code, dW, db, np.empty((0, x.shape[1]), x.dtype), dz)
    return dW, db, None
