"""Layers. A layer describes its shape and activation; the model owns the numbers."""
from __future__ import annotations


import numpy as np

from ..kernels._checks import positive_int
from ..kernels.activations import BY_CODE, NAMES, code_of


class Dense:
    """A fully connected layer: ``out = activation(x @ W + b)``.

    Parameters
    ----------
    in_features, out_features : int
        Sizes of each input and output row. ``W`` is (in_features, out_features).
    activation : str or None
        None or "identity" (a linear layer, e.g. for logits), or another name in
        ``fastnn.ACTIVATIONS`` ("relu", "tanh", "gelu", ...: PyTorch's definitions, each
        defined once in ``fastnn/kernels/activations.py``).

    ``W`` and ``b`` are views into the owning ``Sequential``'s parameter buffer; they are
    None until the layer is placed in a model. Assigning them (``layer.W = array``) copies the
    values into the model's parameters, as ``layer.W[...] = array`` does, after checking the
    shape; before the layer is in a model it is an error (the model's seed sets the start).
    """

    def __init__(self, in_features, out_features, activation=None):
        self.in_features = positive_int("in_features", in_features)
        self.out_features = positive_int("out_features", out_features)
        self.code = code_of(activation)
        self.activation = NAMES[self.code]
        self._W = None
        self._b = None

    def attach(self, W, b):
        """Make ``W`` and ``b`` the model's views (called by the model that owns the layer)."""
        self._W, self._b = W, b

    @property
    def W(self):
        return self._W

    @W.setter
    def W(self, value):
        self._assign("W", self._W, value)

    @property
    def b(self):
        return self._b

    @b.setter
    def b(self, value):
        self._assign("b", self._b, value)

    def _assign(self, name, view, value):
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

    def init_params(self, rng: np.random.Generator):
        """Fill W as the activation's ``init`` says: He normal (relu-like activations), LeCun
        normal (selu) or Glorot uniform; b = 0.

        Drawn in float64 and then rounded, so float32 and float64 models of one seed agree.
        """
        fan_in, fan_out = self.in_features, self.out_features
        init = BY_CODE[self.code].init
        if init in ("he", "lecun"):
            w = rng.standard_normal((fan_in, fan_out)) * np.sqrt((2.0 if init == "he" else 1.0) / fan_in)
        else:
            limit = np.sqrt(6.0 / (fan_in + fan_out))
            w = rng.uniform(-limit, limit, (fan_in, fan_out))
        self.W[...] = w
        self.b[...] = 0

    def __repr__(self):
        return (f"Dense(in_features={self.in_features}, out_features={self.out_features}, "
                f"activation={self.activation!r})")


class Dropout:
    """Inverted dropout on the output of the Dense layer before it, during training only.

    Parameters
    ----------
    p_drop : float in [0, 1)
        The probability that an element is dropped (set to 0); kept elements are scaled by
        1 / (1 - p_drop), so ``predict`` uses the network as it is.

    Masks come from a counter-based generator keyed on (model seed, optimizer step, layer,
    element), so they do not depend on the thread count and a resumed run draws the same ones.
    """

    def __init__(self, p_drop):
        if isinstance(p_drop, bool) or not isinstance(p_drop, (int, float, np.floating)) or not 0 <= p_drop < 1:
            raise ValueError(f"p_drop must be a probability in [0, 1), got {p_drop!r}")
        self.p_drop = float(p_drop)

    def __repr__(self):
        return f"Dropout(p_drop={self.p_drop})"
