"""Every kernel, Numba vs the NumPy reference, at the shapes of an MNIST step and a wide layer.

Groups read like ``dense_forward|N=128,I=784,O=256``; ``extra_info`` has GFLOP/s or GB/s.
"""
import pytest

from fastnn.testing import KernelCase, case_group, kernel_case_specs

SPECS = kernel_case_specs()


@pytest.mark.benchmark(warmup=True, warmup_iterations=3)
@pytest.mark.parametrize("impl", ["numba", "numpy"])
@pytest.mark.parametrize("spec", SPECS, ids=lambda spec: case_group(*spec))
def test_kernel(benchmark, rate, spec, impl):
    kernel, dims, act = spec
    case = KernelCase(kernel, dims, act=act)
    case.check()  # correctness first: a wrong kernel never gets a time
    benchmark.group = case.group
    benchmark.extra_info.update(kernel=kernel, impl=impl, **dims)
    benchmark(case.run_numba if impl == "numba" else case.run_numpy)
    rate(benchmark, case.flops, case.nbytes)
