"""Layer normalisation, the whole layer kind: kernels, NumPy twin, ONNX form, saved form.

PyTorch's ``nn.LayerNorm(features, eps)``: each row is normalised over its features with the
biased variance, then scaled and shifted by learnable ``weight`` (starts at 1) and ``bias``
(starts at 0).

Shapes: N = rows, O = features (in = out).
    x (N, O) input             W (1, O) weight, as the kernels see it   b (O,) bias
    setting                    eps (float64)
    out (N, O)                 z: none kept (out itself)
    dout (N, O) d(loss)/d(out), left as it is; dW (1, O), db (O,), dx (N, O) overwritten
Statistics are summed in float64 (both dtypes), so float32 rows of large mean keep their
variance. The backward sums them again rather than keep them: kept in a float32 workspace,
the mean rounded (rows of mean 1e4 and spread 0.05: gradients off by 1e-2 relative) and
1/deviation of rows near 1e38 became subnormal, flushed to 0 (a weight gradient 65% off).
"""
from __future__ import annotations

import math

import numpy as np

from . import _checks, kind
from ._compose import run
from ._jit import REDUCTION, helper, kernel


# The row sums reassociate (REDUCTION), in float64 over at most a row: they vectorise. Scalar, the
# kernels took 123 and 200 us at 128x256 float32; vectorised 27 and 51 us (NumPy's twin: 240, 460).
@helper(fastmath=REDUCTION)
def row_statistics(x, r, eps):
    """(mean, 1/sqrt(var + eps)) of row r of x, summed in float64, the variance biased."""
    o = x.shape[1]
    total = 0.0
    for j in range(o):
        total += x[r, j]
    mean = total / o
    spread = 0.0
    for j in range(o):
        d = x[r, j] - mean
        spread += d * d
    return mean, 1.0 / math.sqrt(spread / o + eps)


@kernel(python_entry=False, fastmath=REDUCTION)
def _layernorm_forward(x, W, b, setting, out, z):
    n, o = x.shape
    for r in range(n):
        mean, rstd = row_statistics(x, r, setting)
        for j in range(o):
            out[r, j] = (x[r, j] - mean) * rstd * W[0, j] + b[j]


# Differentiates `out = xhat * W + b`, xhat = (x - mean) * rstd:
#   dW = sum_r dout * xhat;  db = sum_r dout;
#   dx = rstd * (g - mean_j(g) - xhat * mean_j(g * xhat)),  g = dout * W
@kernel(python_entry=False, fastmath=REDUCTION)
def _layernorm_backward(dout, x, W, out, z, setting, dW, db, dx):
    n, o = x.shape
    for j in range(o):
        dW[0, j] = 0.0
        db[j] = 0.0
    for r in range(n):
        mean, rstd = row_statistics(x, r, setting)
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
    """``(out, z)``: the normalised rows, scaled and shifted, and what is kept (out itself)."""
    wide = x.astype(np.float64)
    mean = wide.mean(axis=1, keepdims=True)
    rstd = 1.0 / np.sqrt(((wide - mean) ** 2).mean(axis=1, keepdims=True) + eps)
    out = ((wide - mean) * rstd * weight.reshape(-1) + bias).astype(x.dtype)
    return out, out


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
    return _checks.setting("eps", eps)


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
    run(_layernorm_forward, kind.signatures(x.dtype)[0], x, weight.reshape(1, -1), bias, eps, out, out)
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
    empty = np.empty((0, 0), x.dtype)  # (out and z: not read)
    run(_layernorm_backward, kind.signatures(x.dtype)[1], dout, x, weight.reshape(1, -1), empty, empty, eps,
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
        self.eps = _checks.setting("eps", eps)

    def params(self):
        return {"weight": (self.out_features,), "bias": (self.out_features,)}

    def blocks(self):
        return (1, self.out_features), self.out_features

    def setting(self):
        return self.eps

    def check_dtype(self, dtype):
        tiny = np.finfo(dtype).tiny
        if self.eps < tiny:
            raise ValueError(f"LayerNorm's eps {self.eps:g} is below the smallest normal {np.dtype(dtype).name} "
                             f"({tiny:.3g}): rows of equal values would divide by zero; use eps >= {tiny:.3g}")

    def kernels(self, small=None):
        return _layernorm_forward, _layernorm_backward

    def init_params(self, rng):
        self.weight[...] = 1
        self.bias[...] = 0

    def reference_forward(self, x, W, b):
        return reference_forward(x, W, b, self.eps)

    def reference_backward(self, dout, x, W, b, out, z, need_dx=True):
        dweight, dbias, dx = reference_backward(dout, x, W, self.eps, need_dx)
        return dweight.reshape(W.shape), dbias, dx

    def onnx(self, builder, x, prefix):
        # MatMul by a column of 1/O for each mean: standard operators of every opset, both dtypes;
        # in float64 as the kernels sum (a float32 graph's statistics: labels changed on rows of mean 1e5)
        f, wide = self.out_features, builder.dtype != np.float64
        x = builder.node("Cast", [x], to=11) if wide else x  # 11: DOUBLE

        def const(name, value):
            return builder.const(f"{name}{prefix}", value, dtype=np.float64)
        average = const("average", np.full((f, 1), 1.0 / f))
        centred = builder.node("Sub", [x, builder.node("MatMul", [x, average])], f"centred{prefix}")
        variance = builder.node("MatMul", [builder.node("Mul", [centred, centred]), average])
        deviation = builder.node("Sqrt", [builder.node("Add", [variance, const("eps", self.eps)])])
        normal = builder.node("Div", [centred, deviation])
        out = builder.node("Add", [builder.node("Mul", [normal, const("weight", self.weight)]), const("bias", self.bias)],
                           f"normalised{prefix}")
        return builder.node("Cast", [out], to=1) if wide else out  # 1: FLOAT

    def summary(self):
        return f"LayerNorm({self.out_features}, eps={self.eps:g})"

    def spec(self):
        return {"features": self.out_features, "eps": self.eps}
