"""Element-wise activations: each one defined once, in one class below.

Shapes: N = batch, O = features. z (pre-activation) and y = act(z) are (N, O), float32 or
float64, C-contiguous.

An activation's class holds every form of it, and everything else reads ``REGISTRY``: the
kernel codes, the layers, the reference, ONNX export, the command line's choices, the
estimators, the peers, the benchmarks and the tests (a test fails on a list kept by hand).
- ``scalar(m)``: its forward ``f(z)`` and derivative ``d(y, z)`` as scalar code for the
  maths ``m`` of one dtype (constants ``m(x)`` and functions ``m.exp``, ``m.tanh``,
  ``m.sigmoid``, ``m.sigmoids``, ``m.log1p``, ``m.expm1``; ``m.inline`` for its own helpers). Numba compiles it into the
  kernels (float32 with float32 constants and the vectorisable approximations below, float64
  with the C library); plain Python runs it as the kernels' twin (NUMBA_DISABLE_JIT).
- ``needs_z``: the derivative reads the pre-activation z. Derivatives come from the output y
  where the maths allows, so the fused dense kernel needs no extra buffer; layers with one of
  the others keep a z buffer (``NEEDS_PREACTIVATION``).
- ``array(z)`` / ``array_derivative(y, z)``: NumPy forms, written apart from the scalar code:
  the reference (``fastnn.reference``) the kernels are checked against.
- ``onnx(b, x)``: its ONNX form, from operators ONNX Runtime runs in float32 and float64 at
  opset 17 (1.16 and later), checked against the kernels by the ONNX tests.
- ``init``: the weights' start ("he", "lecun" or "glorot", see ``Dense.init_params``);
  ``torch`` and ``jax``: the peers' expressions (``z``; ``F`` = torch.nn.functional), from
  which ``tests/fixtures/make_activation_values.py`` wrote PyTorch's values once.
- ``library_float64``: which float64 scalar forms call the C library per element (LLVM 14
  leaves such loops scalar); ``long_float32``: the dense kernel forms whose float32 loops
  stay scalar because LLVM's inliner leaves a long activation as a call there (measured:
  softplus, elu). Both for the vectorisation tests, which hold every other loop to its count.

Kernels are built per code (``specialize``): the code is a compile-time constant there, so
``activate`` and ``derivative`` compile only that activation's few lines, and a model never
compiles an activation it does not use (jitted functions passed as arguments would defeat
caching, pynndescent#226). Adding an activation is one class here; its code is its place in
``REGISTRY`` (append new ones: codes are cache keys).

Speed: math.exp/math.tanh are scalar library calls that LLVM cannot vectorise (no SVML
here). In float32, ``exp32`` and ``tanh32`` are branch-free approximations that vectorise:
128x256 tanh takes 7.4 us instead of 495 us; ``log1p32`` and ``expm1_32`` are built on them.
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


@intrinsic
def _float32_from_bits(typingctx, bits):
    """Reinterpret an int32 as the float32 with the same bits (no conversion)."""
    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.FloatType())
    return types.float32(types.int32), codegen


# float32 constants of the approximations below (module globals: Numba compiles them in)
_f = np.float32
_LO, _HI, _LOG2E, _HALF, _ONE, _TWO, _ZERO, _INF = _f(EXP_LO), _f(EXP_HI), _f(1 / math.log(2)), _f(0.5), _f(1.0), \
    _f(2.0), _f(0.0), _f(np.inf)
_LN2_HI, _LN2_LO, _F127 = _f(LN2_HI), _f(LN2_LO), _f(127.0)
_C2, _C3, _C4, _C5, _C6, _C7 = (_f(1 / math.factorial(k)) for k in range(2, 8))
_I127, _I23 = np.int32(127), np.int32(23)
_CLAMP = _f(TANH_CLAMP)
_P0, _P1, _P2, _P3, _P4 = (_f(c) for c in TANH_P)
_Q1, _Q2, _Q3, _Q4 = (_f(c) for c in TANH_Q[1:])
_ODD = tuple(_f(1 / k) for k in range(3, 17, 2))  # 1/3, 1/5, ..., 1/15: the atanh series


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


@inline_scalar
def log1p32(u):
    """log(1 + u) for float32 u in [0, 1], vectorisable: 2 atanh(s), s = u / (2 + u) <= 1/3, by
    its series to s^15 (truncation below 2e-8 relative)."""
    s = u / (_TWO + u)
    t = s * s
    a3, a5, a7, a9, a11, a13, a15 = _ODD
    return _TWO * s * (((((((a15 * t + a13) * t + a11) * t + a9) * t + a7) * t + a5) * t + a3) * t + _ONE)


@inline_scalar
def expm1_32(x):
    """exp(x) - 1 for float32 x <= 0, vectorisable and without the cancellation of exp(x) - 1
    near 0: 2 tanh(x/2) / (1 - tanh(x/2))."""
    t = tanh32(_HALF * x)
    return _TWO * t / (_ONE - t)


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


class Maths:
    """The scalar maths of one dtype that definitions build on: ``m(x)`` is the constant x in
    this dtype (a float64 constant would promote float32 code to float64)."""

    def __init__(self, const, exp, tanh, log1p, expm1, inline):
        self.const, self.exp, self.tanh, self.log1p, self.expm1 = const, exp, tanh, log1p, expm1
        self.inline = inline  # for a definition's own helpers
        one, zero = const(1.0), const(0.0)

        def sigmoid(u):
            e = exp(-abs(u))  # never overflows
            r = one / (one + e)
            return r if u >= zero else e * r

        def sigmoids(u):
            """(sigmoid(u), sigmoid(-u)), each without the cancellation of 1 - sigmoid(u)."""
            e = exp(-abs(u))
            r = one / (one + e)
            return (r, e * r) if u >= zero else (e * r, r)

        self.sigmoid, self.sigmoids = inline(sigmoid), inline(sigmoids)

    def __call__(self, x):
        return self.const(x)


FLOAT32 = Maths(np.float32, exp32, tanh32, log1p32, expm1_32, inline_scalar)
FLOAT64 = Maths(np.float64, math.exp, math.tanh, math.log1p, math.expm1, inline_scalar)
PYTHON = Maths(float, math.exp, math.tanh, math.log1p, math.expm1, lambda f: f)  # the kernels' twin


def _np_sigmoid(u):
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e))


class Activation:
    """One activation: see the module docstring for what each member is."""

    name: str
    code: int  # its place in REGISTRY
    needs_z = False
    init = "glorot"
    torch = jax = "z"
    library_float64 = frozenset()  # of "forward", "derivative"
    long_float32 = frozenset()  # of "forward", "small_forward", "backward", "small_backward"

    @staticmethod
    def scalar(m):
        """(forward(z), derivative(y, z)) for the maths ``m``."""
        raise NotImplementedError

    @staticmethod
    def array(z):
        raise NotImplementedError

    @staticmethod
    def array_derivative(y, z):
        raise NotImplementedError

    @staticmethod
    def onnx(b, x):
        raise NotImplementedError


REGISTRY: dict = {}  # name -> its Activation subclass, in code order


def register(cls):
    """Class decorator: add an activation to ``REGISTRY`` under the next code."""
    if cls.name in REGISTRY:
        raise ValueError(f"activation {cls.name!r} is defined twice")
    cls.code = len(REGISTRY)
    REGISTRY[cls.name] = cls
    return cls


# -- the activations (append new ones at the end) ----------------------------------------

@register
class Identity(Activation):
    """y = z: a linear layer (logits, regression outputs)."""
    name = "identity"

    @staticmethod
    def scalar(m):
        one = m(1.0)
        return (lambda z: z), (lambda y, z: one)

    @staticmethod
    def array(z):
        return z.copy()

    @staticmethod
    def array_derivative(y, z):
        return np.ones_like(y)

    @staticmethod
    def onnx(b, x):
        return x


@register
class Relu(Activation):
    name, init, torch, jax = "relu", "he", "F.relu(z)", "jax.nn.relu(z)"

    @staticmethod
    def scalar(m):
        zero, one = m(0.0), m(1.0)
        return (lambda z: zero if z < zero else z), (lambda y, z: one if y > zero else zero)

    @staticmethod
    def array(z):
        return np.where(z < 0, 0, z).astype(z.dtype)

    @staticmethod
    def array_derivative(y, z):
        return (y > 0).astype(y.dtype)

    @staticmethod
    def onnx(b, x):
        return b.node("Relu", [x])


LEAKY_SLOPE = 0.01


@register
class LeakyRelu(Activation):
    """Slope 0.01 below 0, as PyTorch's default."""
    name, init = "leaky_relu", "he"
    torch, jax = f"F.leaky_relu(z, {LEAKY_SLOPE})", f"jax.nn.leaky_relu(z, {LEAKY_SLOPE})"

    @staticmethod
    def scalar(m):
        zero, one, slope = m(0.0), m(1.0), m(LEAKY_SLOPE)
        return (lambda z: z * slope if z < zero else z), (lambda y, z: one if y > zero else slope)

    @staticmethod
    def array(z):
        return np.where(z < 0, z * z.dtype.type(LEAKY_SLOPE), z)

    @staticmethod
    def array_derivative(y, z):
        return np.where(y > 0, 1, LEAKY_SLOPE).astype(y.dtype)

    @staticmethod
    def onnx(b, x):  # max(x, slope x) for slope < 1: LeakyRelu without its float-only kernel
        return b.node("Max", [x, b.node("Mul", [x, b.const("slope", LEAKY_SLOPE)])], "leaky_relu")


@register
class Sigmoid(Activation):
    name, torch, jax = "sigmoid", "torch.sigmoid(z)", "jax.nn.sigmoid(z)"

    @staticmethod
    def scalar(m):
        one, sigmoid = m(1.0), m.sigmoid
        return (lambda z: sigmoid(z)), (lambda y, z: y * (one - y))

    @staticmethod
    def array(z):
        return _np_sigmoid(z)

    @staticmethod
    def array_derivative(y, z):
        return y * (1 - y)

    @staticmethod
    def onnx(b, x):
        return b.node("Sigmoid", [x])


@register
class Tanh(Activation):
    name, torch, jax = "tanh", "torch.tanh(z)", "jax.numpy.tanh(z)"
    library_float64 = frozenset({"forward"})

    @staticmethod
    def scalar(m):
        one, tanh = m(1.0), m.tanh
        return (lambda z: tanh(z)), (lambda y, z: one - y * y)

    @staticmethod
    def array(z):
        return np.tanh(z)

    @staticmethod
    def array_derivative(y, z):
        return 1 - y * y

    @staticmethod
    def onnx(b, x):
        return b.node("Tanh", [x])


GELU_C = math.sqrt(2.0 / math.pi)  # tanh form, as PyTorch's gelu(approximate="tanh")
GELU_A = 0.044715


@register
class Gelu(Activation):
    """The tanh form, as PyTorch's gelu(approximate="tanh"): 0.5 z (1 + tanh u),
    u = sqrt(2/pi) (z + 0.044715 z^3), computed as z sigmoid(2u) (no cancellation for z << 0)."""
    name, needs_z, init = "gelu", True, "he"
    torch, jax = "F.gelu(z, approximate='tanh')", "jax.nn.gelu(z, approximate=True)"

    @staticmethod
    def scalar(m):
        one, three, two_c, a = m(1.0), m(3.0), m(2 * GELU_C), m(GELU_A)
        sigmoid, sigmoids = m.sigmoid, m.sigmoids

        def forward(z):
            return z * sigmoid(two_c * (z + a * z * z * z))

        def derivative(y, z):
            # d/dz z s(2u) = s + z s (1 - s) 2u', s = sigmoid(2u), 1 - s = sigmoid(-2u), both exact
            s, s_neg = sigmoids(two_c * (z + a * z * z * z))
            return s + z * s * s_neg * two_c * (one + three * a * z * z)
        return forward, derivative

    @staticmethod
    def array(z):
        return z * _np_sigmoid(2 * GELU_C * (z + GELU_A * z**3))

    @staticmethod
    def array_derivative(y, z):
        u2 = 2 * GELU_C * (z + GELU_A * z**3)
        return _np_sigmoid(u2) + z * _np_sigmoid(u2) * _np_sigmoid(-u2) * 2 * GELU_C * (1 + 3 * GELU_A * z * z)

    @staticmethod
    def onnx(b, x):
        cube = b.node("Mul", [b.node("Mul", [x, x]), x])
        u2 = b.node("Mul", [b.node("Add", [x, b.node("Mul", [cube, b.const("gelu_a", GELU_A)])]),
                            b.const("gelu_2c", 2 * GELU_C)])
        return b.node("Mul", [x, b.node("Sigmoid", [u2])], "gelu")


@register
class Silu(Activation):
    """z sigmoid(z), PyTorch's silu (swish)."""
    name, needs_z, init, torch, jax = "silu", True, "he", "F.silu(z)", "jax.nn.silu(z)"

    @staticmethod
    def scalar(m):
        sigmoid, sigmoids = m.sigmoid, m.sigmoids

        def derivative(y, z):
            s, s_neg = sigmoids(z)  # s + z s (1 - s)
            return s + z * s * s_neg
        return (lambda z: z * sigmoid(z)), derivative

    @staticmethod
    def array(z):
        return z * _np_sigmoid(z)

    @staticmethod
    def array_derivative(y, z):
        s = _np_sigmoid(z)
        return s * (1 + z * _np_sigmoid(-z))

    @staticmethod
    def onnx(b, x):  # z / (1 + e^-z): ONNX Runtime 1.16 fuses z * Sigmoid(z) into QuickGelu, float32 only
        return b.node("Div", [x, b.node("Add", [b.const("one", 1.0), b.node("Exp", [b.node("Neg", [x])])])], "silu")


def _elu_scalar(m, alpha, scale):
    """scale z for z > 0, scale alpha (e^z - 1) below; the derivative from y: scale, or y + scale alpha."""
    zero, alpha, scale, slope = m(0.0), m(alpha), m(scale), m(scale * alpha)
    expm1 = m.expm1

    def forward(z):
        below = slope * expm1(zero if z > zero else z)  # (NaN stays NaN; e^z - 1 for z <= 0 only)
        return scale * z if z > zero else below
    return forward, (lambda y, z: scale if y > zero else y + slope)


def _elu_array(z, alpha, scale):
    return np.where(z > 0, scale * z, (scale * alpha) * np.expm1(np.minimum(z, 0))).astype(z.dtype)


def _elu_onnx(b, x, alpha, scale, hint):  # (ONNX Runtime's Elu and Selu kernels take float32 only)
    below = b.node("Mul", [b.node("Sub", [b.node("Exp", [b.node("Min", [x, b.const("zero", 0.0)])]),
                                          b.const("one", 1.0)]), b.const(f"{hint}_slope", scale * alpha)])
    above = b.node("Mul", [x, b.const(f"{hint}_scale", scale)]) if scale != 1.0 else x
    return b.node("Where", [b.node("Greater", [x, b.const("zero", 0.0)]), above, below], hint)


ELU_ALPHA = 1.0


@register
class Elu(Activation):
    """z for z > 0, alpha (e^z - 1) below, alpha = 1: PyTorch's elu."""
    name, init, torch, jax = "elu", "he", f"F.elu(z, alpha={ELU_ALPHA})", f"jax.nn.elu(z, alpha={ELU_ALPHA})"
    library_float64, long_float32 = frozenset({"forward"}), frozenset({"small_forward"})

    @staticmethod
    def scalar(m):
        return _elu_scalar(m, ELU_ALPHA, 1.0)

    @staticmethod
    def array(z):
        return _elu_array(z, ELU_ALPHA, 1.0)

    @staticmethod
    def array_derivative(y, z):
        return np.where(y > 0, 1, y + ELU_ALPHA).astype(y.dtype)

    @staticmethod
    def onnx(b, x):
        return _elu_onnx(b, x, ELU_ALPHA, 1.0, "elu")


SELU_ALPHA = 1.6732632423543772848170429916717  # PyTorch's (Klambauer et al. 2017)
SELU_SCALE = 1.0507009873554804934193349852946


@register
class Selu(Activation):
    """scale elu(z, alpha) with PyTorch's constants; weights start as LeCun normal."""
    name, init, torch, jax = "selu", "lecun", "F.selu(z)", "jax.nn.selu(z)"
    library_float64 = frozenset({"forward"})

    @staticmethod
    def scalar(m):
        return _elu_scalar(m, SELU_ALPHA, SELU_SCALE)

    @staticmethod
    def array(z):
        return _elu_array(z, SELU_ALPHA, SELU_SCALE)

    @staticmethod
    def array_derivative(y, z):
        return np.where(y > 0, SELU_SCALE, y + SELU_SCALE * SELU_ALPHA).astype(y.dtype)

    @staticmethod
    def onnx(b, x):
        return _elu_onnx(b, x, SELU_ALPHA, SELU_SCALE, "selu")


SOFTPLUS_THRESHOLD = 20.0  # PyTorch's: z itself above it
SOFTPLUS_TOP = SOFTPLUS_THRESHOLD + math.log1p(math.exp(-SOFTPLUS_THRESHOLD))  # softplus(20): y above it has z > 20


@register
class Softplus(Activation):
    """log(1 + e^z), z itself above 20: PyTorch's softplus (beta 1). Its derivative sigmoid(z)
    is 1 - e^-y, from y."""
    name, init, torch, jax = "softplus", "he", "F.softplus(z)", "jax.nn.softplus(z)"
    library_float64 = frozenset({"forward", "derivative"})
    long_float32 = frozenset({"forward", "small_forward"})

    @staticmethod
    def scalar(m):
        zero, one, top, top_y = m(0.0), m(1.0), m(SOFTPLUS_THRESHOLD), m(SOFTPLUS_TOP)
        exp, log1p, expm1 = m.exp, m.log1p, m.expm1

        def forward(z):
            soft = (z if z > zero else zero) + log1p(exp(-abs(z)))
            return z if z > top else soft
        return forward, (lambda y, z: one if y > top_y else -expm1(-y))

    @staticmethod
    def array(z):
        return np.where(z > SOFTPLUS_THRESHOLD, z, np.maximum(z, 0) + np.log1p(np.exp(-np.abs(z))))

    @staticmethod
    def array_derivative(y, z):
        return np.where(y > y.dtype.type(SOFTPLUS_TOP), 1, -np.expm1(-y)).astype(y.dtype)

    @staticmethod
    def onnx(b, x):  # (ONNX Runtime's Softplus kernel takes float32 only)
        soft = b.node("Add", [b.node("Max", [x, b.const("zero", 0.0)]),
                              b.node("Log", [b.node("Add", [b.const("one", 1.0),
                                                            b.node("Exp", [b.node("Neg", [b.node("Abs", [x])])])])])])
        return b.node("Where", [b.node("Greater", [x, b.const("softplus_top", SOFTPLUS_THRESHOLD)]), x, soft],
                      "softplus")


@register
class Mish(Activation):
    """z tanh(softplus(z)): PyTorch's mish. With n = e^z, tanh(log(1 + n)) = n (n + 2) / (n (n + 2) + 2)
    (exact for z << 0, and 1 from z = 20 on in both dtypes)."""
    name, needs_z, init, torch, jax = "mish", True, "he", "F.mish(z)", "z * jax.numpy.tanh(jax.nn.softplus(z))"

    @staticmethod
    def scalar(m):
        one, two, top = m(1.0), m(2.0), m(SOFTPLUS_THRESHOLD)
        exp = m.exp

        @m.inline
        def parts(z):  # (tanh(softplus z), 1 - that squared, sigmoid z)
            n = exp(top if z > top else z)
            q = n * (n + two)
            t = q / (q + two)
            return t, (one + t) * two / (q + two), n / (one + n)

        def derivative(y, z):
            t, one_minus_t2, s = parts(z)
            return one if z > top else t + z * one_minus_t2 * s  # (1 - t^2 is 0 there: 1 at z = inf)
        return (lambda z: z * parts(z)[0]), derivative

    @staticmethod
    def array(z):
        return z * np.tanh(Softplus.array(z))

    @staticmethod
    def array_derivative(y, z):
        t = np.tanh(Softplus.array(z))
        return np.where(z > SOFTPLUS_THRESHOLD, 1, t + z * _np_sigmoid(z) * (1 - t * t)).astype(z.dtype)

    @staticmethod
    def onnx(b, x):  # (Mish needs opset 18)
        return b.node("Mul", [x, b.node("Tanh", [Softplus.onnx(b, x)])], "mish")


# -- what the rest of fastnn reads -------------------------------------------------------

CODES = {name: a.code for name, a in REGISTRY.items()}
NAMES = {a.code: name for name, a in REGISTRY.items()}
BY_CODE = tuple(REGISTRY.values())
NEEDS_PREACTIVATION = frozenset(a.code for a in BY_CODE if a.needs_z)
IDENTITY = Identity.code


def code_of(activation) -> int:
    """Map an activation name (or None for identity) to its kernel code."""
    if activation is None:
        return IDENTITY
    if isinstance(activation, str) and activation in CODES:
        return CODES[activation]
    raise ValueError(f"unknown activation {activation!r}; expected None or one of {list(CODES)}")


_TWIN = tuple(a.scalar(PYTHON) for a in BY_CODE)


def activate(z, act):
    """act(z) for one element; ``act`` is a constant code in kernels. NaN propagates as in the
    reference. Plain Python (NUMBA_DISABLE_JIT=1) runs this float64 version."""
    return _TWIN[act][0](z)


def _literal_code(act):
    # Kernels pass constant codes only: a run-time code would compile every activation.
    return act.literal_value if isinstance(act, types.IntegerLiteral) else None


def _maths(t):
    return FLOAT32 if t == types.float32 else FLOAT64


@typed_helper(activate)
def _activate_impl(z, act):
    code = _literal_code(act)
    if code is None:
        return None
    forward = inline_scalar(BY_CODE[code].scalar(_maths(z))[0])
    return lambda z, act: forward(z)


# Differentiates `activate`: the derivative of y = act(z), from y (and z where ``needs_z``).
def derivative(y, z, act):
    """act'(z) for one element, from y = act(z) (and z where the activation needs it); float64
    in plain Python."""
    return _TWIN[act][1](y, z)


@typed_helper(derivative)
def _derivative_impl(y, z, act):
    code = _literal_code(act)
    if code is None:
        return None
    d = inline_scalar(BY_CODE[code].scalar(_maths(y))[1])
    return lambda y, z, act: d(y, z)


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
        None (identity) or a name in ``REGISTRY``.
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

    ``y`` is the forward output; ``z`` the pre-activation, read only where the activation
    ``needs_z`` (pass ``y`` again for the others). ``dz`` may be ``dy``, which is then overwritten; it
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
