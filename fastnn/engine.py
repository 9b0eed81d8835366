"""A model's compiled training path: the kernels it uses, the buffers they share, the calls
into the compiled drivers (``fastnn.kernels.train``).

Each model owns an ``Engine``. On first use it picks every layer's forward and backward
kernels for the layer's activation and the model's dtype, compiles those that are neither
compiled in this process nor in the disk cache (saying so once, on stderr), and keeps their
addresses in the model's ``Net``. Kernels and drivers are shared by every model: a second
model with the same activations and dtype compiles nothing.

Hot calls (``train_step``) go straight to the drivers' compiled entry points; the caller
(``Sequential``) has checked the arguments' types, shapes and layout before.
"""
from __future__ import annotations

import functools

import numba
import numpy as np

from .kernels import _jit, dense, dropout, optimizers
from .kernels import losses as loss_kernels
from .kernels import train
from .kernels.activations import NAMES, NEEDS_PREACTIVATION

# Every loss the kernels have: (loss kernel, metric kernel or None, takes integer labels)
LOSS_KERNELS = {
    "softmax_cross_entropy": (loss_kernels._softmax_cross_entropy, loss_kernels._count_correct, True),
    "mse": (loss_kernels._mse, None, False),
}



@functools.cache
def group_types(dtype):
    """The Numba types of the named groups for one dtype (what every driver is compiled for)."""
    f = np.dtype(dtype)
    v, m, i = np.zeros(0, f), np.zeros((0, 0), f), np.zeros(0, np.int64)
    return {"net": numba.typeof(train.Net(v, v, np.zeros((0, 0), np.int64), np.zeros(0), 0, 0, 0)),
            "ws": numba.typeof(train.Workspace(v, v, v)),
            "objective": numba.typeof(train.Objective(0, 0)),
            "opt": numba.typeof(train.Optimizer(0, np.zeros(0), m)),
            "drivers": numba.typeof(train.Drivers(0, 0, 0, 0)),
            "X": _jit.array_type(f, 2), "w": _jit.array_type(f, 1),
            "labels": numba.types.Array(numba.int64, 1, "C"), "targets": _jit.array_type(f, 2),
            "raw": numba.types.Array(numba.uint8, 2, "C")}


def driver_signature(name, dtype, labels=True):
    """The signature each driver is compiled for. Internal drivers take raw targets; the
    entries from Python (train_step, loss_and_grad) take integer ``labels`` or float targets."""
    t = group_types(dtype)
    y = t["labels"] if labels else t["targets"]
    f8, i8, none = numba.float64, numba.int64, numba.types.none
    return {"forward_pass": none(t["net"], t["ws"], t["X"], numba.boolean, i8),
            "gradients": f8(t["net"], t["ws"], t["objective"], t["drivers"], t["X"], t["raw"], t["w"], i8),
            "update": f8(t["net"], t["opt"], f8, i8),
            "step": f8(t["net"], t["ws"], t["objective"], t["opt"], t["drivers"], t["X"], t["raw"], t["w"], f8, i8),
            "train_step": f8(t["net"], t["ws"], t["objective"], t["opt"], t["drivers"], t["X"], y, t["w"], f8, i8),
            "infer": none(t["net"], t["ws"], t["drivers"], t["X"]),
            "loss_and_grad": f8(t["net"], t["ws"], t["objective"], t["drivers"], t["X"], y, t["w"], i8),
            "apply_update": f8(t["net"], t["opt"], t["drivers"], f8, i8),
            }[name]


def driver_address(name, dtype):
    """Compile (or load) an internal driver and return its address, for other drivers to call."""
    return _jit.address(getattr(train, name), driver_signature(name, dtype))


def _addresses(kernels, signature):
    addrs = [_jit.address(k, signature) for k in kernels]
    return np.array(addrs, dtype=np.int64) if _jit.JIT else addrs


def entry(dispatcher, types_):
    """The compiled entry point of ``dispatcher`` for argument types ``types_``, callable from
    Python without Numba's type dispatch (the caller has checked the arguments' types)."""
    if not _jit.JIT:
        return dispatcher
    dispatcher.compile(types_)
    return dispatcher.overloads[tuple(types_)].entry_point


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
        self.params, self.grads, self.seed = params, grads, seed
        self._net = None
        self._ws = None
        self.capacity = 0
        self._objectives = {}
        self._built = {}  # what _build made, by key
        self.last_build = {"compiled": 0, "seconds": 0.0}

    # -- building ---------------------------------------------------------------------------

    def describe(self):
        return ", ".join(NAMES[c] for c in self.codes)

    def kernels(self):
        """Per layer (forward, backward) kernels: the dispatchers behind the Net's addresses."""
        return [(dense.forward_kernel(c, c in NEEDS_PREACTIVATION), dense.backward_kernel(c)) for c in self.codes]

    @property
    def net(self):
        if self._net is None:
            fsig, bsig = dense.signatures(self.dtype)
            pairs = self.kernels()
            drops = self.p_drop > 0
            if drops.any():
                dsig_f, dsig_b = dropout.signatures(self.dtype)
                drop_f = _jit.address(dropout._dropout_forward, dsig_f)
                drop_b = _jit.address(dropout._dropout_backward, dsig_b)
            else:
                drop_f = drop_b = train.NO_KERNEL
            columns = dict(fan_in=self.fan_in, fan_out=self.fan_out, param_at=self.param_at, act_at=self.act_at,
                           z_at=self.z_at, forward=_addresses([f for f, _ in pairs], fsig),
                           backward=_addresses([b for _, b in pairs], bsig))
            if _jit.JIT:
                layers = np.stack([columns[name] for name in train.LAYER_COLUMNS], axis=1)
            else:  # plain Python: the kernel "addresses" are the functions themselves
                layers = [tuple(columns[name][k] for name in train.LAYER_COLUMNS) for k in range(len(self.codes))]
            self._net = train.Net(self.params, self.grads, layers, self.p_drop, drop_f, drop_b, int(self.seed))
        return self._net

    def workspace(self, n):
        """Activation buffers for batches of up to n rows (grown, never shrunk)."""
        if n > self.capacity:
            width = int(self.fan_out.sum())
            self._ws = train.Workspace(np.empty(n * width, self.dtype), np.empty(n * width, self.dtype),
                                       np.empty(n * self.z_width, self.dtype))
            self.ones = np.ones(n, self.dtype)  # unit row weights
            self.capacity = n
        return self._ws

    def objective(self, loss, metric=True):
        """The Objective tuple (loss and metric kernel addresses) for a loss name; without
        ``metric`` (a single step needs none) the metric stays uncompiled (0)."""
        obj = self._objectives.get((loss, metric))
        if obj is None:
            loss_kernel, metric_kernel, labels = LOSS_KERNELS[loss]
            lsig, msig = loss_kernels.signatures(self.dtype)
            metric_addr = (_jit.address(metric_kernel, msig) if metric and metric_kernel is not None
                           else train.NO_KERNEL)
            obj = self._objectives[(loss, metric)] = train.Objective(_jit.address(loss_kernel, lsig), metric_addr)
        return obj

    def loss(self, loss, out, y, w):
        """The mean loss of outputs ``out`` against ``y`` with row weights ``w``, from Python."""
        return _jit.run(LOSS_KERNELS[loss][0], loss_kernels.signatures(self.dtype)[0], out, _jit.raw_rows_of(y), w,
                        np.empty_like(out))

    def update_address(self, optimizer):
        """The address of ``optimizer``'s update kernel for this dtype."""
        kernel = optimizer._kernel()
        addr = self._built.get(kernel)
        if addr is None:
            addr = self._built[kernel] = _jit.address(kernel, optimizers.signature(self.dtype))
        return addr

    def optimizer(self, optimizer):
        """The Optimizer tuple for ``optimizer`` on this model's flat parameters."""
        return optimizer._compiled(self.params, self.update_address(optimizer))

    def labels(self, loss):
        return LOSS_KERNELS[loss][2]

    def drivers(self, loss, upto):
        """The Drivers tuple with the addresses of the drivers up to ``upto`` ("forward",
        "gradients", "update" or "step"; the rest 0), compiling what is missing."""
        names = ("forward_pass", "gradients", "update", "step")
        stop = {"forward": 1, "gradients": 2, "update": 3, "step": 4}[upto]
        addrs = [driver_address(n, self.dtype) if k < stop else train.NO_KERNEL for k, n in enumerate(names)]
        return train.Drivers(*addrs)

    def _pieces(self, loss=None, metric=False, optimizer=None, drivers=(), entry=None):
        """Every (dispatcher, signature) a build needs, in the form it compiles them."""
        fsig, bsig = dense.signatures(self.dtype)
        pieces = [(k, sig) for pair in self.kernels() for k, sig in zip(pair, (fsig, bsig))]
        if (self.p_drop > 0).any():
            pieces += list(zip((dropout._dropout_forward, dropout._dropout_backward), dropout.signatures(self.dtype)))
        if loss is not None:
            loss_kernel, metric_kernel, _ = LOSS_KERNELS[loss]
            lsig, msig = loss_kernels.signatures(self.dtype)
            pieces.append((loss_kernel, lsig))
            if metric and metric_kernel is not None:
                pieces.append((metric_kernel, msig))
        if optimizer is not None:
            pieces.append((optimizer._kernel(), optimizers.signature(self.dtype)))
        pieces += [(getattr(train, name), driver_signature(name, self.dtype)) for name in drivers]
        if entry is not None:
            pieces.append(entry)
        return pieces

    def _build(self, key, what, build, pieces, announce=None, quiet=False):
        """``build()``, once per key and model, after compiling (or loading) ``pieces``; a build
        that compiles says so (``_jit.compiling``)."""
        built = self._built.get(key)
        if built is None:
            with _jit.compiling(f"the {self.dtype.name} {what}", quiet=quiet, announce=announce) as report:
                _jit.compile_all(pieces)
                built = build()
            self._built[key] = built
            self.last_build = report
        else:
            self.last_build = {"compiled": 0, "seconds": 0.0}
        return built

    def _entry_piece(self, name, loss=None):
        return getattr(train, name), driver_signature(name, self.dtype, self.labels(loss) if loss else True).args

    def _entry(self, name, loss=None):
        return entry(*self._entry_piece(name, loss))

    def _describe(self, *parts):
        return "; ".join([self.describe(), *parts])

    def step_entry(self, loss, optimizer, announce=None, quiet=False):
        """``(train_step entry, objective, drivers)``, building and compiling what is missing."""
        def build():
            self.net, self.update_address(optimizer)
            return self._entry("train_step", loss), self.objective(loss, metric=False), self.drivers(loss, "step")
        what = "training step: " + self._describe(loss, type(optimizer).__name__)
        pieces = self._pieces(loss, optimizer=optimizer, drivers=("forward_pass", "gradients", "update", "step"),
                              entry=self._entry_piece("train_step", loss))
        return self._build(("step", loss, optimizer._kernel()), what, build, pieces, announce, quiet)

    def epoch_entry(self, loss, optimizer, epoch, announce=None, quiet=False):
        """``(train_epoch entry, objective, drivers)``, building and compiling what is missing."""
        t, i8 = group_types(self.dtype), numba.int64
        epoch_piece = (train.train_epoch, (t["net"], t["ws"], t["objective"], t["opt"], t["drivers"],
                                           numba.typeof(epoch), i8, i8, i8))  # the same for every loss

        def build():
            self.net, self.update_address(optimizer)
            return entry(*epoch_piece), self.objective(loss), self.drivers(loss, "step")
        what = "training epoch: " + self._describe(loss, type(optimizer).__name__)
        pieces = self._pieces(loss, metric=True, optimizer=optimizer,
                              drivers=("forward_pass", "gradients", "update", "step"), entry=epoch_piece)
        return self._build(("epoch", loss, optimizer._kernel()), what, build, pieces, announce, quiet)

    def gradients_entry(self, loss):
        """``(loss_and_grad entry, objective, drivers)``, building and compiling what is missing."""
        def build():
            return (self._entry("loss_and_grad", loss), self.objective(loss, metric=False),
                    self.drivers(loss, "gradients"))
        pieces = self._pieces(loss, drivers=("forward_pass", "gradients"), entry=self._entry_piece("loss_and_grad", loss))
        return self._build(("gradients", loss), "gradient: " + self._describe(loss), build, pieces)

    def update_entry(self, loss, optimizer):
        """``(apply_update entry, drivers)``, building and compiling what is missing."""
        def build():
            self.update_address(optimizer)
            return self._entry("apply_update"), self.drivers(loss, "update")
        pieces = [(optimizer._kernel(), optimizers.signature(self.dtype)),
                  (train.update, driver_signature("update", self.dtype)), self._entry_piece("apply_update")]
        return self._build(("update", loss, optimizer._kernel()), f"{type(optimizer).__name__} update", build, pieces)

    def infer_entry(self):
        """``(infer entry, drivers)``, building and compiling what is missing."""
        def build():
            self.net
            return self._entry("infer"), self.drivers(None, "forward")
        pieces = self._pieces(drivers=("forward_pass",), entry=self._entry_piece("infer"))
        return self._build(("infer",), "forward pass: " + self.describe(), build, pieces)

    # -- running ----------------------------------------------------------------------------

    def output(self, ws, n):
        """The last layer's (n, O) output block in ``ws`` (a view)."""
        o = int(self.fan_out[-1])
        start = n * int(self.act_at[-1])
        return ws.out[start:start + n * o].reshape(n, o)

    def predict(self, X, batch_size):
        """Outputs of the last layer for every row of X (a new array), in batches."""
        n = X.shape[0]
        out = np.empty((n, int(self.fan_out[-1])), self.dtype)
        ws = self.workspace(min(batch_size, n))
        infer, drivers = self.infer_entry()
        net = self.net
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            infer(net, ws, drivers, X[start:stop])
            out[start:stop] = self.output(ws, stop - start)
        return out

