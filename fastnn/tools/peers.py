"""The training-step cases of ``fastnn bench``, and the same step written for each contender.

Every contender trains the same network from the same initial parameters on the same batch
with SGD (momentum 0.9): fastnn, a plain NumPy loop (in-place where NumPy allows), PyTorch
and JAX (``jax.jit`` of the whole step) when they are installed. Each step returns the
loss as a Python float, so asynchronous peers are synchronised inside the timing.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import numpy as np

from ..kernels.activations import REGISTRY

LR, MOMENTUM = 1e-3, 0.9


@dataclass(frozen=True)
class Case:
    """A network and batch size; with ``samples``, one whole epoch (no shuffle) is the unit."""

    name: str
    sizes: tuple
    activation: str
    batch: int
    loss: str = "softmax_cross_entropy"
    samples: int = 0

    @property
    def label(self):
        net = f"{'-'.join(map(str, self.sizes))} {self.activation}"
        if self.samples:
            return f"{net}, epoch of {self.samples:,}, batch {self.batch}"
        return f"{net}, batch {self.batch}"

    @property
    def rows(self) -> int:
        """Samples per timed unit: a batch, or an epoch."""
        return self.samples or self.batch

    @property
    def flops(self) -> int:
        """Matrix-product FLOPs of one unit: forward 2NIO, backward 4NIO, minus the first dx."""
        pairs = list(zip(self.sizes[:-1], self.sizes[1:]))
        total = sum(6 * i * o for i, o in pairs) - 2 * pairs[0][0] * pairs[0][1]
        return total * self.rows


CASES = {c.name: c for c in (
    Case("mnist-b32", (784, 256, 128, 10), "relu", 32),
    Case("mnist-b128", (784, 256, 128, 10), "relu", 128),
    Case("mnist-b512", (784, 256, 128, 10), "relu", 512),
    Case("sigmoid-b32", (784, 16, 16, 10), "sigmoid", 32),
    Case("tanh-b64", (1, 64, 1), "tanh", 64, "mse"),
    Case("wide-b256", (784, 2048, 2048, 10), "relu", 256),
    Case("mnist-epoch", (784, 256, 128, 10), "relu", 128, samples=60_000),
    Case("sigmoid-epoch", (784, 16, 16, 10), "sigmoid", 32, samples=60_000),
    Case("tanh-epoch", (1, 64, 1), "tanh", 64, "mse", samples=4_096),
    # small networks people train many steps of: a function fit, a small classifier, a tabular model
    Case("fit2-epoch", (2, 32, 32, 1), "tanh", 32, "mse", samples=4_096),
    Case("class8-epoch", (8, 64, 64, 4), "relu", 64, samples=8_192),
    Case("tab32-epoch", (32, 128, 64, 2), "relu", 256, samples=16_384),
)}


def make_problem(case: Case, seed=0):
    """Initial float32 parameters ``[W0, b0, ...]`` (fastnn's initialisation) and one batch."""
    import fastnn

    sizes = case.sizes
    layers = [fastnn.Dense(i, o, activation=case.activation) for i, o in zip(sizes[:-2], sizes[1:-1])]
    model = fastnn.Sequential(*layers, fastnn.Dense(sizes[-2], sizes[-1]), seed=seed)
    rng = np.random.default_rng(seed + 1)
    X = rng.random((case.rows, sizes[0]), dtype=np.float32)
    if case.loss == "mse":
        y = rng.standard_normal((case.rows, sizes[-1])).astype(np.float32)
    else:
        y = rng.integers(0, sizes[-1], case.rows)
    return [p.copy() for p in model.parameters()], X, y


class FastnnStep:
    """``Sequential.train_step``, the public per-step path."""

    def __init__(self, case, params, X, y):
        import fastnn

        sizes = case.sizes
        layers = [fastnn.Dense(i, o, activation=case.activation) for i, o in zip(sizes[:-2], sizes[1:-1])]
        self.model = fastnn.Sequential(*layers, fastnn.Dense(sizes[-2], sizes[-1]))
        for p, q in zip(self.model.parameters(), params):
            p[...] = q
        self.opt = fastnn.SGD(lr=LR, momentum=MOMENTUM)
        self.case, self.X, self.y = case, X, y

    def step(self):
        return self.model.train_step(self.X, self.y, loss=self.case.loss, optimizer=self.opt)

    def params(self):
        return [p.copy() for p in self.model.parameters()]


class NumpyStep:
    """A plain NumPy training step at its best: every buffer allocated once, ``out=`` everywhere
    (allocating per step cost it page faults: 4.7 instead of 3.4 ms at batch 512)."""

    def __init__(self, case, params, X, y):
        self.case, self.X, self.y = case, X, y
        self.p = [p.copy() for p in params]
        self.v = [np.zeros_like(p) for p in params]
        self.g = [np.empty_like(p) for p in params]
        n, sizes = case.batch, case.sizes
        self.a = [X] + [np.empty((n, o), np.float32) for o in sizes[1:]]   # layer outputs
        self.d = [np.empty((n, o), np.float32) for o in sizes[1:]]         # dL/d(pre-activation)
        self.tmp = [np.empty((n, o), np.float32) for o in sizes[1:]]
        self.rowmax = np.empty((n, 1), np.float32)
        self.rows = np.arange(n)

    def _act(self, z):
        a = self.case.activation
        if a == "relu":
            np.maximum(z, 0, out=z)
        elif a == "sigmoid":
            np.negative(z, out=z)
            np.exp(z, out=z)
            z += 1
            np.reciprocal(z, out=z)
        elif a == "tanh":
            np.tanh(z, out=z)
        else:
            raise ValueError(f"the NumPy peer has no {a}")

    def _grad(self, d, a, tmp):
        act = self.case.activation
        if act == "relu":
            np.greater(a, 0, out=tmp)
        elif act == "sigmoid":
            np.subtract(1, a, out=tmp)
            tmp *= a
        else:
            np.multiply(a, a, out=tmp)
            np.subtract(1, tmp, out=tmp)
        d *= tmp

    def step(self):
        p, a, d, L = self.p, self.a, self.d, len(self.p) // 2
        for k in range(L):
            np.matmul(a[k], p[2 * k], out=a[k + 1])
            a[k + 1] += p[2 * k + 1]
            if k < L - 1:
                self._act(a[k + 1])
        out, dl = a[-1], d[-1]
        if self.case.loss == "mse":
            np.subtract(out, self.y, out=dl)
            loss = float(np.mean(dl * dl))
            dl *= 2 / dl.size
        else:
            np.max(out, axis=1, keepdims=True, out=self.rowmax)
            np.subtract(out, self.rowmax, out=dl)
            picked = dl[self.rows, self.y]
            np.exp(dl, out=dl)
            s = dl.sum(axis=1, keepdims=True)
            loss = float(np.mean(np.log(s[:, 0]) - picked))
            dl /= s
            dl[self.rows, self.y] -= 1
            dl /= self.case.batch
        for k in range(L - 1, -1, -1):
            np.matmul(a[k].T, d[k], out=self.g[2 * k])
            np.sum(d[k], axis=0, out=self.g[2 * k + 1])
            if k:
                np.matmul(d[k], p[2 * k].T, out=d[k - 1])
                self._grad(d[k - 1], a[k], self.tmp[k - 1])
        for q, v, g in zip(p, self.v, self.g):
            v *= MOMENTUM
            v += g
            q -= LR * v
        return loss

    def share(self, other):
        """Train ``other``'s parameters and momentum (for an epoch's smaller last batch)."""
        self.p, self.v = other.p, other.v

    def set_batch(self, X, y):
        self.X, self.y = X, y
        self.a[0] = X

    def params(self):
        return [q.copy() for q in self.p]


def activation_of(name, library, scope):
    """The peer's function for a fastnn activation, from the expression in its definition."""
    return eval(f"lambda z: {getattr(REGISTRY[name], library)}", scope)  # (our own registry's text)


class TorchStep:
    """PyTorch eager: nn.Linear layers, F.cross_entropy / F.mse_loss, torch.optim.SGD."""

    def __init__(self, case, params, X, y):
        import torch
        from torch import nn

        self.torch = torch
        act = activation_of(case.activation, "torch", {"F": nn.functional, "torch": torch})

        class Activation(nn.Module):
            def forward(self, z):
                return act(z)
        modules = []
        for k in range(len(params) // 2):
            W, b = params[2 * k], params[2 * k + 1]
            lin = nn.Linear(*W.shape)
            with torch.no_grad():
                lin.weight.copy_(torch.from_numpy(W.T.copy()))
                lin.bias.copy_(torch.from_numpy(b))
            modules.append(lin)
            if k < len(params) // 2 - 1:
                modules.append(Activation())
        self.net = nn.Sequential(*modules)
        self.opt = torch.optim.SGD(self.net.parameters(), lr=LR, momentum=MOMENTUM)
        self.X = torch.from_numpy(X)
        self.y = torch.from_numpy(y)
        self.loss_fn = nn.functional.mse_loss if case.loss == "mse" else nn.functional.cross_entropy

    def share(self, other):
        self.net, self.opt = other.net, other.opt

    def set_batch(self, X, y):
        self.X, self.y = self.torch.from_numpy(X), self.torch.from_numpy(y)

    def step(self):
        self.opt.zero_grad(set_to_none=True)
        loss = self.loss_fn(self.net(self.X), self.y)
        loss.backward()
        self.opt.step()
        return loss.item()

    def params(self):
        out = []
        for m in self.net:
            if hasattr(m, "weight"):
                out += [m.weight.detach().numpy().T.copy(), m.bias.detach().numpy().copy()]
        return out


class JaxStep:
    """JAX: the whole step (forward, loss, grad, SGD momentum) as one ``jax.jit`` program."""

    def __init__(self, case, params, X, y):
        import jax
        import jax.numpy as jnp

        act, mse = activation_of(case.activation, "jax", {"jax": jax}), case.loss == "mse"

        def loss_fn(p, X, y):
            a = X
            for k in range(len(p) // 2):
                a = a @ p[2 * k] + p[2 * k + 1]
                if k < len(p) // 2 - 1:
                    a = act(a)
            if mse:
                return jnp.mean((a - y) ** 2)
            logp = jax.nn.log_softmax(a)
            return -jnp.mean(jnp.take_along_axis(logp, y[:, None], axis=1))

        def step(p, v, X, y):
            loss, g = jax.value_and_grad(loss_fn)(p, X, y)
            v = [MOMENTUM * vi + gi for vi, gi in zip(v, g)]
            p = [pi - LR * vi for pi, vi in zip(p, v)]
            return p, v, loss

        self._raw_step = step
        self._step = jax.jit(step, donate_argnums=(0, 1))
        self._cast_y = lambda y: jnp.asarray(y if mse else y.astype(np.int32))
        self.p = [jnp.asarray(q) for q in params]
        self.v = [jnp.zeros_like(q) for q in self.p]
        self.X, self.y = jnp.asarray(X), self._cast_y(y)

    def step(self):
        self.p, self.v, loss = self._step(self.p, self.v, self.X, self.y)
        return float(loss)

    def params(self):
        return [np.asarray(q) for q in self.p]


class FastnnEpoch(FastnnStep):
    """``Sequential.fit`` for one epoch without shuffling: the compiled epoch loop."""

    def step(self):
        history = self.model.fit(self.X, self.y, loss=self.case.loss, optimizer=self.opt, epochs=1,
                                 batch_size=self.case.batch, shuffle=False)
        return history["loss"][0]


class _LoopEpoch:
    """A per-step peer looped over the batches of an epoch (its best without compiling the loop)."""

    step_class = None

    def __init__(self, case, params, X, y):
        from dataclasses import replace

        self.case, self.X, self.y = case, X, y
        n, b = case.samples, case.batch
        self.slices = [slice(s, min(s + b, n)) for s in range(0, n, b)]
        sizes = sorted({sl.stop - sl.start for sl in self.slices})
        # one stepper per batch size (the last batch may be smaller); they share parameters
        self.steppers = {m: self.step_class(replace(case, batch=m, samples=0), params, X[:m], y[:m]) for m in sizes}
        first = self.steppers[sizes[-1]]
        for other in self.steppers.values():
            other.share(first)

    def step(self):
        total = 0.0
        for sl in self.slices:
            stepper = self.steppers[sl.stop - sl.start]
            stepper.set_batch(self.X[sl], self.y[sl])
            total += stepper.step() * (sl.stop - sl.start)
        return total / self.case.samples

    def params(self):
        return next(iter(self.steppers.values())).params()


class NumpyEpoch(_LoopEpoch):
    step_class = NumpyStep


class TorchEpoch(_LoopEpoch):
    step_class = TorchStep


class JaxEpoch:
    """JAX at its best over an epoch: ``jax.lax.scan`` of the jitted step over the full batches,
    with the epoch's data closed over (constants of the one compiled program, as the issue's
    harness had it), then one call for a smaller last batch."""

    def __init__(self, case, params, X, y):
        import jax
        import jax.numpy as jnp

        inner = JaxStep(case, params, X[:case.batch], y[:case.batch])
        step_fn = inner._raw_step
        n, b = case.samples, case.batch
        full = n // b
        self.case = case
        Xs = jnp.asarray(X[:full * b].reshape(full, b, -1))
        ys = inner._cast_y(y[:full * b])
        ys = ys.reshape((full, b) + ys.shape[1:])
        self.rest = (jnp.asarray(X[full * b:]), inner._cast_y(y[full * b:])) if full * b < n else None

        def epoch(p, v):
            def body(carry, batch):
                p, v, loss = step_fn(carry[0], carry[1], *batch)
                return (p, v), loss
            (p, v), losses = jax.lax.scan(body, (p, v), (Xs, ys))
            return p, v, losses
        self._epoch = jax.jit(epoch, donate_argnums=(0, 1))
        self._rest = jax.jit(step_fn, donate_argnums=(0, 1))
        self.p, self.v = inner.p, inner.v

    def step(self):
        self.p, self.v, losses = self._epoch(self.p, self.v)
        total = float(losses.sum()) * self.case.batch
        if self.rest is not None:
            self.p, self.v, loss = self._rest(self.p, self.v, *self.rest)
            total += float(loss) * self.rest[0].shape[0]
        return total / self.case.samples

    def params(self):
        import numpy as np_
        return [np_.asarray(q) for q in self.p]


CONTENDERS = {"fastnn": FastnnStep, "numpy": NumpyStep, "torch": TorchStep, "jax": JaxStep}
EPOCH_CONTENDERS = {"fastnn": FastnnEpoch, "numpy": NumpyEpoch, "torch": TorchEpoch, "jax": JaxEpoch}


def contender(name: str, case: Case):
    """The class that runs ``case`` (a step or an epoch) for contender ``name``."""
    return (EPOCH_CONTENDERS if case.samples else CONTENDERS)[name]
_MODULES = {"fastnn": "numba", "numpy": "numpy", "torch": "torch", "jax": "jax"}


def available(name: str) -> bool:
    """Whether a contender's library is installed (PyTorch and JAX are optional)."""
    return importlib.util.find_spec(_MODULES[name]) is not None
