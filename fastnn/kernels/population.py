"""Many networks of one architecture trained in one compiled loop: the population driver.

A population's M members share the layer table, the kernels and the drivers of one model
(``train``); each member has its own row of every buffer below. ``train_members`` runs a range
of members over a range of batches, each member's batches one after another (its parameters
and optimizer state stay in this core's cache for the whole range), each batch one call of
the ``step`` driver: so a member steps exactly as the same network stepped alone, and what
one member computes never depends on the others, on the order they run or on how the members
are split over threads. Python threads each run the driver over their own members, with the
GIL released and BLAS on one thread (``fastnn.nn.population``); nothing here is shared
between two threads but read-only data and the rows of members that only one thread runs.

Shapes: M = members, P = parameters per member, S = optimizer state rows, H = optimizer
constants, N = rows of the data, B = the most batches any member runs in an epoch,
R = the rows of all members' epochs together, C = batch size, I = input width.

Members: one per population.
    params, grads (M, P)       each member's flat parameters and gradients (``train.Net``)
    seeds (M,) int64           each member's dropout seed (``train.Net.seed``)
    hyper (M, H) float64       each member's optimizer constants (its weight decay among them)
    state (M, S, P)            each member's optimizer state (``train.Optimizer.state``)
    steps (M, 1) int64         each member's optimizer step count
    l2 (M,) float64            each member's L2 penalty (scikit-learn's alpha; 0: none)
    lr (M, B) float64          each member's learning rate for each batch of this epoch
    rows (R,) int64            this epoch's rows, in order: member m's are rows[row_at[m]:row_at[m + 1]]
    row_at (M + 1,) int64
    base (R,) int64            each member's rows as given (the order they are drawn from); (0,)
                               when every member has every row, 0..N-1
    generators (M, 3) int64    each member's NumPy generator: next_uint32, next_uint64, state
                               (addresses; 0: the member's rows are in place already)
    w (W, N)                   row weights: one row per member (W = M) or one for all (W = 1)
    active (M,) int64          1: trains; 0: frozen (diverged, stopped, or finished)
    status (M,) int64          OK, DIVERGED or BAD_TARGETS (``train``), set by the driver
    failed_at (M,) int64       the batch (of this epoch) whose step was refused, -1: none
    losses, weights, correct (M, B) float64   each member's batch loss, weight, weight of
                               correctly classified rows (``train.Epoch``)
Scratch: one per thread.
    x (C, I), y (C, target bytes) uint8, w (C,)   where a member's batch is gathered
"""
from __future__ import annotations

import functools
from typing import NamedTuple

import numba
import numpy as np
from numba import types

from llvmlite import ir

from ._compose import call, flush_subnormals, restore_fp
from ._jit import array_type, intrinsic_with_twin, kernel
from .losses import BAD_TARGET
from .train import BAD_TARGETS, DIVERGED, NO_KERNEL, Net, Objective, Optimizer, group_types, layer


class Members(NamedTuple):
    params: np.ndarray
    grads: np.ndarray
    seeds: np.ndarray
    hyper: np.ndarray
    state: np.ndarray
    steps: np.ndarray
    l2: np.ndarray
    lr: np.ndarray
    rows: np.ndarray
    row_at: np.ndarray
    base: np.ndarray
    generators: np.ndarray
    w: np.ndarray
    active: np.ndarray
    status: np.ndarray
    failed_at: np.ndarray
    losses: np.ndarray
    weights: np.ndarray
    correct: np.ndarray


class Scratch(NamedTuple):
    x: np.ndarray
    y: np.ndarray
    w: np.ndarray


@functools.cache
def population_signature(dtype):
    """The signature ``train_members`` is compiled for, once per dtype."""
    f = np.dtype(dtype)
    t = group_types(f.name)
    i8, f8 = np.zeros(0, np.int64), np.zeros(0)
    f2, i2, d2 = np.zeros((0, 0), f), np.zeros((0, 0), np.int64), np.zeros((0, 0))
    members = numba.typeof(Members(f2, f2, i8, d2, np.zeros((0, 0, 0), f), i2, f8, d2, i8, i8, i8, i2, f2, i8, i8,
                                   i8, d2, d2, d2))
    scratch = numba.typeof(Scratch(f2, np.zeros((0, 0), np.uint8), np.zeros(0, f)))
    i = types.int64
    return types.Tuple((i, i))(t["net"], t["ws"], t["objective"], t["opt"], t["drivers"], members,
                                array_type(f, 2), t["raw"], scratch, i, i, i, i, i)


def _draw_python(bits):
    def draw(fn, state):
        import ctypes
        result = ctypes.c_uint32 if bits == 32 else ctypes.c_uint64
        return np.uint64(ctypes.CFUNCTYPE(result, ctypes.c_void_p)(int(fn))(int(state)))
    return draw


def _drawer(bits):
    def typer(typingctx, fn, state):
        """The next number of a NumPy bit generator: its own C function at address ``fn``
        (next_uint32 or next_uint64) on its state at address ``state``, as a uint64."""
        if not (isinstance(fn, types.Integer) and isinstance(state, types.Integer)):
            return None

        def codegen(context, builder, signature, args):
            void_p = ir.IntType(8).as_pointer()
            fnty = ir.FunctionType(ir.IntType(bits), [void_p])
            value = builder.call(builder.inttoptr(args[0], fnty.as_pointer()), [builder.inttoptr(args[1], void_p)])
            return builder.zext(value, ir.IntType(64)) if bits == 32 else value
        return types.uint64(fn, state), codegen
    return intrinsic_with_twin(_draw_python(bits))(typer)


draw32, draw64 = _drawer(32), _drawer(64)


@kernel(python_entry=False)
def shuffle(a, next32, next64, state):
    """Shuffle ``a`` (N,) int64 in place exactly as NumPy's ``Generator.shuffle`` does with that
    generator (Fisher-Yates from the end; each index by NumPy's ``random_interval``: masked
    rejection on 32-bit draws below 2^32, 64-bit above), advancing the generator as NumPy
    would: so a member orders its rows as ``Sequential.fit``'s ``rng.permutation`` does,
    without the GIL. ``next32``, ``next64``, ``state``: the generator's ``ctypes`` addresses."""
    for i in range(a.shape[0] - 1, 0, -1):
        top = np.uint64(i)
        mask = top
        for shift in (1, 2, 4, 8, 16, 32):  # the smallest all-ones mask >= i
            mask |= mask >> np.uint64(shift)
        if i <= 0xFFFFFFFF:
            value = draw32(next32, state) & mask
            while value > top:
                value = draw32(next32, state) & mask
        else:
            value = draw64(next64, state) & mask
            while value > top:
                value = draw64(next64, state) & mask
        j = np.int64(value)
        a[i], a[j] = a[j], a[i]


@kernel
def train_members(net, ws, objective, opt, drivers, members, X, y, scratch, batch_size, first_member, stop_member,
                  first_batch, stop_batch):
    """Batches first_batch <= b < stop_batch of this epoch for members first_member <= m <
    stop_member that are active, member after member; at the epoch's first batch, a member with
    a generator first draws its order. ``net``, ``objective`` and ``opt``
    give what members share (the layer table, the kernels); each member's own buffers and
    settings come from ``members``. A member whose step is refused (NaN or inf) or meets a bad
    label stops there with the parameters of its last good step: its status and the batch are
    recorded and it is made inactive; the others go on. Returns (steps taken, members run)."""
    mode = flush_subnormals()
    last = len(net.layers) - 1
    shared_weights = members.w.shape[0] == 1
    taken = 0
    run = 0
    for m in range(first_member, stop_member):
        if members.active[m] == 0:
            continue
        run += 1
        net_m = Net(members.params[m], members.grads[m], net.layers, net.dropout_forward, net.dropout_backward,
                    net.join, members.seeds[m])
        opt_m = Optimizer(opt.update, members.hyper[m], members.state[m], members.steps[m])
        objective_m = Objective(objective.loss, objective.metric, objective.penalty, members.l2[m], objective.cap)
        start = members.row_at[m]
        count = members.row_at[m + 1] - start
        batches = (count + batch_size - 1) // batch_size
        weights = members.w[0] if shared_weights else members.w[m]
        if first_batch == 0 and members.generators[m, 2] != 0:  # the epoch's order: its own permutation
            order = members.rows[start:start + count]
            if members.base.shape[0] == 0:  # (every row: its base is 0..N-1)
                for i in range(count):
                    order[i] = i
            else:
                for i in range(count):
                    order[i] = members.base[start + i]
            shuffle(order, members.generators[m, 0], members.generators[m, 1], members.generators[m, 2])
        for b in range(first_batch, min(stop_batch, batches)):
            at = start + b * batch_size
            n = start + count - at if start + count - at < batch_size else batch_size
            for r in range(n):  # gather the batch: typed rows (vectorised), target bytes, weights
                row = members.rows[at + r]
                for j in range(X.shape[1]):
                    scratch.x[r, j] = X[row, j]
                for j in range(y.shape[1]):
                    scratch.y[r, j] = y[row, j]
                scratch.w[r] = weights[row]
            xb, yb, wb = scratch.x[:n], scratch.y[:n], scratch.w[:n]
            loss = call("step", drivers.step, (net_m, ws, objective_m, opt_m, drivers, xb, yb, wb, members.lr[m, b]))
            taken += 1
            members.losses[m, b] = loss
            if loss == BAD_TARGET or not loss >= 0.0:  # a bad label, or a refused step (NaN)
                members.status[m] = BAD_TARGETS if loss == BAD_TARGET else DIVERGED
                members.failed_at[m] = b
                members.active[m] = 0
                break
            total = 0.0
            for i in range(n):
                total += wb[i]
            members.weights[m, b] = total
            members.correct[m, b] = 0.0
            if objective.metric != NO_KERNEL:
                members.correct[m, b] = call("metric", objective.metric, (layer(net_m, ws, last, n).out, yb, wb))
    restore_fp(mode)
    return taken, run
