"""The compiled core: it compiles only what a model uses, shares it, caches it, and says so.

Each test runs fresh processes on an empty kernel cache of its own, so what the test session
has compiled already cannot hide anything.
"""
import json
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from fastnn.testing import ACTIVATIONS

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


def clean_env(**extra):
    """This process's environment without the settings a test sets itself."""
    env = {k: v for k, v in os.environ.items() if k not in ("NUMBA_BOUNDSCHECK", "NUMBA_OPT", "FASTNN_PARALLEL_COMPILE")}
    return dict(env, **extra)


def run(tasks, cache, parallel=False, **env):
    # compilations are counted in this process only: a forked child's would be invisible
    out = subprocess.run([sys.executable, "-c", SCRIPT, tasks], capture_output=True, text=True, timeout=600,
                         env=clean_env(FASTNN_CACHE_DIR=str(cache), FASTNN_CACHE="1",
                                       FASTNN_PARALLEL_COMPILE="1" if parallel else "0", **env))
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


@pytest.mark.parametrize("variable", ["NUMBA_BOUNDSCHECK", "NUMBA_OPT", "NUMBA_LOOP_VECTORIZE"])
def test_the_cache_key_covers_code_generation_settings(variable):
    script = "from fastnn.kernels import _jit; print(_jit.DIGEST)"
    digests = {subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, check=True,
                              env=clean_env(**({variable: value} if value is not None else {}))).stdout
               for value in (None, "0" if variable == "NUMBA_LOOP_VECTORIZE" else "1")}
    assert len(digests) == 2


def test_each_compiled_kernel_has_a_data_file_named_after_its_key(tmp_path):
    """Kernels of one factory share a cache index. Numba numbers their data files 1, 2, ... as it
    finds them free, so two processes writing the index at once could each store a different
    kernel as number 1 and leave a key naming the other one's code. fastnn names a data file
    after its key: a race can lose an index entry (a recompile later), never swap code."""
    from fastnn.kernels._cache import AuthenticatedCacheFile

    class Files(AuthenticatedCacheFile):
        KEY = b"k" * 32

    cache = Files(str(tmp_path), "dense.forward_kernel", "stamp")
    cache.save(("relu", "float32"), "relu code")
    stale = Files(str(tmp_path), "dense.forward_kernel", "stamp")
    stale._load_index = lambda: {}  # a second process that read the index before the first wrote
    stale.save(("gelu", "float32"), "gelu code")
    assert len(list(tmp_path.glob("dense.forward_kernel.*.nbc"))) == 2  # never the same file
    assert cache.load(("gelu", "float32")) == "gelu code"
    assert cache.load(("relu", "float32")) in (None, "relu code")  # its entry may be lost, never wrong
    cache.save(("relu", "float32"), "relu code")
    assert cache.load(("relu", "float32")) == "relu code" and cache.load(("gelu", "float32")) == "gelu code"


CHECK = textwrap.dedent("""
    import sys, numpy as np, fastnn
    from fastnn.testing import reference_loss_and_grad
    rng = np.random.default_rng(0)
    X, y = rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16)
    for act in sys.argv[1].split(","):
        for hidden in (8, 400):  # a fused layer and a BLAS layer: both forms' kernels share indexes
            model = fastnn.Sequential(fastnn.Dense(12, hidden, activation=act), fastnn.Dense(hidden, 3), seed=0)
            params = [p.astype(np.float64) for p in model.parameters()]
            ref, ref_grads = reference_loss_and_grad(params, [act, "identity"], X.astype(np.float64), y,
                                                     "softmax_cross_entropy")
            loss, grads = model.loss_and_grad(X, y)
            assert abs(loss - ref) < 1e-5, act
            for g, r in zip(grads, ref_grads):  # the backward kernels too
                np.testing.assert_allclose(g, r, rtol=1e-3, atol=1e-5, err_msg=act)
""")


def test_processes_compiling_into_one_cache_at_once_leave_the_right_kernels(tmp_path):
    env = clean_env(FASTNN_CACHE_DIR=str(tmp_path), FASTNN_CACHE="1")
    writers = [subprocess.Popen([sys.executable, "-c", CHECK, acts], env=env, stderr=subprocess.DEVNULL)
               for acts in ("relu,gelu", "gelu,tanh", "tanh,sigmoid", "sigmoid,relu,leaky_relu")]
    assert [w.wait(timeout=600) for w in writers] == [0, 0, 0, 0]
    every = ",".join(ACTIVATIONS)
    subprocess.run([sys.executable, "-c", CHECK, every], env=env, check=True, timeout=600, capture_output=True)


def test_a_cold_build_compiles_on_two_cores_to_what_one_would(tmp_path):
    serial, _ = run("relu-adam,tanh-adam", tmp_path / "serial")
    forked, stderr = run("relu-adam,tanh-adam", tmp_path / "forked", parallel=True)
    assert stderr.count("fastnn: compiling") == 2  # the child says nothing
    assert forked["relu-adam"] < serial["relu-adam"]  # this process compiled only its share
    # and the cache the two processes filled serves a third one completely
    again, stderr = run("relu-adam,tanh-adam", tmp_path / "forked")
    assert again["relu-adam"] == again["tanh-adam"] == 0 and "compiling" not in stderr


FAILING_CHILD = textwrap.dedent("""
    import os, numpy as np, fastnn
    from fastnn.kernels import _jit
    fork = os.fork
    def failing_fork():  # the child dies at once, having compiled nothing
        pid = fork()
        if pid == 0:
            os._exit(3)
        return pid
    os.fork = failing_fork
    model = fastnn.Sequential(fastnn.Dense(12, 8, activation="tanh"), fastnn.Dense(8, 3), seed=0)
    rng = np.random.default_rng(0)
    print(model.train_step(rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16), optimizer=fastnn.Adam()))
""")


def test_a_failed_compiling_child_costs_time_not_correctness(tmp_path):
    env = clean_env(FASTNN_CACHE_DIR=str(tmp_path / "a"), FASTNN_PARALLEL_COMPILE="1")
    failed = subprocess.run([sys.executable, "-c", FAILING_CHILD], env=env, capture_output=True, text=True,
                            timeout=600, check=True).stdout
    env["FASTNN_CACHE_DIR"] = str(tmp_path / "b")
    env["FASTNN_PARALLEL_COMPILE"] = "0"
    plain = subprocess.run([sys.executable, "-c", FAILING_CHILD.replace("os.fork = failing_fork", "")], env=env,
                           capture_output=True, text=True, timeout=600, check=True).stdout
    assert failed == plain


SAY = textwrap.dedent("""
    import io, numpy as np, fastnn, tqdm.auto
    lines = []
    class Spy(tqdm.auto.tqdm):
        def set_description(self, desc=None, refresh=True):
            lines.append(desc)
            return super().set_description(desc, refresh)
    tqdm.auto.tqdm = Spy  # the bar fit draws
    rng = np.random.default_rng(0)
    model = fastnn.Sequential(fastnn.Dense(12, 8, activation="sigmoid"), fastnn.Dense(8, 3), seed=0)
    model.fit(rng.random((16, 12), dtype=np.float32), rng.integers(0, 3, 16), optimizer=fastnn.Adam(), epochs=1,
              verbose=1)
    print(lines)
""")


def test_a_build_that_compiles_says_so_on_stderr_and_in_the_progress_bar(tmp_path):
    env = clean_env(FASTNN_CACHE_DIR=str(tmp_path))
    first = subprocess.run([sys.executable, "-c", SAY], env=env, capture_output=True, text=True, timeout=600, check=True)
    assert "epoch 1/1 (compiling)" in first.stdout
    assert "fastnn: compiling the float32 training epoch: sigmoid, identity; softmax_cross_entropy; Adam" in first.stderr
    second = subprocess.run([sys.executable, "-c", SAY], env=env, capture_output=True, text=True, timeout=600,
                            check=True)
    assert "(compiling)" not in second.stdout and "compiling" not in second.stderr


def test_the_train_command_reports_compiling_apart_from_training(tmp_path):
    import shutil
    exe = shutil.which("fastnn") or str(pathlib.Path(sys.executable).parent / "fastnn")
    env = clean_env(FASTNN_CACHE_DIR=str(tmp_path / "cache"))
    argv = [exe, "train", "--epochs", "1", "--hidden", "16", "--out", str(tmp_path / "m.npz"), "--force"]
    cold = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True).stdout
    assert "s of training, " in cold and "s of compiling (cached for the next run)" in cold
    warm = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=600, check=True).stdout
    assert "s of training" in warm and "compiling" not in warm


def test_raw_rows_and_kernel_calls_refuse_what_would_be_read_wrongly():
    import numpy as np
    from fastnn.kernels import dense
    from fastnn.kernels._compose import raw_rows_of, run

    with pytest.raises(ValueError, match="C-contiguous"):
        raw_rows_of(np.asfortranarray(np.zeros((3, 2))))
    assert raw_rows_of(np.arange(6).reshape(3, 2)).shape == (3, 16)
    x, W, b = np.ones((2, 3)), np.ones((3, 4)), np.ones(4)
    out = np.empty((2, 4))
    fsig, _ = dense.signatures(np.float64)
    with pytest.raises(TypeError, match="takes"):  # float32 data where the kernel reads float64
        run(dense.forward_kernel(0, False), fsig, x.astype(np.float32), W, b, 0.0, out, out)
    with pytest.raises(TypeError, match="takes"):  # a transposed (F-ordered) view
        run(dense.forward_kernel(0, False), fsig, x, np.ones((4, 3)).T, b, 0.0, out, out)
    with pytest.raises(TypeError, match="takes"):  # a masked array: the kernel would ignore the mask
        run(dense.forward_kernel(0, False), fsig, np.ma.masked_array(x, mask=x > 0), W, b, 0.0, out, out)
    # numbers reach the kernel as the type it declares: an int learning rate is not a float's bits
    from fastnn.kernels import optimizers
    osig = optimizers.signature(np.float64)
    p, g, state = np.zeros(3), np.ones(3), np.zeros((0, 3))
    for lr in (1, np.int32(1), np.float32(1.0), 1.0):
        p[...], g[...] = 0.0, 1.0  # (an update consumes its gradient: it leaves the old parameters there)
        run(optimizers.sgd_kernel(False, False), osig, p, g, state, np.zeros(1), lr, 1)
        np.testing.assert_array_equal(p, -1.0)
    for bad in (True, np.timedelta64(1), "1", None):
        with pytest.raises(TypeError, match="takes"):
            run(optimizers.sgd_kernel(False, False), osig, p, g, state, np.zeros(1), bad, 1)


BOUNDS = textwrap.dedent("""
    import numpy as np
    from fastnn.kernels._blas import matmul
    from fastnn.kernels._jit import kernel
    @kernel
    def product(a, b, out):
        matmul(a, b, out, False, False, False)
    try:
        product(np.ones((2, 3)), np.ones((4, 5)), np.empty((2, 5)))  # inner sizes 3 and 4
    except IndexError as e:
        print("refused:", e)
""")


def test_a_product_of_disagreeing_shapes_is_an_error_under_boundscheck(tmp_path):
    out = subprocess.run([sys.executable, "-c", BOUNDS], capture_output=True, text=True, timeout=600, check=True,
                         env=clean_env(NUMBA_BOUNDSCHECK="1", FASTNN_CACHE="0"))
    assert "refused: matmul: the shapes do not agree" in out.stdout
