"""Layers. A layer describes its shape and settings; the model owns the numbers.

Every layer kind (Dense, LayerNorm, Residual, ...) is defined once, in its own module of
``fastnn/kernels`` (``kernels.kind`` says what a kind declares, ``kernels.kinds`` finds
them all); this module gives them their public names. Dropout rides on the layer before it.
"""
from __future__ import annotations

from ..kernels.dense import Dense
from ..kernels.dropout import Dropout
from ..kernels.kind import LayerKind, check_chain
from ..kernels.kinds import KINDS, from_architecture, graph, walk

KIND_CLASSES = {cls.__name__: cls for cls in KINDS.values()}  # "Dense", "LayerNorm", "Residual", ...
globals().update(KIND_CLASSES)

__all__ = ["Dropout", "LayerKind", "KINDS", "check_chain", "from_architecture", "graph", "walk", *KIND_CLASSES]
