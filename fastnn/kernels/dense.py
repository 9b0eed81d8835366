"""Dense layer, forward and backward: out = act(x @ W + b).

Shapes: N = batch, I = in_features, O = out_features.
    x   (N, I)    input                     W  (I, O)  weights (x @ W reads W row by row)
    b   (O,)      bias                      out (N, O) act(z)
    z   (N, O)    pre-activation x @ W + b; the same array as ``out`` unless the activation
                  needs z for its derivative (gelu)
All float32 or all float64, C-contiguous. The matrix products run through BLAS (``_blas``);
bias and activation are fused into one pass over the product. One forward and one backward
kernel per activation code (``specialize``), compiled when a model first uses them.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from ._blas import matmul
from ._jit import array_type, kernel, run, specialize
from .activations import NEEDS_PREACTIVATION, activate, code_of, derivative


def signatures(dtype):
    """(forward, backward) Numba signatures, shared by every activation: what a driver calls."""
    from numba import types
    m, v = array_type(dtype, 2), array_type(dtype, 1)
    return types.none(m, m, v, m, m), types.none(m, m, m, m, m, m, v, m, m)


@specialize
def forward_kernel(act: int, keep_z: bool):
    """``dense_forward`` for one activation code. With ``keep_z`` it writes the pre-activation
    to z as well (gelu needs it for the backward); without, z is out and is not read."""
    if keep_z:
        @kernel(python_entry=False)
        def dense_forward(x, W, b, out, z):
            matmul(x, W, z, False, False, False)
            n, m = z.shape
            for i in range(n):
                for j in range(m):
                    v = z[i, j] + b[j]
                    z[i, j] = v
                    out[i, j] = activate(v, act)
        return dense_forward

    @kernel(python_entry=False)
    def dense_forward(x, W, b, out, z):
        matmul(x, W, out, False, False, False)
        n, m = out.shape
        # One store: two stores to one address per element made LLVM's alias check fail and
        # run the scalar loop (64x64 tanh 10.6 us -> 2.0 us, sigmoid 50.5 us -> 5.5 us).
        for i in range(n):
            for j in range(m):
                out[i, j] = activate(out[i, j] + b[j], act)
    return dense_forward


# Differentiates `out = act(x @ W + b)`:
#   dz = dout * act'(out, z);  dW = x.T @ dz;  db = dz.sum(0);  dx = dz @ W.T
# dz may be dout (then dout is overwritten). dx with zero rows skips dx (the first layer).
@specialize
def backward_kernel(act: int):
    """``dense_backward`` for one activation code; overwrites dW, db, dx and dz."""
    @kernel(python_entry=False)
    def dense_backward(dout, x, W, out, z, dW, db, dx, dz):
        n, m = dout.shape
        for j in range(m):
            db[j] = 0.0
        for i in range(n):
            for j in range(m):
                d = dout[i, j] * derivative(out[i, j], z[i, j], act)
                dz[i, j] = d
                db[j] += d
        matmul(x, dz, dW, True, False, False)
        if dx.shape[0] != 0:
            matmul(dz, W, dx, False, True, False)
    return dense_backward


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
        Output; allocated when omitted. It may not overlap x, W or b.
    z : ndarray (N, O), optional
        Receives the pre-activation ``x @ W + b``. Needed by ``dense_backward`` for gelu;
        when omitted, ``out`` doubles as the buffer (gelu: allocated and discarded). It may
        be ``out`` itself, but may not overlap it partly, nor x, W or b.

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
    inputs = (("x", x), ("W", W), ("b", b))
    _checks.no_overlap("out", out, *inputs)
    _checks.no_overlap("z", z, *inputs)
    _checks.no_overlap("z", z, ("out", out), allow_same=True)
    run(forward_kernel(code, not _checks.same_array(z, out)), signatures(x.dtype)[0], x, W, b, out, z)
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
        Outputs, allocated when omitted, each separate from every other array. ``dz`` is
        scratch for ``dout * act'``; it may be ``dout`` itself, which is then overwritten.
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
    dx = _output("dx", dx, x.shape, x.dtype) if need_dx else np.empty((0, x.shape[1]), x.dtype)
    reads = (("x", x), ("W", W), ("out", out), ("z", z))
    for name, a in (("dW", dW), ("db", db), ("dx", dx), ("dz", dz)):
        _checks.no_overlap(name, a, *reads, *((k, v) for k, v in (("dW", dW), ("db", db), ("dx", dx), ("dz", dz))
                                                if v is not a))
        if name != "dz":
            _checks.no_overlap(name, a, ("dout", dout))
    _checks.no_overlap("dz", dz, ("dout", dout), allow_same=True)
    run(backward_kernel(code), signatures(x.dtype)[1], dout, x, W, out, z, dW, db, dx, dz)
    return dW, db, (dx if need_dx else None)
