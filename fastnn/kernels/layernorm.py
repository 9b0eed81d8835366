"""Layer normalisation, the whole layer kind: kernels, NumPy twin, ONNX form, saved form.

PyTorch's ``nn.LayerNorm(features, eps)``: each row is normalised over its features with the
biased variance, then scaled and shifted by learnable ``weight`` (starts at 1) and ``bias``
(starts at 0).

Shapes: N = rows, O = features (in = out).
    x (N, O) input             W (1, O) weight, as the kernels see it   b (O,) bias
    out (N, O)                 z (N, 1) per row: the reciprocal deviation 1/sqrt(var + eps)
    dout (N, O) d(loss)/d(out), left as it is; dW (1, O), db (O,), dx (N, O) overwritten
Statistics are summed in float64 (both dtypes), so float32 rows of large mean keep their
variance; the backward sums the mean again rather than keep it, as a float32 z would round it
(rows of mean 1e4 and spread 0.05: gradients off by 1e-2 relative).
"""
from __future__ import annotations

import math

import numpy as np

from . import _checks, kind
from ._compose import run
from ._jit import kernel, specialize


@specialize
def forward_kernel(eps: float):
    """``layernorm_forward`` for one eps (compiled in as a constant)."""
    @kernel(python_entry=False)
    def layernorm_forward(x, W, b, out, z):
        n, o = x.shape
        for r in range(n):
            total = 0.0
            for j in range(o):
                total += x[r, j]
            mean = total / o
            spread = 0.0
            for j in range(o):
                d = x[r, j] - mean
                spread += d * d
            rstd = 1.0 / math.sqrt(spread / o + eps)
            z[r, 0] = rstd
            for j in range(o):
                out[r, j] = (x[r, j] - mean) * rstd * W[0, j] + b[j]
    return layernorm_forward


# Differentiates `out = xhat * W + b`, xhat = (x - mean) * rstd:
#   dW = sum_r dout * xhat;  db = sum_r dout;
#   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)),  g = dout * W
@kernel(python_entry=False)
def _layernorm_backward(dout, x, W, out, z, dW, db, dx):
    n, o = x.shape
    for j in range(o):
        dW[0, j] = 0.0
        db[j] = 0.0
    for r in range(n):
        total = 0.0
        for j in range(o):
            total += x[r, j]
        mean, rstd = total / o, z[r, 0]
        g_sum = 0.0
        gx_sum = 0.0
        for j in range(o):
            xhat = (x[r, j] - mean) * rstd
            g = dout[r, j] * W[0, j]
            g_sum += g
            gx_sum += g * xhat
            dW[0, j] += dout[r, j] * xhat
            db[j] += dout[r, j]
        if dx.shape[0] != 0:
            g_mean, gx_mean = g_sum / o, gx_sum / o
            for j in range(o):
                xhat = (x[r, j] - mean) * rstd
                dx[r, j] = rstd * (dout[r, j] * W[0, j] - g_mean - xhat * gx_mean)


# -- the NumPy twin ----------------------------------------------------------------------

def reference_forward(x, weight, bias, eps):
    """``(out, z)``: the normalised rows, scaled and shifted, and per row 1/deviation (N, 1)."""
    wide = x.astype(np.float64)
    mean = wide.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((wide - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    out = ((wide - mean) * rstd * weight.reshape(-1) + bias).astype(x.dtype)
    return out, rstd.astype(x.dtype)


def reference_backward(dout, x, weight, eps, need_dx=True):
    """``(dweight, dbias, dx)`` from ``dout = dL/d(out)``; dx is None without ``need_dx``."""
    wide = x.astype(np.float64)
    mean = wide.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((wide - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    xhat = (wide - mean) * rstd
    g = dout * weight.reshape(-1)
    dx = rstd * (g - g.mean(axis=1, keepdims=True) - xhat * (g * xhat).mean(axis=1, keepdims=True))
    cast = lambda a: a.astype(x.dtype)  # noqa: E731
    return cast((dout * xhat).sum(axis=0)), cast(dout.sum(axis=0)), (cast(dx) if need_dx else None)


# -- public wrappers ---------------------------------------------------------------------

def _check(x, weight, bias=None, eps=1e-5):
    _checks.float_array("x", x, ndim=2)
    _checks.nonempty("x", x)
    _checks.float_array("weight", weight, ndim=1, dtype=x.dtype)
    _checks.shape("weight", weight, (x.shape[1],))
    if bias is not None:
        _checks.float_array("bias", bias, ndim=1, dtype=x.dtype)
        _checks.shape("bias", bias, (x.shape[1],))
    return _check_eps(eps)


def _check_eps(eps):
    if isinstance(eps, (bool, np.bool_)) or not isinstance(eps, (int, float, np.integer, np.floating)) \
            or not 0 < eps < math.inf:
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    return float(eps)


def _output(name, a, shape, dtype, *inputs):
    if a is None:
        return np.empty(shape, dtype)
    _checks.float_array(name, a, ndim=len(shape), dtype=dtype)
    _checks.shape(name, a, shape)
    _checks.writable(name, a)
    _checks.no_overlap(name, a, *inputs)
    return a


def layernorm_forward(x, weight, bias, eps=1e-5, out=None):
    """Write LayerNorm's output for rows ``x`` (N, O) into ``out`` (allocated when omitted; it
    may not overlap an input) and return it; weight and bias (O,), all one float dtype."""
    eps = _check(x, weight, bias, eps)
    out = _output("out", out, x.shape, x.dtype, ("x", x), ("weight", weight), ("bias", bias))
    z = np.empty((x.shape[0], 1), x.dtype)
    run(forward_kernel(eps), kind.signatures(x.dtype)[0], x, weight.reshape(1, -1), bias, out, z)
    return out


def layernorm_backward(dout, x, weight, eps=1e-5, dweight=None, dbias=None, dx=None, *, need_dx=True):
    """``(dweight, dbias, dx)`` of LayerNorm from ``dout = dL/d(out)`` (N, O); outputs are
    overwritten (allocated when omitted, each separate from every other array); dx is None
    without ``need_dx``."""
    eps = _check(x, weight, None, eps)
    _checks.float_array("dout", dout, ndim=2, dtype=x.dtype)
    _checks.shape("dout", dout, x.shape)
    inputs = (("dout", dout), ("x", x), ("weight", weight))
    dweight = _output("dweight", dweight, weight.shape, x.dtype, *inputs)
    dbias = _output("dbias", dbias, weight.shape, x.dtype, *inputs, ("dweight", dweight))
    dx = (_output("dx", dx, x.shape, x.dtype, *inputs, ("dweight", dweight), ("dbias", dbias)) if need_dx
          else np.empty((0, x.shape[1]), x.dtype))
    out, z = np.empty_like(x), np.empty((x.shape[0], 1), x.dtype)
    forward_sig, backward_sig = kind.signatures(x.dtype)
    run(forward_kernel(eps), forward_sig, x, weight.reshape(1, -1), np.zeros_like(weight), out, z)
    run(_layernorm_backward, backward_sig, dout, x, weight.reshape(1, -1), out, z,
        dweight.reshape(1, -1), dbias, dx)
    return dweight, dbias, (dx if need_dx else None)


class LayerNorm(kind.LayerKind):
    """Layer normalisation (PyTorch's ``nn.LayerNorm(features, eps)``): each row becomes
    ``(x - mean) / sqrt(var + eps) * weight + bias``, with the row's mean and biased variance.

    Parameters
    ----------
    features : int
        The width of each row (in and out).
    eps : float > 0
        Added to the variance.

    ``weight`` (starts at 1) and ``bias`` (starts at 0), both (features,), are views into the
    model's parameters once the layer is in one; scikit-learn's L2 penalty does not cover them.
    """
    name = "layernorm"
    PARAMS = ("weight", "bias")

    def __init__(self, features, eps=1e-5):
        self.in_features = self.out_features = _checks.positive_int("features", features)
        self.eps = _check_eps(eps)

    def params(self):
        return {"weight": (self.out_features,), "bias": (self.out_features,)}

    def blocks(self):
        return (1, self.out_features), self.out_features

    def saved_width(self):
        return 1

    def kernels(self, small=None):
        return forward_kernel(self.eps), _layernorm_backward

    def init_params(self, rng):
        self.weight[...] = 1
        self.bias[...] = 0

    def reference_forward(self, x, W, b):
        return reference_forward(x, W, b, self.eps)

    def reference_backward(self, dout, x, W, b, out, z, need_dx=True):
        dweight, dbias, dx = reference_backward(dout, x, W, self.eps, need_dx)
        return dweight.reshape(W.shape), dbias, dx

    def onnx(self, builder, x, prefix):
        # MatMul by a column of 1/O for each mean: standard operators of every opset, both dtypes
        f = self.out_features
        average = builder.const(f"average{prefix}", np.full((f, 1), 1.0 / f))
        centred = builder.node("Sub", [x, builder.node("MatMul", [x, average])], f"centred{prefix}")
        variance = builder.node("MatMul", [builder.node("Mul", [centred, centred]), average])
        deviation = builder.node("Sqrt", [builder.node("Add", [variance, builder.const(f"eps{prefix}", self.eps)])])
        normal = builder.node("Div", [centred, deviation])
        return builder.node("Add", [builder.node("Mul", [normal, builder.const(f"weight{prefix}", self.weight)]),
                                    builder.const(f"bias{prefix}", self.bias)], f"normalised{prefix}")

    def summary(self):
        return f"LayerNorm({self.out_features}, eps={self.eps:g})"

    def spec(self):
        return {"features": self.out_features, "eps": self.eps}
