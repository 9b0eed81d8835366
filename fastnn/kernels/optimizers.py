"""Optimizers, each defined once, following PyTorch's formulas so runs compare step by step.

Shapes: P = number of parameters. p, g and every state buffer are flat (P,) arrays of one
float dtype, C-contiguous (a model keeps all its parameters in one flat buffer, so one call
updates every layer).

An optimizer's definition (a ``Rule`` subclass, registered by ``@register``) holds every part
of it, by name: its hyper-parameters (constructor order, defaults, checks), the constants its
kernel reads, its state rows (optional ones kept only while a switch is on), the kernel for
its switches, and its NumPy formula (the reference). ``fastnn.optim`` makes the public class
from it; names, checkpoints (state by row name), the command line, ``fastnn profile``, the
reference and the tests read ``RULES``. Kernels index their state and constants through the
definition's names (``row``, ``constant``), never by a position written by hand.

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
RMSprop (torch.optim.RMSprop):
    g <- g + wd*p;  s <- alpha*s + (1 - alpha) g^2
    centered: a <- a + (1 - alpha)(g - a);  d = sqrt(s - a^2) + eps;  else d = sqrt(s) + eps
    momentum mu > 0: b <- mu*b + g/d;  p <- p - lr*b;  else p <- p - lr*g/d

Every update checks what it writes, in the same loop (``_finite``), so that a step can be
applied whole or not at all: finite gradients can still overflow an update (a learning rate
of 1e30, a moment of g^2 beyond float32's range), and a NaN or inf parameter is never kept.
The gradient is consumed: each element of ``g`` is overwritten with the parameter's old value
as the new one is written (one store to a cache line already read). An element (parameter,
state) takes its new values only where all of them are finite, so nothing non-finite is ever
stored (another thread predicting meanwhile never reads one). Returns 1.0 (applied) or 0.0
(refused): then the caller puts ``p`` back from ``g``, exactly (the ``update`` driver, once per
dtype, rather than a second loop compiled into every optimizer's kernel).
"""
from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np
from numba import types

from . import _checks
from ._compose import run, slot
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
    ``state`` holds the optimizer's S state rows, ``hyper`` its constants, both in the order its
    definition names them; ``lr`` is passed apart because a schedule changes it every step.
    Switches (momentum or not, Nesterov, decoupled decay, centered) pick the kernel, so each
    compiled kernel has one loop. Returns 1.0 when applied, 0.0 when refused (see the module
    docstring); ``g`` holds the old parameters either way.
    """
    m, v = array_type(dtype, 2), array_type(dtype, 1)
    return types.float64(v, v, m, types.Array(types.float64, 1, "C"), types.float64, types.int64)


slot("optimizer_update", signature)


@helper
def _finite(x):
    """True for a finite number. x - x is 0 for finite x and NaN for NaN and +-inf; fastnn's
    fast-math flags leave out nnan and ninf, so LLVM may not fold it to 0."""
    return x - x == 0.0


# -- definitions -----------------------------------------------------------------------

class Hyper(NamedTuple):
    """A constructor argument: its name, default (REQUIRED: none) and check: "positive" (> 0),
    "nonnegative", "fraction" ([0, 1)), "betas" (two fractions) or "switch" (a bool)."""
    name: str
    default: object
    check: str


REQUIRED = object()


def check_value(hyper: Hyper, value):
    """``value`` for ``hyper``, checked; the error says what was wrong."""
    name = hyper.name
    if hyper.check == "switch":
        return bool(value)
    if hyper.check == "betas":
        b1, b2 = (float(b) for b in value)
        for which, b in (("betas[0]", b1), ("betas[1]", b2)):
            if not 0.0 <= b < 1.0:
                raise ValueError(f"{which} must lie in [0, 1), got {b!r}")
        return (b1, b2)
    if hyper.check == "fraction":
        v = float(value)
        if not 0.0 <= v < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {value!r}")
        return v
    return _checks.positive(name, value, allow_zero=hyper.check == "nonnegative")


class Rule:
    """An optimizer's definition (see the module docstring). Subclasses set:

    name: what ``fit(optimizer=...)``, the command line and ``profile`` take; title: the class name
    hyper: the constructor's arguments (``Hyper``), in order
    constants: the kernel's ``hyper`` array, by name (``constant_values`` makes them)
    rows: the state rows, in order: name -> the switch that keeps it (None: always kept); PyTorch's
        names, so runs compare buffer by buffer
    by_name: what a model's ``fit(optimizer=name)`` sets besides the defaults
    examples: settings covering every switch, checked step for step against ``torch.optim.<title>``
        (``tests/fixtures/make_optimizer_values.py`` wrote PyTorch's values)
    added_later: hyper-parameters that states saved by earlier versions lack (they load with the default)
    """

    name: str
    title: str
    hyper: tuple = ()
    constants: tuple = ()
    rows: dict = {}
    by_name: dict = {}
    examples: tuple = ()
    added_later: tuple = ()

    @classmethod
    def rows_for(cls, values) -> tuple:
        """The state rows kept for these settings (``values``: name -> value), in order."""
        return tuple(name for name, switch in cls.rows.items() if switch is None or values[switch])

    @classmethod
    def row(cls, name, **switches) -> int:
        """The index of state row ``name`` under these switches (kernels; 0 when it is not kept,
        where the kernel never reads it)."""
        kept = cls.rows_for(switches)
        return kept.index(name) if name in kept else 0

    @classmethod
    def constant(cls, name) -> int:
        """The index of constant ``name`` in the kernel's ``hyper`` array."""
        return cls.constants.index(name)

    @classmethod
    def constant_values(cls, values) -> np.ndarray:
        return np.array([float(values[name]) for name in cls.constants], dtype=np.float64)

    @staticmethod
    def check(values, changed=None):
        """Checks across arguments (``values`` may lack those not yet set; ``changed``: the one
        just assigned, if one was)."""

    @staticmethod
    def kernel(values):
        """The compiled update for these settings' switches."""
        raise NotImplementedError

    @staticmethod
    def reference(p, g, state, step, lr, **values):
        """The NumPy formula: ``(new p, new state {row name: array}``); never mutates."""
        raise NotImplementedError


RULES: dict = {}  # name -> its Rule, in the order defined


def register(cls):
    if cls.name in RULES:
        raise ValueError(f"optimizer {cls.name!r} is defined twice")
    names = [h.name for h in cls.hyper]
    assert names[0] == "lr" and set(cls.rows.values()) - {None} <= set(names), cls.name
    RULES[cls.name] = cls
    return cls


@register
class SGD(Rule):
    """Stochastic gradient descent with optional momentum, Nesterov momentum and weight decay.

    ``g <- g + weight_decay*p; v <- momentum*v + g; p <- p - lr*v`` (Nesterov:
    ``p <- p - lr*(g + momentum*v)``), as ``torch.optim.SGD`` with dampening 0.
    """
    name, title = "sgd", "SGD"
    hyper = (Hyper("lr", REQUIRED, "positive"), Hyper("momentum", 0.0, "nonnegative"),
             Hyper("weight_decay", 0.0, "nonnegative"), Hyper("nesterov", False, "switch"))
    constants = ("momentum", "weight_decay")
    rows = {"momentum_buffer": "momentum"}
    by_name = {"lr": 0.01}  # Keras' default (PyTorch's SGD has none)
    examples = ({"lr": 0.1}, {"lr": 0.1, "momentum": 0.9, "weight_decay": 0.1},
                {"lr": 0.1, "momentum": 0.9, "nesterov": True})

    @staticmethod
    def check(values, changed=None):
        if values.get("nesterov") and not values.get("momentum", 0):
            if changed == "momentum":
                raise ValueError("momentum 0 with nesterov=True: Nesterov momentum needs momentum > 0 (set "
                                 "nesterov = False first)")
            raise ValueError("nesterov=True needs momentum > 0")

    @staticmethod
    def kernel(values):
        return sgd_kernel(values["momentum"] != 0.0, bool(values["nesterov"]))

    @staticmethod
    def reference(p, g, state, step, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
        g = g + weight_decay * p
        if momentum == 0:
            return p - lr * g, {}
        v = momentum * state["momentum_buffer"] + g
        return p - lr * (g + momentum * v if nesterov else v), {"momentum_buffer": v}


@specialize
def sgd_kernel(momentum: bool, nesterov: bool):
    """The SGD update, with a momentum buffer or without (no state)."""
    MOMENTUM, WEIGHT_DECAY = SGD.constant("momentum"), SGD.constant("weight_decay")
    if not momentum:
        @kernel(python_entry=False)
        def sgd_update(p, g, state, hyper, lr, step):
            weight_decay, lr = like(hyper[WEIGHT_DECAY], p), like(lr, p)
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

    V = SGD.row("momentum_buffer", momentum=True)

    @kernel(python_entry=False)
    def sgd_momentum_update(p, g, state, hyper, lr, step):
        momentum, weight_decay, lr = like(hyper[MOMENTUM], p), like(hyper[WEIGHT_DECAY], p), like(lr, p)
        v = state[V]
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


@register
class Adam(Rule):
    """Adam (``torch.optim.Adam``): bias-corrected moments, eps added after the square root;
    ``weight_decay`` is added to the gradient (L2), unlike ``AdamW``. ``eps_after_correction``:
    True adds eps to the bias-corrected sqrt(v) (PyTorch); False to sqrt(v) before the
    correction (scikit-learn's MLPs, Keras 2), which its estimators use."""
    name, title = "adam", "Adam"
    hyper = (Hyper("lr", 1e-3, "positive"), Hyper("betas", (0.9, 0.999), "betas"), Hyper("eps", 1e-8, "nonnegative"),
             Hyper("weight_decay", 0.0, "nonnegative"), Hyper("eps_after_correction", True, "switch"))
    constants = ("beta1", "beta2", "eps", "weight_decay", "eps_after_correction")
    rows = {"exp_avg": None, "exp_avg_sq": None}
    decoupled = False
    examples = ({"lr": 0.01}, {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.1})
    added_later = ("eps_after_correction",)

    @classmethod
    def constant_values(cls, values):
        b1, b2 = values["betas"]
        return super().constant_values({**values, "beta1": b1, "beta2": b2})

    @classmethod
    def kernel(cls, values):
        return adam_kernel(cls.decoupled)

    @classmethod
    def reference(cls, p, g, state, step, lr, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                  eps_after_correction=True):
        (beta1, beta2), m, v = betas, state["exp_avg"], state["exp_avg_sq"]
        if cls.decoupled:
            p = p * (1 - lr * weight_decay)
        else:
            g = g + weight_decay * p
        m = m + (1 - beta1) * (g - m)
        v = beta2 * v + (1 - beta2) * g * g
        if eps_after_correction:
            p = p - (lr / (1 - beta1**step)) * m / (np.sqrt(v) / math.sqrt(1 - beta2**step) + eps)
        else:
            p = p - lr * math.sqrt(1 - beta2**step) / (1 - beta1**step) * m / (np.sqrt(v) + eps)
        return p, {"exp_avg": m, "exp_avg_sq": v}


@register
class AdamW(Adam):
    """AdamW (``torch.optim.AdamW``): Adam with decoupled weight decay ``p <- p*(1 - lr*wd)``."""
    name, title = "adamw", "AdamW"
    hyper = tuple(Hyper(h.name, 1e-2, h.check) if h.name == "weight_decay" else h for h in Adam.hyper)
    decoupled = True


@specialize
def adam_kernel(decoupled: bool):
    """The Adam (``decoupled=False``) or AdamW update."""
    BETA1, BETA2, EPS, WEIGHT_DECAY, EPS_AFTER = (Adam.constant(n) for n in Adam.constants)
    M, V = Adam.row("exp_avg"), Adam.row("exp_avg_sq")

    @kernel(python_entry=False)
    def adam_update(p, g, state, hyper, lr, step):
        beta1, beta2, eps, weight_decay = hyper[BETA1], hyper[BETA2], hyper[EPS], hyper[WEIGHT_DECAY]
        step_size = like(lr / (1.0 - beta1 ** step), p)
        inv_sqrt_bc2 = 1.0 / math.sqrt(1.0 - beta2 ** step)
        if hyper[EPS_AFTER] == 0.0:  # eps added to sqrt(v) before the bias correction (scikit-learn, Keras 2)
            eps = eps * inv_sqrt_bc2
        inv_sqrt_bc2 = like(inv_sqrt_bc2, p)
        shrink = like(1.0 - lr * weight_decay, p)
        # 1 - beta in float64 first: rounded to float32 before the subtraction, 1 - 0.999 is off
        # by 1.3e-5 relative (found by the fuzz tests: Adam steps off by 7e-5)
        b2, c1, c2 = like(beta2, p), like(1.0 - beta1, p), like(1.0 - beta2, p)
        eps, weight_decay = like(eps, p), like(weight_decay, p)
        m, v = state[M], state[V]
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


@register
class RMSprop(Rule):
    """RMSprop (``torch.optim.RMSprop``, its defaults): the gradient divided by the root of a
    running mean of its square (centered: of its variance), with optional momentum and L2
    weight decay."""
    name, title = "rmsprop", "RMSprop"
    hyper = (Hyper("lr", 1e-2, "positive"), Hyper("alpha", 0.99, "fraction"), Hyper("eps", 1e-8, "nonnegative"),
             Hyper("weight_decay", 0.0, "nonnegative"), Hyper("momentum", 0.0, "nonnegative"),
             Hyper("centered", False, "switch"))
    constants = ("alpha", "eps", "weight_decay", "momentum")
    rows = {"square_avg": None, "momentum_buffer": "momentum", "grad_avg": "centered"}
    examples = tuple({"lr": 0.01, "momentum": mu, "centered": c, "weight_decay": wd, "alpha": 0.9}
                     for mu in (0.0, 0.9) for c in (False, True) for wd in (0.0, 0.1))

    @staticmethod
    def kernel(values):
        return rmsprop_kernel(values["momentum"] != 0.0, bool(values["centered"]))

    @staticmethod
    def reference(p, g, state, step, lr, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False):
        g = g + weight_decay * p
        new = {"square_avg": alpha * state["square_avg"] + (1 - alpha) * g * g}
        if centered:
            new["grad_avg"] = state["grad_avg"] + (1 - alpha) * (g - state["grad_avg"])
            d = np.sqrt(new["square_avg"] - new["grad_avg"] ** 2) + eps
        else:
            d = np.sqrt(new["square_avg"]) + eps
        if momentum:
            new["momentum_buffer"] = momentum * state["momentum_buffer"] + g / d
            return p - lr * new["momentum_buffer"], new
        return p - lr * g / d, new


@specialize
def rmsprop_kernel(momentum: bool, centered: bool):
    """The RMSprop update for one setting of its two switches."""
    ALPHA, EPS, WEIGHT_DECAY, MOMENTUM = (RMSprop.constant(n) for n in RMSprop.constants)
    S, B, A = (RMSprop.row(n, momentum=momentum, centered=centered)
               for n in ("square_avg", "momentum_buffer", "grad_avg"))

    @kernel(python_entry=False)
    def rmsprop_update(p, g, state, hyper, lr, step):
        alpha, c = like(hyper[ALPHA], p), like(1.0 - hyper[ALPHA], p)  # (1 - alpha in float64 first)
        eps, weight_decay, mu, lr = like(hyper[EPS], p), like(hyper[WEIGHT_DECAY], p), like(hyper[MOMENTUM], p), \
            like(lr, p)
        s, b, a = state[S], state[B], state[A]
        bad = False
        for i in range(p.size):
            old, s_old, b_old, a_old = p[i], s[i], b[i], a[i]
            gi = g[i] + weight_decay * old
            si = alpha * s_old + c * gi * gi
            ai = a_old + c * (gi - a_old)
            d = (math.sqrt(si - ai * ai) if centered else math.sqrt(si)) + eps
            bi = mu * b_old + gi / d
            new = old - lr * (bi if momentum else gi / d)
            ok = _finite(new) & _finite(si)
            if centered:
                ok &= _finite(ai)
            if momentum:
                ok &= _finite(bi)
            bad |= not ok
            s[i] = si if ok else s_old
            if centered:
                a[i] = ai if ok else a_old
            if momentum:
                b[i] = bi if ok else b_old
            g[i] = old
            p[i] = new if ok else old
        return 0.0 if bad else 1.0
    return rmsprop_update


# -- checking wrappers ------------------------------------------------------------------

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


def refused(name):
    return UpdateRefused(f"{name} would write NaN or inf (a non-finite input, or an overflow: a learning rate or "
                         f"values too large for the dtype); nothing was changed")


class UpdateRefused(FloatingPointError):
    """An update would have written a NaN or inf; ``p`` and the state buffers are unchanged."""


def refused(name):
    return UpdateRefused(f"{name} would write NaN or inf (a non-finite input, or an overflow: a learning rate or "
                         f"values too large for the dtype); nothing was changed")


def settings(rule, values: dict) -> dict:
    """Every hyper-parameter of ``rule`` (defaults filled in), each checked, then together."""
    known = {h.name: h for h in rule.hyper}
    unknown = sorted(set(values) - set(known))
    if unknown:
        raise TypeError(f"{rule.title} has no hyper-parameter {unknown[0]!r}; it takes {list(known)}")
    out = {}
    for h in rule.hyper:
        value = values.get(h.name, h.default)
        if value is REQUIRED:
            raise TypeError(f"{rule.title} needs {h.name}")
        out[h.name] = check_value(h, value)
    rule.check(out)
    return out


def optimizer_update(name, p, g, state, step, lr, labels=None, **hyper):
    """One step of optimizer ``name`` (a key of ``RULES``) in place on flat ``p`` (P,).

    ``state``: ``{row name: (P,) array}`` for the rows these settings keep (missing rows start
    at 0), updated in place and returned with ``p``. ``g`` is not modified; no two arrays may
    overlap. Raises ``UpdateRefused`` (a FloatingPointError), changing nothing, when a new
    value would be NaN or inf. ``labels``: what error messages call the rows.
    """
    rule = RULES[name]
    values = settings(rule, {**hyper, "lr": lr})
    rows = rule.rows_for(values)
    _check_flat(p, g)
    state = {r: state[r] if r in state else np.zeros_like(p) for r in rows}
    _check_flat(p, g, *(((labels or {}).get(r, r), a) for r, a in state.items()))
    step = _checks.positive_int("step", step)
    packed = np.empty((len(rows), p.size), p.dtype)
    for k, r in enumerate(rows):
        packed[k] = state[r]
    old = g.copy()
    if not run(rule.kernel(values), signature(p.dtype), p, old, packed, rule.constant_values(values),
               values["lr"], step):
        p[...] = old
        raise refused(f"{name}_update")
    for k, r in enumerate(rows):
        state[r][...] = packed[k]
    return p, state


def sgd_update(p, g, v, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD step in place on flat ``p`` (P,) and momentum buffer ``v`` (P,).

    ``v`` is read and written only when ``momentum != 0`` (pass any (P,) array otherwise).
    No two arrays may overlap; ``g`` is not modified. Returns ``(p, v)``. Raises
    ``UpdateRefused`` (a FloatingPointError), changing nothing, when a new value of ``p`` or
    ``v`` would be NaN or inf.
    """
    _check_flat(p, g, ("v", v))
    optimizer_update("sgd", p, g, {"momentum_buffer": v}, 1, lr, momentum=momentum, weight_decay=weight_decay,
           nesterov=nesterov, labels={"momentum_buffer": "v"})
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
    for name, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"{name} must lie in [0, 1), got {beta!r}")
    optimizer_update("adamw" if decoupled else "adam", p, g, {"exp_avg": m, "exp_avg_sq": v}, step, lr,
           labels={"exp_avg": "m", "exp_avg_sq": "v"}, betas=(beta1, beta2), eps=eps, weight_decay=weight_decay, eps_after_correction=eps_after_correction)
    return p, m, v
