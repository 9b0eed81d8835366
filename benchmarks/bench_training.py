"""One whole training step (forward, loss, backward, SGD momentum) of fastnn beside a plain
NumPy step, PyTorch and JAX (skipped when not installed), on the cases of ``fastnn bench``.

Every contender runs in this one process with the thread count in ``extra_info``; for the
fair side-by-side table (each contender in its own process, interleaved) use ``fastnn bench``.
"""
import os

import numpy as np
import pytest

import fastnn
from fastnn.peers import CASES, CONTENDERS, available, make_problem

THREADS = int(os.environ.get("FASTNN_BENCH_THREADS", os.cpu_count()))
CHECK_STEPS = 3


@pytest.fixture(scope="module", autouse=True)
def _threads():
    fastnn.set_num_threads(THREADS)


@pytest.mark.benchmark(warmup=True, warmup_iterations=5)
@pytest.mark.parametrize("contender", list(CONTENDERS))
@pytest.mark.parametrize("case", [name for name, c in CASES.items() if not c.samples])
def test_training_step(benchmark, rate, case, contender):
    if not available(contender):
        pytest.skip(f"{contender} is not installed")
    case = CASES[case]
    params, X, y = make_problem(case)
    stepper = CONTENDERS[contender](case, params, X, y)
    oracle = CONTENDERS["numpy"](case, params, X, y)
    # correctness first: the same losses and parameters as the plain NumPy step
    losses = [stepper.step() for _ in range(CHECK_STEPS)]
    expected = [oracle.step() for _ in range(CHECK_STEPS)]
    np.testing.assert_allclose(losses, expected, rtol=2e-3, atol=1e-6)
    for p, q in zip(stepper.params(), oracle.params()):
        np.testing.assert_allclose(p, q, rtol=1e-3, atol=2e-5)
    benchmark.group = f"training_step|{case.name}"
    benchmark.extra_info.update(contender=contender, threads=THREADS, batch=case.batch, network=case.label)
    benchmark(stepper.step)
    rate(benchmark, flops=case.flops)
