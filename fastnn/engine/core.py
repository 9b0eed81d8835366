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

from ..kernels import _jit, dropout, optimizers
from ..kernels import kind
from ..kernels._compose import SLOTS, raw_rows_of, run, slot_address
from ..kernels import losses as loss_kernels
from ..kernels import train
from ..kernels.kind import NO_SKIP, join
from ..kernels.train import driver_signature
from .threads import serial_rows

# Every loss the kernels have: (loss kernel, metric kernel or None, takes integer labels)
LOSS_KERNELS = loss_kernels.BARE
DRIVERS = tuple(train.DRIVER_FUNCTIONS[field] for field in train.Drivers._fields)  # in field order


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
    nodes : sequence of ``kernels.kinds.Node``
        The network's layers in order, each with the node that feeds it (always the one
        before it), the node whose output it adds (a residual block's join) and its dropout.
    params, grads : the model's flat (P,) buffers, of its dtype
    seed : int, keys the dropout masks
    """

    def __init__(self, nodes, params, grads, seed):
        self.dtype = params.dtype
        self.nodes = tuple(nodes)
        layers = [node.layer for node in self.nodes]

        def width(source):  # of what a node reads: the network's input (-1) or a node's output
            return layers[source].out_features if source >= 0 else layers[0].in_features
        for k, node in enumerate(self.nodes):  # (Numba checks no bounds: a view must fit its buffer)
            node.layer.check_dtype(self.dtype)
            if node.src != k - 1 or layers[k].in_features != width(node.src):
                raise ValueError(f"layer {k} ({layers[k].summary()}) is not fed by the layer before it")
            if node.skip != NO_SKIP and not (-1 <= node.skip < k and width(node.skip) == layers[k].out_features
                                             == layers[k].in_features):
                raise ValueError(f"layer {k} ({layers[k].summary()}) adds the output of layer {node.skip}, "
                                 f"which is not an earlier layer of its width")
        self.fan_in = np.array([layer.in_features for layer in layers], np.int64)
        self.fan_out = np.array([layer.out_features for layer in layers], np.int64)
        sizes = [layer.param_count() for layer in layers]
        self.param_at = np.cumsum([0] + sizes)[:-1].astype(np.int64)
        if sum(sizes) != params.size:
            raise ValueError(f"the layers have {sum(sizes)} parameters, the buffer {params.size}")
        self.act_at = np.cumsum([0, *self.fan_out])[:-1].astype(np.int64)
        self.z_width_of = np.array([layer.saved_width() for layer in layers], np.int64)
        self.z_at = np.cumsum([0, *self.z_width_of])[:-1].astype(np.int64)
        self.z_width = int(self.z_width_of.sum())
        self.p_drop = np.array([node.p_drop for node in self.nodes], np.float64)
        self.small = [None] * len(layers)  # per layer: None picks each pass's form by shape (Dense)
        # batch sizes whose steps run their products on one BLAS thread (``threads.serial_rows``)
        products = [rows * cols for (rows, cols), _ in (layer.blocks() for layer in layers)]
        self.serial_rows = serial_rows(max(products), params.nbytes)
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
        return ", ".join(getattr(node.layer, "activation", None) or node.layer.name for node in self.nodes)

    def kernels(self):
        """Per layer (forward, backward) kernels: the dispatchers behind the Net's addresses
        (a Dense layer's each pass fused or through BLAS by its shape, ``dense.fused``)."""
        return [node.layer.kernels(self.small[k]) for k, node in enumerate(self.nodes)]

    def uses_join(self):
        return any(node.skip != NO_SKIP for node in self.nodes)

    @property
    def net(self):
        """The Net tuple (compiling the layers' kernels on first use)."""
        if self._net is None:
            with self._build_lock:
                if self._net is None:
                    self._net = self._make_net()
        return self._net

    def table(self, forward, backward, python=not _jit.JIT):
        """The layer table (``train.LAYER``) with these kernels: addresses, or with ``python``
        callables (``train.LAYER_PYTHON``, for the drivers run as Python)."""
        table = np.zeros(len(self.nodes), train.LAYER_PYTHON if python else train.LAYER)
        blocks = [node.layer.blocks() for node in self.nodes]
        columns = {"src": [node.src for node in self.nodes], "skip": [node.skip for node in self.nodes],
                   "fan_in": self.fan_in, "fan_out": self.fan_out, "w_rows": [rows for (rows, _), _ in blocks],
                   "w_cols": [cols for (_, cols), _ in blocks], "b_len": [length for _, length in blocks],
                   "param_at": self.param_at, "act_at": self.act_at, "z_at": self.z_at, "z_width": self.z_width_of,
                   "penalised": [int(node.layer.penalised) for node in self.nodes], "p_drop": self.p_drop,
                   "setting": [node.layer.setting() for node in self.nodes],
                   "forward": forward, "backward": backward}
        for name in table.dtype.names:  # by name: a column missing here is a KeyError, not a zero
            column = np.empty(len(self.nodes), table.dtype[name])
            column[:] = columns[name]
            table[name] = column
        return table

    def _make_net(self):
        pairs = self.kernels()
        table = self.table([slot_address("layer_forward", f, self.dtype) for f, _ in pairs],
                           [slot_address("layer_backward", b, self.dtype) for _, b in pairs])
        if (self.p_drop > 0).any():
            drop_f = slot_address("dropout_forward", dropout.BARE[0], self.dtype)
            drop_b = slot_address("dropout_backward", dropout.BARE[1], self.dtype)
        else:
            drop_f = drop_b = train.NO_KERNEL
        joins = slot_address("join", join, self.dtype) if self.uses_join() else train.NO_KERNEL
        return train.Net(self.params, self.grads, table, drop_f, drop_b, joins, int(self.seed))

    def evaluation_net(self):
        """The Net with no dropout (evaluation mode), sharing the buffers."""
        if "evaluation" not in self._built:
            with self._build_lock:
                table = self.net.layers.copy()
                table["p_drop"] = 0.0
                self._built["evaluation"] = self.net._replace(layers=table)
        return self._built["evaluation"]

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
            metric_addr = (slot_address("metric", metric_kernel, self.dtype) if metric and metric_kernel is not None
                           else train.NO_KERNEL)
            self._built[key] = train.Objective(slot_address("loss", loss_kernel, self.dtype), metric_addr,
                                               train.NO_KERNEL, 0.0, 0.0)
        return self._built[key]

    def penalised(self, objective, l2=0.0, cap=0.0):
        """``objective`` with scikit-learn's L2 penalty of strength ``l2`` (alpha; 0: none) and its
        cap on a row's cross-entropy (0: none)."""
        if l2:
            objective = objective._replace(penalty=self.penalty_address(), l2=float(l2))
        return objective._replace(cap=float(cap)) if cap else objective

    def penalty_address(self):
        if "penalty" not in self._built:
            self._built["penalty"] = slot_address("penalty", loss_kernels.BARE_PENALTY, self.dtype)
        return self._built["penalty"]

    def update_address(self, kernel):
        """The address of an optimizer's update ``kernel`` for this dtype."""
        if kernel not in self._built:
            self._built[kernel] = slot_address("optimizer_update", kernel, self.dtype)
        return self._built[kernel]

    def drivers(self):
        """The Drivers tuple: the addresses of the compiled drivers of this dtype."""
        if "drivers" not in self._built:
            self._built["drivers"] = train.Drivers(*(slot_address(name, getattr(train, name), self.dtype)
                                                     for name in DRIVERS))
        return self._built["drivers"]

    # -- building, compiling what is missing ------------------------------------------------

    def _pieces(self, loss=None, metric=False, optimizer=None, drivers=DRIVERS):
        """Every (dispatcher, signature) a build needs, as it compiles them."""
        fsig, bsig = kind.signatures(self.dtype)
        pieces = [(k, sig) for pair in self.kernels() for k, sig in zip(pair, (fsig, bsig))]
        if (self.p_drop > 0).any():
            pieces += list(zip(dropout.BARE, dropout.signatures(self.dtype)))
        if self.uses_join():
            pieces.append((join, SLOTS["join"](self.dtype)))
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

    def population_fn(self, loss, optimizer):
        """``(train_members entry, objective, drivers)`` for a population of this model's
        architecture (``fastnn.nn.population``)."""
        from ..kernels import population

        def build():
            self.net, self.update_address(optimizer.kernel())
            return (entry(population.train_members, population.population_signature(self.dtype.name)),
                    self.objective(loss, metric=True), self.drivers())
        what = "population epoch: " + self._describe(loss, type(optimizer).__name__)
        pieces = lambda: (self._pieces(loss, metric=True, optimizer=optimizer)  # noqa: E731
                          + [(population.train_members, population.population_signature(self.dtype.name))])
        return self._build(("population", loss, optimizer.kernel()), what, build, pieces)

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
        return train.layer_views(self.net, ws, len(self.nodes) - 1, n).out

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
