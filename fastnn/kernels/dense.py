"""Dense layer, forward and backward: out = act(x @ W + b), in two forms.

Shapes: N = batch, I = in_features, O = out_features.
    x   (N, I)    input                     W  (I, O)  weights (x @ W reads W row by row)
    b   (O,)      bias                      out (N, O) act(z)
    z   (N, O)    pre-activation x @ W + b; the same array as ``out`` unless the activation
                  needs z for its derivative (gelu)
    dout (N, O)   d(loss)/d(out), overwritten with dz = dout * act'(z) by the backward
All float32 or all float64, C-contiguous.

- BLAS form (``forward_kernel``, ``backward_kernel``): the products through BLAS (``_blas``);
  bias and activation fused into one pass over the product, the activation's derivative and
  the bias gradient into one pass before the backward products.
- Fused form (``small_forward_kernel``, ``small_backward_kernel``): for small layers, every
  product is a loop of its own in the kernel, fused with bias and activation, and no BLAS call
  (one costs 0.25-0.5 us and packs its operands: more than a whole small layer).
``is_small`` picks the form per layer. Each kernel is built per activation code
(``specialize``) and compiled when a model first uses it.
"""
from __future__ import annotations

import numpy as np

from . import _checks
from ._blas import matmul
from numba import types

from ._compose import run
from ._jit import REDUCTION, array_type, kernel, specialize, typed_helper
from .activations import NEEDS_PREACTIVATION, activate, code_of, derivative

# A layer is "small" when I * O <= SMALL_LAYER: then the fused loops beat a BLAS call. Measured
# on 2 cores (Intel Xeon, AVX-512, float32, 2026-11-25); see benchmarks/bench_kernels.py.
SMALL_LAYER = 4096
# Below this many outputs a row is too short for vectors: the fused loops take dot products
# along I instead.
ROW = 16


def is_small(fan_in: int, fan_out: int) -> bool:
    """True when the fused form is the faster one for a layer of this shape."""
    return fan_in * fan_out <= SMALL_LAYER


def signatures(dtype):
    """(forward, backward) Numba signatures, shared by every activation and both forms."""
    from numba import types
    m, v = array_type(dtype, 2), array_type(dtype, 1)
    return types.none(m, m, v, m, m), types.none(m, m, m, m, m, m, v, m)


# -- BLAS form ----------------------------------------------------------------------------

@specialize
def forward_kernel(act: int, keep_z: bool):
    """``dense_forward`` through BLAS for one activation code. With ``keep_z`` it writes the
    pre-activation to z as well (gelu needs it for the backward); without, z is out."""
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
        # One store, to the array it reads: two stores to one address, or a load and a store
        # through two names of one array, fail LLVM's alias check and leave the loop scalar
        # (64x64 tanh 10.6 us -> 2.0 us, sigmoid 50.5 us -> 5.5 us).
        for i in range(n):
            for j in range(m):
                out[i, j] = activate(out[i, j] + b[j], act)
    return dense_forward


# Differentiates `out = act(x @ W + b)`:
#   dz = dout * act'(out, z);  dW = x.T @ dz;  db = dz.sum(0);  dx = dz @ W.T
# dout is overwritten with dz. dx with zero rows skips dx (the first layer has none to pass on).
@specialize
def backward_kernel(act: int):
    """``dense_backward`` through BLAS for one activation code; overwrites dout, dW, db, dx."""
    @kernel(python_entry=False)
    def dense_backward(dout, x, W, out, z, dW, db, dx):
        n, m = dout.shape
        for j in range(m):
            db[j] = 0.0
        for i in range(n):
            for j in range(m):
                d = dout[i, j] * derivative(out[i, j], z[i, j], act)
                dout[i, j] = d  # in place, through one name (see dense_forward)
                db[j] += d
        matmul(x, dout, dW, True, False, False)
        if dx.shape[0] != 0:
            matmul(dout, W, dx, False, True, False)
    return dense_backward


# -- fused form, for small layers --------------------------------------------------------

def product(a, flat, start, step, length):
    """sum of a[k] * flat[start + k * step] for k < length: a dot product whose additions
    LLVM may reorder, so that it vectorises (as in any BLAS; nowhere else in the kernels)."""
    return sum(a[k] * flat[start + k * step] for k in range(length))


@typed_helper(product, fastmath=REDUCTION)
def _product_impl(a, flat, start, step, length):
    zero = np.float32(0.0) if a.dtype == types.float32 else np.float64(0.0)

    def impl(a, flat, start, step, length):
        s = zero
        for k in range(length):
            s += a[k] * flat[start + k * step]
        return s
    return impl


@specialize
def small_forward_kernel(act: int, keep_z: bool):
    """``dense_forward`` with the product fused into the kernel: for small layers."""
    @kernel(python_entry=False)
    def dense_forward_small(x, W, b, out, z):
        n, o = out.shape
        ni = x.shape[1]
        Wf = W.reshape(ni * o)
        for r in range(n):
            zr = z[r]
            if o >= ROW:  # the row of outputs as vectors: z[r] = b + sum_k x[r, k] W[k]
                for j in range(o):
                    zr[j] = b[j]
                for k in range(ni):
                    xk = x[r, k]
                    for j in range(o):
                        zr[j] += xk * W[k, j]
            else:  # few outputs: one dot product along I each
                for j in range(o):
                    zr[j] = b[j] + product(x[r], Wf, j, o, ni)
            orow = out[r]
            if keep_z:
                for j in range(o):
                    orow[j] = activate(zr[j], act)
            else:  # z is out: in place, through one name
                for j in range(o):
                    zr[j] = activate(zr[j], act)
    return dense_forward_small


@specialize
def small_backward_kernel(act: int):
    """``dense_backward`` with the products fused into the kernel: for small layers."""
    @kernel(python_entry=False)
    def dense_backward_small(dout, x, W, out, z, dW, db, dx):
        n, o = dout.shape
        ni = x.shape[1]
        for j in range(o):
            db[j] = 0.0
        for r in range(n):
            for j in range(o):
                d = dout[r, j] * derivative(out[r, j], z[r, j], act)
                dout[r, j] = d
                db[j] += d
        # dW = x.T @ dz
        for k in range(ni):
            for j in range(o):
                dW[k, j] = 0.0
        for r in range(n):
            dr = dout[r]
            for k in range(ni):
                xk = x[r, k]
                for j in range(o):
                    dW[k, j] += xk * dr[j]
        # dx = dz @ W.T: dx[r, k] = sum_j dz[r, j] W[k, j]
        if dx.shape[0] != 0:
            Wf = W.reshape(ni * o)
            for r in range(n):
                dr, xr = dout[r], dx[r]
                if o >= ROW:
                    for k in range(ni):
                        xr[k] = product(dr, Wf, k * o, 1, o)
                else:
                    for k in range(ni):
                        xr[k] = 0.0
                    for j in range(o):
                        d = dr[j]
                        for k in range(ni):
                            xr[k] += d * W[k, j]
    return dense_backward_small


# -- choosing, checking and calling ------------------------------------------------------

def kernels(act: int, fan_in: int, fan_out: int, keep_z: bool, small=None):
    """(forward, backward) kernels for a layer: the fused form when ``small`` (default: by
    ``is_small``), else the BLAS form."""
    if small is None:
        small = is_small(fan_in, fan_out)
    if small:
        return small_forward_kernel(act, keep_z), small_backward_kernel(act)
    return forward_kernel(act, keep_z), backward_kernel(act)


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


def dense_forward(x, W, b, act, out=None, z=None, *, small=None):
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
    small : bool, optional
        True: the fused form; False: the BLAS form; default: as a model would choose.

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
    forward, _ = kernels(code, W.shape[0], o, not _checks.same_array(z, out), small)
    run(forward, signatures(x.dtype)[0], x, W, b, out, z)
    return out


def dense_backward(dout, x, W, out, z, act, dW=None, db=None, dx=None, dz=None, *, need_dx=True, small=None):
    """Gradients of a dense layer from ``dout = dL/d(out)``; outputs are overwritten.

    Parameters
    ----------
    dout : ndarray (N, O)
        Gradient of the loss with respect to the layer's output; left as it is unless it is
        also ``dz``.
    x, W : the forward inputs, (N, I) and (I, O).
    out : ndarray (N, O)
        The forward output ``act(x @ W + b)``.
    z : ndarray (N, O)
        The pre-activation ``x @ W + b``; read only for gelu (pass ``out`` otherwise).
    act : str or None
    dW (I, O), db (O,), dx (N, I), dz (N, O) : ndarray, optional
        Outputs, allocated when omitted, each separate from every other array. ``dz``
        receives ``dout * act'``; it may be ``dout`` itself, which is then overwritten (what
        training does).
    need_dx : bool
        False skips ``dx`` (the first layer has no input gradient to pass on).
    small : bool, optional
        True: the fused form; False: the BLAS form; default: as a model would choose.

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
    outputs = (("dW", dW), ("db", db), ("dx", dx), ("dz", dz))
    for k, (name, a) in enumerate(outputs):
        _checks.no_overlap(name, a, ("x", x), ("W", W), ("out", out), ("z", z), *outputs[k + 1:])
        if name != "dz":
            _checks.no_overlap(name, a, ("dout", dout))
    _checks.no_overlap("dz", dz, ("dout", dout), allow_same=True)
    if not _checks.same_array(dz, dout):
        dz[...] = dout  # the kernel works in place
    _, backward = kernels(code, W.shape[0], o, False, small)
    run(backward, signatures(x.dtype)[1], dz, x, W, out, z, dW, db, dx)
    return dW, db, (dx if need_dx else None)
