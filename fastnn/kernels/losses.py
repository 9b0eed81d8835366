"""Losses, each fused with its gradient: one call returns the mean loss and writes d(loss).

Shapes: N = batch, C = classes / outputs.
    logits (N, C) float, labels (N,) int64 in [0, C), dlogits (N, C)
    pred (N, C) float, target (N, C) float, dpred (N, C)
Means are over rows for cross-entropy and over all elements for MSE (PyTorch's defaults).
The loss is accumulated in float64 whatever the array dtype.
"""
from __future__ import annotations

import math

import numpy as np

from . import _checks
from ._jit import kernel
from .activations import exp_


# loss_i = logsumexp(logits_i) - logits_i[label_i], with the max subtracted first so logits
# of +-1e4 neither overflow nor give NaN. d(mean loss)/d(logits) = (softmax - onehot) / N.
@kernel
def _softmax_cross_entropy(logits, labels, dlogits):
    n, c = logits.shape
    inv_n = 1.0 / n
    total = 0.0
    for i in range(n):
        m = logits[i, 0]
        for j in range(1, c):
            if logits[i, j] > m:
                m = logits[i, j]
        s = 0.0
        for j in range(c):
            e = exp_(logits[i, j] - m)
            dlogits[i, j] = e
            s += e
        total += math.log(s) - (logits[i, labels[i]] - m)  # not m + log(s) - logit: log(s) vanishes next to 1e30
        scale = inv_n / s
        for j in range(c):
            dlogits[i, j] *= scale
        dlogits[i, labels[i]] -= inv_n
    return total * inv_n


# loss = mean((pred - target)^2) over all N*C elements; d/d(pred) = 2 (pred - target) / (N*C).
@kernel
def _mse(pred, target, dpred):
    n, c = pred.shape
    scale = 2.0 / (n * c)
    total = 0.0
    for i in range(n):
        for j in range(c):
            d = pred[i, j] - target[i, j]
            total += d * d
            dpred[i, j] = d * scale
    return total / (n * c)


def _grad_output(name, g, like):
    if g is None:
        return np.empty_like(like)
    _checks.float_array(name, g, ndim=2, dtype=like.dtype)
    _checks.shape(name, g, like.shape)
    _checks.writable(name, g)
    return g


def softmax_cross_entropy(logits, labels, dlogits=None):
    """Mean softmax cross-entropy over rows, and its gradient.

    Parameters
    ----------
    logits : ndarray (N, C), float32 or float64, C-contiguous
    labels : ndarray (N,), int64, values in [0, C)
    dlogits : ndarray (N, C), optional
        Receives d(mean loss)/d(logits) (overwritten); allocated when omitted.

    Returns
    -------
    loss : float
    dlogits : ndarray (N, C)
    """
    _checks.float_array("logits", logits, ndim=2)
    _checks.nonempty("logits", logits)
    _checks.label_array("labels", labels, logits.shape[0], logits.shape[1])
    dlogits = _grad_output("dlogits", dlogits, logits)
    return float(_softmax_cross_entropy(logits, labels, dlogits)), dlogits


def mse(pred, target, dpred=None):
    """Mean squared error over all elements (PyTorch's ``MSELoss``), and its gradient.

    Parameters
    ----------
    pred, target : ndarray (N, C), same float dtype, C-contiguous
    dpred : ndarray (N, C), optional
        Receives d(loss)/d(pred) (overwritten); allocated when omitted.

    Returns
    -------
    loss : float
    dpred : ndarray (N, C)
    """
    _checks.float_array("pred", pred, ndim=2)
    _checks.nonempty("pred", pred)
    _checks.float_array("target", target, ndim=2, dtype=pred.dtype)
    _checks.shape("target", target, pred.shape)
    dpred = _grad_output("dpred", dpred, pred)
    return float(_mse(pred, target, dpred)), dpred
