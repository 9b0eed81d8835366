"""Shared checking tools for tests and benchmarks: tolerances, assert_close, finite
differences, the kernel case table, and a whole training step built from the reference.
"""
from __future__ import annotations

import numpy as np

from . import reference as R
from .kernels.activations import REGISTRY
from .kernels.kind import INPUT, NO_SKIP
from .kernels.optimizers import RULES

# Per-dtype tolerances for kernel vs reference. float32 products of length ~800 differ
# from NumPy's BLAS by a few ulps times sqrt(length); float64 by ~1e-15 relative.
TOLERANCE = {
    np.dtype(np.float32): {"rtol": 2e-5, "atol": 2e-6},
    np.dtype(np.float64): {"rtol": 1e-11, "atol": 1e-13},
}

ACTIVATIONS = tuple(REGISTRY)  # every activation's name, from its one definition
LOSS_KERNELS = ("softmax_cross_entropy", "mse", "binary_cross_entropy", "poisson")  # the fused loss kernels

# (N, I, O) for layer-level checks: N = 1, odd sizes, I or O = 1, and MNIST-like shapes.
DENSE_SHAPES = ((1, 1, 1), (1, 7, 3), (3, 1, 5), (5, 4, 1), (17, 33, 9), (9, 3, 40), (64, 1, 64), (64, 64, 1),
                (32, 784, 10), (64, 128, 256), (33, 2049, 1))


def assert_close(actual, expected, dtype=None, scale=None, name="array"):
    """Assert ``|actual - expected| <= atol*scale + rtol*|expected|`` element-wise.

    ``scale`` is per element (an array broadcast to ``expected``'s shape, or a number), at
    least 1: the size of what the element was computed from, so that the allowed error grows
    as rounding does. A sum's error grows with the sum of its terms' magnitudes, not with the
    sum (pass ``product_scale``'s bound for a matrix product); the default, |expected|, fits
    element-wise results. Non-finite values must sit in the same places and be the same
    (NaN, +inf or -inf). The message gives max abs error, max rel error and the worst index.
    """
    actual = np.asarray(actual)
    expected = np.asarray(expected)
    if actual.shape != expected.shape:
        raise AssertionError(f"{name}: shape {actual.shape} != expected {expected.shape}")
    if actual.dtype != expected.dtype:
        raise AssertionError(f"{name}: dtype {actual.dtype} != expected {expected.dtype}")
    tol = TOLERANCE[np.dtype(dtype or expected.dtype)]
    fin_a, fin_e = np.isfinite(actual), np.isfinite(expected)
    if not np.array_equal(fin_a, fin_e):
        where = np.argwhere(fin_a != fin_e)[0]
        raise AssertionError(f"{name}: non-finite values differ at {tuple(where)}: "
                             f"{actual[tuple(where)]} vs expected {expected[tuple(where)]}")
    same_nonfinite = np.array_equal(actual[~fin_a], expected[~fin_e], equal_nan=True)
    if not same_nonfinite:
        raise AssertionError(f"{name}: non-finite values differ (NaN vs inf or sign)")
    a = actual[fin_a].astype(np.float64)
    e = expected[fin_e].astype(np.float64)
    if a.size == 0:
        return
    if scale is None:
        scale = np.abs(e)
    else:
        scale = np.broadcast_to(np.asarray(scale, dtype=np.float64), expected.shape)[fin_e]
    scale = np.maximum(1.0, scale)
    err = np.abs(a - e)
    bound = tol["atol"] * scale + tol["rtol"] * np.abs(e)
    if np.any(err > bound):
        worst = int(np.argmax(err - bound))
        index = tuple(np.argwhere(fin_a)[worst])
        rel = err / np.maximum(np.abs(e), np.finfo(np.float64).tiny)
        raise AssertionError(
            f"{name}: max abs error {err.max():.3g}, max rel error {rel.max():.3g}, worst at {index}: "
            f"{a[worst]!r} vs expected {e[worst]!r} (rtol {tol['rtol']}, atol {tol['atol']} x scale "
            f"{scale[worst]:.3g})")


def product_scale(a, b):
    """Per element of ``a @ b``, the sum of its terms' magnitudes, ``|a| @ |b|`` in float64
    (non-finite entries count 0: an output they reach is non-finite and compared exactly)."""
    def magnitudes(m):
        m = np.abs(np.asarray(m, dtype=np.float64))
        return np.where(np.isfinite(m), m, 0.0)
    return magnitudes(a) @ magnitudes(b)


def finite_difference(f, x, direction=None, h=1e-6):
    """Central differences of the scalar function ``f`` at ``x`` (float64).

    With ``direction``: the directional derivative ``(f(x + h d) - f(x - h d)) / 2h``.
    Without: the full gradient, one element at a time (for tiny shapes).
    """
    x = np.asarray(x, dtype=np.float64)
    if direction is not None:
        return (f(x + h * direction) - f(x - h * direction)) / (2 * h)
    grad = np.empty_like(x)
    for i in np.ndindex(x.shape):
        xp, xm = x.copy(), x.copy()
        xp[i] += h
        xm[i] -= h
        grad[i] = (f(xp) - f(xm)) / (2 * h)
    return grad


def targets(rng, loss, n, outputs, dtype):
    """Random targets for ``loss``: class labels (n,), 0/1 labels (n, outputs) or values (n, outputs)."""
    if loss == "softmax_cross_entropy":
        return rng.integers(0, outputs, n)
    if loss == "binary_cross_entropy":
        return (rng.random((n, outputs)) < 0.5).astype(dtype)
    if loss == "poisson":
        return rng.poisson(2.0, (n, outputs)).astype(dtype)
    return rng.standard_normal((n, outputs)).astype(dtype)


# -- a whole network from the reference: the oracle for the model's training step --------

def reference_loss_and_grad(params, activations, X, y, loss):
    """Mean loss and ``[dW0, db0, ...]`` of a Dense stack, using only ``fastnn.reference``.
    ``activations`` may instead be a network's nodes (``model.nodes``, without dropout): then
    ``params`` and the gradients are ``model.parameters()``' (``reference_graph_loss_and_grad``)."""
    if activations and hasattr(activations[0], "layer"):
        return reference_graph_loss_and_grad(activations, params, X, y, loss)
    inputs, outs, zs = [], [], []
    a = X
    for k, act in enumerate(activations):
        W, b = params[2 * k], params[2 * k + 1]
        inputs.append(a)
        z = a @ W + b
        a = R.activation_forward(z, act)
        zs.append(z)
        outs.append(a)
    value, dout = getattr(R, loss)(a, y)
    grads = [None] * len(params)
    for k in range(len(activations) - 1, -1, -1):
        dW, db, dx = R.dense_backward(dout, inputs[k], params[2 * k], outs[k], zs[k], activations[k],
                                      need_dx=k > 0)
        grads[2 * k], grads[2 * k + 1] = dW, db
        dout = dx
    return value, grads


def reference_graph_loss_and_grad(nodes, params, X, y, loss):
    """Mean loss and the gradient of every parameter (as ``model.parameters()``) of a network
    given by its nodes (``model.nodes``; no dropout), from each layer kind's NumPy twin: each
    layer fed by its src, a join adding its skip's output, and gradients summed where two
    paths meet."""
    blocks, at = [], 0
    for node in nodes:  # each layer's parameters as its kernels see them: (W, b)
        count = len(node.layer.params())
        flat = np.concatenate([np.ravel(p) for p in params[at:at + count]]) if count else np.zeros(0, X.dtype)
        blocks.append(node.layer.kernel_blocks(flat))
        at += count
    own, outs, zs = [], [], []
    for k, node in enumerate(nodes):
        x = X if node.src == INPUT else outs[node.src]
        out, z = node.layer.reference_forward(x, *blocks[k])
        own.append(out)
        zs.append(z)
        outs.append(out if node.skip == NO_SKIP else out + (X if node.skip == INPUT else outs[node.skip]))
    value, dout = getattr(R, loss)(outs[-1], y)
    douts = [None] * len(nodes)
    douts[-1] = dout
    grads = []
    for k in range(len(nodes) - 1, -1, -1):
        node, d = nodes[k], douts[k]
        x = X if node.src == INPUT else outs[node.src]
        dW, db, dx = node.layer.reference_backward(d, x, *blocks[k], own[k], zs[k], need_dx=node.src != INPUT)
        if node.src != INPUT:
            douts[node.src] = dx if douts[node.src] is None else douts[node.src] + dx
        if node.skip not in (NO_SKIP, INPUT):
            douts[node.skip] = d if douts[node.skip] is None else douts[node.skip] + d
        flat = np.concatenate([np.ravel(dW), np.ravel(db)])
        grads[:0] = _unflatten(flat, list(node.layer.params().values()))
    return value, grads


def reference_train(params, activations, batches, loss, optimizer, hyper, steps):
    """Run ``steps`` updates on ``batches`` with the reference; returns (losses, params).

    ``optimizer`` is an optimizer's name (``fastnn.kernels.optimizers.RULES``) and ``hyper``
    its settings by name, lr included (what ``Optimizer.settings()`` returns).
    """
    flat = np.concatenate([p.ravel() for p in params])
    shapes = [p.shape for p in params]
    state = {row: np.zeros_like(flat) for row in RULES[optimizer].rows}  # (rows a setting leaves out: unread)
    losses = []
    for t in range(1, steps + 1):
        X, y = batches[(t - 1) % len(batches)]
        views = _unflatten(flat, shapes)
        value, grads = reference_loss_and_grad(views, activations, X, y, loss)
        losses.append(value)
        g = np.concatenate([g.ravel() for g in grads])
        flat, new = R.optimizer_update(optimizer, flat, g, state, t, **hyper)
        state.update(new)
    return losses, _unflatten(flat, shapes)


def _unflatten(flat, shapes):
    out, start = [], 0
    for s in shapes:
        size = int(np.prod(s))
        out.append(flat[start:start + size].reshape(s))
        start += size
    return out


# -- the kernel case table shared by benchmarks/bench_kernels.py and the tests ------------

MNIST_LAYERS = ((784, 256), (256, 128), (128, 10))
BATCHES = (1, 32, 128, 512)
WIDE_LAYER = (256, 2048, 2048)
MNIST_PARAMS = sum(i * o + o for i, o in MNIST_LAYERS)  # 235,146
WIDE_PARAMS = 784 * 2048 + 2048 + 2048 * 2048 + 2048 + 2048 * 10 + 10


def case_group(kernel, dims, act="relu"):
    """A benchmark group name such as ``dense_forward|N=128,I=784,O=256``."""
    named = (kernel.startswith("activation") and act != "relu") or kernel == "optimizer_update"
    return f"{kernel}|{act + ',' if named else ''}" + ",".join(f"{k}={v}" for k, v in dims.items())


class KernelCase:
    """One kernel at one shape: inputs, the kernel run, the reference run and the check.

    ``run_numba`` calls the public kernel with preallocated outputs; ``run_numpy`` calls the
    reference; ``check`` runs both on fresh copies of the inputs and compares every output.
    ``flops`` or ``nbytes`` give the work of one call (for GFLOP/s or GB/s).
    """

    def __init__(self, kernel, dims, dtype=np.float32, act="relu", seed=0):
        from . import kernels as K

        self.kernel, self.dims, self.dtype, self.act = kernel, dict(dims), np.dtype(dtype), act
        self._K = K
        rng = np.random.default_rng(seed)
        r = lambda *shape, s=1.0: (rng.standard_normal(shape) * s).astype(self.dtype)
        d = self.dims
        self.flops, self.nbytes = 0, 0
        if kernel in ("dense_forward", "dense_backward"):
            n, i, o = d["N"], d["I"], d["O"]
            x, W, b = r(n, i), r(i, o, s=1 / np.sqrt(i)), r(o)
            z = x @ W + b
            out = R.activation_forward(z, act)
            # the buffers as training passes them: z is out (unless the activation needs z), and
            # the backward works in place on dout (dz is dout), which relu leaves as it is
            if kernel == "dense_forward":
                self.inputs = (x, W, b, act)
                self.flops = 2 * n * i * o
            else:
                self.inputs = (r(n, o), x, W, out, z, act)
                self.flops = 4 * n * i * o
            self.outputs = self._outputs_for(self.inputs)
        elif kernel in ("activation_forward", "activation_backward"):
            n, o = d["N"], d["O"]
            z = r(n, o, s=2.0)
            if kernel == "activation_forward":
                self.inputs, self.outputs = (z, act), (np.empty((n, o), self.dtype),)
                self.nbytes = 2 * z.nbytes
            else:
                self.inputs, self.outputs = (r(n, o), R.activation_forward(z, act), z, act), (np.empty((n, o), self.dtype),)
                self.nbytes = 4 * z.nbytes
        elif kernel in LOSS_KERNELS:
            n, c = d["N"], d["C"]
            target = {"softmax_cross_entropy": lambda: rng.integers(0, c, n), "mse": lambda: r(n, c),
                      "binary_cross_entropy": lambda: (rng.random((n, c)) < 0.5).astype(self.dtype),
                      "poisson": lambda: rng.poisson(2.0, (n, c)).astype(self.dtype)}[kernel]()
            self.inputs, self.outputs = (r(n, c, s=3.0), target), (np.empty((n, c), self.dtype),)
            self.nbytes = 2 * n * c * self.dtype.itemsize
        elif kernel in ("layernorm_forward", "layernorm_backward"):
            n, o = d["N"], d["O"]
            x, weight = r(n, o, s=2.0), 1 + r(o, s=0.1)
            if kernel == "layernorm_forward":
                self.inputs, self.outputs = (x, weight, r(o), 1e-5), (np.empty((n, o), self.dtype),)
                self.nbytes = 2 * x.nbytes
            else:
                self.inputs = (r(n, o), x, weight, 1e-5)
                self.outputs = (np.empty(o, self.dtype), np.empty(o, self.dtype), np.empty((n, o), self.dtype))
                self.nbytes = 3 * x.nbytes
        elif kernel in ("dropout_forward", "dropout_backward"):
            n, o = d["N"], d["O"]
            self.inputs, self.outputs = (r(n, o), 0.5, 7, 3, 1), ()
            self.nbytes = 2 * n * o * self.dtype.itemsize
        elif kernel == "l2_penalty":  # (W, c) in, dW out: as a dense layer's backward leaves it
            i, o = d["I"], d["O"]
            self.inputs, self.outputs = (r(i, o), 1e-3), (np.zeros((i, o), self.dtype),)
            self.nbytes = 3 * i * o * self.dtype.itemsize
        elif kernel == "optimizer_update":  # (``act`` names the optimizer here)
            p, rule = d["P"], RULES[act]
            settings = max(rule.examples, key=lambda s: len(rule.rows_for({**dict((h.name, h.default) for h in
                                                                                   rule.hyper), **s})))
            full = {**{h.name: h.default for h in rule.hyper}, **settings}
            state = {row: np.abs(r(p, s=0.1)) for row in rule.rows_for(full)}  # (a square average is >= 0)
            if "grad_avg" in state:  # a mean square above the square of the mean (RMSprop, centered): a
                state["square_avg"] += state["grad_avg"] ** 2 + 0.05  # variance near 0 is ill-conditioned
            self.inputs, self.hyper = (act, r(p), r(p), state, 3, settings["lr"]), {
                k: v for k, v in settings.items() if k != "lr"}
            self.outputs = ()
            self.nbytes = (3 + 2 * len(state)) * p * self.dtype.itemsize
        elif kernel in ("sgd_update", "adam_update"):
            p = d["P"]
            if kernel == "sgd_update":
                self.inputs, self.hyper = (r(p), r(p), r(p)), dict(lr=1e-3, momentum=0.9)
                self.nbytes = 5 * p * self.dtype.itemsize
            else:
                self.inputs, self.hyper = (r(p), r(p), r(p, s=0.1), np.abs(r(p, s=0.1)), 3), dict(lr=1e-3)
                self.nbytes = 7 * p * self.dtype.itemsize
            self.outputs = ()
        else:
            raise ValueError(f"no benchmark case for kernel {kernel!r}")

    @property
    def group(self):
        return case_group(self.kernel, self.dims, self.act)

    def _outputs_for(self, inputs, fill=None):
        """The output buffers for a dense kernel run on ``inputs``, aliased as training aliases
        them; other buffers new (filled with ``fill`` when given, so nothing stale passes)."""
        from .kernels.activations import NEEDS_PREACTIVATION, code_of
        new = (lambda shape: np.empty(shape, self.dtype)) if fill is None else (lambda shape: np.full(shape, fill, self.dtype))
        n, i, o = self.dims["N"], self.dims["I"], self.dims["O"]
        if self.kernel == "dense_forward":
            out = new((n, o))
            return (out, new((n, o)) if code_of(self.act) in NEEDS_PREACTIVATION else out)
        return (new((i, o)), new((o,)), new((n, i)), inputs[0])

    def run_numba(self, inputs=None, outputs=None):
        fn = getattr(self._K, self.kernel)
        inputs = self.inputs if inputs is None else inputs
        outputs = self.outputs if outputs is None else outputs
        if self.kernel.endswith("_update"):
            return fn(*inputs, **self.hyper)
        if self.kernel == "l2_penalty":  # the kernel adds to dW: start it at 0 to compare with c W
            outputs[0][...] = 0
            return fn(inputs[0], outputs[0], inputs[1])
        return fn(*inputs, *outputs)  # dropout works in place: no outputs

    def run_numpy(self, inputs=None):
        fn = getattr(R, self.kernel)
        inputs = self.inputs if inputs is None else inputs
        return fn(*inputs, **self.hyper) if self.kernel.endswith("_update") else fn(*inputs)

    def check(self):
        """Assert that the kernel matches the reference on this case (values and gradients)."""
        def copy(a):
            if isinstance(a, dict):
                return {k: v.copy() for k, v in a.items()}
            return a.copy() if isinstance(a, np.ndarray) else a
        fresh = lambda: tuple(copy(a) for a in self.inputs)  # noqa: E731
        expected = self.run_numpy(fresh())
        inputs = fresh()
        if self.kernel.startswith("dense"):
            outputs = self._outputs_for(inputs, fill=np.nan)
        else:
            outputs = tuple(np.full_like(o, np.nan) for o in self.outputs)
        got = self.run_numba(inputs, outputs)
        if not isinstance(expected, tuple):
            expected, got = (expected,), (got,)
        if self.kernel == "optimizer_update":  # (p, {row: buffer}): every buffer by name
            rows = sorted(expected[1])
            assert sorted(got[1]) == rows, f"{self.group}: rows {sorted(got[1])}, expected {rows}"
            expected, got = (expected[0], *(expected[1][k] for k in rows)), (got[0], *(got[1][k] for k in rows))
        if self.kernel == "dense_forward":
            got = got[:1]
        if self.kernel in LOSS_KERNELS or self.kernel == "l2_penalty":
            expected = (np.array(expected[0]), expected[1])
            got = (np.array(got[0]), got[1])
        for k, (g, e) in enumerate(zip(got, expected)):
            assert_close(g, e, dtype=self.dtype, scale=self._scales()[k], name=f"{self.group} output {k}")

    def _scales(self):
        """Per output, what its rounding grows with (``assert_close``'s scale): None is the value
        itself; LayerNorm's weight and bias gradients are sums over the rows."""
        if self.kernel != "layernorm_backward":
            return (None,) * 8
        dout, x = (a.astype(np.float64) for a in self.inputs[:2])
        xhat = (x - x.mean(axis=1, keepdims=True)) / x.std(axis=1, keepdims=True)
        return np.abs(dout * xhat).sum(axis=0), np.abs(dout).sum(axis=0), None


def kernel_case_specs():
    """``(kernel, dims, act)`` for every kernel at the shapes of an MNIST training step and a
    wide layer; ``KernelCase(kernel, dims, act=act)`` builds one (lazily: the wide ones are big)."""
    from .kernels import KERNELS
    layers = [dict(N=n, I=i, O=o) for n in BATCHES for i, o in MNIST_LAYERS] + [dict(zip("NIO", WIDE_LAYER))]
    specs = []
    for kernel in KERNELS:
        if kernel.startswith("dense"):
            specs += [(kernel, d, "relu") for d in layers]
        elif kernel.startswith("activation"):
            specs += [(kernel, dict(N=d["N"], O=d["O"]), "relu") for d in layers]
            specs += [(kernel, dict(N=128, O=256), a) for a in REGISTRY if a != "relu"]
        elif kernel in LOSS_KERNELS:
            specs += [(kernel, dict(N=n, C=10), "relu") for n in BATCHES]
        elif kernel.startswith(("dropout", "layernorm")):
            specs += [(kernel, dict(N=n, O=o), "relu") for n in BATCHES for o in (256, 128)]
        elif kernel == "l2_penalty":
            specs += [(kernel, dict(I=i, O=o), "relu") for i, o in MNIST_LAYERS]
        elif kernel == "optimizer_update":
            specs += [(kernel, dict(P=p), name) for name in RULES for p in (MNIST_PARAMS, WIDE_PARAMS)]
        else:
            specs += [(kernel, dict(P=p), "relu") for p in (MNIST_PARAMS, WIDE_PARAMS)]
    return specs
