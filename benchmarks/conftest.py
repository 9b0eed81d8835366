"""Benchmarks: each case asserts correctness first, then times (pytest-benchmark).

Timing:      python -m pytest benchmarks --benchmark-only
Smoke check: python -m pytest benchmarks --benchmark-disable   (each case once, as CI does)
"""
import numpy as np
import pytest


def record_rate(benchmark, flops=0, nbytes=0):
    """Store GFLOP/s or GB/s of the median time in ``extra_info`` (not when timing is off)."""
    stats = getattr(benchmark, "stats", None)
    if stats is None or getattr(benchmark, "disabled", False):
        return
    median = stats.stats.median
    if flops:
        benchmark.extra_info["gflops"] = round(flops / median / 1e9, 2)
    if nbytes:
        benchmark.extra_info["gb_per_s"] = round(nbytes / median / 1e9, 2)


@pytest.fixture
def rate():
    return record_rate


@pytest.fixture(autouse=True)
def _seeded():
    np.random.seed(0)
