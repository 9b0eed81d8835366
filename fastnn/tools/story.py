"""The classic story as experiments: universal approximation, and why a network without a
non-linearity is only a linear map. Used by ``fastnn approx`` and ``fastnn linear``."""
from __future__ import annotations

import ast
import math
import operator
import warnings

import numpy as np

from ..nn.layers import Dense
from ..nn.model import Sequential
from ..nn.optim import Adam
from ..nn.training import LossExplosionWarning

# -- target functions, and expressions parsed without eval --------------------------------

BUILTIN_TARGETS = {
    "sin": (np.sin, (-math.pi, math.pi)),
    "abs": (np.abs, (-1.0, 1.0)),
    "step": (lambda x: (x > 0).astype(np.float64), (-1.0, 1.0)),
}
FUNCTIONS = {name: getattr(np, name) for name in
             ("sin", "cos", "tan", "exp", "log", "sqrt", "abs", "tanh", "sinh", "cosh", "arctan", "sign", "floor")}
CONSTANTS = {"pi": math.pi, "e": math.e}
OPERATORS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
             ast.Pow: operator.pow, ast.USub: operator.neg, ast.UAdd: operator.pos}


def parse_expression(text: str):
    """Turn an expression in ``x`` (e.g. ``"x**2 + sin(3*x)"``) into a vectorised function.

    Only numbers, ``x``, ``pi``, ``e``, + - * / ** and the functions in ``FUNCTIONS`` are
    allowed; anything else (attributes, names, other calls) raises ``ValueError``.
    """
    try:
        tree = ast.parse(text, mode="eval")
    except SyntaxError as e:
        raise ValueError(f"cannot parse expression {text!r}: {e.msg}") from None

    def build(node):
        if isinstance(node, ast.Expression):
            return build(node.body)
        if isinstance(node, ast.Constant) and isinstance(node.value, (int, float)) and not isinstance(node.value, bool):
            value = float(node.value)
            return lambda x: np.full_like(x, value)
        if isinstance(node, ast.Name):
            if node.id == "x":
                return lambda x: x
            if node.id in CONSTANTS:
                value = CONSTANTS[node.id]
                return lambda x: np.full_like(x, value)
            raise ValueError(f"unknown name {node.id!r} in {text!r}; use x, pi, e or {sorted(FUNCTIONS)}")
        if isinstance(node, ast.BinOp) and type(node.op) in OPERATORS:
            op, left, right = OPERATORS[type(node.op)], build(node.left), build(node.right)
            return lambda x: op(left(x), right(x))
        if isinstance(node, ast.UnaryOp) and type(node.op) in OPERATORS:
            op, operand = OPERATORS[type(node.op)], build(node.operand)
            return lambda x: op(operand(x))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FUNCTIONS
                and len(node.args) == 1 and not node.keywords):
            fn, arg = FUNCTIONS[node.func.id], build(node.args[0])
            return lambda x: fn(arg(x))
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id not in FUNCTIONS:
            raise ValueError(f"`{node.func.id}` is not an allowed function in {text!r}; allowed: "
                             f"{', '.join(sorted(FUNCTIONS))}")
        if isinstance(node, ast.Call):
            raise ValueError(f"`{ast.unparse(node)}` in {text!r}: a function takes exactly one argument, as sin(x)")
        raise ValueError(f"`{ast.unparse(node)}` is not allowed in {text!r}; use numbers, x, pi, e, "
                         f"+ - * / ** and the functions {', '.join(sorted(FUNCTIONS))}")

    fn = build(tree)

    def target(x):
        with np.errstate(all="ignore"):
            y = np.asarray(fn(np.asarray(x, dtype=np.float64)), dtype=np.float64)
        if not np.all(np.isfinite(y)):
            raise ValueError(f"{text!r} is not finite everywhere on the interval; choose another interval")
        return y
    return target


SEEDS = 3  # tries per width in ``approximate``
HOW = (f"each width: the best of {SEEDS} trainings, one of them starting from the narrower network's fit (its "
       f"neurons kept, the new ones silent), so a wider network never fits worse")


def approximate(target, interval, widths=(1, 2, 4, 8, 16, 32, 64), points=256, epochs=3000, seed=0):
    """Fit ``target`` on ``interval`` with one hidden tanh layer of each width (increasing).

    A wider layer can compute everything a narrower one can (its extra neurons silent), so its
    fit should never be worse; a single training run can still land worse (a poorer start, too
    few epochs). So each width keeps the best of ``SEEDS`` runs, one of which starts from the
    previous width's fit with the new neurons' output weights at 0, and if even that training
    ends worse, the narrower fit itself (``kept_narrower``).

    Returns ``(x, y, fits)``; ``fits`` has per width: ``width``, ``mse``, ``max_error``,
    ``max_error_near_jump`` (within 5% of the interval around 0), ``prediction`` and
    ``kept_narrower``.
    """
    lo, hi = interval
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"interval must be two finite numbers lo < hi, got {interval}")
    if list(widths) != sorted(set(widths)):
        raise ValueError(f"widths must increase, got {widths}")
    x = np.linspace(lo, hi, points).reshape(-1, 1)
    y = target(x[:, 0]).reshape(-1, 1)
    scale = max(abs(lo), abs(hi))
    near_jump = np.abs(x[:, 0]) <= 0.05 * (hi - lo)
    fits, previous = [], None  # previous: (mse, parameters) of the last width's fit

    def network(width, s):
        return Sequential(Dense(1, width, activation="tanh"), Dense(width, 1), seed=seed + s, dtype=np.float64)

    for width in widths:
        best = None
        for s in range(SEEDS):
            model = network(width, s)
            if s == 0 and previous is not None:
                _embed(model, previous[1])
            with warnings.catch_warnings():
                # a run started from the narrower fit begins near its optimum: any later epoch is
                # "far above the first step" by the explosion rule, without anything going wrong
                warnings.simplefilter("ignore", LossExplosionWarning)
                model.fit(x / scale, y, loss="mse", optimizer=Adam(lr=0.01 if s else 0.002), epochs=epochs,
                          batch_size=points, shuffle=False)
            mse = float(np.mean((model.predict(x / scale) - y) ** 2))
            if best is None or mse < best[0]:
                best = (mse, model)
        kept = previous is not None and best[0] > previous[0]
        if kept:  # the narrower fit, as this width computes it
            best = (previous[0], network(width, 0))
            _embed(best[1], previous[1])
        model = best[1]
        previous = (best[0], [p.copy() for p in model.parameters()])
        pred = model.predict(x / scale)
        err = np.abs(pred - y)[:, 0]
        fits.append({"width": width, "mse": best[0], "max_error": float(err.max()),
                     "max_error_near_jump": float(err[near_jump].max()) if near_jump.any() else float("nan"),
                     "prediction": pred[:, 0], "kept_narrower": kept})
    return x[:, 0], y[:, 0], fits


def _embed(model, narrower):
    """Put a narrower one-hidden-layer fit into ``model``: its neurons first, the new ones' output
    weights 0, so ``model`` computes exactly the narrower function."""
    W0, b0, W1, b1 = model.parameters()
    k = narrower[0].shape[1]
    W0[:, :k], b0[:k], W1[:k], b1[...] = narrower[0], narrower[1], narrower[2], narrower[3]
    W1[k:] = 0.0


# -- linear vs non-linear -------------------------------------------------------------------

def collapse(model):
    """The single linear map ``x @ W + b`` that an all-identity network computes."""
    W, b = None, None
    for layer in model.layers:
        if getattr(layer, "activation", None) != "identity":
            raise ValueError(f"{layer!r} is not linear; only an all-identity network collapses")
        W = layer.W.astype(np.float64) if W is None else W @ layer.W
        b = layer.b.astype(np.float64) if b is None else b @ layer.W + layer.b
    return W, b


def digits_network(activation, hidden=(256, 128), seed=0, dtype=np.float32):
    sizes = [784, *hidden, 10]
    layers = [Dense(a, c, activation=activation) for a, c in zip(sizes[:-2], sizes[1:-1])]
    return Sequential(*layers, Dense(sizes[-2], 10), seed=seed, dtype=dtype)


def xor_accuracy(activation, seed=0):
    X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
    y = np.array([0, 1, 1, 0])
    model = Sequential(Dense(2, 16, activation=activation), Dense(16, 2), seed=seed, dtype=np.float64)
    model.fit(X, y, optimizer=Adam(lr=0.05), epochs=400, batch_size=4)
    return model.evaluate(X, y)["accuracy"]
