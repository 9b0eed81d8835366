"""The kernels' inner loops vectorise: checked in the code LLVM generates, not hoped for.

LLVM's loop vectoriser names the body of every loop it vectorises ``vector.body`` (on any
target; ``vector.body1``, ... for the next), so the optimised IR of a kernel shows how many of
its loops run on vectors. A
change that puts a load and a store to one address in a loop, or a reduction LLVM may not
reorder, makes a count drop and fails here. Kernels are compiled afresh (cached code has no
IR to read), from the same Python function and options as the library's.
"""
import re

import numba
import numpy as np
import pytest

from fastnn.kernels import _jit, dense, losses, optimizers
from fastnn.kernels.activations import CODES, NEEDS_PREACTIVATION, REGISTRY

pytestmark = pytest.mark.skipif(not _jit.JIT, reason="NUMBA_DISABLE_JIT: nothing is compiled")


def vector_loops(dispatcher, signature) -> int:
    options = {k: v for k, v in dispatcher.targetoptions.items() if k != "nopython"}
    fresh = numba.njit(**{**options, "cache": False})(dispatcher.py_func)
    fresh.compile(signature)
    ir = fresh.overloads[tuple(signature.args)].library.get_llvm_str()
    return len(re.findall(r"^vector\.body\d*:", ir, re.M))


# The vectorised loops each kernel has today (numba 0.68, LLVM 20, x86-64, both dtypes): fewer
# means a loop went scalar. (identity's fused backward has one more: LLVM splits a loop there.)
DENSE = {
    "forward": (1, "bias and activation over the product"),
    "backward": (1, "activation derivative and bias gradient"),
    "small_forward": (3, "the single-output dot product; the single-input rows"),
    "small_backward": (5, "dz and db; the rows of dW; dx for one output; dz, db and dW for one input"),
}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("act", sorted(CODES))
@pytest.mark.parametrize("form", sorted(DENSE))
def test_dense_kernel_loops_vectorise(dtype, act, form):
    code = CODES[act]
    fsig, bsig = dense.signatures(dtype)
    keep_z = code in NEEDS_PREACTIVATION
    factory = {"forward": lambda: dense.forward_kernel(code, keep_z),
               "backward": lambda: dense.backward_kernel(code),
               "small_forward": lambda: dense.small_forward_kernel(code, keep_z),
               "small_backward": lambda: dense.small_backward_kernel(code)}[form]
    fewest, which = DENSE[form]
    calls = REGISTRY[act].library_float64
    if dtype == np.float32 and form in REGISTRY[act].long_float32:
        fewest = 0 if form == "forward" else 1  # (the product's loops in the small forms still vectorise)
    if dtype == np.float64 and ("forward" in calls if form.endswith("forward") else "derivative" in calls):
        # float64 tanh, log1p and expm1 are the C library's, one call per element: LLVM 14 (numba
        # 0.59) leaves those loops scalar, newer LLVMs wrap some in a vector loop. The loops that
        # call no library function must still vectorise.
        fewest = {"forward": 0, "small_forward": 1, "backward": 0, "small_backward": 3}[form]
    found = vector_loops(factory(), fsig if form.endswith("forward") else bsig)
    assert found >= fewest, f"{form} {act}: {found} vectorised loops, expected {fewest} ({which})"


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_optimizer_and_loss_loops_vectorise(dtype):
    osig = optimizers.signature(dtype)
    for kernel in (optimizers.sgd_kernel(False, False), optimizers.sgd_kernel(True, False),
                   optimizers.sgd_kernel(True, True), optimizers.adam_kernel(False), optimizers.adam_kernel(True)):
        assert vector_loops(kernel, osig) >= 1, kernel.py_func.__qualname__
    loss_sig = losses.signatures(dtype)[0]
    assert vector_loops(losses._mse, loss_sig) >= 2  # the weights' sum, and the loop over outputs
    # cross-entropy: the gradient's scaling; its max and exp-sum loops keep their order (see the kernel)
    assert vector_loops(losses._softmax_cross_entropy, loss_sig) >= 1


def test_the_count_sees_a_loop_that_cannot_vectorise():
    """The check itself: a loop carrying a value from one element to the next has no vector body."""
    @numba.njit(error_model="numpy")
    def running(a):
        for i in range(1, a.size):
            a[i] = a[i] * a[i - 1] + 1.0

    @numba.njit(error_model="numpy")
    def scaled(a):
        for i in range(a.size):
            a[i] = a[i] * 2.0 + 1.0

    sig = numba.types.none(_jit.array_type(np.float32, 1))
    assert vector_loops(running, sig) == 0
    assert vector_loops(scaled, sig) >= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_the_gradient_guard_vectorises(dtype):
    from fastnn.kernels import train
    assert vector_loops(train.gradients_finite, numba.float64(_jit.array_type(dtype, 1))) >= 1
