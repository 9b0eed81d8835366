"""A model's compiled training path: the kernels it uses, the buffers they share, the calls
into the compiled drivers (``fastnn.kernels.train``).

Each model owns an ``Engine``. On first use it picks every layer's forward and backward
kernels for the layer's activation and the model's dtype, compiles those that are neither
compiled in this process nor in the disk cache (saying so once, on stderr), and keeps their
addresses in the model's ``Net``. Kernels and drivers are shared by every model: a second
model with the same activations and dtype compiles nothing.

Hot calls (``train_step``) go straight to the drivers' compiled entry points; the caller
(``Sequential``) has checked the arguments' types, shapes and layout before.

Threads: training owns ``workspace`` (the caller holds the model's training lock), while every
thread that predicts gets activation buffers of its own (``inference_workspace``), so any
number of threads may predict at once, also while the model trains. Builds (compiling,
choosing kernels) run under one lock per engine.
"""
from __future__ import annotations

import functools
import threading

import numba
import numpy as np

from ..kernels import _jit, dense, dropout, optimizers
from ..kernels._compose import raw_rows_of, run
from ..kernels import losses as loss_kernels
from ..kernels import train
from ..kernels.activations import NAMES, NEEDS_PREACTIVATION
from .threads import serial_rows

# Every loss the kernels have: (loss kernel, metric kernel or None, takes integer labels)
LOSS_KERNELS = loss_kernels.BARE
DRIVERS = tuple(train.DRIVER_FUNCTIONS[field] for field in train.Drivers._fields)  # in field order


@functools.cache
def group_types(dtype):
    """The Numba types of the named groups for one dtype (what every driver is compiled for)."""
    f = np.dtype(dtype)
    v, m = np.zeros(0, f), np.zeros((0, 0), f)
    return {"net": numba.typeof(train.Net(v, v, np.zeros((0, 0), np.int64), np.zeros(0), 0, 0, 0)),
            "ws": numba.typeof(train.Workspace(v, v, v)),
            "objective": numba.typeof(train.Objective(0, 0, 0, 0.0, 0.0)),
            "opt": numba.typeof(train.Optimizer(0, np.zeros(0), m, np.zeros(1, np.int64))),
            "drivers": numba.typeof(train.Drivers(0, 0, 0, 0)),
            "epoch": numba.typeof(train.Epoch(*(np.zeros((0, 0), np.uint8),) * 2, v, np.zeros(0, np.int64), False,
                                              0, np.zeros(0), *(np.zeros((0, 0), np.uint8),) * 2, v,
                                              *(np.zeros(0),) * 3)),
            "X": _jit.array_type(f, 2), "w": _jit.array_type(f, 1), "raw": numba.types.Array(numba.uint8, 2, "C")}


@functools.cache
def driver_signature(name, dtype):
    """The signature each driver is compiled for, once per dtype (targets travel as raw bytes)."""
    t = group_types(np.dtype(dtype).name)
    f8, i8, none = numba.float64, numba.int64, numba.types.none
    net, ws, obj, opt, drv = t["net"], t["ws"], t["objective"], t["opt"], t["drivers"]
    return {"forward_pass": none(net, ws, t["X"], numba.boolean, i8),
            "gradients": f8(net, ws, obj, drv, t["X"], t["raw"], t["w"], i8),
            "update": f8(net, opt, f8),
            "step": f8(net, ws, obj, opt, drv, t["X"], t["raw"], t["w"], f8),
            "train_epoch": numba.types.Tuple((i8, i8))(net, ws, obj, opt, drv, t["epoch"], i8, i8),
            }[name]


def _addresses(kernels, signature):
    addrs = [_jit.address(k, signature) for k in kernels]
    return np.array(addrs, dtype=np.int64) if _jit.JIT else addrs


def entry(dispatcher, signature):
    """The compiled entry point of ``dispatcher`` for ``signature``, callable from Python
    without Numba's type dispatch (the caller has checked the arguments' types)."""
    if not _jit.JIT:
        return dispatcher
    dispatcher.compile(signature)  # compiled, loaded and cached under this exact signature
    return dispatcher.overloads[tuple(signature.args)].entry_point


class Engine:
    """The compiled path of one model: see the module docstring.

    Parameters
    ----------
    dense_layers : sequence of Dense
    p_drop : (L,) float64, the dropout probability after each layer
    params, grads : the model's flat (P,) buffers, of its dtype
    seed : int, keys the dropout masks
    """

    def __init__(self, dense_layers, p_drop, params, grads, seed):
        self.dtype = params.dtype
        self.codes = [layer.code for layer in dense_layers]
        self.fan_in = np.array([layer.in_features for layer in dense_layers], np.int64)
        self.fan_out = np.array([layer.out_features for layer in dense_layers], np.int64)
        self.param_at = np.cumsum([0] + [i * o + o for i, o in zip(self.fan_in, self.fan_out)])[:-1].astype(np.int64)
        self.act_at = np.cumsum([0, *self.fan_out])[:-1].astype(np.int64)
        keep_z = [code in NEEDS_PREACTIVATION for code in self.codes]
        widths = [o if k else 0 for o, k in zip(self.fan_out, keep_z)]
        self.z_at = np.where(keep_z, np.cumsum([0, *widths])[:-1], -1).astype(np.int64)
        self.z_width = int(sum(widths))
        self.p_drop = p_drop
        self.small = [None] * len(self.codes)  # per layer: None picks each pass's form by shape
        # batch sizes whose steps run their products on one BLAS thread (``threads.serial_rows``)
        self.serial_rows = serial_rows(int((self.fan_in * self.fan_out).max()), params.nbytes)
        self.params, self.grads, self.seed = params, grads, seed
        self._net = None
        self._ws = None
        self.ones = np.ones(0, self.dtype)  # unit row weights, as many as the workspace has rows
        self.capacity = 0
        self._built = {}  # what _build made, by key
        self._build_lock = threading.RLock()
        self._inference = threading.local()  # per thread: (rows, Workspace) for predict
        self.last_build = {"compiled": 0, "seconds": 0.0}

    # -- what the drivers read ---------------------------------------------------------------

    def describe(self):
        return ", ".join(NAMES[c] for c in self.codes)

    def kernels(self):
        """Per layer (forward, backward) kernels: the dispatchers behind the Net's addresses,
        each pass fused or through BLAS by the layer's shape (``dense.fused``)."""
        return [dense.kernels(c, i, o, c in NEEDS_PREACTIVATION, self.small[k])
                for k, (c, i, o) in enumerate(zip(self.codes, self.fan_in, self.fan_out))]

    @property
    def net(self):
        """The Net tuple (compiling the layers' kernels on first use)."""
        if self._net is None:
            with self._build_lock:
                if self._net is None:
                    self._net = self._make_net()
        return self._net

    def _make_net(self):
        fsig, bsig = dense.signatures(self.dtype)
        pairs = self.kernels()
        if (self.p_drop > 0).any():
            dsig_f, dsig_b = dropout.signatures(self.dtype)
            drop_f = _jit.address(dropout.BARE[0], dsig_f)
            drop_b = _jit.address(dropout.BARE[1], dsig_b)
        else:
            drop_f = drop_b = train.NO_KERNEL
        columns = dict(fan_in=self.fan_in, fan_out=self.fan_out, param_at=self.param_at, act_at=self.act_at,
                       z_at=self.z_at, forward=_addresses([f for f, _ in pairs], fsig),
                       backward=_addresses([b for _, b in pairs], bsig))
        if _jit.JIT:
            layers = np.stack([columns[name] for name in train.LAYER_COLUMNS], axis=1)
        else:  # plain Python: the kernel "addresses" are the functions themselves
            layers = [tuple(columns[name][k] for name in train.LAYER_COLUMNS) for k in range(len(self.codes))]
        return train.Net(self.params, self.grads, layers, self.p_drop, drop_f, drop_b, int(self.seed))

    @property
    def width(self):
        return int(self.fan_out.sum())


    def workspace(self, n):
        """Training's activation buffers for batches of up to n rows (grown, never shrunk); the
        caller holds the model's training lock."""
        if n > self.capacity:
            self._ws = train.Workspace(np.empty(n * self.width, self.dtype), np.empty(n * self.width, self.dtype),
                                       np.empty(n * self.z_width, self.dtype))
            self.ones = np.ones(n, self.dtype)
            self.capacity = n
        return self._ws

    def inference_workspace(self, n):
        """This thread's activation buffers for a forward pass of up to n rows (grown, never
        shrunk): ``predict`` shares nothing mutable with other threads or with training. The
        forward pass never reads ``dout``, so it aliases ``out`` (no memory of its own)."""
        local = self._inference
        rows = getattr(local, "rows", 0)
        if n > rows:
            out = np.empty(n * self.width, self.dtype)
            local.ws = train.Workspace(out, out, np.empty(n * self.z_width, self.dtype))
            local.rows = rows = n
        return local.ws

    def objective(self, loss, metric=False):
        """The Objective tuple (loss and metric kernel addresses) for a loss name; without
        ``metric`` (a single step needs none) the metric stays uncompiled (0)."""
        key = ("objective", loss, metric)
        if key not in self._built:
            loss_kernel, metric_kernel, _ = LOSS_KERNELS[loss]
            lsig, msig = loss_kernels.signatures(self.dtype)
            metric_addr = (_jit.address(metric_kernel, msig) if metric and metric_kernel is not None
                           else train.NO_KERNEL)
            self._built[key] = train.Objective(_jit.address(loss_kernel, lsig), metric_addr, train.NO_KERNEL, 0.0, 0.0)
        return self._built[key]

    def penalised(self, objective, l2=0.0, cap=0.0):
        """``objective`` with scikit-learn's L2 penalty of strength ``l2`` (alpha; 0: none) and its
        cap on a row's cross-entropy (0: none)."""
        if l2:
            objective = objective._replace(penalty=self.penalty_address(), l2=float(l2))
        return objective._replace(cap=float(cap)) if cap else objective

    def penalty_address(self):
        if "penalty" not in self._built:
            self._built["penalty"] = _jit.address(loss_kernels.BARE_PENALTY, loss_kernels.penalty_signature(self.dtype))
        return self._built["penalty"]

    def update_address(self, kernel):
        """The address of an optimizer's update ``kernel`` for this dtype."""
        if kernel not in self._built:
            self._built[kernel] = _jit.address(kernel, optimizers.signature(self.dtype))
        return self._built[kernel]

    def drivers(self):
        """The Drivers tuple: the addresses of the compiled drivers of this dtype."""
        if "drivers" not in self._built:
            self._built["drivers"] = train.Drivers(*(_jit.address(getattr(train, name),
                                                                  driver_signature(name, self.dtype.name))
                                                     for name in DRIVERS))
        return self._built["drivers"]

    # -- building, compiling what is missing ------------------------------------------------

    def _pieces(self, loss=None, metric=False, optimizer=None, drivers=DRIVERS):
        """Every (dispatcher, signature) a build needs, as it compiles them."""
        fsig, bsig = dense.signatures(self.dtype)
        pieces = [(k, sig) for pair in self.kernels() for k, sig in zip(pair, (fsig, bsig))]
        if (self.p_drop > 0).any():
            pieces += list(zip(dropout.BARE, dropout.signatures(self.dtype)))
        if loss is not None:
            loss_kernel, metric_kernel, _ = LOSS_KERNELS[loss]
            lsig, msig = loss_kernels.signatures(self.dtype)
            pieces.append((loss_kernel, lsig))
            if metric and metric_kernel is not None:
                pieces.append((metric_kernel, msig))
        if optimizer is not None:
            pieces.append((optimizer.kernel(), optimizers.signature(self.dtype)))
        return pieces + [(getattr(train, name), driver_signature(name, self.dtype.name)) for name in drivers]

    def _build(self, key, what, build, pieces, announce=None, quiet=False):
        """``build()``, once per key and model, after compiling (or loading) ``pieces()``; a
        build that compiles says so (``_jit.compiling``)."""
        built = self._built.get(key)
        if built is not None:
            self.last_build = {"compiled": 0, "seconds": 0.0}
            return built
        with self._build_lock:  # two threads' first predict: one builds, the other waits for it
            built = self._built.get(key)
            if built is None:
                with _jit.compiling(f"the {self.dtype.name} {what}", quiet=quiet, announce=announce) as report:
                    _jit.compile_all(pieces())
                    built = build()
                self._built[key] = built
                self.last_build = report
        return built

    def _entry(self, name):
        return entry(getattr(train, name), driver_signature(name, self.dtype.name))

    def _describe(self, *parts):
        return "; ".join([self.describe(), *parts])

    def step_fn(self, loss, optimizer, announce=None, quiet=False):
        """``(step entry, objective, drivers)`` for ``train_step``."""
        def build():
            self.net, self.update_address(optimizer.kernel())
            return self._entry("step"), self.objective(loss), self.drivers()
        what = "training step: " + self._describe(loss, type(optimizer).__name__)
        return self._build(("step", loss, optimizer.kernel()), what, build,
                           lambda: self._pieces(loss, optimizer=optimizer), announce, quiet)

    def epoch_fn(self, loss, optimizer, announce=None, quiet=False):
        """``(train_epoch entry, objective, drivers)`` for ``fit``."""
        def build():
            self.net, self.update_address(optimizer.kernel())
            return self._entry("train_epoch"), self.objective(loss, metric=True), self.drivers()
        what = "training epoch: " + self._describe(loss, type(optimizer).__name__)
        pieces = lambda: self._pieces(loss, metric=True, optimizer=optimizer, drivers=DRIVERS + ("train_epoch",))  # noqa: E731
        return self._build(("epoch", loss, optimizer.kernel()), what, build, pieces, announce, quiet)

    def gradients_fn(self, loss):
        """``(gradients entry, objective, drivers)`` for ``loss_and_grad`` and the distributed path."""
        def build():
            return self._entry("gradients"), self.objective(loss), self.drivers()
        return self._build(("gradients", loss), "gradient: " + self._describe(loss), build, lambda: self._pieces(loss))

    def update_fn(self, optimizer):
        """The ``update`` entry (the distributed path, after its allreduce)."""
        def build():
            self.update_address(optimizer.kernel())
            return self._entry("update")
        return self._build(("update", optimizer.kernel()), f"{type(optimizer).__name__} update", build,
                           lambda: self._pieces(optimizer=optimizer))

    def forward_fn(self):
        """The ``forward_pass`` entry, for ``predict``."""
        def build():
            self.net
            return self._entry("forward_pass")
        return self._build(("forward",), "forward pass: " + self.describe(), build, self._pieces)

    # -- running ----------------------------------------------------------------------------

    def output(self, ws, n):
        """The last layer's (n, O) output block in ``ws`` (a view)."""
        return train.layer_views(self.net, ws, len(self.codes) - 1, n).out

    def predict(self, X, batch_size):
        """Outputs of the last layer for every row of X (a new array), in batches; safe from any
        number of threads at once (``inference_workspace``)."""
        n = X.shape[0]
        out = np.empty((n, int(self.fan_out[-1])), self.dtype)
        ws = self.inference_workspace(min(batch_size, n))
        forward = self.forward_fn()
        net = self.net
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            forward(net, ws, X[start:stop], False, 0)
            out[start:stop] = self.output(ws, stop - start)
        return out

    def loss(self, loss, out, y, w):
        """The mean loss of outputs ``out`` against ``y`` with row weights ``w``, from Python."""
        return run(LOSS_KERNELS[loss][0], loss_kernels.signatures(self.dtype)[0], out, raw_rows_of(y), w, 0.0,
                   np.empty_like(out))
