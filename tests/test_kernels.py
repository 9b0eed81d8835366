"""Every kernel against its NumPy reference, in float32 and float64."""
import numpy as np
import pytest

import fastnn.kernels as K
import fastnn.reference as R
from fastnn.kernels.optimizers import RULES
from fastnn.testing import ACTIVATIONS, DENSE_SHAPES, assert_close, product_scale


def randn(rng, shape, dtype, scale=1.0):
    return (rng.standard_normal(shape) * scale).astype(dtype)


def test_every_kernel_has_a_reference_and_a_test():
    # (a layer kind's kernels are tested beside the kind: any test module counts)
    import ast
    import pathlib
    tested = {node.name for path in pathlib.Path(__file__).parent.glob("test_*.py")
              for node in ast.walk(ast.parse(path.read_text())) if isinstance(node, ast.FunctionDef)
              and node.name.startswith("test_")}
    for name in K.KERNELS:
        assert callable(getattr(K, name)) and callable(getattr(R, name)), name
        assert any(name in t for t in tested), f"no test named after kernel {name}"


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_forward_and_activation_backward(act, dtype, rng):
    z = randn(rng, (13, 7), dtype, scale=3.0)
    y = K.activation_forward(z, act)
    assert y.dtype == dtype
    assert_close(y, R.activation_forward(z, act), name=f"{act} forward")
    dy = randn(rng, z.shape, dtype)
    dz = K.activation_backward(dy, y, z, act)
    assert_close(dz, R.activation_backward(dy, y, z, act), name=f"{act} backward")
    # in place: dz may be dy
    dy2 = dy.copy()
    K.activation_backward(dy2, y, z, act, dz=dy2)
    assert_close(dy2, dz)


@pytest.mark.parametrize("act", ACTIVATIONS)
def test_activation_forward_extreme_values(act, dtype):
    z = np.array([[-1e4, -50.0, -1.0, 0.0, 1.0, 50.0, 1e4, np.nan, np.inf, -np.inf]], dtype)
    with np.errstate(all="ignore"):
        expected = R.activation_forward(z, act)
    assert_close(K.activation_forward(z, act), expected, name=act)


@pytest.mark.parametrize("small", [True, False], ids=["fused", "blas"])
@pytest.mark.parametrize("shape", DENSE_SHAPES, ids=lambda s: "N=%d,I=%d,O=%d" % s)
@pytest.mark.parametrize("act", ACTIVATIONS)
def test_dense_forward_and_dense_backward(shape, act, small, dtype, rng):
    # both forms wherever each applies (the fused one to single-output and single-input layers)
    n, i, o = shape
    if small and o != 1 and i != 1:
        pytest.skip("the fused form is for single-output and single-input layers")
    x, W, b = randn(rng, (n, i), dtype), randn(rng, (i, o), dtype, 1 / np.sqrt(i)), randn(rng, (o,), dtype)
    z = np.empty((n, o), dtype)
    out = K.dense_forward(x, W, b, act, z=z, small=small)
    z_scale = product_scale(x, W) + np.abs(b)  # each element's error grows with its terms' sizes
    assert_close(out, R.dense_forward(x, W, b, act), name="out", scale=z_scale)
    assert_close(z, x @ W + b, name="z", scale=z_scale)
    assert_close(K.dense_forward(x, W, b, act, small=small), out, name="out without z", scale=z_scale)  # z is out
    dout = randn(rng, (n, o), dtype)
    kept = dout.copy()
    dW, db, dx = K.dense_backward(dout, x, W, out, z, act, small=small)
    np.testing.assert_array_equal(dout, kept)  # dout is left alone unless it is also dz
    rW, rb, rx = R.dense_backward(dout, x, W, out, z, act)
    dz = R.activation_backward(dout, out, z, act)
    scales = {"dW": product_scale(x.T, dz), "db": np.abs(dz).sum(axis=0), "dx": product_scale(dz, W.T)}
    assert_close(dW, rW, name="dW", scale=scales["dW"])
    assert_close(db, rb, name="db", scale=scales["db"])
    assert_close(dx, rx, name="dx", scale=scales["dx"])
    _, _, none = K.dense_backward(dout, x, W, out, z, act, need_dx=False, small=small)
    assert none is None
    # in place, as training calls it: dz is dout, which ends as dout * act'
    dW2, db2, dx2 = K.dense_backward(dout, x, W, out, z, act, dz=dout, small=small)
    assert_close(dout, dz, name="dz in dout")
    assert_close(dW2, rW, name="dW in place", scale=scales["dW"])
    assert_close(db2, rb, name="db in place", scale=scales["db"])
    assert_close(dx2, rx, name="dx in place", scale=scales["dx"])


def test_dense_forward_without_z_buffer_matches_for_gelu(rng):
    x, W, b = randn(rng, (4, 3), np.float64), randn(rng, (3, 2), np.float64), randn(rng, (2,), np.float64)
    assert_close(K.dense_forward(x, W, b, "gelu"), R.dense_forward(x, W, b, "gelu"))


def test_dense_backward_overwrites_outputs(rng):
    x, W = randn(rng, (5, 4), np.float64), randn(rng, (4, 3), np.float64)
    out = x @ W
    dout = randn(rng, (5, 3), np.float64)
    dW, db, dx = np.full((4, 3), 7.0), np.full(3, 7.0), np.full((5, 4), 7.0)
    K.dense_backward(dout, x, W, out, out, None, dW, db, dx)
    rW, rb, rx = R.dense_backward(dout, x, W, out, out, None)
    assert_close(dW, rW)
    assert_close(db, rb)
    assert_close(dx, rx)


@pytest.mark.parametrize("n,c", [(1, 1), (1, 10), (7, 3), (128, 10)])
def test_softmax_cross_entropy(n, c, dtype, rng):
    logits = randn(rng, (n, c), dtype, scale=4.0)
    labels = rng.integers(0, c, n)
    loss, d = K.softmax_cross_entropy(logits, labels)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd, name="dlogits")


def test_softmax_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [-1e4, -1e4, -1e4], [1e4, 1e4, -1e4]], dtype)
    labels = np.array([1, 2, 0])
    loss, d = K.softmax_cross_entropy(logits, labels)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    # row 0: -log softmax = 2e4; row 1: uniform, log 3; row 2: two equal maxima, log 2
    assert loss == pytest.approx((2e4 + np.log(3) + np.log(2)) / 3, rel=1e-6)
    assert_close(d, R.softmax_cross_entropy(logits, labels)[1])


def test_softmax_cross_entropy_propagates_nan_like_the_reference():
    logits = np.array([[0.0, np.nan, 1.0], [0.0, 1.0, 2.0]])
    labels = np.array([0, 1])
    loss, d = K.softmax_cross_entropy(logits, labels)
    rloss, rd = R.softmax_cross_entropy(logits, labels)
    assert np.isnan(loss) and np.isnan(rloss)
    assert_close(d, rd)


@pytest.mark.parametrize("n,c", [(1, 1), (9, 1), (5, 3)])
def test_mse(n, c, dtype, rng):
    pred, target = randn(rng, (n, c), dtype), randn(rng, (n, c), dtype)
    loss, d = K.mse(pred, target)
    rloss, rd = R.mse(pred, target)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd)


@pytest.mark.parametrize("n,k", [(1, 1), (9, 1), (5, 3)])
def test_binary_cross_entropy(n, k, dtype, rng):
    logits = randn(rng, (n, k), dtype) * 4
    target = (rng.random((n, k)) < 0.5).astype(dtype)
    target[0] = 0.25  # a probability, not only 0/1
    loss, d = K.binary_cross_entropy(logits, target)
    rloss, rd = R.binary_cross_entropy(logits, target)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd)


def test_binary_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4], [-1e4, 1e4], [0.0, 50.0]], dtype)
    target = np.array([[1, 0], [1, 0], [1, 1]], dtype)
    loss, d = K.binary_cross_entropy(logits, target)
    # right answers cost (almost) nothing, wrong ones cost |logit|, a logit of 0 costs log 2
    assert loss == pytest.approx((0 + 0 + 1e4 + 1e4 + np.log(2) + 0) / 6, rel=1e-6)
    np.testing.assert_allclose(d, np.array([[0, 0], [-1, 1], [-0.5, 0]]) / 6, atol=1e-7)


def test_binary_cross_entropy_weights_rows_and_refuses_bad_targets(dtype, rng):
    logits, target = randn(rng, (6, 2), dtype), (rng.random((6, 2)) < 0.5).astype(dtype)
    w = rng.random(6).astype(dtype)
    loss, d = K.binary_cross_entropy(logits, target, weights=w)
    rows = [R.binary_cross_entropy(logits[i:i + 1], target[i:i + 1]) for i in range(6)]
    assert loss == pytest.approx(sum(w[i] * rows[i][0] for i in range(6)) / w.sum(), rel=1e-5)
    assert_close(d, np.concatenate([w[i] * rows[i][1] for i in range(6)]) / w.sum())
    for bad in (1.5, -0.1, np.nan):
        t = target.copy()
        t[3, 1] = bad
        with pytest.raises(ValueError, match=r"target must hold values in \[0, 1\]"):
            K.binary_cross_entropy(logits, t)


def test_softmax_and_binary_cross_entropy_with_a_cap_on_each_loss(dtype, rng):
    logits = randn(rng, (8, 3), dtype) * 30  # confident and wrong rows: losses far above the cap
    labels, target = rng.integers(0, 3, 8), (rng.random((8, 3)) < 0.5).astype(dtype)
    for cap in (0.0, 5.0, -np.log(np.finfo(dtype).eps)):
        for kernel, y in ((K.softmax_cross_entropy, labels), (K.binary_cross_entropy, target)):
            loss, d = kernel(logits, y, cap=cap)
            rloss, rd = getattr(R, kernel.__name__)(logits, y, cap=cap)
            assert_close(np.array(loss), np.array(rloss), dtype=dtype)
            assert_close(d, getattr(R, kernel.__name__)(logits, y)[1])  # the gradient is never capped
    assert K.softmax_cross_entropy(logits, labels, cap=5.0)[0] < K.softmax_cross_entropy(logits, labels)[0]


@pytest.mark.parametrize("n,k", [(1, 1), (9, 1), (5, 3)])
def test_poisson(n, k, dtype, rng):
    logits = randn(rng, (n, k), dtype)
    target = rng.poisson(2.0, (n, k)).astype(dtype)
    target[0, 0] = 0.0  # t log t at t = 0
    loss, d = K.poisson(logits, target)
    rloss, rd = R.poisson(logits, target)
    assert_close(np.array(loss), np.array(rloss), dtype=dtype)
    assert_close(d, rd)


def test_poisson_is_zero_at_the_right_rate_weights_rows_and_refuses_negative_targets(dtype, rng):
    target = rng.poisson(3.0, (6, 2)).astype(dtype) + 1
    loss, d = K.poisson(np.log(target).astype(dtype), target)
    assert loss == pytest.approx(0.0, abs=1e-5) and np.abs(d).max() < 1e-5
    logits, w = randn(rng, (6, 2), dtype), rng.random(6).astype(dtype)
    loss, d = K.poisson(logits, target, weights=w)
    rows = [R.poisson(logits[i:i + 1], target[i:i + 1]) for i in range(6)]
    assert loss == pytest.approx(sum(w[i] * rows[i][0] for i in range(6)) / w.sum(), rel=1e-5)
    assert_close(d, np.concatenate([w[i] * rows[i][1] for i in range(6)]) / w.sum())
    for bad in (-1.0, np.nan):
        t = target.copy()
        t[2, 1] = bad
        with pytest.raises(ValueError, match="target must hold counts or rates >= 0"):
            K.poisson(logits, t)


@pytest.mark.parametrize("i,o", [(1, 1), (7, 3), (64, 33)])
def test_l2_penalty(i, o, dtype, rng):
    W = randn(rng, (i, o), dtype)
    dW = randn(rng, (i, o), dtype)
    before = dW.copy()
    value, out = K.l2_penalty(W, dW, 0.3)
    rvalue, rgrad = R.l2_penalty(W, 0.3)
    assert out is dW
    assert_close(np.array(value), np.array(rvalue), dtype=dtype)
    assert_close(dW - before, rgrad)
    with pytest.raises(ValueError, match="dW overlaps W"):
        K.l2_penalty(W, W, 0.3)


@pytest.mark.parametrize("step", [1, 2, 50])
def test_adam_update_with_scikit_learns_epsilon(step, dtype, rng):
    p, g = randn(rng, (40,), dtype), randn(rng, (40,), dtype) * 1e-7  # gradients near eps: where it shows
    m, v = randn(rng, (40,), dtype) * 1e-7, np.abs(randn(rng, (40,), dtype)) * 1e-14
    expected = R.adam_update(p, g, m, v, step, 1e-2, eps_after_correction=False)
    other = R.adam_update(p, g, m, v, step, 1e-2)
    assert not np.allclose(expected[0] - p, other[0] - p, rtol=1e-3)
    got = [a.copy() for a in (p, m, v)]
    K.adam_update(got[0], g, got[1], got[2], step, 1e-2, eps_after_correction=False)
    for a, e in zip(got, expected):
        assert_close(a, e)


SGD_CASES = [dict(lr=0.1), dict(lr=0.1, weight_decay=0.01), dict(lr=0.05, momentum=0.9),
             dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-3)]


@pytest.mark.parametrize("hyper", SGD_CASES, ids=str)
def test_sgd_update(hyper, dtype, rng):
    p, g, v = randn(rng, 101, dtype), randn(rng, 101, dtype), randn(rng, 101, dtype)
    rp, rv = R.sgd_update(p, g, v, **hyper)
    p0, g0 = p.copy(), g.copy()
    K.sgd_update(p, g, v, **hyper)
    assert_close(p, rp, name="p")
    if hyper.get("momentum"):
        assert_close(v, rv, name="v")
    np.testing.assert_array_equal(g, g0)  # the gradient is never modified
    assert not np.array_equal(p, p0)


ADAM_CASES = [dict(lr=1e-3), dict(lr=1e-2, weight_decay=0.1), dict(lr=1e-2, weight_decay=0.1, decoupled=True),
              dict(lr=3e-3, beta1=0.5, beta2=0.9, eps=1e-6)]


@pytest.mark.parametrize("step", [1, 2, 10])
@pytest.mark.parametrize("hyper", ADAM_CASES, ids=str)
def test_adam_update(hyper, step, dtype, rng):
    p, g = randn(rng, 57, dtype), randn(rng, 57, dtype)
    m, v = randn(rng, 57, dtype) * 0.1, np.abs(randn(rng, 57, dtype)) * 0.1
    rp, rm, rv = R.adam_update(p, g, m, v, step, **hyper)
    K.adam_update(p, g, m, v, step, **hyper)
    assert_close(p, rp, name="p")
    assert_close(m, rm, name="m")
    assert_close(v, rv, name="v")


def test_reference_never_mutates_its_inputs(rng):
    x, W, b = randn(rng, (4, 3), np.float64), randn(rng, (3, 2), np.float64), randn(rng, (2,), np.float64)
    p, g, m, v = (randn(rng, 6, np.float64) for _ in range(4))
    v = np.abs(v)
    arrays = [x, W, b, p, g, m, v]
    before = [a.copy() for a in arrays]
    z = x @ W + b
    out = R.dense_forward(x, W, b, "gelu")
    R.dense_backward(np.ones_like(out), x, W, out, z, "gelu")
    R.softmax_cross_entropy(out, np.array([0, 1, 0, 1]))
    R.mse(out, np.zeros_like(out))
    R.sgd_update(p, g, m, 0.1, momentum=0.9)
    R.adam_update(p, g, m, v, 1, 0.1)
    for a, a0 in zip(arrays, before):
        np.testing.assert_array_equal(a, a0)


# -- wrapper validation: nothing wrong ever reaches a kernel -----------------------------

def test_wrappers_reject_bad_arguments():
    x, W, b = np.ones((4, 3)), np.ones((3, 2)), np.ones(2)
    with pytest.raises(ValueError, match=r"W must have shape \(I, O\) with I = x.shape\[1\] = 3"):
        K.dense_forward(x, np.ones((2, 2)), b, "relu")
    with pytest.raises(ValueError, match=r"b must have shape \(2,\)"):
        K.dense_forward(x, W, np.ones(3), "relu")
    with pytest.raises(TypeError, match="W must have dtype float64 like the other arrays"):
        K.dense_forward(x, W.astype(np.float32), b, "relu")
    with pytest.raises(TypeError, match="x must have dtype float32 or float64"):
        K.dense_forward(x.astype(np.int64), W, b, "relu")
    with pytest.raises(ValueError, match="x must be C-contiguous"):
        K.dense_forward(np.ones((3, 4)).T, W, b, "relu")
    with pytest.raises(ValueError, match="unknown activation 'swish'"):
        K.dense_forward(x, W, b, "swish")
    with pytest.raises(ValueError, match=r"out must have shape \(4, 2\)"):
        K.dense_forward(x, W, b, "relu", out=np.empty((4, 3)))
    with pytest.raises(ValueError, match="x is empty"):
        K.dense_forward(np.ones((0, 3)), W, b, "relu")
    with pytest.raises(ValueError, match=r"dout must have shape \(4, 2\)"):
        K.dense_backward(np.ones((4, 3)), x, W, np.ones((4, 2)), np.ones((4, 2)), "relu")
    with pytest.raises(ValueError, match=r"labels must lie in \[0, 2\)"):
        K.softmax_cross_entropy(np.ones((2, 2)), np.array([0, 2]))
    with pytest.raises(TypeError, match="labels must be a C-contiguous int64"):
        K.softmax_cross_entropy(np.ones((2, 2)), np.array([0.0, 1.0]))
    with pytest.raises(ValueError, match=r"target must have shape \(2, 2\)"):
        K.mse(np.ones((2, 2)), np.ones((2, 1)))
    with pytest.raises(ValueError, match=r"g must have shape \(3,\)"):
        K.sgd_update(np.ones(3), np.ones(4), np.ones(3), 0.1)
    with pytest.raises(ValueError, match="lr must be a finite number > 0"):
        K.sgd_update(np.ones(3), np.ones(3), np.ones(3), -0.1)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        K.adam_update(np.ones(3), np.ones(3), np.ones(3), np.ones(3), 0, 0.1)
    with pytest.raises(ValueError, match="p is an output and must be writable"):
        p = np.ones(3)
        p.flags.writeable = False
        K.sgd_update(p, np.ones(3), np.ones(3), 0.1)


@pytest.mark.parametrize("p_drop", [0.0, 0.1, 0.5, 0.9])
def test_dropout_forward_and_dropout_backward(p_drop, dtype, rng):
    y = randn(rng, (64, 50), dtype)
    got = K.dropout_forward(y.copy(), p_drop, 11, 5, 2)
    assert_close(got, R.dropout_forward(y, p_drop, 11, 5, 2))
    kept = got != 0
    assert abs(1 - kept.mean() - p_drop) < 0.03  # drops about p_drop of the elements
    np.testing.assert_allclose(got[kept], y[kept] / (1 - p_drop), rtol=1e-6)  # inverted scaling
    dy = randn(rng, (64, 50), dtype)
    back = K.dropout_backward(dy.copy(), p_drop, 11, 5, 2)
    assert_close(back, R.dropout_backward(dy, p_drop, 11, 5, 2))
    assert np.array_equal(back != 0, kept)  # the same mask, regenerated
    # another step or layer draws another mask; the same counters the same one
    assert p_drop == 0 or not np.array_equal(K.dropout_forward(y.copy(), p_drop, 11, 6, 2) != 0, kept)
    np.testing.assert_array_equal(K.dropout_forward(y.copy(), p_drop, 11, 5, 2), got)


# -- outputs that share memory with inputs ---------------------------------------------

def overlap_cases():
    """(what, call) pairs: each call passes an output that overlaps an input in a way its kernel
    cannot handle, and must raise ValueError before any kernel runs."""
    rng = np.random.default_rng(0)
    f = np.float32
    logits = rng.standard_normal((4, 3)).astype(f)
    labels = np.array([0, 2, 1, 0])
    x, W, b = rng.random((4, 3), dtype=f), rng.random((3, 5), dtype=f), rng.random(5, dtype=f)
    buf = np.zeros((6, 5), f)  # out and z as two windows of one buffer, a row apart
    out = rng.random((4, 5), dtype=f)
    dout = rng.random((4, 5), dtype=f)
    big = np.zeros(40, f)
    p, g = rng.random(12, dtype=f), rng.random(12, dtype=f)
    return [
        ("dlogits is logits", lambda: K.softmax_cross_entropy(logits, labels, dlogits=logits)),
        ("dpred is target", lambda: K.mse(out, dout, dpred=dout)),
        ("z partly overlaps out", lambda: K.dense_forward(x, W, b, "relu", out=buf[:4], z=buf[1:5])),
        ("out is x's memory", lambda: K.dense_forward(x, np.ones((3, 3), f), b[:3], "relu", out=x)),
        ("dx overlaps x", lambda: K.dense_backward(dout, x, W, out, out, "relu", dx=x)),
        ("dW overlaps W", lambda: K.dense_backward(dout, x, W, out, out, "relu", dW=W)),
        ("dz partly overlaps dout", lambda: K.dense_backward(big[:20].reshape(4, 5), x, W, out, out, "relu",
                                                             dz=big[5:25].reshape(4, 5))),
        ("dz overlaps out", lambda: K.dense_backward(dout, x, W, out, out, "relu", dz=out)),
        ("y partly overlaps z", lambda: K.activation_forward(buf[:4], "tanh", y=buf[1:5])),
        ("g is p", lambda: K.sgd_update(p, p, None, 0.1)),
        ("m overlaps v", lambda: K.adam_update(p, g, big[:12], big[6:18], 1, 0.1)),
    ]


@pytest.mark.parametrize("what", [w for w, _ in overlap_cases()])
def test_an_output_overlapping_an_input_is_refused(what):
    call = dict(overlap_cases())[what]
    with pytest.raises(ValueError, match="overlaps"):
        call()


def test_the_documented_in_place_aliases_give_the_same_numbers():
    rng = np.random.default_rng(1)
    f = np.float32
    x, W, b = rng.random((4, 3), dtype=f), rng.standard_normal((3, 5)).astype(f), rng.random(5, dtype=f)
    out = K.dense_forward(x, W, b, "tanh")
    same = np.empty_like(out)
    np.testing.assert_array_equal(K.dense_forward(x, W, b, "tanh", out=same, z=same), out)  # z is out
    dout = rng.random((4, 5), dtype=f)
    separate = K.dense_backward(dout, x, W, out, out, "tanh")
    in_place = K.dense_backward(dout.copy(), x, W, out, out, "tanh")
    buffer = dout.copy()
    aliased = K.dense_backward(buffer, x, W, out, out, "tanh", dz=buffer)  # dz is dout: overwritten
    for s, a in zip(separate, aliased):
        np.testing.assert_array_equal(s, a)
    for s, a in zip(separate, in_place):
        np.testing.assert_array_equal(s, a)
    pred, target = rng.random((4, 2), dtype=f), rng.random((4, 2), dtype=f)
    loss, grad = K.mse(pred, target)
    loss2, grad2 = K.mse(pred.copy(), target, dpred=None)
    p2 = pred.copy()
    loss3, grad3 = K.mse(p2, target, dpred=p2)  # dpred is pred
    assert loss == loss2 == loss3
    np.testing.assert_array_equal(grad3, grad)
    z = rng.standard_normal((4, 5)).astype(f)
    y = K.activation_forward(z, "sigmoid")
    np.testing.assert_array_equal(K.activation_forward(z.copy(), "sigmoid", y=None), y)
    z2 = z.copy()
    np.testing.assert_array_equal(K.activation_forward(z2, "sigmoid", y=z2), y)  # y is z


def test_adam_in_float32_is_as_exact_as_float32_allows():
    # found by the fuzz tests: 1 - beta2 taken after rounding beta2 to float32 is off by 1.3e-5
    # relative, and a step that depends on it by about as much
    p, g = np.array([1.25], np.float32), np.zeros(1, np.float32)
    m, v = np.array([3.0], np.float32), np.zeros(1, np.float32)
    exact = R.adam_update(p.astype(np.float64), g.astype(np.float64), m.astype(np.float64), v.astype(np.float64),
                          3, 1e-3, 0.9, 0.999, 1e-8, 0.01, False)[0]
    K.adam_update(p, g, m, v, 3, 1e-3, weight_decay=0.01)
    np.testing.assert_allclose(p, exact, rtol=2e-6)


@pytest.mark.parametrize("name", list(RULES))
def test_optimizer_update_matches_the_reference_on_every_example(name, dtype, rng):
    rule = RULES[name]
    for settings in rule.examples:
        full = {**{h.name: h.default for h in rule.hyper}, **settings}
        p, g = randn(rng, (37,), dtype), randn(rng, (37,), dtype)
        state = {row: np.abs(randn(rng, (37,), dtype)) for row in rule.rows_for(full)}
        if "grad_avg" in state:  # a mean square above the square of the mean (RMSprop, centered)
            state["square_avg"] += state["grad_avg"] ** 2 + 0.5
        hyper = {k: v for k, v in settings.items() if k != "lr"}
        expected_p, expected_state = R.optimizer_update(name, p, g, state, 2, settings["lr"], **hyper)
        got_p, got_state = K.optimizer_update(name, p.copy(), g, {k: v.copy() for k, v in state.items()}, 2,
                                              settings["lr"], **hyper)
        assert_close(got_p, expected_p, name=f"{name} {settings} p")
        assert sorted(got_state) == sorted(expected_state) == sorted(rule.rows_for(full))
        for row in expected_state:
            assert_close(got_state[row], expected_state[row], name=f"{name} {settings} {row}")
