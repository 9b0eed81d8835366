"""Plain NumPy versions of every kernel: the oracle for correctness and the speed baseline.

Same names and arguments as ``fastnn.kernels`` minus the outputs. Every function returns
new arrays and never mutates its inputs; the optimizer updates return the new parameters
and the new state. Shapes as in the kernels: N = batch, I = in_features, O = out_features.
"""
from __future__ import annotations

import numpy as np

from .kernels import dense, layernorm
from .kernels.activations import BY_CODE, code_of
from .kernels.optimizers import RULES


def activation_forward(z, act):
    """``act(z)`` element-wise; z (N, O). (The NumPy form in the activation's definition.)"""
    return BY_CODE[code_of(act)].array(z)


def _sigmoid(u):
    e = np.exp(-np.abs(u))
    return np.where(u >= 0, 1 / (1 + e), e / (1 + e))


def activation_backward(dy, y, z, act):
    """``dy * act'(z)``, from the output ``y`` (and the pre-activation ``z`` where the activation
    needs it)."""
    return dy * BY_CODE[code_of(act)].array_derivative(y, z)


def dense_forward(x, W, b, act):
    """``act(x @ W + b)``; x (N, I), W (I, O), b (O,) -> (N, O). (The Dense kind's twin.)"""
    return dense.reference_forward(x, W, b, act)[0]


def dense_backward(dout, x, W, out, z, act, need_dx=True):
    """``(dW, db, dx)`` from ``dout = dL/d(out)``; dx is None when ``need_dx`` is False."""
    return dense.reference_backward(dout, x, W, out, z, act, need_dx)


def layernorm_forward(x, weight, bias, eps=1e-5):
    """LayerNorm's output; x (N, O), weight and bias (O,). (The LayerNorm kind's twin.)"""
    return layernorm.reference_forward(x, weight, bias, eps)[0]


def layernorm_backward(dout, x, weight, eps=1e-5, need_dx=True):
    """``(dweight, dbias, dx)`` of LayerNorm from ``dout = dL/d(out)``."""
    return layernorm.reference_backward(dout, x, weight, eps, need_dx)


def softmax_cross_entropy(logits, labels, cap=0.0):
    """``(mean loss, dlogits)`` of softmax cross-entropy; logits (N, C), labels (N,) int. ``cap``
    > 0: each row's loss at most ``cap`` (the gradient uncapped)."""
    n = logits.shape[0]
    shifted = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(shifted)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    row = np.log(s[:, 0]) - shifted[rows, labels]
    loss = np.mean(np.minimum(row, cap) if cap > 0 else row, dtype=np.float64)
    d = e / s
    d[rows, labels] -= 1
    return float(loss), d / n


def mse(pred, target):
    """``(mean((pred - target)^2), d/d(pred))``, the mean over all elements."""
    diff = pred - target
    return float(np.mean(diff * diff, dtype=np.float64)), diff * (2 / diff.size)


def poisson(logits, target):
    """``(mean loss, dlogits)`` of half the Poisson deviance with a log link over all elements:
    mean(t log t - t - t x + e^x), in float64."""
    x, t = logits.astype(np.float64), target.astype(np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        tlogt = np.where(t > 0, t * np.log(np.where(t > 0, t, 1.0)), 0.0)
    rate = np.exp(x)
    return float(np.mean(tlogt - t - t * x + rate)), ((rate - t) / t.size).astype(logits.dtype)


def l2_penalty(W, c):
    """``(c/2 * sum(W^2), c * W)``: the L2 penalty of a weight matrix and its gradient."""
    return 0.5 * c * float(np.sum(W.astype(np.float64) ** 2)), (c * W).astype(W.dtype)


def binary_cross_entropy(logits, target, cap=0.0):
    """``(mean loss, dlogits)`` of sigmoid + binary cross-entropy over all elements; logits and
    target (N, K), targets in [0, 1]: -mean(t log s + (1 - t) log(1 - s)), s = sigmoid(logits)."""
    # in float64 whatever the dtype, with -log s = log(1 + e^-x) and -log(1 - s) = log(1 + e^x)
    # from logaddexp: no rounded sigmoid near 0 or 1 to take the log of
    x, t = logits.astype(np.float64), target.astype(np.float64)
    each = t * np.logaddexp(0.0, -x) + (1 - t) * np.logaddexp(0.0, x)
    loss = np.mean(np.minimum(each, cap) if cap > 0 else each)
    return float(loss), ((_sigmoid(x) - t) / t.size).astype(logits.dtype)


def optimizer_update(name, p, g, state, step, lr, **hyper):
    """One step of optimizer ``name`` (PyTorch's formula, from its definition), with its declared
    defaults for what ``hyper`` leaves out; ``state`` is ``{row name: array}``. Returns ``(new p,
    new state)``."""
    rule = RULES[name]
    defaults = {h.name: h.default for h in rule.hyper if h.name != "lr"}
    return rule.reference(p, g, state, step, lr, **{**defaults, **hyper})


def sgd_update(p, g, v, lr, momentum=0.0, weight_decay=0.0, nesterov=False):
    """One SGD step; returns ``(new p, new v)``."""
    p, state = optimizer_update("sgd", p, g, {"momentum_buffer": v}, 1, lr, momentum=momentum,
                                weight_decay=weight_decay, nesterov=nesterov)
    return p, state.get("momentum_buffer", v.copy())


def adam_update(p, g, m, v, step, lr, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                decoupled=False, eps_after_correction=True):
    """One Adam or AdamW step (with ``eps_after_correction=False`` scikit-learn's placement, eps
    added to sqrt(v) before the bias correction); returns ``(new p, new m, new v)``."""
    p, state = optimizer_update("adamw" if decoupled else "adam", p, g, {"exp_avg": m, "exp_avg_sq": v}, step, lr,
                                betas=(beta1, beta2), eps=eps, weight_decay=weight_decay,
                                eps_after_correction=eps_after_correction)
    return p, state["exp_avg"], state["exp_avg_sq"]


def _uniform(seed, step, layer, shape):
    """The dropout kernels' counter-based uniform numbers, in NumPy (uint64 wraps)."""
    u64 = np.uint64
    element = np.arange(int(np.prod(shape)), dtype=u64).reshape(shape)
    with np.errstate(over="ignore"):
        x = (u64(seed) * u64(0x9E3779B97F4A7C15)) ^ (u64(step) * u64(0x94D049BB133111EB)) ^ (u64(layer) << u64(40))
        x = x ^ element
        x = (x ^ (x >> u64(30))) * u64(0xBF58476D1CE4E5B9)
        x = (x ^ (x >> u64(27))) * u64(0x94D049BB133111EB)
        x = x ^ (x >> u64(31))
    return (x >> u64(11)).astype(np.float64) / 9007199254740992.0


def dropout_forward(y, p_drop, seed, step, layer):
    """Inverted dropout: ``y * keep / (1 - p_drop)``, keep = uniform(seed, step, layer, index) >= p_drop."""
    keep = _uniform(seed, step, layer, y.shape) >= p_drop
    return np.where(keep, y * (1 / (1 - p_drop)), y * 0).astype(y.dtype)


def dropout_backward(dy, p_drop, seed, step, layer):
    """The same mask and scale applied to the gradient."""
    return dropout_forward(dy, p_drop, seed, step, layer)
