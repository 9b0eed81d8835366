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
- Fused form (``small_forward_kernel``, ``small_backward_kernel``): the products as loops of
  the kernel's own, fused with bias and activation, and no BLAS call: for single-output and
  single-input layers, where that measured faster (``fused`` picks the form per pass). Each kernel is built per activation code
(``specialize``) and compiled when a model first uses it.
"""
from __future__ import annotations

import numpy as np

from . import _checks, kind
from ._blas import matmul
from ._compose import run
from ._jit import REDUCTION, kernel, specialize
from .activations import BY_CODE, NAMES, NEEDS_PREACTIVATION, REGISTRY, activate, code_of, derivative

# Which layers are fused, by measurement (forward + backward kernel, float32, looped inside
# compiled code, 1 thread, Intel Xeon with AVX-512, OpenBLAS, 2026-11-25; /tmp probes, the
# figures below). OpenBLAS here costs about 0.2 us a call and has small-matrix kernels, so it
# beat fused loops at every shape with several outputs, even 2x32 at batch 32 (0.67 against
# 1.06 us), 16x16 (0.85 / 4.6 us), 64x64 (6.8 / 29 us): Numba cannot tell LLVM that two
# argument arrays never overlap, nor keep a row of sums in registers, which a BLAS kernel
# does. Single-output layers win fused at every batch (1-1024) and input width (1-8192)
# measured: one dot product per row and no call, 0.11-0.85 of the BLAS time (64x1 at batch 64:
# 0.75 against 1.11 us; 2048x1 at batch 256: 174 against 304 us). Single-input layers win
# fused forward (1x64 at batch 64: 1.11 against 1.32 us; 1x2048: 35 / 53 us) but not backward
# (0.95 against 0.64 us): their weight gradient is a sum over rows, which BLAS does better.


def fused(fan_in: int, fan_out: int) -> tuple:
    """(forward, backward): whether each pass of a layer of this shape is faster fused."""
    return fan_out == 1 or fan_in == 1, fan_out == 1


signatures = kind.signatures  # (forward, backward): the layer slots every kind shares


# -- BLAS form ----------------------------------------------------------------------------

@specialize
def forward_kernel(act: int, keep_z: bool):
    """``dense_forward`` through BLAS for one activation code. With ``keep_z`` it writes the
    pre-activation to z as well (gelu needs it for the backward); without, z is out."""
    if keep_z:
        @kernel(python_entry=False)
        def dense_forward(x, W, b, setting, out, z):
            matmul(x, W, z, False, False, False)
            n, m = z.shape
            for i in range(n):
                for j in range(m):
                    v = z[i, j] + b[j]
                    z[i, j] = v
                    out[i, j] = activate(v, act)
        return dense_forward

    @kernel(python_entry=False)
    def dense_forward(x, W, b, setting, out, z):
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
    def dense_backward(dout, x, W, out, z, setting, dW, db, dx):
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

@specialize
def small_forward_kernel(act: int, keep_z: bool):
    """``dense_forward`` for a single-output (O == 1) or single-input (I == 1) layer: one dot
    product along I per row, or one scaled row of W per row, fused with bias and activation."""
    @kernel(python_entry=False, fastmath=REDUCTION)
    def dense_forward_thin(x, W, b, setting, out, z):
        n, ni = x.shape
        o = W.shape[1]
        if o == 1:
            for r in range(n):
                s = b[0]
                for k in range(ni):
                    s += x[r, k] * W[k, 0]
                if keep_z:
                    z[r, 0] = s
                out[r, 0] = activate(s, act)
        else:  # ni == 1: out[r] = act(x[r, 0] W[0] + b), vectors along O
            for r in range(n):
                xr = x[r, 0]
                for j in range(o):
                    v = xr * W[0, j] + b[j]
                    if keep_z:
                        z[r, j] = v
                    out[r, j] = activate(v, act)
    return dense_forward_thin


@specialize
def small_backward_kernel(act: int):
    """``dense_backward`` for a single-output (O == 1) or single-input (I == 1) layer."""
    @kernel(python_entry=False, fastmath=REDUCTION)
    def dense_backward_thin(dout, x, W, out, z, setting, dW, db, dx):
        n, ni = x.shape
        o = W.shape[1]
        for k in range(ni):
            for j in range(o):
                dW[k, j] = 0.0
        for j in range(o):
            db[j] = 0.0
        if o == 1:
            for r in range(n):  # dz = dout * act', in place; db = the sum of dz over rows
                d = dout[r, 0] * derivative(out[r, 0], z[r, 0], act)
                dout[r, 0] = d
                db[0] += d
            for r in range(n):  # dW[:, 0] += x[r] dz[r, 0]: vectors along I
                d = dout[r, 0]
                for k in range(ni):
                    dW[k, 0] += x[r, k] * d
        else:  # ni == 1: dz, db and dW[0] += x[r, 0] dz[r] in one pass, vectors along O
            for r in range(n):
                xr = x[r, 0]
                for j in range(o):
                    d = dout[r, j] * derivative(out[r, j], z[r, j], act)
                    dout[r, j] = d
                    db[j] += d
                    dW[0, j] += xr * d
        if dx.shape[0] != 0:  # dx = dz @ W.T
            for r in range(n):
                if o == 1:  # dx[r] = dz[r, 0] W[:, 0]
                    d = dout[r, 0]
                    for k in range(ni):
                        dx[r, k] = d * W[k, 0]
                else:  # dx[r, 0] = dz[r] . W[0]
                    s = dout[r, 0] * W[0, 0]
                    for j in range(1, o):
                        s += dout[r, j] * W[0, j]
                    dx[r, 0] = s
    return dense_backward_thin


# -- choosing, checking and calling ------------------------------------------------------

def kernels(act: int, fan_in: int, fan_out: int, keep_z: bool, small=None):
    """(forward, backward) kernels for a layer, each pass in the fused form where that is faster
    (``fused``); ``small`` True or False forces the fused or the BLAS form for both."""
    if small and fan_out != 1 and fan_in != 1:
        raise ValueError(f"the fused form is for single-output or single-input layers, not {fan_in}x{fan_out}")
    forward, backward = fused(fan_in, fan_out) if small is None else (small, small)
    return (small_forward_kernel(act, keep_z) if forward else forward_kernel(act, keep_z),
            small_backward_kernel(act) if backward else backward_kernel(act))


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
        True: the fused form (single-output or single-input layers only); False: the BLAS
        form; default: as a model would choose.

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
    run(forward, signatures(x.dtype)[0], x, W, b, 0.0, out, z)
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
        True: the fused form (single-output or single-input layers only); False: the BLAS
        form; default: as a model would choose.

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
    run(backward, signatures(x.dtype)[1], dz, x, W, out, z, 0.0, dW, db, dx)
    return dW, db, (dx if need_dx else None)


# -- the reference twin (NumPy) and the layer kind ----------------------------------------

def reference_forward(x, W, b, act):
    """``(out, z)``: ``act(x @ W + b)`` and the pre-activation, in NumPy."""
    z = x @ W + b
    return BY_CODE[code_of(act)].array(z), z


def reference_backward(dout, x, W, out, z, act, need_dx=True):
    """``(dW, db, dx)`` from ``dout = dL/d(out)``, in NumPy; dx is None without ``need_dx``."""
    dz = dout * BY_CODE[code_of(act)].array_derivative(out, z)
    return x.T @ dz, dz.sum(axis=0), (dz @ W.T if need_dx else None)


class Dense(kind.LayerKind):
    """A fully connected layer: ``out = activation(x @ W + b)``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output row. ``W`` is (in_features, out_features).
    activation : str or None
        None or "identity" (a linear layer, e.g. for logits), or another name in
        ``fastnn.ACTIVATIONS`` ("relu", "tanh", "gelu", ...: PyTorch's definitions, each
        defined once in ``fastnn/kernels/activations.py``).

    ``W`` and ``b`` are views into the owning ``Sequential``'s parameter buffer; they are
    None until the layer is placed in a model. Assigning them (``layer.W = array``) copies the
    values into the model's parameters, as ``layer.W[...] = array`` does, after checking the
    shape; before the layer is in a model it is an error (the model's seed sets the start).
    """
    name = "dense"
    PARAMS = ("W", "b")
    penalised = True

    def __init__(self, in_features, out_features, activation=None):
        self.in_features = _checks.positive_int("in_features", in_features)
        self.out_features = _checks.positive_int("out_features", out_features)
        self.code = code_of(activation)
        self.activation = NAMES[self.code]

    def params(self):
        return {"W": (self.in_features, self.out_features), "b": (self.out_features,)}

    def blocks(self):
        return (self.in_features, self.out_features), self.out_features

    def saved_width(self):
        return self.out_features if self.code in NEEDS_PREACTIVATION else 0

    def kernels(self, small=None):
        return kernels(self.code, self.in_features, self.out_features, self.code in NEEDS_PREACTIVATION, small)

    def init_params(self, rng):
        """Fill W as the activation's ``init`` says: He normal (relu-like activations), LeCun
        normal (selu) or Glorot uniform; b = 0."""
        fan_in, fan_out = self.in_features, self.out_features
        init = BY_CODE[self.code].init
        if init in ("he", "lecun"):
            w = rng.standard_normal((fan_in, fan_out)) * np.sqrt((2.0 if init == "he" else 1.0) / fan_in)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
        self.W[...] = w
        self.b[...] = 0

    def reference_forward(self, x, W, b):
        return reference_forward(x, W, b, self.activation)

    def reference_backward(self, dout, x, W, b, out, z, need_dx=True):
        return reference_backward(dout, x, W, out, z, self.activation, need_dx)

    def onnx(self, builder, x, prefix):
        z = builder.node("Add", [builder.node("MatMul", [x, builder.const(f"W{prefix}", self.W)]),
                                 builder.const(f"b{prefix}", self.b)], f"z{prefix}")
        return REGISTRY[self.activation].onnx(builder, z)

    def summary(self):
        return f"Dense({self.in_features}, {self.out_features}, {self.activation})"

    def spec(self):
        return {"in_features": self.in_features, "out_features": self.out_features, "activation": self.activation}

    def architecture(self):  # (no "kind": the form files have always had, which every version reads)
        return self.spec()

    def __repr__(self):
        return (f"Dense(in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation!r})")
