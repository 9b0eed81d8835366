"""Threads: predict, predict_proba, evaluate and score from many threads at once give exactly
the serial answers (each thread has its own activation buffers), also while the model trains;
two trainings of one model at once are an error, not a race. Each test runs many iterations
with a very short switch interval, so that threads interleave inside every call."""
import concurrent.futures
import subprocess
import sys
import textwrap
import threading

import numpy as np
import pytest

import fastnn

from .conftest import checkout_env, require


@pytest.fixture
def switching():
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)
    try:
        yield
    finally:
        sys.setswitchinterval(old)


@pytest.fixture
def one_thread():
    """One BLAS thread: then a product's rounding cannot depend on how calls overlap."""
    from fastnn.threads import one_blas_thread
    with one_blas_thread():
        yield


def model_and_rows(rng, rows=4000):
    model = fastnn.Sequential(fastnn.Dense(20, 64, activation="relu"), fastnn.Dense(64, 32, activation="gelu"),
                              fastnn.Dense(32, 5), seed=3)
    X = rng.standard_normal((rows, 20)).astype(np.float32)
    return model, X


def test_two_threads_predicting_different_sizes_get_the_serial_answers(rng, switching, one_thread):
    model, X = model_and_rows(rng)
    sizes = (4000, 2000, 7, 1)
    expected = {n: model.predict(X[:n], batch_size=512) for n in sizes}
    barrier = threading.Barrier(2)

    def work(k):
        barrier.wait()
        wrong = 0
        for i in range(60):
            n = sizes[(i + k) % len(sizes)]
            wrong += not np.array_equal(model.predict(X[:n], batch_size=512), expected[n])
        return wrong

    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert list(pool.map(work, range(2))) == [0, 0]


def test_every_inference_entry_point_is_safe_from_four_threads(rng, switching, one_thread):
    model, X = model_and_rows(rng, 3000)
    y = rng.integers(0, 5, len(X))
    model.fit(X[:500], y[:500], epochs=1)
    calls = {"predict": lambda: model.predict(X, batch_size=256), "proba": lambda: model.predict_proba(X[::3]),
             "evaluate": lambda: model.evaluate(X[:1200], y[:1200]), "score": lambda: model.score(X[1000:], y[1000:])}
    expected = {k: f() for k, f in calls.items()}

    def work(k):
        names = list(calls)
        for i in range(40):
            name = names[(i + k) % len(names)]
            got = calls[name]()
            same = got == expected[name] if not isinstance(got, np.ndarray) else np.array_equal(got, expected[name])
            if not same:
                return name
        return None

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        assert list(pool.map(work, range(4))) == [None] * 4


def test_predicting_while_the_model_trains_leaves_training_unchanged(rng, switching, one_thread):
    model, X = model_and_rows(rng, 1024)
    twin, _ = model_and_rows(rng, 0)
    y = rng.integers(0, 5, len(X))
    stop = threading.Event()

    def predict_until_stopped():
        while not stop.is_set():  # (outputs that mix parameters of several steps: the caller's choice)
            model.predict(X[:16])  # fewer rows than a training batch, and more
            model.predict(X[:300])

    twin.fit(X, y, epochs=3, batch_size=32)  # (compiled before the threads start)
    for b in range(0, 256, 32):
        twin.train_step(X[b:b + 32], y[b:b + 32])
    threads = [threading.Thread(target=predict_until_stopped) for _ in range(2)]
    for t in threads:
        t.start()
    try:
        model.fit(X, y, epochs=3, batch_size=32)
        for b in range(0, 256, 32):
            model.train_step(X[b:b + 32], y[b:b + 32])
    finally:
        stop.set()
        for t in threads:
            t.join()
    for p, q in zip(model.parameters(), twin.parameters()):
        np.testing.assert_array_equal(p, q)


def test_the_estimators_predict_alike_from_a_thread_pool(switching):
    sklearn = require("sklearn")
    from sklearn.datasets import load_digits
    from fastnn.sklearn import MLPClassifier
    X, y = load_digits(return_X_y=True)
    with pytest.warns(sklearn.exceptions.ConvergenceWarning):
        est = MLPClassifier((128,), max_iter=30, random_state=0).fit(X, y)
    serial = est.predict(X)
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        results = list(pool.map(lambda _: est.predict(X), range(20)))
    assert all(np.array_equal(r, serial) for r in results)
    assert est.score(X, y) > 0.9


def test_two_trainings_of_one_model_at_once_are_an_error(rng):
    model, X = model_and_rows(rng, 256)
    y = rng.integers(0, 5, len(X))
    inside, leave = threading.Event(), threading.Event()

    def hold(epoch, history):  # a callback: the fit holds the model while it waits here
        inside.set()
        leave.wait(30)

    worker = threading.Thread(target=lambda: model.fit(X, y, epochs=1, callbacks=[hold]))
    worker.start()
    try:
        assert inside.wait(60)
        before = [p.copy() for p in model.parameters()]
        for call in (lambda: model.fit(X, y), lambda: model.train_step(X[:8], y[:8]),
                     lambda: model.loss_and_grad(X[:8], y[:8])):
            with pytest.raises(RuntimeError, match="being trained already"):
                call()
        for p, b in zip(model.parameters(), before):
            np.testing.assert_array_equal(p, b)
        np.testing.assert_array_equal(model.predict(X[:4]), model.predict(X[:4]))  # predicting is fine
    finally:
        leave.set()
        worker.join()
    model.train_step(X[:8], y[:8])  # the lock is free again


HAMMER = textwrap.dedent("""
    import sys, threading, numpy as np, fastnn
    sys.setswitchinterval(1e-6)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((4000, 64)).astype(np.float32)
    for trial in range(100):
        model = fastnn.Sequential(fastnn.Dense(64, 96, activation="relu"), fastnn.Dense(96, 10), seed=trial)
        go = threading.Barrier(2)
        def work(n):
            go.wait()
            for _ in range(3):
                model.predict(X[:n], batch_size=4000)
        threads = [threading.Thread(target=work, args=(n,)) for n in (4000, 2000)]
        [t.start() for t in threads]
        [t.join() for t in threads]
    print("survived")
""")


def test_fresh_models_predicted_from_two_threads_do_not_corrupt_memory():
    # before each thread had buffers of its own, a fresh model's shared workspace was grown by one
    # thread while the other wrote into it: 'corrupted size vs. prev_size' or a segfault
    out = subprocess.run([sys.executable, "-c", HAMMER], capture_output=True, text=True, timeout=600,
                         env=checkout_env())
    assert out.returncode == 0 and out.stdout.strip() == "survived", out.stderr[-2000:]


def test_predictions_never_see_a_refused_update(rng, switching):
    # every update here overflows and is refused; the parameters written meanwhile stay finite
    model, X = model_and_rows(rng, 256)
    y = rng.integers(0, 5, len(X))
    stop, seen = threading.Event(), []

    def predict_until_stopped():
        while not stop.is_set():
            seen.append(bool(np.isfinite(model.predict(X[:64])).all()))

    t = threading.Thread(target=predict_until_stopped)
    t.start()
    try:
        opt = fastnn.SGD(lr=1e39)
        for _ in range(300):
            with pytest.raises(fastnn.DivergenceError):
                model.train_step(X[:32], y[:32], optimizer=opt)
    finally:
        stop.set()
        t.join()
    assert len(seen) > 10 and all(seen)
