"""The whole training step, and a whole epoch of steps, as compiled loops over flat buffers.

One step function serves every path: ``Sequential.train_step`` calls ``_train_step`` once
per batch, and ``_train_epoch`` calls the same ``_train_step`` for every batch of an epoch
without returning to Python. Both run the same kernels as the public wrappers.

Shapes: N = batch, L = layers, P = parameters, S = sum of the layers' out_features.
    layout  (L, 6) int64   per layer: I, O, W offset, b offset (into params), act code,
                           column offset of its output (into the (N, S) activation buffers)
    params, grads (P,)     flat W0, b0, W1, b1, ... (W row-major (I, O))
    outs, douts (N*S,)     each layer's output and dL/d(output), layer k at N*offset
    zs (N*S,) or (0,)      pre-activations, used only by layers whose activation needs them
    labels (N,) int64      cross-entropy targets (empty for mse)
    targets (N*O_last,)    mse targets (empty for cross-entropy)
    hyper (8,) float64     optimizer hyper-parameters (see ``optimizer_update``)
    drops (L,) float64     dropout probability applied to each layer's output (0: none);
                           masks are keyed on (seed, step, layer, element)
    state1, state2 (P,)    optimizer state (momentum / Adam moments), or empty when unused
"""
from __future__ import annotations

import math


from ._jit import helper, kernel
from .activations import GELU
from .dense import _dense_backward, _dense_forward
from .dropout import _dropout_backward, _dropout_forward
from .losses import _mse, _softmax_cross_entropy
from .optimizers import _adam_update, _sgd_update

SOFTMAX_CROSS_ENTROPY, MSE = 0, 1
SGD, ADAM = 0, 1
CONSTANT, STEP_DECAY, COSINE = 0, 1, 2  # learning-rate schedules: schedule[0]
I_, O_, W_OFF, B_OFF, ACT, COL = range(6)


@kernel
def _view2d(flat, start, rows, cols):
    return flat[start:start + rows * cols].reshape((rows, cols))


@kernel
def _forward(X, layout, params, outs, zs, drops, seed, step, training):
    """Every layer's forward pass (dropout only when ``training``); outputs land in ``outs``."""
    n = X.shape[0]
    a = X
    for k in range(layout.shape[0]):
        i, o = layout[k, I_], layout[k, O_]
        W = _view2d(params, layout[k, W_OFF], i, o)
        b = params[layout[k, B_OFF]:layout[k, B_OFF] + o]
        out = _view2d(outs, n * layout[k, COL], n, o)
        z = _view2d(zs, n * layout[k, COL], n, o) if layout[k, ACT] == GELU else out
        _dense_forward(a, W, b, layout[k, ACT], out, z)
        if training and drops[k] > 0.0:
            _dropout_forward(out, drops[k], seed, step, k)
        a = out


@kernel
def _forward_backward(X, labels, targets, loss_code, layout, params, grads, outs, zs, douts, drops, seed, step):
    """Forward (with dropout), fused loss and backward into ``grads``; returns the mean loss."""
    n = X.shape[0]
    last = layout.shape[0] - 1
    _forward(X, layout, params, outs, zs, drops, seed, step, True)
    o_last = layout[last, O_]
    logits = _view2d(outs, n * layout[last, COL], n, o_last)
    dlogits = _view2d(douts, n * layout[last, COL], n, o_last)
    if loss_code == SOFTMAX_CROSS_ENTROPY:
        loss = _softmax_cross_entropy(logits, labels, dlogits)
    else:
        loss = _mse(logits, targets.reshape((n, o_last)), dlogits)
    no_dx = outs[:0].reshape((0, layout[0, I_]))
    for k in range(last, -1, -1):
        i, o = layout[k, I_], layout[k, O_]
        W = _view2d(params, layout[k, W_OFF], i, o)
        dW = _view2d(grads, layout[k, W_OFF], i, o)
        db = grads[layout[k, B_OFF]:layout[k, B_OFF] + o]
        out = _view2d(outs, n * layout[k, COL], n, o)
        dout = _view2d(douts, n * layout[k, COL], n, o)
        z = _view2d(zs, n * layout[k, COL], n, o) if layout[k, ACT] == GELU else out
        if drops[k] > 0.0:  # the next layer has used the dropped output; restore it for act'
            _dropout_backward(dout, drops[k], seed, step, k, out)
        if k == 0:
            _dense_backward(dout, X, W, out, z, layout[k, ACT], dW, db, no_dx, dout)
        else:
            x = _view2d(outs, n * layout[k - 1, COL], n, i)
            dx = _view2d(douts, n * layout[k - 1, COL], n, i)
            _dense_backward(dout, x, W, out, z, layout[k, ACT], dW, db, dx, dout)
    return loss


@kernel
def optimizer_update(opt_code, params, grads, hyper, state1, state2, step):
    """SGD: hyper = lr, momentum, weight_decay, nesterov; Adam/AdamW: hyper = lr, beta1,
    beta2, eps, weight_decay, decoupled. ``step`` is the 1-based step number (Adam)."""
    if opt_code == SGD:
        _sgd_update(params, grads, state1, hyper[0], hyper[1], hyper[2], hyper[3] != 0.0)
    else:
        _adam_update(params, grads, state1, state2, step, hyper[0], hyper[1], hyper[2], hyper[3], hyper[4],
                     hyper[5] != 0.0)


@kernel
def _bias_grads_finite(layout, grads):
    # A NaN or inf anywhere in a layer's dz reaches its column sums, the bias gradient: checking
    # those (sum of out_features elements) costs nothing, where checking every gradient would
    # cost 17 us per step at 784-256-128-10 (2-4% of the step).
    ok = True
    for k in range(layout.shape[0]):
        for j in range(layout[k, B_OFF], layout[k, B_OFF] + layout[k, O_]):
            ok &= math.isfinite(grads[j])
    return ok


@kernel
def _train_step(X, labels, targets, loss_code, layout, params, grads, outs, zs, douts, drops, seed,
                opt_code, hyper, state1, state2, step):
    """One step: forward, loss, backward, optimizer update. Returns the loss before it.

    When the loss or a gradient is NaN or inf, nothing is updated and NaN is returned: the
    parameters stay the last finite ones.
    """
    loss = _forward_backward(X, labels, targets, loss_code, layout, params, grads, outs, zs, douts, drops, seed, step)
    if not (math.isfinite(loss) and _bias_grads_finite(layout, grads)):
        return math.nan
    optimizer_update(opt_code, params, grads, hyper, state1, state2, step)
    return loss


@kernel
def _gather_rows(src, order, start, stop, dst):
    """dst[r] = src[order[start + r]] for the rows of one shuffled batch."""
    for r in range(stop - start):
        row = order[start + r]
        for j in range(src.shape[1]):
            dst[r, j] = src[row, j]


@kernel
def _count_correct(logits, labels):
    correct = 0
    for i in range(logits.shape[0]):
        best = 0
        for j in range(1, logits.shape[1]):
            if logits[i, j] > logits[i, best]:
                best = j
        correct += best == labels[i]
    return correct


@helper
def lr_factor(schedule, t):
    """Multiplier of the base learning rate at step t (0-based, counted over one ``fit``).

    schedule = (code, a, b, c, total_steps):
      CONSTANT:   1
      STEP_DECAY: gamma^floor(t / step_size), with a = step_size, b = gamma
      COSINE:     linear warm-up over a steps, then from 1 down to c (min factor) along half
                  a cosine that ends at total_steps
    """
    code = schedule[0]
    if code == STEP_DECAY:
        return schedule[2] ** math.floor(t / schedule[1])
    if code == COSINE:
        warmup, floor, total = schedule[1], schedule[3], schedule[4]
        if t < warmup:
            return (t + 1.0) / warmup
        progress = min(1.0, (t - warmup) / max(1.0, total - warmup))
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))
    return 1.0


@kernel
def _train_epoch(X, labels, targets, order, batch_size, first_batch, stop_batch, loss_code, layout, params, grads,
                 outs, zs, douts, drops, seed, x_buf, label_buf, target_buf, opt_code, hyper, state1, state2,
                 first_step, batch_losses, schedule, first_t):
    """Batches ``first_batch <= b < stop_batch`` of an epoch, each a ``_train_step``.

    The learning rate of batch b is ``hyper[0] * lr_factor(schedule, first_t + b - first_batch)``.

    order (N,) int64: the epoch's row order, or empty for the rows as they are (no copy).
    x_buf (batch_size, I), label_buf (batch_size,), target_buf (batch_size * O_last,): where a
    shuffled batch is gathered. batch_losses (number of batches,): each batch's loss.
    Returns (sum over batches of loss * rows, correctly classified rows, -1), or, when a step's
    loss or gradients were NaN or inf, stops there and returns that batch instead of -1.
    """
    n = X.shape[0]
    o_last = layout[layout.shape[0] - 1, O_]
    total, correct = 0.0, 0
    base_lr = hyper[0]
    for b in range(first_batch, stop_batch):
        hyper[0] = base_lr * lr_factor(schedule, first_t + b - first_batch)
        start = b * batch_size
        stop = min(start + batch_size, n)
        m = stop - start
        if order.size == 0:
            xb = X[start:stop]
            lb = labels[start:stop] if labels.size else labels
            tb = targets[start * o_last:stop * o_last] if targets.size else targets
        else:
            xb = x_buf[:m]
            _gather_rows(X, order, start, stop, xb)
            lb = label_buf[:m] if labels.size else labels
            for r in range(labels.size and m):
                lb[r] = labels[order[start + r]]
            tb = target_buf[:m * o_last] if targets.size else targets
            if targets.size:
                _gather_rows(targets.reshape((n, o_last)), order, start, stop, tb.reshape((m, o_last)))
        loss = _train_step(xb, lb, tb, loss_code, layout, params, grads, outs, zs, douts, drops, seed, opt_code,
                           hyper, state1, state2, first_step + (b - first_batch))
        batch_losses[b] = loss
        if not math.isfinite(loss):
            hyper[0] = base_lr
            return total, correct, b  # diverged: stop with the parameters of the last good step
        total += loss * m
        if loss_code == SOFTMAX_CROSS_ENTROPY:
            correct += _count_correct(_view2d(outs, m * layout[layout.shape[0] - 1, COL], m, o_last), lb)
    hyper[0] = base_lr
    return total, correct, -1
