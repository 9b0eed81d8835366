"""The float32 exp and tanh approximations used by the kernels: accuracy and special values."""
import numpy as np
import pytest

from fastnn.kernels import activation_forward, softmax_cross_entropy
import numba

from fastnn.kernels._jit import FASTMATH
from fastnn.kernels.activations import exp_, tanh_


@numba.njit(fastmath=set(FASTMATH), error_model="numpy")  # the kernels' options, not cached
def _apply_exp(x, out):
    for i in range(x.size):
        out[i] = exp_(x[i])


@numba.njit(fastmath=set(FASTMATH), error_model="numpy")
def _apply_tanh(x, out):
    for i in range(x.size):
        out[i] = tanh_(x[i])


def ulps(got, exact):
    exact32 = exact.astype(np.float32)
    return np.abs(got.astype(np.float64) - exact) / np.spacing(np.abs(exact32)).astype(np.float64)


def test_float32_tanh_is_within_6_ulps_everywhere():
    x = np.linspace(-12, 12, 1_000_001, dtype=np.float32)
    x = np.concatenate([x, np.geomspace(1e-30, 1e-2, 1000, dtype=np.float32)])
    out = np.empty_like(x)
    _apply_tanh(x, out)
    assert ulps(out, np.tanh(x.astype(np.float64))).max() <= 6
    assert np.abs(out).max() <= 1


def test_float32_exp_is_within_1_ulp_in_the_normal_range():
    x = np.linspace(-87.3, 88.7, 1_000_001, dtype=np.float32)
    out = np.empty_like(x)
    _apply_exp(x, out)
    assert ulps(out, np.exp(x.astype(np.float64))).max() <= 1


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_special_values(dtype):
    x = np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 89.0, -88.0, -1e4, 1e4], dtype)
    e, t = np.empty_like(x), np.empty_like(x)
    _apply_exp(x, e)
    _apply_tanh(x, t)
    with np.errstate(over="ignore"):
        expect_e = np.exp(x.astype(np.float64)).astype(dtype)
    assert np.isnan(e[0]) and np.isnan(t[0])
    np.testing.assert_array_equal(e[1:6], [np.inf, 0, 1, 1, np.inf if dtype == np.float32 else expect_e[5]])
    assert e[6] == pytest.approx(expect_e[6], rel=1e-6, abs=1e-37)  # float32 flushes below 1.2e-38
    np.testing.assert_array_equal(t[1:5], [1, -1, 0, 0])
    np.testing.assert_array_equal(t[7:], [-1, 1])


def test_float64_keeps_the_library_functions():
    x = np.linspace(-20, 20, 10001)
    out = np.empty_like(x)
    _apply_tanh(x, out)
    np.testing.assert_allclose(out, np.tanh(x), rtol=1e-15)  # libm, within rounding
    _apply_exp(x, out)
    np.testing.assert_allclose(out, np.exp(x), rtol=1e-15)


def test_sigmoid_keeps_relative_accuracy_in_the_tails():
    z = np.array([[-80.0, -30.0, -10.0, -1.0, 0.0, 1.0, 10.0, 30.0]], np.float32)
    exact = 1 / (1 + np.exp(-z.astype(np.float64)))
    np.testing.assert_allclose(activation_forward(z, "sigmoid"), exact, rtol=5e-7)


def test_softmax_cross_entropy_in_float32_matches_float64():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((64, 10)) * 5
    labels = rng.integers(0, 10, 64)
    l64, d64 = softmax_cross_entropy(logits, labels)
    l32, d32 = softmax_cross_entropy(logits.astype(np.float32), labels)
    assert l32 == pytest.approx(l64, rel=1e-6)
    np.testing.assert_allclose(d32, d64, rtol=1e-5, atol=1e-8)
