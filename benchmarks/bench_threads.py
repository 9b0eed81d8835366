"""Predicting from several Python threads: one 784-256-128-10 relu model, calls of 1,000 rows,
the same total work spread over 1 or 2 threads, with one BLAS thread (``fastnn.set_num_threads(1)``:
each call on one core, so two threads can use two) and with the default thread count.

Every thread predicts with activation buffers of its own and the compiled forward pass runs
without the GIL, so threads add throughput where BLAS does not already use every core.
Targets (the silent-answers issue): with one BLAS thread, 2 threads >= 1.5x the calls per
second of 1 thread; with default threads, 2 threads no slower than 1.

``python benchmarks/bench_threads.py`` prints medians of interleaved rounds; pytest runs each
case (after checking that threaded answers equal serial ones).
"""
import concurrent.futures
import time

import numpy as np
import pytest

import fastnn
from fastnn.threads import get_num_threads

CALLS = 48  # predict calls per measurement, split evenly over the threads


def model_and_rows():
    model = fastnn.Sequential(fastnn.Dense(784, 256, activation="relu"), fastnn.Dense(256, 128, activation="relu"),
                              fastnn.Dense(128, 10), seed=0)
    X = np.random.default_rng(0).random((1000, 784), dtype=np.float32)
    return model, X


def calls_per_second(model, X, threads, pool=None):
    """Calls per second of ``CALLS`` predicts over ``threads`` threads (a pool kept by the caller)."""
    def work(_):
        for _ in range(CALLS // threads):
            model.predict(X)
    start = time.perf_counter()
    if threads == 1:
        work(0)
    else:
        list(pool.map(work, range(threads)))
    return CALLS / (time.perf_counter() - start)


def threaded_answers_are_serial(model, X, threads, pool):
    expected = model.predict(X)
    answers = list(pool.map(lambda _: model.predict(X), range(4 * threads)))
    return all(np.array_equal(a, expected) for a in answers)


@pytest.fixture
def blas_threads(request):
    before = get_num_threads()["numba"]
    if request.param == 1:
        fastnn.set_num_threads(1)
    try:
        yield request.param
    finally:
        fastnn.set_num_threads(before)


@pytest.mark.parametrize("blas_threads", [1, "default"], indirect=True)
@pytest.mark.parametrize("threads", [1, 2])
def test_predict_throughput(benchmark, blas_threads, threads):
    model, X = model_and_rows()
    with concurrent.futures.ThreadPoolExecutor(max(threads, 2)) as pool:
        assert threaded_answers_are_serial(model, X, 2, pool)
        benchmark.group = f"predict from threads|784-256-128-10, 1,000 rows, blas threads {blas_threads}"
        rates = []
        benchmark.pedantic(lambda: rates.append(calls_per_second(model, X, threads, pool)), rounds=3,
                           warmup_rounds=1)
    benchmark.extra_info.update(calls_per_s=float(np.median(rates)), python_threads=threads)


def report(rounds=9):
    """Median calls per second for 1 and 2 Python threads, each BLAS setting, interleaved."""
    model, X = model_and_rows()
    default = get_num_threads()["numba"]
    rows = {}
    with concurrent.futures.ThreadPoolExecutor(2) as pool:
        assert threaded_answers_are_serial(model, X, 2, pool)
        for blas in (1, default):
            fastnn.set_num_threads(blas)
            calls_per_second(model, X, 2, pool)  # warm up
            for _ in range(rounds):
                for threads in (1, 2):
                    rows.setdefault((blas, threads), []).append(calls_per_second(model, X, threads, pool))
    fastnn.set_num_threads(default)
    return {k: float(np.median(v)) for k, v in rows.items()}


if __name__ == "__main__":
    result = report()
    for blas in sorted({b for b, _ in result}):
        one, two = result[(blas, 1)], result[(blas, 2)]
        print(f"BLAS threads {blas}: 1 thread {one:7.1f} calls/s, 2 threads {two:7.1f} calls/s, ratio {two / one:.2f}x")
