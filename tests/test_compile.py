"""The compiled core: it compiles only what a model uses, shares it, caches it, and says so.

Each test runs fresh processes on an empty kernel cache of its own, so what the test session
has compiled already cannot hide anything.
"""
import json
import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent("""
    import json, sys
    import numpy as np
    from numba.core import event

    compiled = []

    class Count(event.Listener):
        def on_start(self, ev):
            compiled.append(getattr(ev.data.get("dispatcher"), "__name__", "?"))

        def on_end(self, ev):
            pass

    event.register("numba:compile", Count())
    import fastnn
    from fastnn.kernels import activations, dense, dropout, losses, optimizers

    rng = np.random.default_rng(0)
    X, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16)

    def model(act):
        return fastnn.Sequential(fastnn.Dense(12, 8, activation=act), fastnn.Dense(8, 3), seed=0)

    report = {}
    for task in sys.argv[1].split(","):
        before = len(compiled)
        if task == "relu-adam":
            model("relu").train_step(X, y, optimizer=fastnn.Adam())
        elif task == "relu-adam-again":  # a new model of the same kind
            model("relu").train_step(X, y, optimizer=fastnn.Adam())
        elif task == "tanh-adam":
            model("tanh").train_step(X, y, optimizer=fastnn.Adam())
        elif task == "fit-predict":
            m = model("relu")
            m.fit(X, y, optimizer=fastnn.Adam(), epochs=1, batch_size=4)
            m.predict(X)
        report[task] = len(compiled) - before

    def compiled_codes(*factories):
        return sorted(name for name, code in activations.CODES.items()
                      if any(factory(code).signatures for factory in factories))

    report["forward"] = compiled_codes(lambda c: dense.forward_kernel(c, False),
                                       lambda c: dense.small_forward_kernel(c, False))
    report["backward"] = compiled_codes(dense.backward_kernel, dense.small_backward_kernel)
    report["unused"] = [k.__name__ for k in (losses._mse, losses._count_correct, optimizers.sgd_kernel(True, False),
                                             optimizers.sgd_kernel(False, False), optimizers.adam_kernel(True),
                                             dropout._dropout_forward, dropout._dropout_backward) if k.signatures]
    print(json.dumps(report))
""")


def run(tasks, cache, **env):
    out = subprocess.run([sys.executable, "-c", SCRIPT, tasks], capture_output=True, text=True, timeout=600,
                         env=dict(os.environ, FASTNN_CACHE_DIR=str(cache), FASTNN_CACHE="1", **env))
    assert out.returncode == 0, out.stderr
    return json.loads(out.stdout), out.stderr


def test_a_model_compiles_only_what_it_uses_and_a_second_model_reuses_it(tmp_path):
    report, stderr = run("relu-adam,relu-adam-again,tanh-adam", tmp_path)
    assert report["relu-adam"] > 0
    assert report["relu-adam-again"] == 0  # same activations and dtype: nothing new
    assert 0 < report["tanh-adam"] < report["relu-adam"]  # only the tanh kernels are new
    assert report["forward"] == ["identity", "relu", "tanh"] and report["backward"] == ["identity", "relu", "tanh"]
    # no other loss, no metric for a single step, no other optimizer (AdamW neither), no dropout
    assert report["unused"] == []
    assert stderr.count("fastnn: compiling the float32 training step: relu, identity; "
                        "softmax_cross_entropy; Adam") == 1
    assert "compiling the float32 training step: tanh, identity" in stderr


def test_a_second_process_compiles_nothing_and_says_nothing(tmp_path):
    first, stderr = run("relu-adam,fit-predict", tmp_path)
    assert first["relu-adam"] > 0 and "fastnn: compiling" in stderr
    second, stderr = run("relu-adam,fit-predict", tmp_path)
    assert second["relu-adam"] == 0 and second["fit-predict"] == 0
    assert "compiling" not in stderr


def test_a_setting_that_changes_generated_code_gets_its_own_cache(tmp_path):
    run("relu-adam", tmp_path)
    checked, _ = run("relu-adam", tmp_path, NUMBA_BOUNDSCHECK="1")
    assert checked["relu-adam"] > 0  # not the unchecked kernels from the cache
    assert len(list((tmp_path / "numba").iterdir())) == 2


@pytest.mark.parametrize("variable", ["NUMBA_BOUNDSCHECK", "NUMBA_OPT"])
def test_the_cache_key_covers_code_generation_settings(variable):
    script = "from fastnn.kernels import _jit; print(_jit.DIGEST)"
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env=dict(os.environ, **({variable: value} if value else {}))).stdout
               for value in (None, "1" if variable == "NUMBA_BOUNDSCHECK" else "1")}
    assert len(digests) == 2


def test_each_compiled_kernel_has_a_data_file_named_after_its_key(tmp_path):
    """Kernels of one factory share a cache index. Numba numbers their data files 1, 2, ... as it
    finds them free, so two processes writing the index at once could each store a different
    kernel as number 1 and leave a key naming the other one's code. fastnn names a data file
    after its key: a race can lose an index entry (a recompile later), never swap code."""
    from fastnn.kernels._jit import _KeyedCacheFile

    cache = _KeyedCacheFile(str(tmp_path), "dense.forward_kernel", "stamp")
    cache.save(("relu", "float32"), "relu code")
    stale = _KeyedCacheFile(str(tmp_path), "dense.forward_kernel", "stamp")
    stale._load_index = lambda: {}  # a second process that read the index before the first wrote
    stale.save(("gelu", "float32"), "gelu code")
    assert len(list(tmp_path.glob("dense.forward_kernel.*.nbc"))) == 2  # never the same file
    assert cache.load(("gelu", "float32")) == "gelu code"
    assert cache.load(("relu", "float32")) in (None, "relu code")  # its entry may be lost, never wrong
    cache.save(("relu", "float32"), "relu code")
    assert cache.load(("relu", "float32")) == "relu code" and cache.load(("gelu", "float32")) == "gelu code"


CHECK = textwrap.dedent("""
    import sys, numpy as np, fastnn
    from fastnn.testing import assert_close, reference_loss_and_grad
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16)
    for act in sys.argv[1].split(","):
        model = fastnn.Sequential(fastnn.Dense(12, 8, activation=act), fastnn.Dense(8, 3), seed=0)
        params = [p.astype(np.float64) for p in model.parameters()]
        ref, _ = reference_loss_and_grad(params, [act, "identity"], X.astype(np.float64), y, "softmax_cross_entropy")
        assert abs(model.loss_and_grad(X, y)[0] - ref) < 1e-5, act
""")


def test_processes_compiling_into_one_cache_at_once_leave_the_right_kernels(tmp_path):
    env = dict(os.environ, FASTNN_CACHE_DIR=str(tmp_path), FASTNN_CACHE="1")
    writers = [subprocess.Popen([sys.executable, "-c", CHECK, acts], env=env, stderr=subprocess.DEVNULL)
               for acts in ("relu,gelu", "gelu,tanh", "tanh,sigmoid", "sigmoid,relu,leaky_relu")]
    assert [w.wait(timeout=600) for w in writers] == [0, 0, 0, 0]
    every = "identity,relu,leaky_relu,sigmoid,tanh,gelu"
    subprocess.run([sys.executable, "-c", CHECK, every], env=env, check=True, timeout=600, capture_output=True)
