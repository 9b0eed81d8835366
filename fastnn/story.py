"""The classic story as experiments: universal approximation, and why a network without a
non-linearity is only a linear map. Used by ``fastnn approx`` and ``fastnn linear``."""
from __future__ import annotations

import ast
import math
import operator

import numpy as np

from .layers import Dense
from .model import Sequential
from .optim import Adam

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


def approximate(target, interval, widths=(1, 2, 4, 8, 16, 32, 64), points=256, epochs=3000, seed=0):
    """Fit ``target`` on ``interval`` with one hidden tanh layer of each width.

    Returns ``(x, y, fits)``; ``fits`` has per width: ``width``, ``mse``, ``max_error``,
    ``max_error_near_jump`` (within 5% of the interval around 0) and ``prediction``.
    """
    lo, hi = interval
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"interval must be two finite numbers lo < hi, got {interval}")
    x = np.linspace(lo, hi, points).reshape(-1, 1)
    y = target(x[:, 0]).reshape(-1, 1)
    scale = max(abs(lo), abs(hi))
    near_jump = np.abs(x[:, 0]) <= 0.05 * (hi - lo)
    fits = []
    for width in widths:
        model = Sequential(Dense(1, width, activation="tanh"), Dense(width, 1), seed=seed, dtype=np.float64)
        model.fit(x / scale, y, loss="mse", optimizer=Adam(lr=0.01), epochs=epochs, batch_size=points, shuffle=False)
        pred = model.predict(x / scale)
        err = np.abs(pred - y)[:, 0]
        fits.append({"width": width, "mse": float(np.mean(err ** 2)), "max_error": float(err.max()),
                     "max_error_near_jump": float(err[near_jump].max()) if near_jump.any() else float("nan"),
                     "prediction": pred[:, 0]})
    return x[:, 0], y[:, 0], fits


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
