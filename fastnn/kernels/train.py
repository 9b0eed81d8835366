"""The training step and the epoch loop: small compiled drivers over named buffers.

A driver never contains a layer's loops: it calls each layer's kernels through their
addresses (``call``), so it is compiled once per dtype and serves every model, whatever its
activations, loss and optimizer. Drivers call each other through addresses too, so no code is
compiled or optimised twice:
    forward_pass  every layer's forward pass (dropout when training)       predict
    gradients     forward_pass, the fused loss, every layer's backward     loss_and_grad, MPI
    update        the finite guard over every gradient, the optimizer       MPI (after the allreduce)
                  (which checks what it writes: applied whole or not at all)
    step          gradients, then update                                   train_step
    train_epoch   a range of (shuffled) batches, each a step               fit
Their addresses travel in ``Drivers``; Python calls them through their entry points. Drivers
take the targets ``y`` as raw bytes, (N, row bytes) uint8 (``raw_rows_of``), which each loss
reads as its own dtype: one compiled driver serves integer labels and float targets alike. Run as plain Python (``as_python``) with kernels held as callables, the same
code is what ``fastnn profile`` times kernel by kernel.

Every call into a kernel or another driver names its slot (``call("loss", ...)``): the
arguments must be that slot's signature, or the driver does not compile.

Shapes: N = rows of this batch, L = layers, P = parameters, S = sum of out_features,
Z = sum of the layers' saved widths (``kind.LayerKind.saved_width``), C = capacity.

Net: one per model.
    params, grads (P,)        every layer's parameters, flat, in layer order (each layer's W
                              block row-major, then its b block)
    layers (L,) LAYER         the layer table: one record per layer, read by field name
        src                   the layer that feeds it (INPUT: the network's input)
        skip                  the layer whose output it adds to its own (NO_SKIP: none)
        fan_in, fan_out       its I and O
        w_rows, w_cols, b_len its W (R, C) and b (B,) blocks (``kind``)
        param_at              where its W block starts in params and grads (b follows it)
        act_at                where its columns start among the S columns
        z_at, z_width         where its saved columns start among the Z columns, how many
        penalised             1: the L2 penalty covers its W
        p_drop                dropout probability on its output (0: none)
        setting               the number its kernels take besides arrays (LayerNorm's eps)
        forward, backward     addresses of its kernels (slots layer_forward, layer_backward)
      (``layer`` hands a driver everything about layer k as views and numbers)
    dropout_forward, dropout_backward, join   addresses of the dropout kernels and of the
                              kernel that adds a skip (0 when no layer uses them)
    seed                      int64: keys the dropout masks (with the step, layer and element)
Workspace: one per model and capacity.
    out, dout (C*S,)          layer k's output / d(loss)/d(output): the (N, O_k) block at N*act_at[k]
    z (C*Z,)                  what backward passes keep, the (N, z_width_k) block at N*z_at[k]
Objective: loss, metric, penalty, l2   addresses: the fused loss; a weighted count of correct
    rows (0: none); the L2 penalty kernel (0: none); l2 float64, scikit-learn's alpha (0: off):
    the loss gains l2/2 sum(W^2) / sum(w) over every weight matrix, its gradient l2 W / sum(w);
    cap float64: each row's cross-entropy at most this (0: none; ``kernels.losses.signatures``)
Optimizer: update, hyper, state, steps   address; (H,) float64 constants; (S_opt, P) buffers;
    steps (1,) int64: the optimizer's step count, advanced here by each step as it is taken
    (in the compiled code, so an interruption between two calls cannot leave it behind)
Drivers: forward, gradients, update, step   addresses of the drivers above (0: not built)
Every driver runs with subnormal floats flushed to zero (``flush_subnormals``; the caller's
mode is restored on return): they only ever make kernels slow, never models better. Only the
outermost driver of a call changes the mode; the drivers it calls find it set.

Epoch: one per epoch of ``fit``.
    X (N_all, I bytes), y (N_all, row bytes)   inputs and targets as raw bytes (``raw_rows_of``)
    w (N_all,)                row weights
    order (N_all,) int64      the epoch's row order (read when ``shuffled``)
    batch_size
    lr (B,) float64           each batch's learning rate (the schedule applied)
    x, yb, wb                 where a shuffled batch is gathered: (C, I bytes), (C, row bytes), (C,)
    losses (B,) float64       each batch's loss
    weights (B,) float64      each batch's sum of row weights
    correct (B,) float64      each batch's weight of correctly classified rows (0 without a metric)
    (per batch, so that an epoch's sums do not depend on where the compiled loop returned to
    Python: those returns are timed)
"""
from __future__ import annotations

import functools
import math
from typing import NamedTuple

import numba
import numpy as np

from numba import types
from numba.core import cgutils, config

from . import dropout, kind, losses, optimizers  # noqa: F401  (they declare the slots the drivers call)
from ._compose import clear_flush, build_view, call, flush_subnormals, restore_fp, slot, typed_rows
from ._jit import array_type, intrinsic_with_twin, kernel
from .kind import INPUT, NO_SKIP
from .losses import BAD_TARGET

OK, DIVERGED, BAD_TARGETS = 0, 1, 2  # what a step or an epoch reports
NO_KERNEL = 0  # the address of a kernel a model does not use


LAYER = np.dtype([("src", np.int64), ("skip", np.int64), ("fan_in", np.int64), ("fan_out", np.int64),
                  ("w_rows", np.int64), ("w_cols", np.int64), ("b_len", np.int64), ("param_at", np.int64),
                  ("act_at", np.int64), ("z_at", np.int64), ("z_width", np.int64), ("penalised", np.int64),
                  ("p_drop", np.float64), ("setting", np.float64), ("forward", np.int64), ("backward", np.int64)])
# The same table in plain Python (``as_python``), where kernels are callables, not addresses
LAYER_PYTHON = np.dtype([(name, object if name in ("forward", "backward") else LAYER.fields[name][0])
                         for name in LAYER.names])


class Net(NamedTuple):
    params: np.ndarray
    grads: np.ndarray
    layers: np.ndarray
    dropout_forward: int
    dropout_backward: int
    join: int
    seed: int


class Workspace(NamedTuple):
    out: np.ndarray
    dout: np.ndarray
    z: np.ndarray


class Objective(NamedTuple):
    loss: int
    metric: int
    penalty: int
    l2: float
    cap: float


class Optimizer(NamedTuple):
    update: int
    hyper: np.ndarray
    state: np.ndarray
    steps: np.ndarray


class Drivers(NamedTuple):
    """The addresses of the drivers below, by what each does."""
    forward: int
    gradients: int
    update: int
    step: int


DRIVER_FUNCTIONS = {"forward": "forward_pass", "gradients": "gradients", "update": "update", "step": "step"}


class Epoch(NamedTuple):
    X: np.ndarray
    y: np.ndarray
    w: np.ndarray
    order: np.ndarray
    shuffled: bool
    batch_size: int
    lr: np.ndarray
    x: np.ndarray
    yb: np.ndarray
    wb: np.ndarray
    losses: np.ndarray
    weights: np.ndarray
    correct: np.ndarray


@functools.cache
def group_types(dtype):
    """The Numba types of the named groups for one dtype (what every driver is compiled for)."""
    f = np.dtype(dtype)
    v, m = np.zeros(0, f), np.zeros((0, 0), f)
    return {"net": numba.typeof(Net(v, v, np.zeros(0, LAYER), 0, 0, 0, 0)),
            "ws": numba.typeof(Workspace(v, v, v)),
            "objective": numba.typeof(Objective(0, 0, 0, 0.0, 0.0)),
            "opt": numba.typeof(Optimizer(0, np.zeros(0), m, np.zeros(1, np.int64))),
            "drivers": numba.typeof(Drivers(0, 0, 0, 0)),
            "epoch": numba.typeof(Epoch(*(np.zeros((0, 0), np.uint8),) * 2, v, np.zeros(0, np.int64), False,
                                        0, np.zeros(0), *(np.zeros((0, 0), np.uint8),) * 2, v,
                                        *(np.zeros(0),) * 3)),
            "X": array_type(f, 2), "w": array_type(f, 1), "raw": types.Array(types.uint8, 2, "C")}


@functools.cache
def driver_signature(name, dtype):
    """The signature each driver is compiled for, once per dtype (targets travel as raw bytes):
    also the slot through which drivers call each other."""
    t = group_types(np.dtype(dtype).name)
    f8, i8, none = types.float64, types.int64, types.none
    net, ws, obj, opt, drv = t["net"], t["ws"], t["objective"], t["opt"], t["drivers"]
    return {"forward_pass": none(net, ws, t["X"], types.boolean, i8),
            "gradients": f8(net, ws, obj, drv, t["X"], t["raw"], t["w"], i8),
            "update": f8(net, opt, f8),
            "step": f8(net, ws, obj, opt, drv, t["X"], t["raw"], t["w"], f8),
            "train_epoch": types.Tuple((i8, i8))(net, ws, obj, opt, drv, t["epoch"], i8, i8),
            }[name]


for _name in DRIVER_FUNCTIONS.values():
    slot(_name, functools.partial(driver_signature, _name))


class Layer(NamedTuple):
    """One layer for a batch of N rows: views of its numbers, what feeds it, its kernels."""
    W: np.ndarray
    b: np.ndarray
    dW: np.ndarray
    db: np.ndarray
    out: np.ndarray
    dout: np.ndarray
    z: np.ndarray
    forward: int
    backward: int
    p_drop: float
    setting: float
    src: int
    skip: int
    penalised: int


def layer_views(net, ws, k, n):
    """``layer`` in plain Python (also how Python code finds a layer's blocks)."""
    row = net.layers[k]
    at, rows, cols, length = (int(row[f]) for f in ("param_at", "w_rows", "w_cols", "b_len"))
    o, zw, col, zcol = int(row["fan_out"]), int(row["z_width"]), n * int(row["act_at"]), n * int(row["z_at"])
    bias_at = at + rows * cols
    out = ws.out[col:col + n * o].reshape(n, o)
    return Layer(net.params[at:bias_at].reshape(rows, cols), net.params[bias_at:bias_at + length],
                 net.grads[at:bias_at].reshape(rows, cols), net.grads[bias_at:bias_at + length], out,
                 ws.dout[col:col + n * o].reshape(n, o), ws.z[zcol:zcol + n * zw].reshape(n, zw) if zw else out,
                 row["forward"], row["backward"], float(row["p_drop"]), float(row["setting"]), int(row["src"]),
                 int(row["skip"]), int(row["penalised"]))


@intrinsic_with_twin(layer_views)
def layer(typingctx, net, ws, k, n):
    """layer(net, ws, k, n): layer k for a batch of n rows (a Layer), its fields read from the
    table by name. Built in place (no compiled function, no bounds checks, no reference
    counting): the model keeps the flat buffers alive while a driver runs."""
    if not (isinstance(net, types.NamedTuple) and tuple(net.fields) == Net._fields and isinstance(ws, types.BaseNamedTuple)
            and isinstance(net.types[net.fields.index("layers")], types.Array)
            and isinstance(net.types[net.fields.index("layers")].dtype, types.Record)):
        return None  # a Net (with its table of records) and a Workspace
    record = net.types[net.fields.index("layers")].dtype
    f1 = net.types[net.fields.index("params")]
    f2 = types.Array(f1.dtype, 2, "C")
    i8 = types.int64
    f8 = types.float64
    result = types.NamedTuple([f2, f1, f2, f1, f2, f2, f2, i8, i8, f8, f8, i8, i8, i8], Layer)

    def codegen(context, builder, signature, args):
        from numba.np.arrayobj import make_array
        net_v, ws_v, k_v, n_v = args
        intp = types.intp
        k_v = context.cast(builder, k_v, signature.args[2], intp)
        n_v = context.cast(builder, n_v, signature.args[3], intp)

        def field(tuple_type, value, name):
            index = tuple_type.fields.index(name)
            return tuple_type.types[index], builder.extract_value(value, index)

        table = make_array(field(net, net_v, "layers")[0])(context, builder, field(net, net_v, "layers")[1])
        if config.BOUNDSCHECK:
            rows = cgutils.unpack_tuple(builder, table.shape, 1)[0]
            with cgutils.if_unlikely(builder, builder.icmp_unsigned(">=", k_v, rows)):
                clear_flush(builder)
                context.call_conv.return_user_exc(builder, IndexError, ("no such layer",))
        row = builder.gep(table.data, [k_v])

        def read(name):  # one field of layer k's record, by name
            member = cgutils.get_record_member(builder, row, record.offset(name),
                                               context.get_data_type(record.typeof(name)))
            return builder.load(member)
        at, rows, cols, length, o, act_at, z_at, z_width = map(read, ("param_at", "w_rows", "w_cols", "b_len",
                                                                       "fan_out", "act_at", "z_at", "z_width"))
        col, zcol = builder.mul(n_v, act_at), builder.mul(n_v, z_at)
        params, grads = field(net, net_v, "params"), field(net, net_v, "grads")
        bias_at = builder.add(at, builder.mul(rows, cols))
        out = build_view(context, builder, *field(ws, ws_v, "out"), col, (n_v, o))
        none_kept = builder.icmp_signed("==", z_width, context.get_constant(intp, 0))
        z = build_view(context, builder, *field(ws, ws_v, "z"), zcol, (n_v, z_width), used=builder.not_(none_kept))
        values = [build_view(context, builder, *params, at, (rows, cols)),
                  build_view(context, builder, *params, bias_at, (length,)),
                  build_view(context, builder, *grads, at, (rows, cols)),
                  build_view(context, builder, *grads, bias_at, (length,)),
                  out, build_view(context, builder, *field(ws, ws_v, "dout"), col, (n_v, o)),
                  builder.select(none_kept, out, z), read("forward"), read("backward"), read("p_drop"),
                  read("setting"), read("src"), read("skip"), read("penalised")]
        return context.make_tuple(builder, result, values)
    return result(net, ws, k, n), codegen


@kernel
def forward_pass(net, ws, X, training, step):
    """Every layer's forward pass, dropout included when ``training``; outputs land in ws.out."""
    mode = flush_subnormals()
    n = X.shape[0]
    for k in range(len(net.layers)):
        this = layer(net, ws, k, n)
        x = X if this.src == INPUT else layer(net, ws, this.src, n).out
        call("layer_forward", this.forward, (x, this.W, this.b, this.setting, this.out, this.z))
        if this.skip != NO_SKIP:  # a join: add the output of the layer its skip names
            call("join", net.join, (this.out, X if this.skip == INPUT else layer(net, ws, this.skip, n).out))
        if training and this.p_drop > 0.0:
            call("dropout_forward", net.dropout_forward, (this.out, this.p_drop, net.seed, step, k))
    restore_fp(mode)


@kernel
def gradients(net, ws, objective, drivers, X, y, w, step):
    """Forward (with dropout), the fused loss, and backward into net.grads. Returns the loss,
    or BAD_TARGET (no gradient computed) when a label is out of range.

    Layers run backwards; each overwrites the gradient of the layer that feeds it (its src,
    always the layer before it), and where a layer's output also fed a join (a skip), the
    join's gradient is added to it before its own backward runs."""
    mode = flush_subnormals()
    n = X.shape[0]
    last = len(net.layers) - 1
    call("forward_pass", drivers.forward, (net, ws, X, True, step))
    top = layer(net, ws, last, n)
    loss = call("loss", objective.loss, (top.out, y, w, objective.cap, top.dout))
    if loss == BAD_TARGET:
        restore_fp(mode)
        return loss
    for k in range(last, -1, -1):
        this = layer(net, ws, k, n)
        if net.join != NO_KERNEL:  # joins that added this layer's output: their gradient too
            for m in range(k + 1, last + 1):
                if net.layers[m]["skip"] == k:
                    call("join", net.join, (this.dout, layer(net, ws, m, n).dout))
        if this.p_drop > 0.0:  # the next layer has used the dropped output; restore it for act'
            call("dropout_backward", net.dropout_backward, (this.dout, this.p_drop, net.seed, step, k, this.out))
        if this.src == INPUT:
            x, dx = X, X[:0]  # no input gradient to pass on
        else:
            below = layer(net, ws, this.src, n)
            x, dx = below.out, below.dout
        call("layer_backward", this.backward, (this.dout, x, this.W, this.out, this.z, this.setting, this.dW,
                                               this.db, dx))
    if objective.l2 > 0.0:  # scikit-learn's L2 rule: weights only, over the batch's sum of row weights
        total = 0.0
        for i in range(w.shape[0]):
            total += w[i]
        if total > 0.0:
            for k in range(last + 1):
                this = layer(net, ws, k, n)
                if this.penalised:
                    loss += call("penalty", objective.penalty, (this.W, this.dW, objective.l2 / total))
    restore_fp(mode)
    return loss


@kernel(python_entry=False, fastmath=frozenset())
def gradients_finite(g):
    """The finite guard: 1.0 when no element of the flat g is NaN or +-inf, else 0.0.

    x - x is 0 for finite x and NaN for NaN and +-inf. Compiled with no fast-math flags at all,
    so LLVM may not assume x - x == 0: with fastnn's flags, LLVM 14 folded the earlier test (sum
    g * 0.0) to 0 and an overflowing gradient went through. An or over comparisons needs no
    reordering of float sums, so the loop vectorises without them."""
    bad = False
    for i in range(g.size):
        bad |= g[i] - g[i] != 0.0
    return 0.0 if bad else 1.0


@kernel
def update(net, opt, lr):
    """The finite guard, then the optimizer update as step opt.steps[0] + 1, which counts it.
    Returns 1.0, or 0.0 when a gradient is NaN or inf (nothing written) or the update would
    write a NaN or inf (the parameters put back exactly; see ``kernels.optimizers``): the
    parameters stay the last finite ones and the step is not counted. Consumes net.grads."""
    mode = flush_subnormals()
    finite = gradients_finite(net.grads)
    if finite == 1.0:
        finite = call("optimizer_update", opt.update, (net.params, net.grads, opt.state, opt.hyper, lr,
                                                        opt.steps[0] + 1))
        if finite == 1.0:
            opt.steps[0] += 1
        else:  # the update left each old parameter in the gradient it consumed
            for i in range(net.params.size):
                net.params[i] = net.grads[i]
    restore_fp(mode)
    return finite


@kernel
def step(net, ws, objective, opt, drivers, X, y, w, lr):
    """One step, the optimizer's next (opt.steps[0] + 1, which it counts): gradients, then
    update. Returns the loss before the update, NaN when the step was refused (a NaN or inf
    loss, gradient or new parameter; no parameter changed, the step not counted), or
    BAD_TARGET. A batch whose weights w sum to 0 has nothing to learn from: no update (Adam's
    moments would still move the parameters), but the step counts."""
    mode = flush_subnormals()  # once here, not again in each driver it calls
    loss = call("gradients", drivers.gradients, (net, ws, objective, drivers, X, y, w, opt.steps[0] + 1))
    weighed = False
    for i in range(w.shape[0]):
        if w[i] != 0.0:
            weighed = True
            break
    if loss != BAD_TARGET:
        if not weighed:
            opt.steps[0] += 1
        elif not (math.isfinite(loss) and call("update", drivers.update, (net, opt, lr)) == 1.0):
            loss = math.nan
    restore_fp(mode)
    return loss


@kernel
def train_epoch(net, ws, objective, opt, drivers, epoch, first_batch, stop_batch):
    """Batches first_batch <= b < stop_batch of an epoch, each a step (counted in opt.steps).

    Batch b runs at learning rate epoch.lr[b]; its loss, weight and weight of correctly
    classified rows go to epoch.losses[b], .weights[b] and .correct[b]. Returns (batches done,
    status): a step that diverges or meets a bad label stops the loop there, with the
    parameters of the last good step.
    """
    mode = flush_subnormals()
    n = epoch.X.shape[0]
    size = epoch.batch_size
    last = len(net.layers) - 1
    for b in range(first_batch, stop_batch):
        start = b * size
        m = n - start if n - start < size else size
        if epoch.shuffled:  # gather the batch's rows, as bytes: one loop for every dtype
            for r in range(m):
                row = epoch.order[start + r]
                for j in range(epoch.X.shape[1]):
                    epoch.x[r, j] = epoch.X[row, j]
                for j in range(epoch.y.shape[1]):
                    epoch.yb[r, j] = epoch.y[row, j]
                epoch.wb[r] = epoch.w[row]
            X, y, w = typed_rows(epoch.x[:m], net.params), epoch.yb[:m], epoch.wb[:m]
        else:
            X, y, w = typed_rows(epoch.X[start:start + m], net.params), epoch.y[start:start + m], \
                epoch.w[start:start + m]
        loss = call("step", drivers.step, (net, ws, objective, opt, drivers, X, y, w, epoch.lr[b]))
        epoch.losses[b] = loss
        if loss == BAD_TARGET:
            restore_fp(mode)
            return b - first_batch, BAD_TARGETS
        if not loss >= 0.0:  # NaN: the step was refused
            restore_fp(mode)
            return b - first_batch, DIVERGED
        weight = 0.0
        for i in range(m):
            weight += w[i]
        epoch.weights[b] = weight
        epoch.correct[b] = 0.0
        if objective.metric != NO_KERNEL:
            epoch.correct[b] = call("metric", objective.metric, (layer(net, ws, last, m).out, y, w))
    restore_fp(mode)
    return stop_batch - first_batch, OK
