"""Element-wise activations, forward and backward.

Shapes: N = batch, O = features. z (pre-activation) and y = act(z) are (N, O), float32 or
float64, C-contiguous. An activation is named by a small integer code. Kernels are built per
code (``specialize``): the code is a compile-time constant there, so ``activate`` and
``derivative`` compile only that activation's few lines, and a model never compiles an
activation it does not use (jitted functions passed as arguments would defeat caching,
pynndescent#226).

Derivatives come from the forward output y where the maths allows, so the fused dense
kernel needs no extra buffer:
    relu'       = [y > 0]            leaky_relu' = 1 if y > 0 else 0.01
    sigmoid'    = y (1 - y)          tanh'       = 1 - y^2
    identity'   = 1
gelu is the exception: its derivative needs the pre-activation z, so layers with gelu keep
a separate z buffer (``NEEDS_PREACTIVATION``).

Speed: math.exp/math.tanh are scalar library calls that LLVM cannot vectorise (no SVML
here). In float32, ``exp_`` and ``tanh_`` are branch-free approximations that vectorise:
128x256 tanh takes 7.4 us instead of 495 us. float64 keeps the library calls.
"""
from __future__ import annotations

import math

import numpy as np
from llvmlite import ir
from numba import types
from numba.extending import intrinsic

from . import _checks
from ._compose import run
from ._jit import array_type, inline_scalar, kernel, specialize, typed_helper

IDENTITY, RELU, LEAKY_RELU, SIGMOID, TANH, GELU = range(6)
CODES = {"identity": IDENTITY, "relu": RELU, "leaky_relu": LEAKY_RELU,
         "sigmoid": SIGMOID, "tanh": TANH, "gelu": GELU}
NAMES = {code: name for name, code in CODES.items()}
NEEDS_PREACTIVATION = frozenset({GELU})
LEAKY_SLOPE = 0.01
GELU_C = math.sqrt(2.0 / math.pi)  # tanh form, as PyTorch's gelu(approximate="tanh")
GELU_A = 0.044715

# float32 tanh(x) = x P(x^2) / Q(x^2) on |x| <= 9 (beyond, float32 tanh rounds to +-1).
# Fitted for this project by Lawson-reweighted least squares on relative error; evaluated in
# float32 it is within 5.4 ulps (3.2e-7 relative) of tanh over [-12, 12] (2M points).
TANH_CLAMP = 9.0
TANH_P = (0.9999999800309736, 0.1338141286185716, 0.003496044606145275, 2.0616450973462845e-05,
          1.3364586741215819e-08)
TANH_Q = (1.0, 0.4671472868413348, 0.025878727699044004, 0.000328637526221796, 7.780681767047445e-07)
# float32 exp(x) = 2^k e^r, k = round(x / ln 2), |r| <= ln(2)/2, e^r by its Taylor series to
# r^7 (truncation 5e-9 relative): within 0.6 ulps. Results below 1.2e-38 flush to zero.
EXP_LO, EXP_HI = -87.33654, 88.72283
LN2_HI, LN2_LO = 0.693145751953125, 1.4286068203094172e-06  # ln 2 split so k*LN2_HI is exact


def code_of(activation) -> int:
    """Map an activation name (or None for identity) to its kernel code."""
    if activation is None:
        return IDENTITY
    if isinstance(activation, str) and activation in CODES:
        return CODES[activation]
    raise ValueError(f"unknown activation {activation!r}; expected None or one of {sorted(CODES)}")


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


# float32 constants of the approximations below (module globals: Numba compiles them in)
_f = np.float32
_LO, _HI, _LOG2E, _HALF, _ONE, _ZERO, _INF = _f(EXP_LO), _f(EXP_HI), _f(1 / math.log(2)), _f(0.5), _f(1.0), _f(0.0), \
    _f(np.inf)
_LN2_HI, _LN2_LO, _F127 = _f(LN2_HI), _f(LN2_LO), _f(127.0)
_C2, _C3, _C4, _C5, _C6, _C7 = (_f(1 / math.factorial(k)) for k in range(2, 8))
_I127, _I23 = np.int32(127), np.int32(23)
_CLAMP = _f(TANH_CLAMP)
_P0, _P1, _P2, _P3, _P4 = (_f(c) for c in TANH_P)
_Q1, _Q2, _Q3, _Q4 = (_f(c) for c in TANH_Q[1:])


# Scalar float32 approximations, inlined into their caller (``inline_scalar``).
@inline_scalar
def exp32(x):
    """exp(x) for float32 x, vectorisable (see EXP_LO)."""
    c = _LO if x < _LO else (_HI if x > _HI else x)  # (not min/max: each would compile a function)
    k = np.floor(c * _LOG2E + _HALF)  # (math.floor gives an int64: the rest would run in float64)
    r = (c - k * _LN2_HI) - k * _LN2_LO
    p = ((((((_C7 * r + _C6) * r + _C5) * r + _C4) * r + _C3) * r + _C2) * r + _ONE) * r + _ONE
    kk = k if k < _F127 else _F127  # 2^128 has no float32; near the top scale by 2^127 and then by 2
    y = p * _float32_from_bits((np.int32(kk) + _I127) << _I23) * (_ONE + (k - kk))
    if x != x:
        return x  # NaN stays NaN
    if x > _HI:
        return _INF
    return y if x >= _LO else _ZERO


@inline_scalar
def tanh32(x):
    """tanh(x) for float32 x, vectorisable (see TANH_P)."""
    c = -_CLAMP if x < -_CLAMP else (_CLAMP if x > _CLAMP else x)
    t = c * c
    y = c * ((((_P4 * t + _P3) * t + _P2) * t + _P1) * t + _P0) / ((((_Q4 * t + _Q3) * t + _Q2) * t + _Q1) * t + _ONE)
    y = -_ONE if y < -_ONE else (_ONE if y > _ONE else y)
    return x if x != x else y  # min/max would turn NaN into a bound


def exp_(x):
    """exp for kernels: vectorisable in float32, the library call in float64."""
    return math.exp(x)


@typed_helper(exp_)
def _exp_impl(x):
    if x != types.float32:
        return lambda x: math.exp(x)
    return lambda x: exp32(x)


def tanh_(x):
    """tanh for kernels: vectorisable in float32, the library call in float64."""
    return math.tanh(x)


@typed_helper(tanh_)
def _tanh_impl(x):
    if x != types.float32:
        return lambda x: math.tanh(x)
    return lambda x: tanh32(x)


def activate(z, act):
    """act(z) for one element; ``act`` is a constant code in kernels. NaN propagates as in the
    reference. Plain Python (NUMBA_DISABLE_JIT=1) runs this float64 version."""
    if act == RELU:
        return 0.0 if z < 0 else z
    if act == LEAKY_RELU:
        return z * LEAKY_SLOPE if z < 0 else z
    if act == SIGMOID:
        e = math.exp(-abs(z)) if z == z else z
        return 1.0 / (1.0 + e) if z >= 0 else e / (1.0 + e)
    if act == TANH:
        return math.tanh(z)
    if act == GELU:
        u2 = 2 * GELU_C * (z + GELU_A * z * z * z)
        e = math.exp(-abs(u2)) if u2 == u2 else u2
        return z * (1.0 / (1.0 + e) if u2 >= 0 else e / (1.0 + e))
    return z


def _literal_code(act):
    # Kernels pass constant codes only: a run-time code would compile every activation.
    return act.literal_value if isinstance(act, types.IntegerLiteral) else None


@typed_helper(activate)
def _activate_impl(z, act):
    code = _literal_code(act)
    if code is None:
        return None
    single = z == types.float32
    f = np.float32 if single else np.float64
    zero, one, slope = f(0.0), f(1.0), f(LEAKY_SLOPE)
    two_c, gelu_a = f(2 * GELU_C), f(GELU_A)
    exp = exp32 if single else math.exp  # called directly: a nested overload would compile on its own
    if code == RELU:
        return lambda z, act: zero if z < zero else z
    if code == LEAKY_RELU:
        return lambda z, act: z * slope if z < zero else z
    if code == SIGMOID:
        def sigmoid(z, act):
            e = exp(-abs(z))  # never overflows
            r = one / (one + e)
            return r if z >= zero else e * r
        return sigmoid
    if code == TANH:
        return (lambda z, act: tanh32(z)) if single else (lambda z, act: math.tanh(z))
    if code == GELU:
        def gelu(z, act):
            # 0.5 z (1 + tanh u) = z sigmoid(2u): no 1 + tanh cancellation for z << 0
            u2 = two_c * (z + gelu_a * z * z * z)
            e = exp(-abs(u2))
            r = one / (one + e)
            return z * (r if u2 >= zero else e * r)
        return gelu
    return lambda z, act: z


# Differentiates `activate`: the derivative of y = act(z), from y (and z for gelu).
def derivative(y, z, act):
    """act'(z) for one element, from y = act(z) (and z for gelu); float64 in plain Python."""
    if act == RELU:
        return 1.0 if y > 0 else 0.0
    if act == LEAKY_RELU:
        return 1.0 if y > 0 else LEAKY_SLOPE
    if act == SIGMOID:
        return y * (1.0 - y)
    if act == TANH:
        return 1.0 - y * y
    if act == GELU:
        u2 = 2 * GELU_C * (z + GELU_A * z * z * z)
        e = math.exp(-abs(u2)) if u2 == u2 else u2
        s_pos, s_neg = (1 / (1 + e), e / (1 + e)) if u2 >= 0 else (e / (1 + e), 1 / (1 + e))
        return s_pos + z * s_pos * s_neg * 2 * GELU_C * (1 + 3 * GELU_A * z * z)
    return 1.0


@typed_helper(derivative)
def _derivative_impl(y, z, act):
    code = _literal_code(act)
    if code is None:
        return None
    f = np.float32 if y == types.float32 else np.float64
    zero, one, three, slope = f(0.0), f(1.0), f(3.0), f(LEAKY_SLOPE)
    two_c, gelu_a = f(2 * GELU_C), f(GELU_A)
    exp = exp32 if y == types.float32 else math.exp
    if code == RELU:
        return lambda y, z, act: one if y > zero else zero
    if code == LEAKY_RELU:
        return lambda y, z, act: one if y > zero else slope
    if code == SIGMOID:
        return lambda y, z, act: y * (one - y)
    if code == TANH:
        return lambda y, z, act: one - y * y
    if code == GELU:
        def gelu(y, z, act):
            # d/dz z s(2u) = s + z s (1 - s) 2u', s = sigmoid(2u), 1 - s = sigmoid(-2u), both exact
            u2 = two_c * (z + gelu_a * z * z * z)
            e = exp(-abs(u2))
            r = one / (one + e)
            s_pos, s_neg = (r, e * r) if u2 >= zero else (e * r, r)
            return s_pos + z * s_pos * s_neg * two_c * (one + three * gelu_a * z * z)
        return gelu
    return lambda y, z, act: one


def signatures(dtype):
    """(forward, backward) Numba signatures of the element-wise kernels."""
    m = array_type(dtype, 2)
    return types.none(m, m), types.none(m, m, m, m)


@specialize
def forward_kernel(act: int):
    """The element-wise forward kernel of one activation code."""
    @kernel(python_entry=False)
    def activation_forward(z, y):
        # z, y: (N, O); y may be z (in place).
        n, m = z.shape
        for i in range(n):
            for j in range(m):
                y[i, j] = activate(z[i, j], act)
    return activation_forward


# Differentiates y = act(z) above: dz = dy * act'(y, z). dz may be dy (then dy is overwritten).
@specialize
def backward_kernel(act: int):
    """The element-wise backward kernel of one activation code."""
    @kernel(python_entry=False)
    def activation_backward(dy, y, z, dz):
        n, m = dy.shape
        for i in range(n):
            for j in range(m):
                dz[i, j] = dy[i, j] * derivative(y[i, j], z[i, j], act)
    return activation_backward


def activation_forward(z, act, y=None):
    """Write ``act(z)`` into ``y`` (N, O) and return it.

    Parameters
    ----------
    z : ndarray (N, O), float32 or float64, C-contiguous
    act : str or None
        One of ``None``/"identity", "relu", "leaky_relu", "sigmoid", "tanh", "gelu".
    y : ndarray (N, O) of z's dtype, optional
        Output; allocated when omitted. May be ``z`` itself, but no other overlap.
    """
    code = code_of(act)
    _checks.float_array("z", z, ndim=2)
    if y is None:
        y = np.empty_like(z)
    _checks.float_array("y", y, ndim=2, dtype=z.dtype)
    _checks.shape("y", y, z.shape)
    _checks.writable("y", y)
    _checks.no_overlap("y", y, ("z", z), allow_same=True)
    run(forward_kernel(code), signatures(z.dtype)[0], z, y)
    return y


def activation_backward(dy, y, z, act, dz=None):
    """Write ``dL/dz = dy * act'(z)`` into ``dz`` (overwritten) and return it.

    ``y`` is the forward output; ``z`` the pre-activation, read only for gelu (pass ``y``
    again for the other activations). ``dz`` may be ``dy``, which is then overwritten; it
    may not overlap ``y`` or ``z``.
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
    _checks.no_overlap("dz", dz, ("dy", dy), allow_same=True)
    _checks.no_overlap("dz", dz, ("y", y), ("z", z))
    run(backward_kernel(code), signatures(dy.dtype)[1], dy, y, z, dz)
    return dz
