"""Time to first step: every figure measured inside a fresh process (times from its first line,
so interpreter start-up is out and imports are in), on an empty kernel cache unless "warm".

Rows (the MNIST network 784-256-128-10 relu, float32, Adam, batch 128, unless said):
    cold           import, then the first train_step
    then, in the same process: the same network in float64; a tanh network; the relu network
                   with MSE; with SGD; then the first fit and the first predict
    warm           a second process on the filled cache: import + first step, and how many
                   functions Numba compiled (0: everything came from the cache)
    sweep          36 configurations (6 activations x SGD/Adam/AdamW x cross-entropy/MSE), one
                   process, one first step each
    train          ``fastnn train`` end to end, wall clock, cold and warm
    jax, torch     the same step's import + first step in JAX and PyTorch, when installed

``python benchmarks/bench_compile.py`` prints the table the README quotes (medians of
``--rounds`` fresh runs, interleaved); pytest runs each row once and checks the numbers.
"""
import json
import os
import pathlib
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

COMMON = """
import time
t0 = time.perf_counter()
import json, sys
import numpy as np
rng = np.random.default_rng(0)
X, y = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
Y = rng.random((128, 10), dtype=np.float32)
"""

FASTNN = COMMON + """
from numba.core import event
compiled = [0]
class Count(event.Listener):
    def on_start(self, ev): compiled[0] += 1
    def on_end(self, ev): pass
event.register("numba:compile", Count())
import fastnn
t1 = time.perf_counter()
r = {"import_s": t1 - t0}

def net(act="relu", dtype=np.float32):
    return fastnn.Sequential(fastnn.Dense(784, 256, activation=act), fastnn.Dense(256, 128, activation=act),
                             fastnn.Dense(128, 10), seed=0, dtype=dtype)

def timed(name, fn):
    t = time.perf_counter()
    r[name + "_loss"] = float(fn())
    r[name + "_s"] = time.perf_counter() - t

model = net()
timed("first_step", lambda: model.train_step(X, y, optimizer=fastnn.Adam()))
r["import_first_step_s"] = time.perf_counter() - t0
r["first_step_compiled"] = compiled[0]
if sys.argv[1] == "cold":
    timed("float64", lambda: net(dtype=np.float64).train_step(X.astype(np.float64), y, optimizer=fastnn.Adam()))
    timed("tanh", lambda: net("tanh").train_step(X, y, optimizer=fastnn.Adam()))
    timed("mse", lambda: net().train_step(X, Y, loss="mse", optimizer=fastnn.Adam()))
    timed("sgd", lambda: net().train_step(X, y, optimizer=fastnn.SGD(lr=0.01, momentum=0.9)))
    timed("bce", lambda: net().train_step(X, (Y > 0.5).astype(np.float32), loss="binary_cross_entropy",
                                          optimizer=fastnn.Adam()))
    t = time.perf_counter()
    r["fit_loss"] = model.fit(X, y, optimizer=fastnn.Adam(), epochs=1, batch_size=32)["loss"][0]
    r["predict_sum"] = float(model.predict(X).sum())
    r["fit_predict_s"] = time.perf_counter() - t
print(json.dumps(r))
"""

SWEEP = COMMON + """
import fastnn
losses = []
for act in fastnn.ACTIVATIONS[:6]:  # the 36 configurations timed since the compile issue: the first six
    for make in (lambda: fastnn.SGD(lr=0.01, momentum=0.9), lambda: fastnn.Adam(), lambda: fastnn.AdamW()):
        for loss in ("softmax_cross_entropy", "mse"):
            model = fastnn.Sequential(fastnn.Dense(784, 256, activation=act), fastnn.Dense(256, 128, activation=act),
                                      fastnn.Dense(128, 10), seed=0)
            losses.append(model.train_step(X, Y if loss == "mse" else y, loss=loss, optimizer=make()))
print(json.dumps({"sweep_s": time.perf_counter() - t0, "configurations": len(losses),
                  "finite": bool(np.isfinite(losses).all())}))
"""

JAX = COMMON + """
import jax, jax.numpy as jnp
sizes = [784, 256, 128, 10]
keys = jax.random.split(jax.random.PRNGKey(0), 3)
params = [p for k, (i, o) in zip(keys, zip(sizes[:-1], sizes[1:]))
          for p in (jax.random.normal(k, (i, o)) * (2.0 / i) ** 0.5, jnp.zeros(o))]

def loss_fn(p, X, y):
    a = X
    for k in range(3):
        a = a @ p[2 * k] + p[2 * k + 1]
        if k < 2:
            a = jax.nn.relu(a)
    return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(a), y[:, None], axis=1))

@jax.jit
def step(p, m, v, t, X, y):  # Adam, PyTorch's formula
    loss, g = jax.value_and_grad(loss_fn)(p, X, y)
    m = [0.9 * a + 0.1 * b for a, b in zip(m, g)]
    v = [0.999 * a + 0.001 * b * b for a, b in zip(v, g)]
    p = [q - 1e-3 / (1 - 0.9 ** t) * a / (jnp.sqrt(b) / jnp.sqrt(1 - 0.999 ** t) + 1e-8) for q, a, b in zip(p, m, v)]
    return p, m, v, loss

zeros = [jnp.zeros_like(q) for q in params]
out = step(params, zeros, zeros, 1, X, y.astype(np.int32))
print(json.dumps({"import_first_step_s": time.perf_counter() - t0, "loss": float(out[3])}))
"""

TORCH = COMMON + """
import torch
from torch import nn
net = nn.Sequential(nn.Linear(784, 256), nn.ReLU(), nn.Linear(256, 128), nn.ReLU(), nn.Linear(128, 10))
opt = torch.optim.Adam(net.parameters(), lr=1e-3)
loss = nn.functional.cross_entropy(net(torch.from_numpy(X)), torch.from_numpy(y))
opt.zero_grad()
loss.backward()
opt.step()
print(json.dumps({"import_first_step_s": time.perf_counter() - t0, "loss": float(loss)}))
"""


def fresh(script, *args, cache=None, env=None):
    """Run ``script`` in a fresh interpreter; returns its JSON line."""
    full_env = dict(os.environ, **(env or {}))
    if cache is not None:
        full_env["FASTNN_CACHE_DIR"] = str(cache)
    out = subprocess.run([sys.executable, "-c", script, *args], env=full_env, capture_output=True, text=True,
                         check=True, timeout=600)
    return json.loads(out.stdout.splitlines()[-1])


def train_command(cache, out_dir):
    """Wall seconds of ``fastnn train`` (the installed command) on the bundled digits."""
    exe = shutil.which("fastnn") or str(pathlib.Path(sys.executable).parent / "fastnn")
    t = time.perf_counter()
    subprocess.run([exe, "train", "--out", str(out_dir / "model.npz"), "--force"], cwd=out_dir, check=True,
                   capture_output=True, timeout=600, env=dict(os.environ, FASTNN_CACHE_DIR=str(cache)))
    return time.perf_counter() - t


def expected_first_loss():
    import fastnn

    model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                              fastnn.Dense(128, 10), seed=0)
    rng = np.random.default_rng(0)
    X, y = rng.random((128, 784), dtype=np.float32), rng.integers(0, 10, 128)
    return model.loss_and_grad(X, y)[0]


def rounds(benchmark):
    return 1 if getattr(benchmark, "disabled", False) else 3


def test_cold_first_step_and_what_follows(benchmark, tmp_path):
    results = []

    def run():
        results.append(fresh(FASTNN, "cold", cache=tempfile.mkdtemp(dir=tmp_path)))

    benchmark.group = "compile|784-256-128-10,N=128,Adam"
    benchmark.pedantic(run, rounds=rounds(benchmark))
    for r in results:  # each compiled step is the right step
        assert r["first_step_loss"] == pytest.approx(expected_first_loss(), rel=1e-5)
        assert all(np.isfinite(r[k]) for k in ("float64_loss", "tanh_loss", "mse_loss", "sgd_loss", "bce_loss",
                                               "fit_loss"))
    benchmark.extra_info.update({k: float(np.median([r[k] for r in results])) for k in results[0] if k.endswith("_s")})


def test_warm_cache_compiles_nothing(benchmark, tmp_path):
    fresh(FASTNN, "warm", cache=tmp_path)  # fills the cache
    results = []
    benchmark.group = "compile|784-256-128-10,N=128,Adam"
    benchmark.pedantic(lambda: results.append(fresh(FASTNN, "warm", cache=tmp_path)), rounds=rounds(benchmark))
    assert all(r["first_step_compiled"] == 0 for r in results)
    assert results[0]["first_step_loss"] == pytest.approx(expected_first_loss(), rel=1e-5)
    benchmark.extra_info.update(import_first_step_s=float(np.median([r["import_first_step_s"] for r in results])))


def test_sweep_of_36_configurations(benchmark, tmp_path):
    results = []
    benchmark.group = "compile|sweep"
    benchmark.pedantic(lambda: results.append(fresh(SWEEP, cache=tempfile.mkdtemp(dir=tmp_path))),
                       rounds=rounds(benchmark))
    assert all(r["configurations"] == 36 and r["finite"] for r in results)
    benchmark.extra_info.update(sweep_s=float(np.median([r["sweep_s"] for r in results])))


def test_fastnn_train_cold_and_warm(benchmark, tmp_path):
    cache = tmp_path / "cache"
    times = {"cold": [], "warm": []}

    def run():
        shutil.rmtree(cache, ignore_errors=True)
        times["cold"].append(train_command(cache, tmp_path))
        times["warm"].append(train_command(cache, tmp_path))

    benchmark.group = "compile|fastnn train"
    benchmark.pedantic(run, rounds=rounds(benchmark))
    assert (tmp_path / "model.npz").exists()
    benchmark.extra_info.update(cold_s=float(np.median(times["cold"])), warm_s=float(np.median(times["warm"])))


def report(rounds_=5):
    """Medians of ``rounds_`` interleaved fresh runs of every row, and the peers when installed."""
    import importlib.util

    rows = {}
    peers = {name: script for name, script in (("jax", JAX), ("torch", TORCH)) if importlib.util.find_spec(name)}
    with tempfile.TemporaryDirectory() as tmp:
        tmp = pathlib.Path(tmp)
        warm = tmp / "warm"
        fresh(FASTNN, "warm", cache=warm)
        for k in range(rounds_):
            for key, value in fresh(FASTNN, "cold", cache=tmp / f"cold{k}").items():
                rows.setdefault(key, []).append(value)
            rows.setdefault("warm_s", []).append(fresh(FASTNN, "warm", cache=warm)["import_first_step_s"])
            rows.setdefault("sweep_s", []).append(fresh(SWEEP, cache=tmp / f"sweep{k}")["sweep_s"])
            shutil.rmtree(tmp / "train", ignore_errors=True)
            (tmp / "out").mkdir(exist_ok=True)
            rows.setdefault("train_cold_s", []).append(train_command(tmp / "train", tmp / "out"))
            rows.setdefault("train_warm_s", []).append(train_command(tmp / "train", tmp / "out"))
            for name, script in peers.items():
                rows.setdefault(f"{name}_s", []).append(fresh(script)["import_first_step_s"])
    return {k: float(np.median(v)) for k, v in rows.items() if k.endswith("_s")}


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    result = report(args.rounds)
    import numba
    print(f"medians of {args.rounds} fresh processes, {os.cpu_count()} cores, numba {numba.__version__}")
    for key, value in result.items():
        print(f"  {key:<24} {value:6.2f} s")
