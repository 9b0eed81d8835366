"""Compiled-code caching, threads, fork safety and allocation-free steps."""
import json
import os
import pathlib
import platform
import shutil
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastnn

ROOT = pathlib.Path(__file__).resolve().parent.parent

LEAKY = textwrap.dedent("""
    import numpy as np, fastnn.kernels._jit as jit
    from fastnn.kernels import dense_forward
    out = dense_forward(np.array([[-1.0]]), np.ones((1, 1)), np.zeros(1), "leaky_relu")
    print(out[0, 0], jit.CACHE, jit.CACHE_DIR)
""")


def run_copy(src, cache, env_extra=None):
    env = dict(os.environ, PYTHONPATH=str(src), FASTNN_CACHE_DIR=str(cache), **(env_extra or {}))
    out = subprocess.run([sys.executable, "-c", LEAKY], env=env, capture_output=True, text=True, check=True,
                         timeout=300, cwd=src)
    return out.stdout.split()


def test_editing_a_kernel_helper_never_leaves_a_stale_compiled_kernel(tmp_path):
    src = tmp_path / "src"
    shutil.copytree(ROOT / "fastnn", src / "fastnn", ignore=shutil.ignore_patterns("__pycache__", "data"))
    cache = tmp_path / "cache"
    value, cached, where = run_copy(src, cache)
    assert float(value) == pytest.approx(-0.01) and cached == "True"
    assert any(pathlib.Path(where).glob("dense.*dense_forward*.nbi"))  # compiled code was cached
    assert float(run_copy(src, cache)[0]) == pytest.approx(-0.01)  # and is used again
    # the slope lives in activations.py, the kernel in dense.py: Numba alone would not notice
    helper = src / "fastnn" / "kernels" / "activations.py"
    helper.write_text(helper.read_text().replace("LEAKY_SLOPE = 0.01", "LEAKY_SLOPE = 0.25"))
    assert float(run_copy(src, cache)[0]) == pytest.approx(-0.25)


def test_cache_folder_choice_skips_unwritable_roots(tmp_path, monkeypatch):
    from fastnn.kernels import _cache

    (tmp_path / "file").write_text("")  # a cache root under a file cannot be made
    monkeypatch.delenv("FASTNN_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "file" / "cache"))
    monkeypatch.setenv("XDG_CONFIG_HOME", str(tmp_path / "config"))
    chosen, key = _cache.choose("ab" * 32)
    assert chosen is not None and not str(chosen).startswith(str(tmp_path))  # the temporary folder's
    assert len(key) == 32 and (tmp_path / "config" / "fastnn" / "cache.key").read_bytes() == key


SHOW_CACHE = "import fastnn.kernels._jit as jit; print(jit.CACHE, jit.CACHE_DIR)"


def cache_choice(tmp_path, env_extra, code=SHOW_CACHE):
    env = {k: v for k, v in os.environ.items() if k != "FASTNN_CACHE_DIR"}
    env.update(XDG_CACHE_HOME=str(tmp_path / "xdg"), XDG_CONFIG_HOME=str(tmp_path / "config"), **env_extra)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         timeout=120, cwd=ROOT)
    cached, where = out.stdout.split()
    return cached == "True", where, out.stderr


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="folder modes and owners are POSIX")
def test_the_cache_folders_fastnn_makes_are_private(tmp_path):
    cached, where, err = cache_choice(tmp_path, {})
    assert cached and where.startswith(str(tmp_path / "xdg" / "fastnn")) and not err
    folder = pathlib.Path(where)
    while folder != tmp_path / "xdg":
        assert folder.stat().st_mode & 0o777 == 0o700, folder
        folder = folder.parent


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="folder modes and owners are POSIX")
@pytest.mark.parametrize("plant", ["writable by others", "symbolic link", "another user's"])
def test_a_cache_folder_others_could_plant_is_not_used(tmp_path, plant):
    root = tmp_path / "xdg" / "fastnn"
    root.parent.mkdir()
    if plant == "writable by others":
        root.mkdir()
        root.chmod(0o777)
    elif plant == "symbolic link":
        (tmp_path / "elsewhere").mkdir(mode=0o700)
        root.symlink_to(tmp_path / "elsewhere")
    else:
        if os.getuid() != 0:
            pytest.skip("only root can give a folder to another user")
        root.mkdir(mode=0o700)
        os.chown(root, 12345, 12345)
    cached, where, err = cache_choice(tmp_path, {})
    assert not cached and where == "None"
    assert "not caching compiled kernels" in err and str(root) in err
    assert not (tmp_path / "elsewhere" / "numba").exists()  # nothing written through the link


@pytest.mark.skipif(not hasattr(os, "getuid"), reason="folder modes and owners are POSIX")
def test_a_cache_folder_the_user_names_is_not_used_when_others_can_write_it(tmp_path):
    named = tmp_path / "shared"
    named.mkdir()
    named.chmod(0o777)
    cached, where, err = cache_choice(tmp_path, {"FASTNN_CACHE_DIR": str(named)})
    assert not cached and where == "None" and "writable by other users" in err and str(named) in err
    named.chmod(0o755)
    cached, where, err = cache_choice(tmp_path, {"FASTNN_CACHE_DIR": str(named)})
    assert cached and where.startswith(str(named)) and err == ""


def test_fastnn_imports_and_caches_without_os_getuid(tmp_path):
    code = "import os\nif hasattr(os, 'getuid'): del os.getuid\n" + SHOW_CACHE
    cached, where, err = cache_choice(tmp_path, {}, code)
    assert cached and where.startswith(str(tmp_path / "xdg" / "fastnn"))


def test_caching_can_be_switched_off(tmp_path):
    env = dict(os.environ, FASTNN_CACHE="0")
    out = subprocess.run([sys.executable, "-c", LEAKY], env=env, capture_output=True, text=True, check=True,
                         timeout=300, cwd=ROOT)
    assert out.stdout.split()[1:] == ["False", "None"]


def mnist_batch(seed=0, n=64):
    rng = np.random.default_rng(seed)
    return rng.random((n, 784), dtype=np.float32), rng.integers(0, 10, n)


def small_model():
    return fastnn.Sequential(fastnn.Dense(784, 64, activation="relu"), fastnn.Dense(64, 10), seed=0)


def test_one_and_two_threads_agree_within_tolerance():
    X, y = mnist_batch(n=256)
    results = []
    for threads in (1, 2):
        fastnn.set_num_threads(threads)
        model = small_model()
        model.fit(X, y, optimizer=fastnn.SGD(lr=0.05, momentum=0.9), epochs=2, batch_size=64)
        results.append(model.parameters())
    fastnn.set_num_threads(os.cpu_count())
    for p, q in zip(*results):
        np.testing.assert_allclose(p, q, rtol=1e-4, atol=1e-6)


def test_training_works_in_a_forked_child():
    X, y = mnist_batch()
    small_model().train_step(X, y, optimizer=fastnn.SGD(lr=0.1))  # the parent has used the kernels and BLAS
    pid = os.fork()
    if pid == 0:  # child: train, report by exit code
        try:
            model = small_model()
            losses = [model.train_step(X, y, optimizer=fastnn.SGD(lr=0.1)) for _ in range(5)]
            os._exit(0 if losses[-1] < losses[0] else 3)
        except BaseException:
            os._exit(4)
    _, status = os.waitpid(pid, 0)
    assert os.WEXITSTATUS(status) == 0


def test_two_python_threads_train_two_models_at_once():
    X, y = mnist_batch()
    expected = small_model()
    opt = fastnn.Adam()
    for _ in range(10):
        expected.train_step(X, y, optimizer=opt)
    results, errors = [None, None], []

    def train(slot):
        try:
            model, opt = small_model(), fastnn.Adam()
            for _ in range(10):
                model.train_step(X, y, optimizer=opt)
            results[slot] = model.parameters()
        except BaseException as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=train, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    for params in results:
        for p, q in zip(params, expected.parameters()):
            np.testing.assert_allclose(p, q, rtol=1e-5, atol=1e-7)


ALLOCATIONS = textwrap.dedent("""
    import json, sys, tracemalloc, numpy as np, fastnn
    from fastnn.testing import targets
    from fastnn import training
    from numba.core.runtime import rtsys
    training.CHUNK_SECONDS = 1e9  # an epoch in two compiled calls however fast the machine is
    loss, optimizer = sys.argv[1], sys.argv[2]
    rng = np.random.default_rng(0)
    n, outputs = 4096, 64  # a batch's targets or outputs: 1 MB, which no step may copy
    X = rng.random((n, 32), dtype=np.float32)
    y = targets(rng, loss, n, outputs, np.float32)
    model = fastnn.Sequential(fastnn.Dense(32, 64, activation="gelu"), fastnn.Dropout(p_drop=0.1),
                              fastnn.Dense(64, outputs), seed=0)
    opt = {"sgd": fastnn.SGD(lr=1e-3), "momentum": fastnn.SGD(lr=1e-3, momentum=0.9, nesterov=True),
           "adam": fastnn.Adam(lr=1e-4), "adamw": fastnn.AdamW(lr=1e-4)}[optimizer]

    def allocations(fn):
        before = rtsys.get_allocation_stats()
        fn()
        after = rtsys.get_allocation_stats()
        return after.alloc - before.alloc, after.free - before.free

    step = lambda: model.train_step(X, y, loss=loss, optimizer=opt)
    for _ in range(3):
        step()
    model.fit(X, y, loss=loss, optimizer=opt, epochs=1, batch_size=64)
    r = {"one": allocations(step), "hundred": allocations(lambda: [step() for _ in range(100)]),
         "short": allocations(lambda: model.fit(X[:256], y[:256], loss=loss, optimizer=opt, batch_size=64)),
         "long": allocations(lambda: model.fit(X, y, loss=loss, optimizer=opt, batch_size=64))}
    tracemalloc.start()  # sees NumPy's data allocations too
    step()
    peaks = []
    for _ in range(20):
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        step()
        peaks.append(tracemalloc.get_traced_memory()[1] - base)
    r["peak"] = max(peaks)
    print(json.dumps(r))
""")


@pytest.mark.parametrize("loss", ["softmax_cross_entropy", "mse", "binary_cross_entropy"])
@pytest.mark.parametrize("optimizer", ["sgd", "momentum", "adam", "adamw"])
def test_steady_state_steps_allocate_nothing(loss, optimizer):
    # Numba counts its allocations only when asked at start. What it counts on a call from
    # Python is one small wrapper per array argument, freed on return; a kernel allocating a
    # buffer would add more per batch, so a 64-batch epoch must cost what a 4-batch one does.
    # tracemalloc sees everything else, NumPy's arrays included: a step may make a few small
    # Python objects (views, numbers), never a copy of a batch (1 MB here).
    env = dict(os.environ, NUMBA_NRT_STATS="1")
    out = subprocess.run([sys.executable, "-c", ALLOCATIONS, loss, optimizer], env=env, capture_output=True,
                         text=True, check=True, timeout=300, cwd=ROOT)
    r = json.loads(out.stdout)
    for key in ("one", "hundred", "short", "long"):
        assert r[key][0] == r[key][1], f"{key}: not everything freed"
    assert r["hundred"][0] == 100 * r["one"][0]  # the same wrappers every step, nothing more
    assert r["long"][0] == r["short"][0]  # 64 batches in one compiled epoch allocate no more than 4
    assert r["peak"] < 16 * 1024, f"a step allocated {r['peak']} bytes at once"


def test_training_flushes_subnormals_and_gives_the_callers_mode_back():
    # A momentum buffer whose gradient is exactly zero decays geometrically into subnormal floats,
    # which x86 handles in microcode: a 784-256-128-10 step at batch 32 went from 0.5 to 1.3 ms
    # after 800 steps. The drivers flush them to zero (FTZ/DAZ), and only while they run.
    model = fastnn.Sequential(fastnn.Dense(2, 1), seed=0)
    X = np.array([[1.0, 0.0], [2.0, 0.0]], np.float32)  # input 1 is 0: W[1] always gets gradient 0
    y = np.array([[1.0], [2.0]], np.float32)
    opt = fastnn.SGD(lr=0.01, momentum=0.5)
    model.train_step(X, y, loss="mse", optimizer=opt)
    buffer = opt.state["momentum_buffer"][0]
    buffer[1] = np.finfo(np.float32).tiny  # the smallest normal float32; half of it is subnormal
    model.train_step(X, y, loss="mse", optimizer=opt)
    if platform.machine().lower() in ("x86_64", "amd64"):
        assert buffer[1] == 0.0  # 0.5 * tiny flushed, not kept as a slow subnormal
    half = np.float32(np.finfo(np.float32).tiny) * np.float32(0.5)
    assert half != 0.0  # the caller's arithmetic keeps its subnormals


def test_steps_too_small_for_a_second_thread_run_on_one():
    from fastnn.threads import SERIAL_PARAM_BYTES, SERIAL_PRODUCT, SERIAL_ROWS, serial_rows

    mnist = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 10), seed=0)
    rows = mnist.engine.serial_rows  # 784 * 256 multiply-adds a row: from 10 rows up to 63
    assert 32 in rows and SERIAL_ROWS - 1 in rows and SERIAL_ROWS not in rows and 128 not in rows
    assert -(-SERIAL_PRODUCT // (784 * 256)) in rows and -(-SERIAL_PRODUCT // (784 * 256)) - 1 not in rows
    tiny = fastnn.Sequential(fastnn.Dense(1, 64, activation="tanh"), fastnn.Dense(64, 1), seed=0)
    assert min(tiny.engine.serial_rows) > 4096  # its products never reach BLAS's own threading
    wide = serial_rows(784 * 2048, SERIAL_PARAM_BYTES + 1)  # parameters beyond the cache: two threads from 5 rows
    assert 16 not in wide and 5 not in wide and 4 in wide
    # too little work to share whatever the batch: a scheduler delay would cost more than a thread saves
    from fastnn.threads import PARALLEL_PRODUCT
    small = fastnn.Sequential(fastnn.Dense(64, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                              fastnn.Dense(128, 10), seed=0).engine.serial_rows
    assert 64 in small and 128 in small and -(-PARALLEL_PRODUCT // (256 * 128)) not in small
    assert 128 not in rows  # (784-256: 25.7M multiply-adds at batch 128, enough for two threads)


def test_one_blas_thread_inside_and_every_count_given_back(monkeypatch):
    import threadpoolctl

    from fastnn import model as model_module
    from fastnn import training
    from fastnn.threads import one_blas_thread

    fastnn.set_num_threads(2)
    try:
        def counts():
            return [i["num_threads"] for i in threadpoolctl.threadpool_info() if i["user_api"] == "blas"]
        before = counts()
        assert before and max(before) == 2
        with one_blas_thread():
            assert set(counts()) == {1}
        assert counts() == before
        seen = []  # from another Python thread too (threadpoolctl would let only one thread set it)

        def worker():
            with one_blas_thread():
                seen.append(set(counts()))
                with one_blas_thread():  # nested, as two threads' blocks overlap
                    seen.append(set(counts()))
                seen.append(set(counts()))
            seen.append(counts())
        thread = threading.Thread(target=worker)
        thread.start()
        thread.join()
        assert seen == [{1}, {1}, {1}, before] and counts() == before

        entered = []

        class Recording(one_blas_thread):
            def __enter__(self):
                entered.append(set(counts()))
                return super().__enter__()
        monkeypatch.setattr(model_module, "one_blas_thread", Recording)
        monkeypatch.setattr(training, "one_blas_thread", Recording)
        X, y = mnist_batch(n=128)
        model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 10), seed=0)
        opt = fastnn.SGD(lr=0.01)
        model.train_step(X[:32], y[:32], optimizer=opt)
        assert len(entered) == 1
        model.train_step(X, y, optimizer=opt)  # 128 rows: both threads
        model.fit(X, y, optimizer=opt, batch_size=128)
        assert len(entered) == 1
        model.fit(X, y, optimizer=opt, batch_size=32)  # (in one or more chunks)
        assert len(entered) >= 2 and counts() == before
    finally:
        fastnn.set_num_threads(os.cpu_count())
