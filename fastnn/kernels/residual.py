"""The residual block, the whole layer kind: ``Residual(*layers)`` gives ``x + layers(x)``.

Its inner layers are layers of the network like any other; the block itself is one more layer
at their end, the join, whose kernels copy (``out = x``, ``dx = dout``) and whose ``skip``
names the layer that feeds the block: the drivers add that layer's output to the join's, and
the join's gradient to that layer's (``kind``). A join's backward leaves ``dout`` as it is
(the drivers read it again).

Shapes: N = rows, O = the block's width (in = out).
    x, out, dout, dx (N, O); no parameters (W (0, 0), b (0,)); z is out.
"""
from __future__ import annotations

import textwrap

import numpy as np

from . import kind
from .dropout import Dropout
from ._jit import kernel


@kernel(python_entry=False)
def residual_forward(x, W, b, setting, out, z):
    n, o = x.shape
    for i in range(n):
        for j in range(o):
            out[i, j] = x[i, j]


# Differentiates `out = x` (the skip's share is the drivers'): dx = dout.
@kernel(python_entry=False)
def residual_backward(dout, x, W, out, z, setting, dW, db, dx):
    n, o = dx.shape
    for i in range(n):
        for j in range(o):
            dx[i, j] = dout[i, j]


class Residual(kind.LayerKind):
    """A residual block: ``out = x + layers(x)`` (He et al. 2016), as in modern tabular
    networks, e.g. ``Residual(Dense(64, 64, activation="relu"), Dense(64, 64))``.

    Parameters
    ----------
    *layers : layers (Dense, LayerNorm, Dropout, another Residual, ...)
        The inner path, in order; its input and output widths must be equal (the block's
        width). A Dropout may follow any inner layer but not open the block.
    """
    name = "residual"

    def __init__(self, *layers):
        if len(layers) == 1 and isinstance(layers[0], (list, tuple)):
            layers = tuple(layers[0])
        if not layers or isinstance(layers[0], Dropout):
            raise ValueError("Residual needs at least one layer with numbers first, e.g. "
                             "Residual(Dense(64, 64, activation='relu'), Dense(64, 64))")
        first, width = kind.check_chain(layers, "Residual layer", dropout_last=True)
        if first != width:
            raise ValueError(f"a Residual block adds its input to its output, so they must be as wide: its layers take "
                             f"{first} and give {width}")
        self.depth = 1 + max((getattr(layer, "depth", 0) for layer in layers), default=0)
        if self.depth > kind.MAX_DEPTH:
            raise ValueError(f"Residual blocks nest at most {kind.MAX_DEPTH} deep (a model file holds no deeper ones)")
        self.layers = tuple(layers)
        self.in_features = self.out_features = width

    @property
    def inner(self):
        return self.layers

    def kernels(self, small=None):
        return residual_forward, residual_backward

    def reference_forward(self, x, W, b):
        return x.copy(), x

    def reference_backward(self, dout, x, W, b, out, z, need_dx=True):
        return np.zeros_like(W), np.zeros_like(b), (dout.copy() if need_dx else None)

    def onnx(self, builder, x, prefix):
        return x  # (the drivers' join, ``Add``, is the export's too)

    def summary(self):
        return f"Residual({self.out_features}): x + the layers below"

    def spec(self):
        return {"layers": [layer.architecture() for layer in self.layers]}

    @classmethod
    def from_spec(cls, spec, parse=None):
        if set(spec) != {"layers"} or not isinstance(spec["layers"], list):
            raise ValueError("a residual block is described by its 'layers' alone")
        return cls(*(parse(inner) for inner in spec["layers"]))

    def __repr__(self):
        inner = ",\n".join(textwrap.indent(repr(layer), "    ") for layer in self.layers)
        return f"Residual(\n{inner}\n)"
