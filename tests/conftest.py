import numpy as np
import pytest

DTYPES = (np.float32, np.float64)


@pytest.fixture(params=DTYPES, ids=lambda d: np.dtype(d).name)
def dtype(request):
    return np.dtype(request.param)


@pytest.fixture
def rng():
    return np.random.default_rng(20261124)


def require(module):
    """Import an optional extra's module: skip without it, but fail in CI (CI=true), where
    every extra must be installed."""
    import importlib
    import os

    if os.environ.get("CI", "").lower() == "true":
        return importlib.import_module(module)
    return pytest.importorskip(module)


def checkout_env(**extra):
    """The environment for a child Python that imports the fastnn of this checkout (the one
    under test, whether or not it is the installed one)."""
    import os
    import pathlib

    root = str(pathlib.Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH")) if p)
    return dict(os.environ, PYTHONPATH=path, **extra)
