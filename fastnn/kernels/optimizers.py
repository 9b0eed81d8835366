"""Optimizer updates, in place, following PyTorch's formulas so runs compare step by step.

Shapes: P = number of parameters. p, g and every state buffer are flat (P,) arrays of one
float dtype, C-contiguous (a model keeps all its parameters in one flat buffer, so one call
updates every layer).

SGD (torch.optim.SGD, dampening 0):
    g <- g + wd*p;  v <- mu*v + g;  p <- p - lr*v          (Nesterov: p <- p - lr*(g + mu*v))
    with mu = 0 there is no v and p <- p - lr*g.
Adam / AdamW (torch.optim.Adam / AdamW), t = step number starting at 1:
    Adam:  g <- g + wd*p                      AdamW: p <- p * (1 - lr*wd)
    m <- m + (1 - b1)(g - m)                  (PyTorch's lerp)
    v <- b2*v + (1 - b2) g^2
    p <- p - lr/(1 - b1^t) * m / (sqrt(v)/sqrt(1 - b2^t) + eps)
    (with ``eps_after_correction`` 0, scikit-learn's and Keras 2's placement:
     p <- p - lr sqrt(1 - b2^t)/(1 - b1^t) * m / (sqrt(v) + eps), the same with eps/sqrt(1 - b2^t))

Every update checks what it writes, in the same loop (``_finite``), so that a step can be
applied whole or not at all: finite gradients can still overflow an update (a learning rate
of 1e30, a moment of g^2 beyond float32's range), and a NaN or inf parameter is never kept.
The gradient is consumed: each element of ``g`` is overwritten with the parameter's old value
as the new one is written (one store to a cache line already read). An element (parameter,
momentum, moments) takes its new values only where all of them are finite, so nothing
non-finite is ever stored (another thread predicting meanwhile never reads one). Returns 1.0 (applied) or 0.0 (refused): then the caller
puts ``p`` back from ``g``, exactly (the ``update`` driver, once per dtype, rather than a second
loop compiled into every optimizer's kernel).
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from . import _checks
from ._compose import run
from ._jit import array_type, helper, kernel, specialize, typed_helper


def like(x, a):
    """``x`` as a scalar of ``a``'s dtype (kernels only): updates of float32 parameters are
    computed in float32, as in PyTorch and the reference (float64 scalars would promote them)."""
    return x


@typed_helper(like)
def _like_impl(x, a):
    if a.dtype == types.float32:
        return lambda x, a: np.float32(x)
    return lambda x, a: np.float64(x)


def signature(dtype):
    """The Numba signature every optimizer kernel shares: what a driver calls.

    update(p (P,), g (P,), state (S, P), hyper (H,) float64, lr float64, step int64) -> float64:
    ``state`` holds the optimizer's S buffers (momentum; Adam's two moments), ``hyper`` its
    constants in the order its ``..._HYPER`` names them; ``lr`` is passed apart because a
    schedule changes it every step. Switches (momentum or not, Nesterov, decoupled decay) pick
    the kernel, so each compiled kernel has one loop. Returns 1.0 when applied, 0.0 when
    refused (see the module docstring); ``g`` holds the old parameters either way.
    """
    m, v = array_type(dtype, 2), array_type(dtype, 1)
    return types.float64(v, v, m, types.Array(types.float64, 1, "C"), types.float64, types.int64)


@helper
def _finite(x):
    """True for a finite number. x - x is 0 for finite x and NaN for NaN and +-inf; fastnn's
    fast-math flags leave out nnan and ninf, so LLVM may not fold it to 0."""
    return x - x == 0.0


SGD_HYPER = ("momentum", "weight_decay")


@specialize
def sgd_kernel(momentum: bool, nesterov: bool):
    """The SGD update, with a momentum buffer (state row 0) or without (no state)."""
    if not momentum:
        @kernel(python_entry=False)
        def sgd_update(p, g, state, hyper, lr, step):
            weight_decay, lr = like(hyper[1], p), like(lr, p)
            bad = False
            for i in range(p.size):
                old = p[i]
                new = old - lr * (g[i] + weight_decay * old)
                ok = _finite(new)
                bad |= not ok
                g[i] = old
                p[i] = new if ok else old
            return 0.0 if bad else 1.0
        return sgd_update

    @kernel(python_entry=False)
    def sgd_momentum_update(p, g, state, hyper, lr, step):
        momentum, weight_decay, lr = like(hyper[0], p), like(hyper[1], p), like(lr, p)
        v = state[0]
        bad = False
        for i in range(p.size):
            old, v_old = p[i], v[i]
            gi = g[i] + weight_decay * old
            vi = momentum * v_old + gi
            new = old - lr * (gi + momentum * vi if nesterov else vi)
            ok = _finite(new) & _finite(vi)
            bad |= not ok
            v[i] = vi if ok else v_old
            g[i] = old
            p[i] = new if ok else old
        return 0.0 if bad else 1.0
    return sgd_momentum_update


ADAM_HYPER = ("beta1", "beta2", "eps", "weight_decay", "eps_after_correction")


@specialize
def adam_kernel(decoupled: bool):
    """The Adam (``decoupled=False``) or AdamW update; state rows 0 and 1 are the moments."""
    @kernel(python_entry=False)
    def adam_update(p, g, state, hyper, lr, step):
        beta1, beta2, eps, weight_decay = hyper[0], hyper[1], hyper[2], hyper[3]
        step_size = like(lr / (1.0 - beta1 ** step), p)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
        if hyper[4] == 0.0:  # eps added to sqrt(v) before the bias correction (scikit-learn, Keras 2)
            eps = eps * inv_sqrt_bc2
        inv_sqrt_bc2 = like(inv_sqrt_bc2, p)
        shrink = like(1.0 - lr * weight_decay, p)
        # 1 - beta in float64 first: rounded to float32 before the subtraction, 1 - 0.999 is off
        # by 1.3e-5 relative (found by the fuzz tests: Adam steps off by 7e-5)
        b2, c1, c2 = like(beta2, p), like(1.0 - beta1, p), like(1.0 - beta2, p)
        eps, weight_decay = like(eps, p), like(weight_decay, p)
        m, v = state[0], state[1]
        bad = False
        for i in range(p.size):
            old, m_old, v_old = p[i], m[i], v[i]
            gi = g[i]
            if decoupled:
                new = old * shrink
            else:
                new = old
                gi += weight_decay * old
            mi = m_old + c1 * (gi - m_old)
            vi = b2 * v_old + c2 * gi * gi
            new -= step_size * mi / (math.sqrt(vi) * inv_sqrt_bc2 + eps)
            ok = _finite(new) & _finite(mi) & _finite(vi)
            bad |= not ok
            m[i] = mi if ok else m_old
            v[i] = vi if ok else v_old
            g[i] = old
            p[i] = new if ok else old
        return 0.0 if bad else 1.0
    return adam_update


def _check_flat(p, g, *state):
    _checks.float_array("p", p, ndim=1)
    _checks.writable("p", p)
    _checks.float_array("g", g, ndim=1, dtype=p.dtype)
    _checks.shape("g", g, p.shape)
    _checks.no_overlap("p", p, ("g", g))
    for name, s in state:
        _checks.float_array(name, s, ndim=1, dtype=p.dtype)
        _checks.shape(name, s, p.shape)
        _checks.writable(name, s)
        _checks.no_overlap(name, s, ("p", p), ("g", g))
    for k, (name, s) in enumerate(state):
        _checks.no_overlap(name, s, *state[k + 1:])


class UpdateRefused(FloatingPointError):
    """An update would have written a NaN or inf; ``p`` and the state buffers are unchanged."""


def _refused(name):
    return UpdateRefused(f"{name} would write NaN or inf (a non-finite input, or an overflow: a learning rate or "
                         f"values too large for the dtype); nothing was changed")


def sgd_update(p, g, v, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD step in place on flat ``p`` (P,) and momentum buffer ``v`` (P,).

    ``v`` is read and written only when ``momentum != 0`` (pass any (P,) array otherwise).
    No two arrays may overlap; ``g`` is not modified. Returns ``(p, v)``. Raises
    ``UpdateRefused`` (a FloatingPointError), changing nothing, when a new value of ``p`` or
    ``v`` would be NaN or inf.
    """
    _check_flat(p, g, ("v", v))
    lr = _checks.positive("lr", lr)
    momentum = _checks.positive("momentum", momentum, allow_zero=True)
    weight_decay = _checks.positive("weight_decay", weight_decay, allow_zero=True)
    if nesterov and momentum == 0.0:
        raise ValueError("nesterov=True needs momentum > 0")
    state = v.reshape(1, -1).copy() if momentum else v[:0].reshape(0, p.size)
    old = g.copy()
    if not run(sgd_kernel(momentum != 0.0, bool(nesterov)), signature(p.dtype), p, old, state,
               np.array([momentum, weight_decay]), lr, 1):
        p[...] = old
        raise _refused("sgd_update")
    if momentum:
        v[...] = state[0]
    return p, v


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False, eps_after_correction=True):
    """One Adam (``decoupled=False``) or AdamW (``decoupled=True``) step in place.

    ``m`` and ``v`` are the first and second moment buffers (P,); ``step`` is the 1-based
    number of this step, used for bias correction. No two arrays may overlap; ``g`` is not
    modified. Returns ``(p, m, v)``. Raises ``UpdateRefused`` (a FloatingPointError), changing
    nothing, when a new value of ``p``, ``m`` or ``v`` would be NaN or inf.
    """
    _check_flat(p, g, ("m", m), ("v", v))
    step = _checks.positive_int("step", step)
    lr = _checks.positive("lr", lr)
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {beta!r}")
    eps = _checks.positive("eps", eps, allow_zero=True)
    weight_decay = _checks.positive("weight_decay", weight_decay, allow_zero=True)
    state = np.empty((2, p.size), p.dtype)  # the kernel takes both moments as rows of one array
    state[0], state[1] = m, v
    old = g.copy()
    if not run(adam_kernel(bool(decoupled)), signature(p.dtype), p, old, state,
               np.array([beta1, beta2, eps, weight_decay, float(bool(eps_after_correction))]), lr, int(step)):
        p[...] = old
        raise _refused("adam_update")
    m[...], v[...] = state
    return p, m, v
