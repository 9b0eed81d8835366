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

    def compiled_codes(factory, *extra):
        return sorted(name for name, code in activations.CODES.items()
                      if factory(code, *extra).signatures)

    report["forward"] = compiled_codes(dense.forward_kernel, False)
    report["backward"] = compiled_codes(dense.backward_kernel)
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
