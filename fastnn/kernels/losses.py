"""Losses, each fused with its gradient: one call returns the loss and writes d(loss).

Shapes: N = batch, C = classes / outputs.
    logits (N, C) float, labels (N,) int64 in [0, C), dlogits (N, C)
    pred (N, C) float, target (N, C) float, dpred (N, C)
    logits (N, K) float, target (N, K) float in [0, 1], dlogits (N, K)   binary cross-entropy
    logits (N, K) float (log rates), target (N, K) float >= 0, dlogits (N, K)   poisson
    weights (N,) float: each row's weight (ones for a plain mean)
Kernels take the targets as raw bytes, ``y`` (N, row bytes) uint8 (``_jit.raw_rows_of``), and
read them back as their own dtype (``typed_rows``): then every loss has one signature and
one compiled driver serves them all.
The loss is the weighted mean over rows, sum_i w_i l_i / sum_i w_i, of each row's loss l_i:
cross-entropy for softmax_cross_entropy, the mean over the row's C (or K) elements for mse
and binary_cross_entropy; with
unit weights these are PyTorch's defaults (mean over rows; mean over all elements). Rows of
weight 0 contribute nothing; if every weight is 0 the loss and its gradient are 0. Sums are
accumulated in float64 whatever the array dtype.

A kernel that indexes with its targets checks them first: an out-of-range label makes it
return ``BAD_TARGET`` (no loss is negative) and write nothing.

The L2 penalty of a weight matrix (scikit-learn's ``alpha``), added to a loss when a run asks
for it: W (I, O) and dW (I, O) of one dtype; ``c`` float64 is alpha / (sum of the batch's row
weights); it returns ``c/2 * sum(W^2)`` and adds ``c * W`` to dW (biases are not penalised).
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from . import _checks
from ._compose import raw_rows_of, run, slot, typed_rows
from ._jit import REDUCTION, array_type, kernel
from .activations import exp_
from .optimizers import like

BAD_TARGET = -1.0


def signatures(dtype):
    """(loss, metric) Numba signatures, the same for every loss: what a driver calls. A loss
    takes (input, y, weights, cap, d(input)): ``cap`` float64 > 0 caps each row's (or element's)
    loss of the cross-entropies at that value, as scikit-learn's log loss does by clipping
    probabilities to [eps, 1 - eps] (so its stopping rules see its numbers); 0: no cap. The
    gradient is never capped."""
    m, v, raw = array_type(dtype, 2), array_type(dtype, 1), types.Array(types.uint8, 2, "C")
    return types.float64(m, raw, v, types.float64, m), types.float64(m, raw, v)


def penalty_signature(dtype):
    """The L2 penalty's Numba signature: float64(W, dW, c)."""
    m = array_type(dtype, 2)
    return types.float64(m, m, types.float64)


slot("loss", lambda dtype: signatures(dtype)[0])
slot("metric", lambda dtype: signatures(dtype)[1])
slot("penalty", penalty_signature)


# penalty = c/2 sum W^2, d(penalty)/dW = c W. A sum of squares cannot cancel: reassociated.
@kernel(python_entry=False, fastmath=REDUCTION)
def _l2_penalty(W, dW, c):
    total = 0.0
    flat, grad = W.reshape(-1), dW.reshape(-1)
    scale = like(c, W)
    for i in range(flat.size):
        w = flat[i]
        grad[i] += scale * w
        total += w * w
    return 0.5 * c * total


# loss_i = logsumexp(logits_i) - logits_i[label_i], with the max subtracted first so logits
# of +-1e4 neither overflow nor give NaN. d(loss)/d(logits_i) = w_i / sum(w) (softmax_i - onehot_i).
@kernel(python_entry=False)
def _softmax_cross_entropy(logits, y, weights, cap, dlogits):
    n, c = logits.shape
    labels = typed_rows(y, np.int64)[:, 0]
    total_weight = 0.0
    for i in range(n):
        if labels[i] < 0 or labels[i] >= c:
            return BAD_TARGET
        total_weight += weights[i]
    inv_w = 1.0 / total_weight if total_weight != 0.0 else 0.0
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
        w = weights[i]
        if w != 0.0:  # a row of weight 0 adds nothing, even if its loss is inf
            row = math.log(s) - (logits[i, labels[i]] - m)  # not m + log(s) - logit: log(s) vanishes next to 1e30
            total += w * (cap if cap > 0.0 and row > cap else row)
        scale = w * inv_w / s
        for j in range(c):
            dlogits[i, j] *= scale
        dlogits[i, labels[i]] -= w * inv_w
    return total * inv_w


@kernel(python_entry=False)
def _count_correct(logits, y, weights):
    """sum of w_i over rows whose largest logit is at label_i (the first largest on ties)."""
    labels = typed_rows(y, np.int64)[:, 0]
    correct = 0.0
    for i in range(logits.shape[0]):
        best = 0
        for j in range(1, logits.shape[1]):
            if logits[i, j] > logits[i, best]:
                best = j
        if best == labels[i]:
            correct += weights[i]
    return correct


# loss_i = mean_j (pred_ij - target_ij)^2; d(loss)/d(pred_ij) = w_i / sum(w) * 2 (pred_ij - target_ij) / C.
# Its sums are of terms >= 0, which no order can cancel: reassociated, the loop over C vectorises.
@kernel(python_entry=False, fastmath=REDUCTION)
def _mse(pred, y, weights, cap, dpred):
    n, c = pred.shape
    target = typed_rows(y, pred)
    total_weight = 0.0
    for i in range(n):
        total_weight += weights[i]
    inv_w = 1.0 / total_weight if total_weight != 0.0 else 0.0
    total = 0.0
    for i in range(n):
        w = weights[i]
        row = 0.0
        scale = 2.0 * w * inv_w / c
        for j in range(c):
            d = pred[i, j] - target[i, j]
            row += d * d
            dpred[i, j] = d * scale
        if w != 0.0:
            total += w * row
    return total * inv_w / c


# Binary cross-entropy on logits, one independent label per column (binary and multi-label
# classification; PyTorch's BCEWithLogitsLoss): loss_ij = log(1 + e^x) - t x, written as
# max(x, 0) - t x + log1p(e^-|x|), which neither overflows nor loses log1p's small values for
# logits of any size. d(loss)/d(x_ij) = w_i / sum(w) * (sigmoid(x_ij) - t_ij) / K.
# A target outside [0, 1] (or NaN) makes it return BAD_TARGET and write nothing.
@kernel(python_entry=False)
def _binary_cross_entropy(logits, y, weights, cap, dlogits):
    n, k = logits.shape
    target = typed_rows(y, logits)
    total_weight = 0.0
    for i in range(n):
        for j in range(k):
            if not (target[i, j] >= 0.0 and target[i, j] <= 1.0):
                return BAD_TARGET
        total_weight += weights[i]
    inv_w = 1.0 / total_weight if total_weight != 0.0 else 0.0
    total = 0.0
    for i in range(n):
        w = weights[i]
        scale = w * inv_w / k
        row = 0.0
        for j in range(k):
            x, t = logits[i, j], target[i, j]
            e = exp_(-abs(x))
            # max(x, 0) - t x, as (1 - t) x or -t x: no cancellation between two large terms
            loss = ((1.0 - t) * x if x > 0.0 else -t * x) + math.log1p(e)
            row += cap if cap > 0.0 and loss > cap else loss
            p = 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
            dlogits[i, j] = (p - t) * scale
        if w != 0.0:
            total += w * row
    return total * inv_w / k


# Half the Poisson deviance with a log link (scikit-learn's MLPRegressor(loss="poisson")), the
# network's output x being the log of the rate: loss_ij = t log(t) - t - t x + e^x (0 when e^x =
# t; t log t = 0 at t = 0); d(loss)/d(x_ij) = w_i / sum(w) * (e^x - t) / K. A negative or NaN
# target makes it return BAD_TARGET and write nothing.
@kernel(python_entry=False)
def _poisson(logits, y, weights, cap, dlogits):
    n, k = logits.shape
    target = typed_rows(y, logits)
    total_weight = 0.0
    for i in range(n):
        for j in range(k):
            if not target[i, j] >= 0.0:
                return BAD_TARGET
        total_weight += weights[i]
    inv_w = 1.0 / total_weight if total_weight != 0.0 else 0.0
    total = 0.0
    for i in range(n):
        w = weights[i]
        scale = w * inv_w / k
        row = 0.0
        for j in range(k):
            x, t = logits[i, j], target[i, j]
            rate = exp_(x)
            row += (t * math.log(t) if t > 0.0 else 0.0) - t - t * x + rate
            dlogits[i, j] = (rate - t) * scale
        if w != 0.0:
            total += w * row
    return total * inv_w / k


@kernel(python_entry=False)
def _count_binary_correct(logits, y, weights):
    """sum of w_i times the share of row i's labels predicted right (logit > 0 for target >= 0.5):
    Keras' binary accuracy, which for multi-label data is the mean over labels."""
    target = typed_rows(y, logits)
    n, k = logits.shape
    correct = 0.0
    for i in range(n):
        right = 0
        for j in range(k):
            if (logits[i, j] > 0.0) == (target[i, j] >= 0.5):
                right += 1
        correct += weights[i] * right / k
    return correct


# The bare kernels the engine's drivers call, by loss: (loss kernel, metric kernel or None,
# whether it takes integer labels); and the L2 penalty's.
BARE = {
    "softmax_cross_entropy": (_softmax_cross_entropy, _count_correct, True),
    "mse": (_mse, None, False),
    "binary_cross_entropy": (_binary_cross_entropy, _count_binary_correct, False),
    "poisson": (_poisson, None, False),
}
BARE_PENALTY = _l2_penalty


def _grad_output(name, g, like):
    if g is None:
        return np.empty_like(like)
    _checks.float_array(name, g, ndim=2, dtype=like.dtype)
    _checks.shape(name, g, like.shape)
    _checks.writable(name, g)
    return g


def _weights(weights, n, dtype):
    if weights is None:
        return np.ones(n, dtype)
    _checks.float_array("weights", weights, ndim=1, dtype=dtype)
    _checks.shape("weights", weights, (n,))
    if not (np.all(np.isfinite(weights)) and np.all(weights >= 0)):
        raise ValueError("weights must be finite and >= 0")
    return weights


def softmax_cross_entropy(logits, labels, dlogits=None, weights=None, cap=0.0):
    """Mean softmax cross-entropy over rows, and its gradient.

    Parameters
    ----------
    logits : ndarray (N, C), float32 or float64, C-contiguous
    labels : ndarray (N,), int64, values in [0, C)
    dlogits : ndarray (N, C), optional
        Receives d(loss)/d(logits) (overwritten); allocated when omitted. It may not overlap
        logits or labels.
    weights : ndarray (N,) of logits' dtype, optional
        Row weights >= 0; the loss is then sum(w_i l_i) / sum(w_i) (PyTorch's ``weight=``
        convention; Keras divides by N instead).
    cap : float >= 0
        Each row's loss is at most ``cap`` (0: uncapped), as scikit-learn's log loss clips
        probabilities at eps (``-log(eps)``); the gradient is not capped.

    Returns
    -------
    loss : float
    dlogits : ndarray (N, C)
    """
    _checks.float_array("logits", logits, ndim=2)
    _checks.nonempty("logits", logits)
    _checks.label_array("labels", labels, logits.shape[0], logits.shape[1])
    dlogits = _grad_output("dlogits", dlogits, logits)
    weights = _weights(weights, logits.shape[0], logits.dtype)
    _checks.no_overlap("dlogits", dlogits, ("logits", logits), ("labels", labels), ("weights", weights))
    cap = _checks.positive("cap", cap, allow_zero=True)
    return float(run(_softmax_cross_entropy, signatures(logits.dtype)[0], logits, raw_rows_of(labels), weights, cap,
                     dlogits)), dlogits


def mse(pred, target, dpred=None, weights=None):
    """Mean squared error over all elements (PyTorch's ``MSELoss``), and its gradient.

    Parameters
    ----------
    pred, target : ndarray (N, C), same float dtype, C-contiguous
    dpred : ndarray (N, C), optional
        Receives d(loss)/d(pred) (overwritten); allocated when omitted. It may be ``pred``
        itself (then pred is overwritten) but may not overlap target.
    weights : ndarray (N,) of pred's dtype, optional
        Row weights >= 0: the loss is sum_i w_i mean_j(d_ij^2) / sum_i w_i.

    Returns
    -------
    loss : float
    dpred : ndarray (N, C)
    """
    return _float_target_loss(_mse, ("pred", pred), target, ("dpred", dpred), weights)


def binary_cross_entropy(logits, target, dlogits=None, weights=None, cap=0.0):
    """Mean binary cross-entropy of sigmoid(logits) against targets in [0, 1], and its gradient.

    Fused and stable for logits of any size (PyTorch's ``BCEWithLogitsLoss``; Keras'
    ``binary_crossentropy(from_logits=True)``): the mean over all N x K elements, each column
    an independent binary label.

    Parameters
    ----------
    logits : ndarray (N, K), float32 or float64, C-contiguous
    target : ndarray (N, K) of logits' dtype, values in [0, 1] (0/1 labels, or probabilities)
    dlogits : ndarray (N, K), optional
        Receives d(loss)/d(logits) (overwritten); allocated when omitted. It may be ``logits``
        itself but may not overlap target.
    weights : ndarray (N,) of logits' dtype, optional
        Row weights >= 0: the loss is sum_i w_i mean_j(l_ij) / sum_i w_i.
    cap : float >= 0
        Each element's loss is at most ``cap`` (0: uncapped), as scikit-learn's log loss clips
        probabilities at eps; the gradient is not capped.

    Returns
    -------
    loss : float
    dlogits : ndarray (N, K)
    """
    _checks.float_array("target", target, ndim=2)
    if not (np.all(target >= 0) and np.all(target <= 1)):  # (NaN fails both)
        raise ValueError("target must hold values in [0, 1] (0/1 labels or probabilities)")
    return _float_target_loss(_binary_cross_entropy, ("logits", logits), target, ("dlogits", dlogits), weights,
                              _checks.positive("cap", cap, allow_zero=True))


def poisson(logits, target, dlogits=None, weights=None):
    """Half the Poisson deviance of rates exp(logits) against counts or rates, and its gradient
    (scikit-learn's ``MLPRegressor(loss="poisson")``; PyTorch's ``PoissonNLLLoss(log_input=True)``
    up to a constant): the mean over all N x K elements of t log t - t - t x + e^x.

    Parameters
    ----------
    logits : ndarray (N, K), float32 or float64, C-contiguous: log rates
    target : ndarray (N, K) of logits' dtype, values >= 0
    dlogits : ndarray (N, K), optional
        Receives d(loss)/d(logits) (overwritten); allocated when omitted. It may be ``logits``
        itself but may not overlap target.
    weights : ndarray (N,) of logits' dtype, optional
        Row weights >= 0: the loss is sum_i w_i mean_j(l_ij) / sum_i w_i.

    Returns
    -------
    loss : float
    dlogits : ndarray (N, K)
    """
    _checks.float_array("target", target, ndim=2)
    if not np.all(target >= 0):  # (NaN fails it)
        raise ValueError("target must hold counts or rates >= 0")
    return _float_target_loss(_poisson, ("logits", logits), target, ("dlogits", dlogits), weights)


def _float_target_loss(kernel, named_input, target, named_grad, weights, cap=0.0):
    """The checks and the call shared by the losses whose targets are floats shaped like the
    input (mse, binary cross-entropy): the gradient may be the input itself, not the target."""
    (name, a), (grad_name, grad) = named_input, named_grad
    _checks.float_array(name, a, ndim=2)
    _checks.nonempty(name, a)
    _checks.float_array("target", target, ndim=2, dtype=a.dtype)
    _checks.shape("target", target, a.shape)
    grad = _grad_output(grad_name, grad, a)
    weights = _weights(weights, a.shape[0], a.dtype)
    _checks.no_overlap(grad_name, grad, (name, a), allow_same=True)
    _checks.no_overlap(grad_name, grad, ("target", target), ("weights", weights))
    return float(run(kernel, signatures(a.dtype)[0], a, raw_rows_of(target), weights, cap, grad)), grad


def l2_penalty(W, dW, c):
    """The L2 penalty ``c/2 * sum(W^2)`` of a weight matrix, returned, and its gradient ``c * W``
    added to ``dW`` in place (``c``: alpha divided by the batch's sum of row weights, as
    scikit-learn's MLPs). W and dW (I, O) of one float dtype, C-contiguous, not overlapping.

    Returns
    -------
    penalty : float
    dW : ndarray (I, O), the same array, with c * W added
    """
    _checks.float_array("W", W, ndim=2)
    _checks.float_array("dW", dW, ndim=2, dtype=W.dtype)
    _checks.shape("dW", dW, W.shape)
    _checks.writable("dW", dW)
    _checks.no_overlap("dW", dW, ("W", W))
    c = _checks.positive("c", c, allow_zero=True)
    return float(run(_l2_penalty, penalty_signature(W.dtype), W, dW, c)), dW
