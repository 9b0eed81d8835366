"""The layer kinds' registry: every ``kind.LayerKind`` defined in this folder, found by
importing its modules (a new kind is one new module), and what reads a list of layers: the
graph of the compiled path (``graph``) and a saved architecture (``from_architecture``)."""
from __future__ import annotations

import importlib
import pathlib
from typing import NamedTuple

from . import kind
from .dense import Dense
from .dropout import Dropout
from .kind import INPUT, MAX_DEPTH, NO_SKIP, LayerKind

for _path in sorted(pathlib.Path(__file__).parent.glob("*.py")):  # every kind's module defines its class
    if not _path.name.startswith("_") and _path.stem not in ("kinds", "train"):
        importlib.import_module(f"{__package__}.{_path.stem}")

KINDS = LayerKind.KINDS  # name -> class: "dense", "layernorm", "residual", ... (and any defined later)


class Node(NamedTuple):
    """One layer of the compiled path: the layer, the node that feeds it, the node whose output
    it adds (``kind.NO_SKIP``: none; ``kind.INPUT``: the network's input) and its dropout."""
    layer: LayerKind
    src: int
    skip: int
    p_drop: float


def graph(layers):
    """The nodes of a network of ``layers`` in order: each layer with numbers is a node fed by
    the one before it; a block (``inner``) is its inner nodes and then its own node, which
    adds the block's input (a skip); a Dropout rides on the node before it."""
    nodes = []

    def place(layers, source):
        for layer in layers:
            if isinstance(layer, Dropout):
                nodes[-1] = nodes[-1]._replace(p_drop=layer.p_drop)
                continue
            start = source
            inner = getattr(layer, "inner", None)
            if inner is not None:
                source = place(inner, source)
            nodes.append(Node(layer, source, start if inner is not None else NO_SKIP, 0.0))
            source = len(nodes) - 1
        return source

    place(layers, INPUT)
    return nodes


def walk(layers):
    """Every layer of ``layers``, blocks' inner layers first and then the block, in order."""
    for layer in layers:
        yield from walk(getattr(layer, "inner", ()) or ())
        yield layer


def from_architecture(spec, depth=0):
    """The layer a saved architecture entry describes: ``{"p_drop"}`` a Dropout, the three
    fields of a Dense (the form every version wrote), or ``{"kind": name, ...}``. Anything
    else is a ValueError saying what."""
    if not isinstance(spec, dict):
        raise ValueError("it is not a description of a layer")
    if depth > MAX_DEPTH:
        raise ValueError(f"blocks nest deeper than {MAX_DEPTH} (Residual inside Residual)")
    if set(spec) == {"p_drop"}:
        return Dropout(spec["p_drop"])
    if set(spec) == {"in_features", "out_features", "activation"}:
        if spec["activation"] is not None and not isinstance(spec["activation"], str):
            raise ValueError(f"activation {spec['activation']!r}")
        return Dense(spec["in_features"], spec["out_features"], spec["activation"])
    name = spec.get("kind")
    if not isinstance(name, str) or name not in KINDS:
        known = sorted(map(str, spec))[:6]
        raise ValueError(f"unknown layer kind {str(name)[:20]!r}" if "kind" in spec else f"unknown fields {known}")
    rest = {k: v for k, v in spec.items() if k != "kind"}
    try:
        return KINDS[name].from_spec(rest, lambda inner: from_architecture(inner, depth + 1))
    except TypeError as e:
        raise ValueError(f"{name}: {e}") from None


__all__ = ["KINDS", "Node", "graph", "walk", "from_architecture", "kind", "INPUT", "NO_SKIP"]
