"""fastnn.sklearn.MLPClassifier against scikit-learn's MLPClassifier: the same architecture,
epochs, batch size and solver (Adam), float32, on the bundled digits.

The issue's target is 3x. Measured 2026-11-25 on 2 cores, fastnn was 1.8x faster at
scikit-learn's defaults (100 hidden, batch 200), 2.1x at 784-256-128-10 with batch 128, and
2.8x at 100 hidden with batch 32. At these sizes both spend most of their time in the same
BLAS matrix products, which caps the ratio; fastnn's gain is the per-batch overhead and the
fused element-wise work. The ratio is recorded in the benchmark's ``extra_info`` and printed,
never asserted: the pass/fail suite holds no wall-clock assertions (a busy machine measured
0.97x once and failed CI). Run ``python -m pytest benchmarks/bench_sklearn.py --benchmark-only -s``
to see the ratios.
"""
import time
import warnings

import numpy as np
import pytest

from fastnn.datasets import load_mnist_5k
from tests.conftest import require

require("sklearn")
from sklearn.exceptions import ConvergenceWarning  # noqa: E402
from sklearn.neural_network import MLPClassifier as SkMLP  # noqa: E402

from fastnn.sklearn import MLPClassifier  # noqa: E402

CONFIGS = {"defaults": dict(hidden_layer_sizes=(100,), batch_size=200, max_iter=20),
           "mnist-net": dict(hidden_layer_sizes=(256, 128), batch_size=128, max_iter=10),
           "small-batch": dict(hidden_layer_sizes=(100,), batch_size=32, max_iter=10)}
COMMON = dict(learning_rate_init=1e-3, n_iter_no_change=1000, random_state=0)  # every epoch runs


def settings(name):
    return {**CONFIGS[name], **COMMON}


@pytest.fixture(scope="module")
def digits():
    (X, y), (Xt, yt) = load_mnist_5k()
    MLPClassifier(**{**settings("defaults"), "max_iter": 1}).fit(X[:300], y[:300])  # compile first
    return X, y, Xt, yt


@pytest.mark.parametrize("impl", ["fastnn", "sklearn"])
@pytest.mark.parametrize("config", list(CONFIGS))
def test_mlp_classifier_fit(benchmark, digits, config, impl):
    X, y, Xt, yt = digits
    cls = MLPClassifier if impl == "fastnn" else SkMLP
    benchmark.group = f"MLPClassifier.fit|{config}"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        model = benchmark.pedantic(lambda: cls(**settings(config)).fit(X, y),
                                   rounds=1 if getattr(benchmark, "disabled", False) else 3)
    assert model.score(Xt, yt) > 0.88  # both really learn the digits


def test_speedup_over_sklearn(benchmark, digits):
    """Interleaved medians of whole fits; reports ``sklearn time / fastnn time`` per config."""
    if getattr(benchmark, "disabled", False):
        pytest.skip("a timing comparison: run with --benchmark-only (fit correctness is checked above)")
    X, y, Xt, yt = digits
    ratios = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for config in CONFIGS:
            times = {"fastnn": [], "sklearn": []}
            for _ in range(2):  # interleaved, medians
                for name, cls in (("fastnn", MLPClassifier), ("sklearn", SkMLP)):
                    start = time.perf_counter()
                    cls(**settings(config)).fit(X, y)
                    times[name].append(time.perf_counter() - start)
            ratios[config] = np.median(times["sklearn"]) / np.median(times["fastnn"])
    print("\nscikit-learn time / fastnn time: " + ", ".join(f"{k} {v:.1f}x" for k, v in ratios.items()))
    benchmark.extra_info.update({f"speedup_{k}": round(float(v), 2) for k, v in ratios.items()})
    benchmark.pedantic(lambda: None, rounds=1)  # the figures are in extra_info; nothing to time here
