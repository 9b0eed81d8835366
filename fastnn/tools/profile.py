"""``fastnn profile``: where the time of a training step goes, kernel by kernel.

``train_step`` runs the whole step as compiled code, which cannot be timed inside. The
profile runs the *same driver source* (``fastnn.kernels.train``) as plain Python
(``as_python``), on the model's own buffers, with each kernel it calls (the model's dense
kernels, loss, finite guard and optimizer update) held as a timed callable that calls the
compiled kernel (a test checks that profiled steps leave exactly the parameters plain steps
do). A separate run of ``train_step`` without timers gives the step's true speed.
"""
from __future__ import annotations

import time
from collections import defaultdict

import numba
import numpy as np

from ..engine import core as _engine
from ..kernels import _jit, dropout, kind, optimizers, train
from ..kernels._compose import SLOTS, checked, raw_rows_of, run_by_types
from ..kernels.dense import Dense
from ..kernels import losses as loss_kernels
from ..nn.optim import from_name


def _timed(records, name, kernel, signature, cost):
    def timed(*args):
        trampoline, fn, args = checked(kernel, signature, args)  # (checks outside the timer)
        t = time.perf_counter()
        result = trampoline(fn, args)
        dt = time.perf_counter() - t
        shape, flops, nbytes = cost(*args)
        rec = records[(name, shape)]
        rec[0] += 1
        rec[1] += dt
        rec[2] += flops
        rec[3] += nbytes
        return result
    return timed


def _dense_forward_cost(x, W, b, setting, out, z):
    n, (i, o) = x.shape[0], W.shape
    return f"{i}x{o}", 2 * n * i * o, x.nbytes + W.nbytes + out.nbytes


def _dense_backward_cost(dout, x, W, out, z, setting, dW, db, dx):
    n, (i, o) = x.shape[0], W.shape
    products = 2 if dx.shape[0] else 1  # dW, and dx except for the first layer
    return f"{i}x{o}", 2 * n * i * o * products, x.nbytes + dout.nbytes + dW.nbytes + W.nbytes + dx.nbytes


def _layer_cost(*args):
    x = args[1] if len(args) == 9 else args[0]  # (backward: dout, x, ...; forward: x, ...)
    return f"{x.shape[0]}x{x.shape[1]}", 0, sum(a.nbytes for a in args if isinstance(a, np.ndarray))


def _join_cost(into, other):
    return f"{into.shape[0]}x{into.shape[1]}", 0, 3 * into.nbytes


def _loss_cost(pred, target, weights, cap, dpred):
    return f"{pred.shape[0]}x{pred.shape[1]}", 0, pred.nbytes + dpred.nbytes


def _dropout_cost(y, p_drop, seed, step, layer, *restore):
    return f"{y.shape[0]}x{y.shape[1]}", 0, y.nbytes * (4 if restore else 2)


def _optimizer_cost(p, g, state, hyper, lr, step):
    streams = 3 + 2 * state.shape[0]  # arrays read or written per element
    return f"{p.size:,}", 0, p.nbytes * streams


def _guard_cost(g):
    return f"{g.size:,}", 0, g.nbytes


def timed_step(model, loss, optimizer, records):
    """``(step, groups)``: ``step(net, ws, objective, opt, drivers, X, raw y, w, lr, t)`` is the model's
    training step run as Python with every kernel timed into ``records[(kernel, shape)] =
    [calls, seconds, flops, bytes]``; groups is ``(net, objective, opt, drivers)``."""
    engine, dtype = model.engine, model.dtype
    fsig, bsig = kind.signatures(dtype)
    forward, backward = [], []
    for node, (f, b) in zip(engine.nodes, engine.kernels()):
        dense_layer = isinstance(node.layer, Dense)
        name = "dense" if dense_layer else node.layer.name
        forward.append(_timed(records, f"{name}_forward", f, fsig, _dense_forward_cost if dense_layer else _layer_cost))
        backward.append(_timed(records, f"{name}_backward", b, bsig,
                               _dense_backward_cost if dense_layer else _layer_cost))
    net = engine.net._replace(layers=engine.table(forward, backward, python=True))
    if engine.uses_join():
        net = net._replace(join=_timed(records, "join", kind.join, SLOTS["join"](dtype), _join_cost))
    if (engine.p_drop > 0).any():
        dsig_f, dsig_b = dropout.signatures(dtype)
        net = net._replace(
            dropout_forward=_timed(records, "dropout_forward", dropout.BARE[0], dsig_f, _dropout_cost),
            dropout_backward=_timed(records, "dropout_backward", dropout.BARE[1], dsig_b, _dropout_cost))
    objective = train.Objective(_timed(records, loss, _engine.LOSS_KERNELS[loss][0],
                                       loss_kernels.signatures(dtype)[0], _loss_cost), train.NO_KERNEL,
                                train.NO_KERNEL, 0.0, 0.0)
    update = _timed(records, "optimizer_update", optimizer.kernel(), optimizers.signature(dtype), _optimizer_cost)
    guard = _timed(records, "finite_guard", train.gradients_finite, numba.float64(_jit.array_type(dtype, 1)),
                   _guard_cost)
    def python(driver, overrides=None):
        return _jit.as_python(driver, overrides, call_compiled=run_by_types)
    drivers = train.Drivers(python(train.forward_pass), python(train.gradients),
                            python(train.update, {"gradients_finite": guard}), python(train.step))
    opt = optimizer.compiled(engine)._replace(update=update)
    return python(train.step), (net, objective, opt, drivers)


def profile_step(model, X, y, loss, optimizer, steps=100, warmup=5):
    """Profile ``steps`` calls of ``model.train_step(X, y, ...)``.

    Returns a dict: ``step_s`` (median step time without timers), ``samples_per_s``,
    ``profiled_s`` (total time of the timed steps) and ``kernels``: one row per
    (kernel, shape) with calls, seconds, flops and bytes.
    """
    for _ in range(warmup):
        model.train_step(X, y, loss=loss, optimizer=optimizer)
    times = []
    for _ in range(steps):
        t = time.perf_counter()
        model.train_step(X, y, loss=loss, optimizer=optimizer)
        times.append(time.perf_counter() - t)
    records = defaultdict(lambda: [0, 0.0, 0, 0])
    step, (net, objective, opt, drivers) = timed_step(model, loss, optimizer, records)
    X, y = model.checked_data(X, y, loss)
    engine = model.engine
    ws = engine.workspace(X.shape[0])
    w = engine.ones[:X.shape[0]]
    def timed_steps(count):
        for _ in range(count):
            value = step(net, ws, objective, opt, drivers, X, raw_rows_of(y), w, float(optimizer.lr))
            if not value >= 0.0:  # (the step counts itself in the optimizer)
                raise model.divergence(X, y, loss, optimizer)
    timed_steps(warmup)  # (the first calls from Python compile their way in, or load it from the cache)
    records.clear()
    t = time.perf_counter()
    timed_steps(steps)
    profiled = time.perf_counter() - t
    step_s = float(np.median(times))
    rows = [{"kernel": k, "shape": s, "calls": c, "seconds": sec, "flops": f, "bytes": b}
            for (k, s), (c, sec, f, b) in records.items()]
    return {"steps": steps, "step_s": step_s, "samples_per_s": X.shape[0] / step_s, "profiled_s": profiled,
            "kernels": rows}


def measure_peak(repeats=5, n=2048) -> float:
    """GFLOP/s of a NumPy float32 n^3 matrix product with the current threads (median)."""
    rng = np.random.default_rng(0)
    a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
    out = a @ b
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t)
    return 2 * n**3 / float(np.median(times)) / 1e9


def format_profile(result, peak_gflops, title) -> str:
    total = result["profiled_s"]
    lines = [title,
             f"step: median {result['step_s'] * 1e6:,.1f} us without timers, "
             f"{result['samples_per_s']:,.0f} samples/s; matmul peak {peak_gflops:.1f} GFLOP/s",
             "", f"{'kernel':<22} {'shape':>11} {'calls':>6} {'total ms':>9} {'share':>6} {'GFLOP/s':>8} "
             f"{'% peak':>7} {'GB/s':>6}"]
    in_kernels = 0.0
    for r in result["kernels"]:
        in_kernels += r["seconds"]
        gflops = r["flops"] / r["seconds"] / 1e9 if r["flops"] else None
        lines.append(f"{r['kernel']:<22} {r['shape']:>11} {r['calls']:>6} {r['seconds'] * 1e3:>9.2f} "
                     f"{100 * r['seconds'] / total:>5.1f}% "
                     f"{(f'{gflops:.1f}' if gflops else '-'):>8} "
                     f"{(f'{100 * gflops / peak_gflops:.1f}%' if gflops else '-'):>7} "
                     f"{r['bytes'] / r['seconds'] / 1e9:>6.1f}")
    lines.append(f"{'outside kernels':<22} {'':>11} {'':>6} {(total - in_kernels) * 1e3:>9.2f} "
                 f"{100 * (total - in_kernels) / total:>5.1f}%   (validation, dispatch, Python)")
    return "\n".join(lines)


def main(args) -> int:
    import fastnn

    if args.threads:
        fastnn.set_num_threads(args.threads)
    sizes = args.sizes
    if len(sizes) < 2:
        raise ValueError("--sizes needs at least an input and an output size, e.g. 784,256,128,10")
    dtype = np.dtype(args.dtype)
    hidden = [fastnn.Dense(i, o, activation=args.activation) for i, o in zip(sizes[:-2], sizes[1:-1])]
    model = fastnn.Sequential(*hidden, fastnn.Dense(sizes[-2], sizes[-1]), seed=0, dtype=dtype)
    rng = np.random.default_rng(0)
    X = rng.random((args.batch_size, sizes[0])).astype(dtype)
    if args.loss == "mse":
        y = rng.standard_normal((args.batch_size, sizes[-1])).astype(dtype)
    else:
        y = rng.integers(0, sizes[-1], args.batch_size)
    optimizer = from_name(args.optimizer, lr=1e-3, **({"momentum": 0.9} if args.optimizer == "sgd" else {}))
    result = profile_step(model, X, y, args.loss, optimizer, steps=args.steps)
    threads = fastnn.get_num_threads()["numba"]
    title = (f"fastnn profile: {'-'.join(map(str, sizes))} {args.activation}, batch {args.batch_size}, "
             f"{optimizer}, {dtype.name}, {threads} thread(s), {args.steps} steps")
    print(format_profile(result, measure_peak(), title))
    return 0
