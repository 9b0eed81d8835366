"""What a layer kind is: the one interface the engine, the model, the reference, the ONNX export
and model files read. Each kind is one module in this folder (``dense.py``, ``layernorm.py``,
``residual.py``) holding one subclass of ``LayerKind``; ``kinds.KINDS`` finds them.

Every kind's kernels take the same arguments, so one compiled driver runs any of them:

    forward(x (N, I), W (R, C), b (B,), setting, out (N, O), z (N, Z))
    backward(dout (N, O), x, W, out, z, setting, dW (R, C), db (B,), dx (N, I))

N = rows, I = in_features, O = out_features. ``W`` and ``b`` are the kind's two parameter
blocks as its kernels see them (Dense: (I, O) and (O,); LayerNorm: (1, O) and (O,); a kind
without parameters: (0, 0) and (0,)), ``dW`` and ``db`` their gradients, which the backward
overwrites. ``setting`` (float64) is the layer's one number that is not learnt (LayerNorm's
eps; 0 where a kind has none): an argument, not a compiled-in constant, so a file of many
settings compiles nothing more. ``z`` is what the backward needs besides ``out`` (``saved_width`` numbers per row: gelu's
pre-activation); with none it is ``out`` itself. A kind may have a W block and an empty b
(a zero-length block works everywhere). The backward may overwrite ``dout``, and overwrites ``dx`` (with 0 rows: the layer
feeds on the network's input and no input gradient is wanted). All float32 or all float64,
C-contiguous.

A layer that joins two paths (a residual block's end) adds the output of the layer its
``skip`` names to its own, and hands its gradient back along both: the drivers do that
(``train.forward_pass``, ``train.gradients``), so kinds never see two inputs.
"""
from __future__ import annotations

import math

import numpy as np
from numba import types

from ._compose import slot
from ._jit import array_type, kernel
from .dropout import Dropout

INPUT = -1  # a node's src (or skip) that is the network's input
NO_SKIP = -2  # a node that adds nothing
MAX_DEPTH = 32  # blocks inside blocks


def signatures(dtype):
    """(forward, backward) Numba signatures, shared by every layer kind."""
    m, v, f8 = array_type(dtype, 2), array_type(dtype, 1), types.float64
    return types.none(m, m, v, f8, m, m), types.none(m, m, m, m, m, f8, m, v, m)


slot("layer_forward", lambda dtype: signatures(dtype)[0])
slot("layer_backward", lambda dtype: signatures(dtype)[1])
slot("join", lambda dtype: types.none(array_type(dtype, 2), array_type(dtype, 2)))


@kernel(python_entry=False)
def join(into, other):
    """into += other, both (N, O): a join's skip, forward (outputs) and backward (gradients)."""
    n, m = into.shape
    for i in range(n):
        for j in range(m):
            into[i, j] += other[i, j]


class LayerKind:
    """The base of every layer kind. A kind declares, as class attributes and methods:

    name            its name in saved architectures (``{"kind": name, **spec()}``)
    spec()          its constructor's arguments, to save; ``from_spec(spec)`` rebuilds it
    in_features, out_features
    params()        {name: shape}: its parameters as users see them (``layer.W``, ...), in
                    the order they lie in the model's flat buffer
    blocks()        ((R, C), B): the same numbers as its kernels' W and b
    saved_width()   Z, numbers per row its backward needs besides out
    setting()       the float its kernels take as ``setting`` (0.0 by default)
    check_dtype(dtype)   a ValueError when the layer cannot work in that dtype
    kernels(small)  (forward, backward) dispatchers for the slots above (``small``: a form,
                    for kinds that have two)
    init_params(rng)   fill its parameters (drawn in float64, so both dtypes of a seed agree)
    reference_forward(x, W, b) -> (out, z);  reference_backward(dout, x, W, b, out, z) -> (dW, db, dx)
                    its NumPy twin (the oracle), on the kernel's blocks
    onnx(builder, x, prefix) -> the name of its output in an ONNX graph
    summary()       its row in ``Sequential.summary``
    penalised       whether scikit-learn's L2 penalty (alpha) covers its W

    The model places a layer in its flat buffers with ``attach``; the parameters are then
    attributes (``layer.W``), writable views, assignable after a shape check.
    """
    name = None
    penalised = False
    KINDS = {}  # name -> class, filled as each kind's class is defined

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if "name" in cls.__dict__ and cls.name is not None:  # (a subclass without its own name is no new kind)
            if cls.name in LayerKind.KINDS:
                raise ValueError(f"two layer kinds are named {cls.name!r}")
            LayerKind.KINDS[cls.name] = cls

    def __getattr__(self, name):  # a parameter by name, once the layer is in a model
        if name.startswith("_") or name not in type(self).param_names():
            raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")
        return self.__dict__.get("_views", {}).get(name)

    def __setattr__(self, name, value):
        if not name.startswith("_") and name in type(self).param_names():
            self._assign(name, value)
        else:
            super().__setattr__(name, value)

    @classmethod
    def param_names(cls):
        return getattr(cls, "PARAMS", ())

    # -- what every kind shares --------------------------------------------------------------

    def param_count(self):
        return sum(math.prod(shape) for shape in self.params().values())

    def attach(self, flat):
        """Make this layer's parameters views of ``flat`` (its slice of the model's buffer)."""
        views, at = {}, 0
        for name, shape in self.params().items():
            size = math.prod(shape)
            views[name] = flat[at:at + size].reshape(shape)
            at += size
        self._views = views

    def kernel_blocks(self, flat):
        """(W, b): ``flat`` (this layer's slice of a flat buffer) as its kernels see it."""
        (rows, cols), length = self.blocks()
        return flat[:rows * cols].reshape(rows, cols), flat[rows * cols:rows * cols + length]

    def _assign(self, name, value):
        view = self.__dict__.get("_views", {}).get(name)
        if view is None:
            raise AttributeError(f"{name} is set once the layer is in a model (Sequential(...)), which initialises it "
                                 f"from its seed; assign it then, or set model.parameters() in place")
        value = np.asarray(value)
        if value.dtype.kind not in "biuf":
            raise TypeError(f"{name} must be numeric, got dtype {value.dtype}")
        if value.shape != view.shape:
            raise ValueError(f"{name} of this layer has shape {view.shape}; got {value.shape} (the model's parameters "
                             f"keep their shapes: build a new layer for another size)")
        with np.errstate(over="ignore"):
            value = value.astype(view.dtype)
        if not np.all(np.isfinite(value)):
            raise ValueError(f"{name} must be finite in {view.dtype}; got NaN or inf, or values beyond its range")
        view[...] = value

    def saved_width(self):
        return 0

    def setting(self):
        return 0.0

    def check_dtype(self, dtype):
        pass

    def blocks(self):
        return (0, 0), 0

    def params(self):
        return {}

    def init_params(self, rng):
        pass

    def spec(self):
        raise NotImplementedError

    @classmethod
    def from_spec(cls, spec, parse=None):
        """The layer ``spec()`` describes (``parse`` reads a nested layer's description)."""
        return cls(**spec)

    def architecture(self):
        return {"kind": self.name, **self.spec()}

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.spec().items())})"


def check_chain(layers, label, dropout_last=False):
    """``(in_features, out_features)`` of ``layers`` in a row (kinds and Dropouts), after
    checking that each is one, that each width meets the next and that a Dropout follows a
    layer (and precedes one, unless ``dropout_last``). ``label`` names a position in errors
    ("layer", "Residual layer")."""
    first = width = None
    for i, layer in enumerate(layers):
        if isinstance(layer, Dropout):
            if i == 0 or isinstance(layers[i - 1], Dropout) or (i == len(layers) - 1 and not dropout_last):
                raise ValueError(f"{label} {i}: a Dropout must come between two layers (it drops the outputs of the "
                                 f"layer before it)")
            continue
        if not isinstance(layer, LayerKind):
            kinds = ", ".join(cls.__name__ for cls in LayerKind.KINDS.values())
            raise TypeError(f"{label} {i} must be a fastnn layer ({kinds} or Dropout), got {type(layer).__name__}")
        if width is not None and layer.in_features != width:
            raise ValueError(f"{label} {i} has in_features={layer.in_features} but the layer before it has "
                             f"out_features={width}; they must match")
        first = layer.in_features if first is None else first
        width = layer.out_features
    return first, width
