"""fastnn: fast training of small and medium multi-layer perceptrons on a CPU.

A neuron is a weighted sum plus a bias, bent by an activation; ``Dense`` is a layer of
them and ``Sequential`` a stack of layers, trained by hand-written Numba kernels
(``fastnn.kernels``) that are checked against a NumPy reference (``fastnn.reference``).
"""
__version__ = "0.1.0"

from .callbacks import EarlyStopping
from .kernels.activations import REGISTRY as _ACTIVATION_REGISTRY
from .layers import Dense, Dropout
from .model import DivergenceError, Sequential, load
from .optim import CLASSES as _OPTIMIZER_CLASSES, Optimizer
from .schedules import Constant, Cosine, StepDecay
from .threads import get_num_threads, set_num_threads

ACTIVATIONS = tuple(_ACTIVATION_REGISTRY)  # the activations' names, in code order
del _ACTIVATION_REGISTRY
globals().update(_OPTIMIZER_CLASSES)  # SGD, Adam, AdamW, RMSprop: each made from its definition

__all__ = ["ACTIVATIONS", "Dense", "Dropout", "Sequential", "load", "DivergenceError", *_OPTIMIZER_CLASSES, "Optimizer", "Constant", "StepDecay", "Cosine",
           "EarlyStopping",
           "set_num_threads", "get_num_threads", "__version__"]
