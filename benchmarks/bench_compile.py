"""First-call time of the MNIST network's training step in a fresh process: cold (empty
kernel cache, everything compiles) and warm (compiled kernels loaded from the cache)."""
import json
import os
import subprocess
import sys
import tempfile

import numpy as np
import pytest

import fastnn

SCRIPT = """
import json, time
t0 = time.perf_counter()
import numpy as np, fastnn
t1 = time.perf_counter()
model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                          fastnn.Dense(128, 10), seed=0)
rng = np.random.default_rng(0)
X, y = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
t2 = time.perf_counter()
loss = model.train_step(X, y, optimizer=fastnn.SGD(lr=0.01, momentum=0.9))
t3 = time.perf_counter()
print(json.dumps({"import_s": t1 - t0, "first_step_s": t3 - t2, "loss": loss}))
"""


def expected_loss():
    model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                              fastnn.Dense(128, 10), seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
    return model.loss_and_grad(X, y)[0]


def first_step(cache_dir):
    env = dict(os.environ, FASTNN_CACHE_DIR=cache_dir)
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, check=True,
                         timeout=600)
    return json.loads(out.stdout)


@pytest.mark.parametrize("cache", ["cold", "warm"])
def test_first_training_step(benchmark, cache, tmp_path):
    warm_dir = str(tmp_path / "warm")
    first_step(warm_dir)  # fills the warm cache
    results = []

    def setup():
        return ((tempfile.mkdtemp(dir=tmp_path) if cache == "cold" else warm_dir),), {}

    def run(cache_dir):
        results.append(first_step(cache_dir))

    benchmark.group = "first_training_step|784-256-128-10,N=128"
    benchmark.pedantic(run, setup=setup, rounds=1 if getattr(benchmark, "disabled", False) else 3)
    assert results, "the benchmark never ran the step"
    for r in results:
        assert r["loss"] == pytest.approx(expected_loss(), rel=1e-6)  # the compiled step is the right step
    benchmark.extra_info.update(cache=cache, first_step_s=float(np.median([r["first_step_s"] for r in results])),
                                import_s=float(np.median([r["import_s"] for r in results])))
