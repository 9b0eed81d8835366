"""``fastnn profile``: where the time of a training step goes, kernel by kernel.

``train_step`` runs the whole step as one compiled call, which cannot be timed inside. The
profile runs the same kernels in the same order on the same buffers from Python
(``Sequential._step_by_kernel``; a test checks both give identical parameters), with each
kernel call site wrapped in a timer (``timed_kernels``). A separate run of ``train_step``
without timers gives the step's true speed.
"""
from __future__ import annotations

import contextlib
import time
from collections import defaultdict

import numpy as np


def _dense_forward_cost(x, W, b, act, out, z):
    n, (i, o) = x.shape[0], W.shape
    return f"{i}x{o}", 2 * n * i * o, x.nbytes + W.nbytes + out.nbytes


def _dense_backward_cost(dout, x, W, out, z, act, dW, db, dx, dz):
    n, (i, o) = x.shape[0], W.shape
    products = 2 if dx.shape[0] else 1  # dW, and dx except for the first layer
    return f"{i}x{o}", 2 * n * i * o * products, x.nbytes + dout.nbytes + dW.nbytes + W.nbytes + dx.nbytes


def _loss_cost(pred, target, dpred):
    return f"{pred.shape[0]}x{pred.shape[1]}", 0, pred.nbytes + dpred.nbytes


def _dropout_cost(y, p_drop, seed, step, layer, *restore):
    return f"{y.shape[0]}x{y.shape[1]}", 0, y.nbytes * (4 if restore and restore[0].size else 2)


def _optimizer_cost(code, p, g, hyper, state1, state2, step):
    streams = 7 if state2.size else (5 if state1.size else 3)  # arrays read or written per element
    return f"{p.size:,}", 0, p.nbytes * streams


@contextlib.contextmanager
def timed_kernels(records):
    """Wrap every kernel the training step calls in a timer, recording into ``records``.

    ``records[(kernel, shape)]`` becomes ``[calls, seconds, flops, bytes]``.
    """
    from . import losses, model, optim

    sites = [(model, "_dense_forward", "dense_forward", _dense_forward_cost),
             (model, "_dense_backward", "dense_backward", _dense_backward_cost),
             (model, "_dropout_forward", "dropout_forward", _dropout_cost),
             (model, "_dropout_backward", "dropout_backward", _dropout_cost),
             (optim, "optimizer_update", "optimizer_update", _optimizer_cost)]
    saved_losses = dict(losses.LOSSES)

    def timed(name, fn, cost):
        def call(*args):
            t = time.perf_counter()
            result = fn(*args)
            dt = time.perf_counter() - t
            shape, flops, nbytes = cost(*args)
            rec = records[(name, shape)]
            rec[0] += 1
            rec[1] += dt
            rec[2] += flops
            rec[3] += nbytes
            return result
        return call

    saved = [(module, attr, getattr(module, attr)) for module, attr, _, _ in sites]
    try:
        for (module, attr, name, cost), (_, _, fn) in zip(sites, saved):
            setattr(module, attr, timed(name, fn, cost))
        for name, fn in saved_losses.items():
            losses.LOSSES[name] = timed(name, fn, _loss_cost)
        yield records
    finally:
        for module, attr, fn in saved:
            setattr(module, attr, fn)
        losses.LOSSES.update(saved_losses)


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
    with timed_kernels(records):
        t = time.perf_counter()
        for _ in range(steps):
            model._step_by_kernel(X, y, loss, optimizer)
        profiled = time.perf_counter() - t
    step = float(np.median(times))
    rows = [{"kernel": k, "shape": s, "calls": c, "seconds": sec, "flops": f, "bytes": b}
            for (k, s), (c, sec, f, b) in records.items()]
    return {"steps": steps, "step_s": step, "samples_per_s": X.shape[0] / step, "profiled_s": profiled,
            "kernels": rows}


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
    optimizer = {"sgd": lambda: fastnn.SGD(lr=1e-3, momentum=0.9), "adam": lambda: fastnn.Adam(lr=1e-3),
                 "adamw": lambda: fastnn.AdamW(lr=1e-3)}[args.optimizer]()
    result = profile_step(model, X, y, args.loss, optimizer, steps=args.steps)
    threads = fastnn.get_num_threads()["numba"]
    title = (f"fastnn profile: {'-'.join(map(str, sizes))} {args.activation}, batch {args.batch_size}, "
             f"{optimizer}, {dtype.name}, {threads} thread(s), {args.steps} steps")
    print(format_profile(result, measure_peak(), title))
    return 0
