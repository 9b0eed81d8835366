"""fastnn: fast training of small and medium multi-layer perceptrons on a CPU.

A neuron is a weighted sum plus a bias, bent by an activation; ``Dense`` is a layer of
them and ``Sequential`` a stack of layers, trained by hand-written Numba kernels
(``fastnn.kernels``) that are checked against a NumPy reference (``fastnn.reference``).

The parts, and the one direction their imports run (tools -> integrations -> nn -> engine ->
kernels; io below nn; ``tests/test_layout.py`` checks it, and that nothing imports in a circle):

    kernels/        the kernels (one file per family, each activation, optimizer and layer
                    kind defined once there), the compiled drivers, how they are compiled and
                    cached. Imports nothing above it.
    engine/         the compiled path of one network: layer table, workspaces, builds; threads.
    nn/             the API: layers (the kinds' public names), Sequential, losses, optimizers,
                    schedules, callbacks, the training loop. Never imports integrations or tools.
    io/             files and data: model and checkpoint files, datasets, tables (CSV, npz).
    integrations/   scikit-learn, ONNX, MPI: adapters over the API, loaded only when used.
    tools/          the command line, ``fastnn bench`` and its peers, profile, the story, plots.
    reference.py    NumPy only: the oracle every kernel is checked against.
    testing.py      the shared checking tools of tests and benchmarks.

Modules that moved into these folders keep their old import paths (``fastnn.sklearn``,
``fastnn.datasets``, ``fastnn.model``, ...: ``MOVED``), so code and pickles written against
them keep working.
"""
__version__ = "0.1.0"

import importlib
import importlib.abc
import importlib.util
import sys

from .nn.callbacks import EarlyStopping, NoImprovement
from .kernels.activations import REGISTRY as _ACTIVATION_REGISTRY
from .nn.layers import KIND_CLASSES as _KIND_CLASSES, Dense, Dropout
from .nn.model import DivergenceError, Sequential, load
from .nn.population import MemberDivergedWarning, Population
from .nn.optim import CLASSES as _OPTIMIZER_CLASSES, Optimizer
from .nn.schedules import Constant, Cosine, StepDecay
from .engine.threads import get_num_threads, set_num_threads

ACTIVATIONS = tuple(_ACTIVATION_REGISTRY)  # the activations' names, in code order
del _ACTIVATION_REGISTRY
globals().update(_OPTIMIZER_CLASSES)  # SGD, Adam, AdamW, RMSprop: each made from its definition

# old module path -> where it lives now
MOVED = {
    "fastnn.engine": "fastnn.engine.core",  # (the package itself: its names are the core's)
    "fastnn.threads": "fastnn.engine.threads",
    "fastnn.model": "fastnn.nn.model", "fastnn.layers": "fastnn.nn.layers", "fastnn.optim": "fastnn.nn.optim",
    "fastnn.losses": "fastnn.nn.losses", "fastnn.schedules": "fastnn.nn.schedules",
    "fastnn.callbacks": "fastnn.nn.callbacks", "fastnn.training": "fastnn.nn.training",
    "fastnn.fingerprint": "fastnn.nn.fingerprint",
    "fastnn._files": "fastnn.io.files", "fastnn.checkpoint": "fastnn.io.checkpoint",
    "fastnn.datasets": "fastnn.io.datasets", "fastnn.tabular": "fastnn.io.tabular",
    "fastnn.sklearn": "fastnn.integrations.sklearn", "fastnn.export": "fastnn.integrations.onnx",
    "fastnn.distributed": "fastnn.integrations.mpi",
    "fastnn.cli": "fastnn.tools.cli", "fastnn.bench": "fastnn.tools.bench",
    "fastnn._bench_worker": "fastnn.tools.bench_worker", "fastnn.peers": "fastnn.tools.peers",
    "fastnn.profile": "fastnn.tools.profile", "fastnn.story": "fastnn.tools.story", "fastnn.plots": "fastnn.tools.plots",
}


class _OldPaths(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Imports a moved module's old path as the module itself, when first imported (so that
    ``import fastnn`` still loads no adapter)."""

    def find_spec(self, name, path=None, target=None):
        if name in MOVED and name != "fastnn.engine":
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        return importlib.import_module(MOVED[spec.name])

    def exec_module(self, module):
        pass


if not any(isinstance(f, _OldPaths) for f in sys.meta_path):
    sys.meta_path.insert(0, _OldPaths())

globals().update(_KIND_CLASSES)  # every layer kind by its class name: Dense, LayerNorm, Residual, ...

__all__ = ["ACTIVATIONS", *_KIND_CLASSES, "Dropout", "Sequential", "load", "DivergenceError", *_OPTIMIZER_CLASSES,
           "Optimizer", "Constant", "StepDecay", "Cosine", "EarlyStopping", "NoImprovement", "Population",
           "MemberDivergedWarning", "set_num_threads", "get_num_threads",
           "__version__"]
