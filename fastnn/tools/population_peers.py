"""Peers of fastnn's population engine: M small MLPs of one architecture trained together.

Shapes: M = members, N = rows of X, R = rows per member per epoch, B = batch, I = inputs,
C = outputs. ``params`` is a list over members of ``[W0, b0, W1, b1, ...]`` in fastnn's
layout (W (in, out) float32, ``out = x @ W + b``); hidden layers use ``activation``, the
last layer none. ``X`` (N, I) float32; ``y`` (N,) int64 labels for
``softmax_cross_entropy`` or (N, C) float32 for ``mse`` (the mean over all of a batch's
elements, fastnn's and PyTorch's definition); ``orders`` (M, R) int64: member m's rows for
the epoch, its batches consecutive slices of B.

Each factory returns ``run()``, which trains every member for one epoch from the given
parameters with SGD (PyTorch's momentum: v = momentum v + g, p -= lr v, v from zero) and
returns ``(first_losses, final_params)``: each member's loss on its first batch, before any
update, as float64 (M,), and the trained parameters in the layout above. ``run`` starts
afresh on every call and waits for the results, so timing it times the whole epoch; the
factories compile (JAX) or warm up (PyTorch) once before returning.

JAX and PyTorch are optional: nothing here imports them until a factory is called.
"""
from __future__ import annotations

import copy
import importlib.util

import numpy as np

from .peers import activation_of


def available() -> dict:
    """Which peers' libraries are installed: ``{"jax": bool, "torch": bool}``."""
    return {name: importlib.util.find_spec(name) is not None for name in ("jax", "torch")}


def _check(sizes, loss, params, orders, batch):
    if loss not in ("softmax_cross_entropy", "mse"):
        raise ValueError(f"the population peers have no loss {loss!r}")
    orders = np.asarray(orders)
    if orders.ndim != 2 or orders.shape[0] != len(params):
        raise ValueError(f"orders must be (members, rows), one row per member; got {orders.shape}")
    if orders.shape[1] % batch:
        # a smaller last batch would need a second compiled step; the benchmark never has one
        raise ValueError(f"rows per member ({orders.shape[1]}) must be a multiple of batch ({batch})")
    if any(len(member) != 2 * (len(sizes) - 1) for member in params):
        raise ValueError(f"each member needs {2 * (len(sizes) - 1)} arrays for sizes {tuple(sizes)}")
    return orders


def _members(stacked):
    """Per-member lists ``[W0, b0, ...]`` from per-parameter stacks (M, ...)."""
    return [[np.ascontiguousarray(q[m]) for q in stacked] for m in range(stacked[0].shape[0])]


def jax_population(sizes, activation, loss, params, X, y, orders, batch, lr, momentum):
    """``jax.jit(jax.vmap(epoch))``: each member's epoch is a ``lax.scan`` over its batches.

    Returns ``run() -> (first_losses (M,) float64, final_params)``; see the module docstring.
    """
    import jax
    import jax.numpy as jnp

    orders = _check(sizes, loss, params, orders, batch)
    act, layers = activation_of(activation, "jax", {"jax": jax}), len(sizes) - 1
    steps = orders.shape[1] // batch

    def loss_fn(p, xb, yb):
        a = xb
        for k in range(layers):
            a = a @ p[2 * k] + p[2 * k + 1]
            if k < layers - 1:
                a = act(a)
        if loss == "mse":
            return jnp.mean((a - yb) ** 2)
        logp = jax.nn.log_softmax(a)
        return -jnp.mean(jnp.take_along_axis(logp, yb[:, None], axis=1))

    def epoch(p, order, X, y):
        def body(carry, rows):
            p, v = carry
            # gather the batch here: a whole epoch gathered up front is M * R * I floats
            value, g = jax.value_and_grad(loss_fn)(p, X[rows], y[rows])
            v = [momentum * vi + gi for vi, gi in zip(v, g)]
            p = [pi - lr * vi for pi, vi in zip(p, v)]
            return (p, v), value

        v = [jnp.zeros_like(q) for q in p]
        (p, _), values = jax.lax.scan(body, (p, v), order.reshape(steps, batch))
        return values[0], p

    # X and y are arguments shared by every member (in_axes None) rather than closed over:
    # closed over, they would be constants folded into the compiled program
    program = jax.jit(jax.vmap(epoch, in_axes=(0, 0, None, None)))
    start = [jnp.asarray(np.stack([member[k] for member in params])) for k in range(2 * layers)]
    order_j = jnp.asarray(orders.astype(np.int32))  # JAX's default integers are 32-bit
    X_j = jnp.asarray(np.asarray(X, np.float32))
    y_j = jnp.asarray(np.asarray(y, np.float32) if loss == "mse" else np.asarray(y).astype(np.int32))

    def run():
        # JAX arrays are immutable and nothing is donated, so every call starts from `start`
        first, p = program(start, order_j, X_j, y_j)
        first = np.asarray(first, dtype=np.float64)
        return first, _members([np.asarray(q) for q in p])  # np.asarray waits for the results

    run()  # compile now, so timings of run() exclude it
    return run


def torch_population(sizes, activation, loss, params, X, y, orders, batch, lr, momentum):
    """``torch.func``: the members' ``nn.Sequential`` stacked with ``stack_module_state``, one
    ``vmap`` of ``grad`` per batch, the batches looped in Python, the update under ``no_grad``.

    Returns ``run() -> (first_losses (M,) float64, final_params)``; see the module docstring.
    The caller sets ``torch.set_num_threads``.
    """
    import torch
    from torch import nn
    from torch.func import functional_call, grad_and_value, stack_module_state, vmap

    orders = _check(sizes, loss, params, orders, batch)
    act, layers = activation_of(activation, "torch", {"F": nn.functional, "torch": torch}), len(sizes) - 1
    loss_of = nn.functional.mse_loss if loss == "mse" else nn.functional.cross_entropy

    class Activation(nn.Module):
        def forward(self, z):
            return act(z)

    def module(member):
        parts = []
        for k in range(layers):
            W, b = member[2 * k], member[2 * k + 1]
            linear = nn.Linear(*W.shape)
            with torch.no_grad():
                linear.weight.copy_(torch.from_numpy(np.ascontiguousarray(W.T)))  # torch keeps (out, in)
                linear.bias.copy_(torch.from_numpy(np.asarray(b)))
            parts += [linear, Activation()] if k < layers - 1 else [linear]
        return nn.Sequential(*parts)

    modules = [module(member) for member in params]
    stacked, _ = stack_module_state(modules)
    start = {name: q.detach().clone() for name, q in stacked.items()}
    names = list(start)  # "0.weight", "0.bias", "2.weight", ...: layer order
    shape = copy.deepcopy(modules[0]).to("meta")  # the architecture alone; functional_call brings the weights

    def loss_fn(p, xb, yb):
        return loss_of(functional_call(shape, p, (xb,)), yb)

    step = vmap(grad_and_value(loss_fn))
    X_t = torch.from_numpy(np.asarray(X, np.float32))
    y_t = torch.from_numpy(np.asarray(y, np.float32) if loss == "mse" else np.asarray(y, np.int64))
    order_t = torch.from_numpy(orders.astype(np.int64))

    def run():
        p = {name: q.clone() for name, q in start.items()}
        v = {name: torch.zeros_like(q) for name, q in start.items()}
        first = None
        for s in range(0, order_t.shape[1], batch):
            rows = order_t[:, s:s + batch]
            g, value = step(p, X_t[rows], y_t[rows])
            if first is None:
                first = value
            with torch.no_grad():
                for name in names:
                    v[name].mul_(momentum).add_(g[name])
                    p[name].add_(v[name], alpha=-lr)
        out = []
        for name in names:
            q = p[name].numpy()
            out.append(q.transpose(0, 2, 1) if name.endswith("weight") else q)  # back to (in, out)
        return first.double().numpy(), _members(out)

    run()  # warm up: the first vmap traces and allocates
    return run
