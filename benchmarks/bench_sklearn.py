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
import pathlib
import sys
import time
import warnings

import numpy as np
import pytest

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent))  # (run as a script: the tests' helpers)
from fastnn.datasets import load_mnist_5k  # noqa: E402
from tests.conftest import require  # noqa: E402

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


# -- the scikit-learn issue's targets: ``python benchmarks/bench_sklearn.py`` -----------------------
# Each figure: medians of interleaved runs in this process (the CV scores: means over folds and
# random states). The pytest cases above check correctness and time single fits.

def _timed(fn, rounds):
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def estimator_tax(rounds=7):
    """MLPClassifier((256, 128), batch 64, 40 epochs, tol=0) on digits, float64, against the
    Sequential.fit it wraps and against scikit-learn's MLP: (estimator, fit, scikit-learn) s."""
    import fastnn
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    X, y = load_digits(return_X_y=True)
    X, _, y, _ = train_test_split(X, y, test_size=0.25, random_state=0)
    args = dict(hidden_layer_sizes=(256, 128), batch_size=64, max_iter=40, tol=0, random_state=0)

    def ours():
        MLPClassifier(**args).fit(X, y)

    def theirs():
        SkMLP(**args).fit(X, y)

    def plain():
        model = fastnn.Sequential(fastnn.Dense(64, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                                  fastnn.Dense(128, 10), seed=0, dtype=np.float64)
        model.fit(X, y, optimizer=fastnn.Adam(), epochs=40, batch_size=64)

    times = {"estimator": [], "fit": [], "sklearn": []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        ours(), plain()  # compiled first
        for _ in range(rounds):
            for name, fn in (("estimator", ours), ("fit", plain), ("sklearn", theirs)):
                times[name] += _timed(fn, 1)
    return {k: float(np.median(v)) for k, v in times.items()}


def unscaled_scores(seeds=range(5)):
    """5-fold CV means on unscaled breast_cancer and wine, MLPClassifier((100,)), seeds 0..4."""
    from sklearn.datasets import load_breast_cancer, load_wine
    from sklearn.model_selection import cross_val_score

    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, load in (("breast_cancer", load_breast_cancer), ("wine", load_wine)):
            X, y = load(return_X_y=True)
            result[name] = {impl: float(np.mean([cross_val_score(cls((100,), random_state=s), X, y).mean()
                                                  for s in seeds]))
                            for impl, cls in (("fastnn", MLPClassifier), ("sklearn", SkMLP))}
    return result


def lbfgs_scores(seeds=range(5)):
    """solver="lbfgs", (100,), max_iter=200 on scaled breast_cancer, wine, digits and diabetes:
    mean 5-fold score over seeds, and the median time of one whole cross-validation."""
    from sklearn import neural_network as sk
    from sklearn.datasets import load_breast_cancer, load_diabetes, load_digits, load_wine
    from sklearn.model_selection import cross_val_score
    from sklearn.preprocessing import StandardScaler

    from fastnn.sklearn import MLPRegressor

    result = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for name, load in (("breast_cancer", load_breast_cancer), ("wine", load_wine), ("digits", load_digits),
                           ("diabetes", load_diabetes)):
            X, y = load(return_X_y=True)
            X = StandardScaler().fit_transform(X)
            if name == "diabetes":
                y = (y - y.mean()) / y.std()
            pair = (MLPRegressor, sk.MLPRegressor) if name == "diabetes" else (MLPClassifier, SkMLP)
            row = {}
            for impl, cls in zip(("fastnn", "sklearn"), pair):
                scores, times = [], []
                for s in seeds:
                    start = time.perf_counter()
                    scores.append(cross_val_score(cls(hidden_layer_sizes=(100,), solver="lbfgs", max_iter=200, random_state=s), X,
                                                  y).mean())
                    times.append(time.perf_counter() - start)
                row[impl] = (float(np.mean(scores)), float(np.median(times)))
            result[name] = row
    return result


def grid_search(rounds=3):
    """GridSearchCV(MLPClassifier((64,)), 8 settings, cv=3) on digits: seconds with n_jobs=1 and
    2 (workers warm: the pool kept between rounds, their kernel cache filled by the first)."""
    from joblib import parallel_config
    from sklearn.datasets import load_digits
    from sklearn.model_selection import GridSearchCV

    X, y = load_digits(return_X_y=True)
    grid = {"alpha": [1e-4, 1e-2], "learning_rate_init": [1e-3, 1e-2], "batch_size": [32, 128]}

    def search(jobs):
        GridSearchCV(MLPClassifier((64,), max_iter=30, random_state=0), grid, cv=3, n_jobs=jobs).fit(X, y)

    times = {1: [], 2: []}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        with parallel_config(backend="loky"):
            cold = _timed(lambda: search(2), 1)[0]  # (loky starts its workers: the cold figure)
            for _ in range(rounds):
                for jobs in (1, 2):
                    times[jobs] += _timed(lambda: search(jobs), 1)
    return {"cold_2": cold, **{f"n_jobs={k}": float(np.median(v)) for k, v in times.items()}}


if __name__ == "__main__":
    import json
    import sys

    what = sys.argv[1:] or ["tax", "unscaled", "lbfgs", "grid"]
    if "tax" in what:
        t = estimator_tax()
        print(f"estimator {t['estimator']:.3f} s, Sequential.fit {t['fit']:.3f} s, scikit-learn {t['sklearn']:.3f} s: "
              f"{t['estimator'] / t['fit']:.2f}x the fit, {t['sklearn'] / t['estimator']:.2f}x faster than scikit-learn")
    if "unscaled" in what:
        print("unscaled, 5-fold CV, seeds 0-4:", json.dumps(unscaled_scores()))
    if "lbfgs" in what:
        for name, row in lbfgs_scores().items():
            (fs, ft), (ss, st) = row["fastnn"], row["sklearn"]
            print(f"lbfgs {name}: score fastnn {fs:.4f} scikit-learn {ss:.4f}; one CV {ft:.2f} s vs {st:.2f} s "
                  f"({st / ft:.2f}x)")
    if "grid" in what:
        print("grid search:", json.dumps(grid_search()))
